"""Every output is written beside its target and renamed into place: a writer that dies
leaves the old file or the new one, never a torn one, and the next writer sweeps its leftovers."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fsds.io import atomic_dir, atomic_path, write_json

# A writer that rewrites one JSON file and one two-file folder forever, each version whole and
# self-consistent (a version number and a payload of ~8 MB derived from it).
WRITER = """
import json, sys
from pathlib import Path
from fsds.io import atomic_dir, write_json
root = Path(sys.argv[1])
version = int(sys.argv[2])
while True:
    version += 1
    payload = [version] * 1_000_000
    write_json(root / "metrics.json", {"version": version, "payload": payload})
    with atomic_dir(root / "models") as tmp:
        (tmp / "a.json").write_text(json.dumps({"version": version, "payload": payload}))
        (tmp / "b.json").write_text(json.dumps({"version": version}))
    print(version, flush=True)
"""


def _check_file(path):
    data = json.loads(path.read_text())  # a torn file would not parse, or would be short
    assert data["payload"] == [data["version"]] * 1_000_000
    return data["version"]


def _check_dir(path):
    a = json.loads((path / "a.json").read_text())
    b = json.loads((path / "b.json").read_text())
    assert a["version"] == b["version"] and a["payload"] == [a["version"]] * 1_000_000
    assert sorted(p.name for p in path.iterdir()) == ["a.json", "b.json"]
    return a["version"]


@pytest.mark.slow
def test_a_writer_killed_at_random_moments_never_leaves_a_torn_output(tmp_path):
    rng = np.random.default_rng(0)
    file_version = dir_version = None
    for trial in range(8):
        base = trial * 1000  # each writer's versions are its own
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(base)], stdout=subprocess.PIPE,
                                text=True)
        if trial == 0:
            proc.stdout.readline()  # let the first writer finish one version so there is an old one
        time.sleep(float(rng.uniform(0.05, 1.5)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        done = [int(line) for line in proc.stdout.read().split()] or ([base + 1] if trial == 0 else [])
        proc.stdout.close()
        # the old version, the last finished one, or the one that was renamed just before the kill
        allowed_file = {file_version, base + 1} if not done else {done[-1], done[-1] + 1}
        allowed_dir = {dir_version, base + 1} if not done else {done[-1], done[-1] + 1}
        file_version = _check_file(tmp_path / "metrics.json")
        assert file_version in allowed_file
        if (tmp_path / "models").exists():  # absent only in the instant between its two renames
            dir_version = _check_dir(tmp_path / "models")
            assert dir_version in allowed_dir
    # the next writer removes what the killed ones left beside the outputs
    write_json(tmp_path / "metrics.json", {"version": 0, "payload": [0] * 1_000_000})
    with atomic_dir(tmp_path / "models") as tmp:
        (tmp / "a.json").write_text(json.dumps({"version": 0, "payload": [0] * 1_000_000}))
        (tmp / "b.json").write_text(json.dumps({"version": 0}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "models"]


def test_a_failing_block_keeps_the_old_output(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "m.pt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(folder) as tmp:
            (tmp / "m.pt").write_text("half")
            raise RuntimeError("killed")
    assert [p.name for p in folder.iterdir()] == ["m.pt"] and (folder / "m.pt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "out.txt"]


def test_leftovers_of_a_killed_writer_are_swept_by_the_next(tmp_path):
    (tmp_path / ".out.txt.abc123.tmp").write_text("torn")
    (tmp_path / ".models.xyz.tmp").mkdir()
    (tmp_path / ".models.xyz.tmp" / "m.pt").write_text("torn")
    (tmp_path / ".models.old").mkdir()
    (tmp_path / ".other.txt.abc.tmp").write_text("another output's: not ours to remove")
    with atomic_path(tmp_path / "out.txt") as tmp:
        tmp.write_text("new")
    with atomic_dir(tmp_path / "models") as tmp:
        (tmp / "m.pt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.txt.abc.tmp", "models", "out.txt"]
