"""MLflow tracking: one run per (variant, category) training, found again by the metrics stage.

The default store is a SQLite file in the repository (``mlflow.tracking_uri``); the usual
``MLFLOW_TRACKING_URI`` environment variable points it at a server instead. The store is
contacted before training starts, so an unreachable server fails in seconds, not at the end.
A store that goes away later costs no result: the tracker warns once, naming the URI, and
stops tracking while the stage writes its outputs as usual.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from typing import Any, Callable, Mapping, TypeVar

from fsds.config import MlflowConfig
from fsds.errors import RunError

SQLITE = "sqlite:///"


def absolute_store(uri: str, root: str | Path) -> str:
    """A relative SQLite store (``sqlite:///mlflow.db``) made absolute against ``root``; other URIs as they are."""
    if uri.startswith(SQLITE) and not uri[len(SQLITE):].startswith("/"):
        return SQLITE + str((Path(root) / uri[len(SQLITE):]).resolve())
    return uri


def tracking_uri(cfg: MlflowConfig) -> str:
    """``MLFLOW_TRACKING_URI``, else ``mlflow.tracking_uri``. A relative SQLite store lives in the
    repository: DVC runs queued experiments (``dvc queue start``) in temporary copies of it, and
    names the repository itself in ``DVC_ROOT``, so their runs land in the one store too."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri
    return absolute_store(uri, os.environ.get("DVC_ROOT") or ".")


def shown(uri: str) -> str:
    """``uri`` as it may be printed: a password in it (``postgresql://user:secret@host/db``) as ``***``."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def first_line(exc: BaseException) -> str:
    """An exception's message without the lines a database driver or SQLAlchemy adds below it."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


DATABASES = ("postgresql", "mysql", "mssql")  # MLflow's database stores besides SQLite (``postgresql+psycopg://``)


def check_reachable(uri: str, timeout: float = 10.0) -> None:
    """Fail at once, in one line, when the store cannot be reached: a tracking server
    (``http(s)://``) that nothing answers for, a database that refuses the connection or the
    password. MLflow's client would retry with back-off for minutes (about 100 s for a database,
    with a warning per attempt) before it says so."""
    parts = urlsplit(uri)
    if parts.scheme.split("+")[0] in DATABASES:
        import sqlalchemy

        wait = {"connect_timeout": int(timeout)} if parts.scheme.startswith("postgresql") else {}  # not forever
        engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool, connect_args=wait)
        try:
            with engine.connect():
                pass
        except Exception as exc:  # the driver's own kinds: refused, unknown host, bad password, no database
            raise RunError(f"MLflow tracking store {shown(uri)!r} cannot be used: {first_line(exc)}. Fix "
                           "MLFLOW_TRACKING_URI / mlflow.tracking_uri, or set mlflow.enabled: false") from exc
        finally:
            engine.dispose()
        return
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise RunError(f"MLflow tracking server {shown(uri)!r} is not answering ({exc.strerror or exc}): start it, "
                       "or fix MLFLOW_TRACKING_URI / mlflow.tracking_uri, or set mlflow.enabled: false") from exc


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": 1e-4}`` (MLflow params are flat)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


F = TypeVar("F", bound=Callable[..., Any])


def _survives_a_lost_store(method: F) -> F:
    """After the start, a failing store turns tracking off (with one warning) instead of failing the stage."""

    @functools.wraps(method)
    def wrapper(self: "Tracker", *args: Any, **kwargs: Any) -> Any:
        if self.lost:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # MLflow raises many kinds (HTTP, SQL, file system)
            self.lost = True
            self._buffer.clear()
            print(f"warning: MLflow tracking store {shown(self.uri)!r} failed ({type(exc).__name__}: "
                  f"{first_line(exc)}); "
                  "tracking is off for the rest of this stage, its outputs are written as usual",
                  file=sys.stderr, flush=True)
            return None

    return wrapper  # type: ignore[return-value]


def open_store(uri: str, experiment: str) -> tuple[Any, str]:
    """An MLflow client of the store at ``uri`` (created if new) and the id of ``experiment`` in it
    (created if missing); raise naming the URI if the store cannot be used. Touches no global state
    (``mlflow.set_tracking_uri`` would, and it sets ``MLFLOW_TRACKING_URI`` in this process too)."""
    from mlflow.tracking import MlflowClient

    check_reachable(uri)
    try:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            return client, exp.experiment_id
        artifact_location = None
        if uri.startswith(SQLITE):
            # Keep artifacts beside the local database, not wherever the process happens to run.
            artifact_location = (Path(uri[len(SQLITE):]).resolve().parent / "mlartifacts").as_uri()
        return client, client.create_experiment(experiment, artifact_location=artifact_location)
    except Exception as exc:  # MLflow raises many kinds; all mean "cannot use this store"
        raise RunError(
            f"MLflow tracking store {shown(uri)!r} cannot be used: {first_line(exc)}. "
            "Fix MLFLOW_TRACKING_URI / mlflow.tracking_uri, or set mlflow.enabled: false"
        ) from exc


class Tracker:
    """A thin wrapper over the MLflow client that does nothing when tracking is disabled."""

    def __init__(self, cfg: MlflowConfig) -> None:
        self.enabled = cfg.enabled
        self.uri = tracking_uri(cfg)
        self.experiment = cfg.experiment
        self.lost = False  # the store failed after the start; tracking is off
        self._client = None
        self._experiment_id: str | None = None
        self._buffer: list = []

    def connect(self) -> None:
        """Open the store (creating the experiment); raise naming the URI if it cannot be reached."""
        if not self.enabled or self._client is not None:
            return
        import mlflow

        client, self._experiment_id = open_store(self.uri, self.experiment)
        self._client = client
        mlflow.set_tracking_uri(self.uri)

    @_survives_a_lost_store
    def start_run(self, run_name: str, tags: Mapping[str, Any], params: Mapping[str, Any],
                  resume_run_id: str | None = None) -> str | None:
        """A new run, or ``resume_run_id`` set running again when it is in this store (a resumed training)."""
        if not self.enabled:
            return None
        self.connect()
        if resume_run_id:
            try:
                self._client.get_run(resume_run_id)
            except Exception:  # not in this store: the training's earlier part was tracked elsewhere
                pass
            else:
                self._client.update_run(resume_run_id, status="RUNNING")
                return resume_run_id
        run = self._client.create_run(self._experiment_id, run_name=run_name, tags={k: str(v) for k, v in tags.items()})
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in flatten(params).items()]
        for start in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self._client.log_batch(run.info.run_id, params=items[start : start + 100])
        return run.info.run_id

    def log_metrics(self, run_id: str | None, metrics: Mapping[str, float], step: int = 0) -> None:
        """Queue metrics; they are sent in batches by :meth:`flush`."""
        if run_id is None or self.lost:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._buffer.extend(Metric(k, float(v), now, step) for k, v in metrics.items() if v == v)  # skip NaN

    @_survives_a_lost_store
    def flush(self, run_id: str | None) -> None:
        if run_id is None or not self._buffer:
            return
        for start in range(0, len(self._buffer), 1000):
            self._client.log_batch(run_id, metrics=self._buffer[start : start + 1000])
        self._buffer.clear()

    @_survives_a_lost_store
    def log_model(self, run_id: str | None, write: Callable[[Path], None]) -> None:
        """Log the run's ``model/``: ``write(path)`` writes the MLflow model folder at ``path``
        (:func:`fsds.deploy.mlflow_model.save_mlflow_model`), uploaded to the run's artifacts."""
        if run_id is None:
            return
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model"
            write(path)
            self._client.log_artifacts(run_id, str(path), "model")

    @_survives_a_lost_store
    def end_run(self, run_id: str | None, status: str = "FINISHED") -> None:
        if run_id is not None:
            self.flush(run_id)
            self._client.set_terminated(run_id, status=status)

    @_survives_a_lost_store
    def log_test_metrics(self, run_id: str, metrics: Mapping[str, float]) -> None:
        """Attach the metrics stage's figures to the training run they belong to (the metrics
        stage's results do not depend on it: an unreachable store only warns)."""
        if not self.enabled or not run_id:
            return
        self.connect()
        self.log_metrics(run_id, {f"test_{k}": v for k, v in metrics.items()})
        self.flush(run_id)
