"""MLflow that fails: an unreachable store stops training before it starts, naming the URI; a
store that goes away later costs no result."""

import dataclasses
import time

import pandas as pd
import pytest

from fsds.config import MlflowConfig
from fsds.pipeline.tracking import Tracker
from fsds.pipeline.train import train_variant
from tests.services import free_port  # nothing listens there once it is returned


@pytest.fixture
def no_retries(monkeypatch):
    # MLflow's HTTP client retries with back-off by default; one attempt keeps the test short
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _config(tiny_config, uri):
    return dataclasses.replace(
        tiny_config,
        mlflow=MlflowConfig(enabled=True, tracking_uri=uri, experiment="fsds"),
        train=dataclasses.replace(tiny_config.train, iterations=2, eval_every=0),
    )


def test_unreachable_store_stops_training_before_it_starts(tiny_config, tiny_split, tmp_path, no_retries):
    uri = f"http://127.0.0.1:{free_port()}"
    cfg = _config(tiny_config, uri)
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match=rf"MLflow tracking server '{uri}' is not answering .*mlflow\.enabled: false"):
        train_variant(cfg, "B", tiny_split, tmp_path / "models", Tracker(cfg.mlflow))
    assert time.perf_counter() - start < 60
    assert not (tmp_path / "models").exists()


def test_store_lost_during_training_costs_no_result(tiny_config, tiny_split, tmp_path, capfd):
    cfg = _config(tiny_config, f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracker = Tracker(cfg.mlflow)
    tracker.connect()

    def gone(*args, **kwargs):
        raise ConnectionError("server went away")

    tracker._client.log_batch = gone  # the store fails after training has started
    split = tiny_split[tiny_split["category"] == "washer"]
    train_variant(cfg, "B_NBR", split, tmp_path / "models", tracker)
    assert tracker.lost
    assert (tmp_path / "models" / "washer.pt").is_file()
    assert len(pd.read_csv(tmp_path / "models" / "washer_history.csv")) == 2
    err = capfd.readouterr().err
    assert err.count("warning: MLflow tracking store") == 1 and "server went away" in err


def test_test_metrics_for_an_unreachable_store_only_warn(no_retries, capfd):
    tracker = Tracker(MlflowConfig(enabled=True, tracking_uri=f"http://127.0.0.1:{free_port()}", experiment="fsds"))
    tracker.log_test_metrics("0123abcd", {"iou": 0.5})  # the metrics stage writes its files regardless
    assert tracker.lost
    assert "tracking is off for the rest of this stage" in capfd.readouterr().err


def test_a_password_in_the_store_uri_is_never_printed():
    from fsds.pipeline.tracking import first_line, shown

    assert shown("postgresql://mlflow:s3cret@db:5432/mlflow") == "postgresql://mlflow:***@db:5432/mlflow"
    assert shown("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert shown("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    assert first_line(RuntimeError("FATAL: password authentication failed\n(Background on this error at: ...)")) == \
        "FATAL: password authentication failed"


def test_a_queued_experiments_sqlite_store_is_the_repositorys(monkeypatch, tmp_path):
    """DVC runs a queued experiment in a temporary copy of the repository and names the repository in
    DVC_ROOT: a relative SQLite store resolves there, so every worker tracks into the one store."""
    from fsds.pipeline.tracking import tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    cfg = MlflowConfig(enabled=True, tracking_uri="sqlite:///mlflow.db", experiment="fsds")
    assert tracking_uri(cfg) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert tracking_uri(cfg) == "http://tracking:5000"
