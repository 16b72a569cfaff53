"""Stage memory's work: each category's memory of normal patches (:mod:`fsds.method.memory`), built
from its normal training images at the input geometry the profile gives the segmenters, its threshold
from the held-out calibration normals."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from tqdm import tqdm

from fsds.config import Config
from fsds.data.images import InputGeometry, load_images
from fsds.data.split import category_split
from fsds.engine.batches import category_geometry
from fsds.engine.memory_bank import BuiltMemory, build_memory, save_memory
from fsds.io import atomic_dir, write_json
from fsds.method.memory import MemorySpec
from fsds.pipeline import plan

MEMORY_BATCH = 8  # images per encoder pass while building


def memory_spec(cfg: Config) -> MemorySpec:
    m = cfg.memory
    return MemorySpec(m.arch, tuple(m.strides), m.grid_stride, m.pool, m.bank_size, m.sampler, m.k, m.sigma,
                      m.coreset_dims, m.coreset_candidates)


def category_memory(cfg: Config, table: pd.DataFrame, category: str) -> tuple[BuiltMemory, InputGeometry]:
    """The memory of one category of the split ``table``: from its ``train_normal`` images, its threshold
    from its ``calibration`` images (none without them: no variant may use it then), at the input
    geometry the profile gives its segmenters."""
    parts = category_split(table, category)
    geometry = category_geometry(table, category, cfg.train.image_size, cfg.train.working_size)
    names = parts["train_normal"]["image"].tolist()
    normals = load_images(names, geometry, desc=f"{category} normals")
    held = load_images(parts["calibration"]["image"].tolist(), geometry, desc=f"{category} calibration")
    built = build_memory(memory_spec(cfg), normals, held, cfg.seed, cfg.metrics.calibration_fpr,
                         plan.predict_runtime(cfg), MEMORY_BATCH, desc=f"memory/{category}")
    return BuiltMemory(built.memory, {**built.info, "images": names}), geometry


def build_memories(cfg: Config, table: pd.DataFrame, out_dir: str | Path) -> None:
    """``<category>.pt`` for every category of the split and ``memory.json`` (what each holds, how long
    it took), written atomically into ``out_dir``."""
    spec = memory_spec(cfg)
    infos = {}
    with atomic_dir(out_dir) as tmp:
        for category in sorted(table["category"].unique()):
            built, geometry = category_memory(cfg, table, category)
            save_memory(tmp / f"{category}.pt", built, spec, geometry,
                        {"category": category, "seed": cfg.seed, "images": built.info["images"]})
            infos[category] = {k: round(v, 3) if isinstance(v, float) else v for k, v in built.info.items()
                               if k != "images"}
            threshold = built.info["threshold"]
            tqdm.write(f"memory/{category}: {built.info['bank']} of {built.info['patches']} patch vectors in "
                       f"{built.info['seconds']:.1f} s, threshold "
                       + (f"{threshold:.4f}" if threshold else "none (split.calibration_normals is 0)"))
        write_json(tmp / "memory.json", infos)
