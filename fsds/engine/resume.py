"""Mid-training snapshots, so a training that was killed continues where it stopped.

Every ``train.checkpoint_every`` iterations the training loop's whole state (weights, Adam's
moments, both random generators, the loss history, the MLflow run) is written atomically to
``<root>/<variant>/<category>-<fingerprint>.pt``. The fingerprint hashes everything that
decides the result: the training params, the variant and network, the category's decoded
images and masks, the training code and the torch version. The next run of the stage finds
the snapshot only if nothing of that changed, and then ends exactly where an uninterrupted
run with the same seed would have (on CPU). A stage that finishes removes its snapshots.

The snapshots live outside the stage's outputs (DVC deletes those before it re-runs a stage)
in a folder the stage is given; for queued experiments ``FSDS_RESUME_DIR`` points every
temporary workspace at one folder, which the fingerprint keeps apart per cell.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from fsds.engine.recipe import Recipe
from fsds.imports import module_closure, module_file
from fsds.io import atomic_path

# The modules whose code decides what a training step computes: the training loop and all it imports.
TRAINING_CODE = tuple(sorted(module_closure("fsds.engine.training")))
# Params that do not change the trained model.
IRRELEVANT_TRAIN = ("checkpoint_every", "log_every")


def fingerprint(config: dict[str, Any], recipe: Recipe, category: str, tensors: list[torch.Tensor | list[torch.Tensor]],
                weights: str) -> str:
    """A short hash of everything that decides a category's training result."""
    config = {**config, "train": {k: v for k, v in config.get("train", {}).items() if k not in IRRELEVANT_TRAIN}}
    h = hashlib.blake2b(digest_size=12)
    recipe_values = {k: v for k, v in dataclasses.asdict(recipe).items() if k not in IRRELEVANT_TRAIN}
    h.update(json.dumps({"config": config, "recipe": recipe_values, "category": category,
                         "weights": weights, "torch": torch.__version__}, sort_keys=True, default=str).encode())
    for item in tensors:  # a stacked tensor, or a list of images of their own sizes
        for tensor in item if isinstance(item, list) else [item]:
            h.update(str(tuple(tensor.shape)).encode())
            h.update(tensor.contiguous().numpy().tobytes())
    for name in TRAINING_CODE:
        h.update(module_file(name).read_bytes())
    return h.hexdigest()


class ResumeStore:
    """The folder of one pipeline's training snapshots."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, variant: str, category: str, key: str) -> Path:
        return self.root / variant / f"{category}-{key}.pt"

    def load(self, path: Path) -> dict[str, Any] | None:
        """The snapshot at ``path``, or None when there is none or it cannot be read (then training
        starts over, which costs time but never a wrong result)."""
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # a snapshot from another torch, a damaged disk: start over
            tqdm.write(f"warning: cannot read the training snapshot {path} ({exc}); training from the start")
            return None

    def save(self, path: Path, state: dict[str, Any]) -> None:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    def discard(self, paths: list[Path]) -> None:
        for path in paths:
            path.unlink(missing_ok=True)
            for folder in (path.parent, self.root):
                try:
                    folder.rmdir()  # only when empty
                except OSError:
                    pass
