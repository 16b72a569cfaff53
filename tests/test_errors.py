"""Bad input reads as one line naming the key or file and the fix, not as a traceback.

Each case runs a stage as DVC does (``python -m stages.<name>`` in a checkout) with one bad value.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from PIL import Image

from fsds.data.synthetic import generate_synthetic
from fsds.errors import ConfigError, InputError, run_stage
from tests.conftest import REPO
from tests.params import params_with


def stage(tmp_path, overrides: dict, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_with(overrides), sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)


def assert_plain_error(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), proc.stderr[-2000:]


def test_shot_zero(tmp_path):
    proc = stage(tmp_path, {"shot": 0}, "stages.split", "data/raw", "data/split.csv")
    assert_plain_error(proc, "shot: must be >= 1 (K annotated defect images per defect type), got 0")


def test_an_image_size_that_is_no_multiple_of_32(tmp_path):
    proc = stage(tmp_path, {"profiles": {"fast256": {"image_size": 100}}}, "stages.train", "data/split.csv",
                 "data/models/B", "--variant", "B")
    assert_plain_error(proc, "profiles.*.image_size: must be a positive multiple of 32")


def test_a_network_the_registry_does_not_have(tmp_path):
    """params.yaml takes any name; the train stage stops on it before reading any data, naming the key."""
    overrides = {"variants": {"B": {"nbr": "none", "cap": "none", "arch": "segformer"}}}
    proc = stage(tmp_path, overrides, "stages.train", "data/split.csv", "data/models/B", "--variant", "B")
    assert_plain_error(proc, "variants.B.arch: unknown network 'segformer'; expected one of albunet34")


def test_a_missing_key(tmp_path):
    raw = params_with({})
    del raw["train"]["augment"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "stages.predict", "s.csv", "m", "p"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert_plain_error(proc, "train.augment: missing from params.yaml")


def test_a_mask_of_another_size_in_a_folder_dataset(tmp_path):
    data = tmp_path / "mine"
    generate_synthetic(data, seed=0, n_train_good=2, n_test_good=1, n_per_defect=2, size=64, categories=["fabric"])
    mask = next((data / "fabric" / "ground_truth").rglob("*_mask.png"))
    Image.open(mask).resize((32, 32)).save(mask)
    overrides = {"dataset": "folder", "data": {"root": str(data)}}
    assert stage(tmp_path, overrides, "stages.download", "data/raw").returncode == 0
    proc = stage(tmp_path, overrides, "stages.split", "data/raw", "data/split.csv")
    assert_plain_error(proc, f"mask {mask} is 32x32 but image")


def test_run_stage_prints_our_errors_and_keeps_tracebacks_for_bugs(capsys):
    def bad_input():
        raise InputError("image x.png: cannot read it; replace or remove the file")

    with pytest.raises(SystemExit) as exit_info:
        run_stage(bad_input)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "error: image x.png: cannot read it; replace or remove the file\n"

    def bug():
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_stage(bug)
    assert issubclass(ConfigError, ValueError) and issubclass(InputError, ValueError)  # old `except` clauses still work
