"""Stage train's work: one model per category for one variant, tracked in MLflow, resumable."""

from __future__ import annotations

import copy
import functools
import math
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from fsds.config import Config
from fsds.data.images import InputGeometry, load_images
from fsds.data.split import category_split
from fsds.deploy.mlflow_model import save_mlflow_model
from fsds.deploy.model import deployable
from fsds.engine.batches import category_geometry, load_probe, load_train_data
from fsds.engine.checkpoint import save_checkpoint
from fsds.engine.device import Runtime
from fsds.engine.prediction import Tiling, inference_model, predict_probabilities
from fsds.engine.resume import ResumeStore, fingerprint
from fsds.engine.memory_bank import load_memory
from fsds.engine.training import train_segmenter
from fsds.errors import InputError
from fsds.evaluation.threshold import Calibration, calibrate_threshold
from fsds.io import atomic_dir, write_json
from fsds.method.fusion import LateFusion, choose_gate, level_logits, logit
from fsds.method.memory import NormalMemory
from fsds.method.networks import Segmenter
from fsds.method.weights import encoder_weights
from fsds.pipeline import plan
from fsds.pipeline.tracking import Tracker, git_commit


def category_seed(seed: int, category: str) -> int:
    """A per-category seed; every variant of a category starts from the same initial weights."""
    return int(np.random.SeedSequence([seed, zlib.crc32(category.encode())]).generate_state(1)[0])


CALIBRATION_BATCH = 8  # fixed, so the threshold does not depend on predict.batch_size


def calibrate(cfg: Config, model: Segmenter, table: pd.DataFrame, category: str, geometry: InputGeometry,
              runtime: Runtime, tiling: Tiling) -> Calibration | None:
    """The category's calibrated threshold (:mod:`fsds.evaluation.threshold`) from its calibration
    normals, predicted as the predict stage predicts (a folded copy of the network on the prediction
    ``runtime``, its input ``geometry``, the ``tiling``); None when the split holds none out
    (``split.calibration_normals: 0``)."""
    held = category_split(table, category)["calibration"]
    if held.empty:
        return None
    net = inference_model(copy.deepcopy(model).to(memory_format=torch.contiguous_format), runtime.channels_last)
    images = load_images(held["image"].tolist(), geometry, desc=f"{category} calibration")
    probs = predict_probabilities(net, images, runtime, batch_size=CALIBRATION_BATCH, tiling=tiling,
                                  desc=f"{category} calibration")
    found = calibrate_threshold(probs, cfg.metrics.calibration_fpr, cfg.metrics.image_fpr)
    if not found.image_reached:
        tqdm.write(f"{category}: warning: {len(held)} calibration normals cannot hold metrics.image_fpr "
                   f"{cfg.metrics.image_fpr:g}: the image decision flags about 1/{len(held) + 1} of good parts. Hold out "
                   f"at least {math.ceil(1 / cfg.metrics.image_fpr - 1)} (split.calibration_normals)", file=sys.stderr)
    if not found.reached:
        tqdm.write(f"{category}: warning: even the highest threshold leaves {found.fpr:.2%} of the calibration "
                   f"normals' pixels defective (metrics.calibration_fpr is {cfg.metrics.calibration_fpr}); "
                   f"using {found.threshold:.4f}", file=sys.stderr)
    return found


def fuse_late(cfg: Config, segmenter: Segmenter, memory: NormalMemory, table: pd.DataFrame, category: str,
              geometry: InputGeometry, runtime: Runtime, tiling: Tiling) -> LateFusion:
    """The segmenter and the memory as one model (:mod:`fsds.method.fusion`): the segmenter counted from
    ``metrics.threshold``, believed where the memory finds a pixel unusual enough, by the gate that the
    calibration normals allow (twice ``metrics.calibration_fpr`` of their pixels fused defective;
    without calibration normals: the plain maximum)."""
    offset = logit(cfg.metrics.threshold)
    held = category_split(table, category)["calibration"]
    if held.empty:
        return LateFusion(segmenter, memory, offset)
    images = load_images(held["image"].tolist(), geometry, desc=f"{category} calibration")
    maps = []
    for part in (segmenter, memory):
        net = inference_model(copy.deepcopy(part).to(memory_format=torch.contiguous_format), runtime.channels_last)
        maps.append(level_logits(predict_probabilities(net, images, runtime, batch_size=CALIBRATION_BATCH,
                                                       tiling=tiling, desc=f"{category} fusion")))
    gate = choose_gate(maps[0] - offset, maps[1], 2 * cfg.metrics.calibration_fpr)
    return LateFusion(segmenter, memory, offset, gate)


def category_memory(memory_dir: str | Path | None, category: str, geometry: InputGeometry) -> NormalMemory:
    """The memory stage's memory of ``category``, which must take the segmenter's input ``geometry``."""
    if memory_dir is None:
        raise InputError("this variant uses the memory of normal patches: give the memory stage's folder (--memory)")
    memory, built_for, state = load_memory(Path(memory_dir) / f"{category}.pt")
    if state["info"]["threshold"] is None:
        raise InputError(f"the memory of {category} has no threshold: the split held no normal images out. Set "
                         "split.calibration_normals >= 1 for variants that use the memory")
    if built_for != geometry:
        raise InputError(f"the memory of {category} was built for input {built_for}, the variant trains at {geometry}: "
                         "re-run the memory stage (dvc repro memory)")
    return memory


def train_variant(cfg: Config, variant_name: str, table: pd.DataFrame, out_dir: str | Path, tracker: Tracker,
                  resume_dir: str | Path | None = None, memory_dir: str | Path | None = None) -> None:
    """Train one model per category for one variant; write ``<category>.pt``, ``<category>_history.csv``
    and ``runs.json`` (the MLflow run of each category) into ``out_dir`` atomically.

    With a ``resume_dir``, each category's training keeps a snapshot there (see :mod:`fsds.engine.resume`)
    and a killed run continues from it; the snapshots are removed once ``out_dir`` is complete. A
    variant with a ``memory`` takes each category's from ``memory_dir`` (the memory stage's output).
    """

    variant = cfg.variant(variant_name)
    model_cfg = plan.model_of(cfg, variant_name)
    config = plan.stage_params(cfg, variant_name)
    tracker.connect()  # fail now, not after an hour of training, if the store is unreachable
    encoder_state, weights_source = encoder_weights(model_cfg.arch, model_cfg.encoder_weights)  # a missing file fails now too
    recipe = plan.recipe(cfg, variant_name, pretrained=encoder_state is not None)
    runtime, predict_runtime, tiling = plan.train_runtime(cfg), plan.predict_runtime(cfg), plan.tiling(cfg)
    categories = sorted(table["category"].unique())
    runs: dict[str, str | None] = {}
    seconds: dict[str, float] = {}  # wall time of each category's training
    commit = git_commit()
    store = ResumeStore(resume_dir) if resume_dir else None
    snapshots: list[Path] = []
    with atomic_dir(out_dir) as tmp:
        for category in categories:
            geometry = category_geometry(table, category, cfg.train.image_size, cfg.train.working_size)
            data = load_train_data(table, category, geometry)
            snapshot, resumed = None, None
            if store is not None:
                key = fingerprint(config, recipe, category, [data.defect_images, data.defect_masks, data.normal_images],
                                  weights_source)
                snapshot = store.path(variant_name, category, key)
                snapshots.append(snapshot)
                resumed = store.load(snapshot)
                if resumed is not None:
                    tqdm.write(f"{variant_name}/{category}: resuming at iteration {resumed['iteration']} of "
                               f"{recipe.iterations} from {snapshot}")
            probe = None
            if recipe.eval_every:
                probe = load_probe(table, category, geometry, cfg.train.eval_images, cfg.seed)
            tags = {"variant": variant_name, "category": category, "shot": cfg.shot, "seed": cfg.seed,
                    "git_commit": commit, "nbr": variant.nbr, "cap": variant.cap, "seg_loss": recipe.seg_loss,
                    "memory": variant.memory,
                    "arch": recipe.arch,
                    "dataset": cfg.dataset, "encoder_weights": weights_source, "profile": cfg.profile}
            params = {**config,
                      "resolved": {"batch_size": recipe.batch_size, "frozen_stages": recipe.frozen_stages,
                                   "precision": runtime.precision, "category": category,
                                   "n_shots": len(data.defect_images), "n_normals": len(data.normal_images)}}
            run_id = tracker.start_run(f"{variant_name}/{category}", tags, params,
                                       resume_run_id=(resumed or {}).get("mlflow_run_id"))
            earlier = (resumed or {}).get("seconds", 0.0)  # training time before the interruption

            def log(it: int, row: dict[str, float], run_id: str | None = run_id) -> None:
                tracker.log_metrics(run_id, {k: row[k] for k in ("loss", "seg", "nbr", "lambda", "probe_iou")}, it)
                if it % recipe.log_every == 0:
                    tracker.flush(run_id)

            status = "FAILED"
            start = time.perf_counter()

            def keep(state: dict[str, Any], path: Path | None = snapshot, run_id: str | None = run_id,
                     earlier: float = earlier, start: float = start) -> None:
                tracker.flush(run_id)  # what the snapshot has done is in MLflow too
                store.save(path, {**state, "mlflow_run_id": run_id, "seconds": earlier + time.perf_counter() - start})

            try:
                memory = category_memory(memory_dir, category, geometry) if variant.memory != "none" else None
                if variant.memory == "alone":  # nothing to train: the memory is the model
                    model, history = memory, pd.DataFrame(columns=["iteration", "loss", "seg", "nbr", "lambda", "probe_iou"])
                else:
                    model, _, history = train_segmenter(
                        recipe, runtime, data, seed=category_seed(cfg.seed, category), encoder_state=encoder_state,
                        on_log=log, progress_desc=f"{variant_name}/{category}", probe=probe, resume_state=resumed,
                        on_checkpoint=keep if snapshot is not None else None,
                        memory=memory if variant.memory == "input" else None,
                    )
                if variant.memory == "late":
                    model = fuse_late(cfg, model, memory, table, category, geometry, predict_runtime, tiling)
                calibration = calibrate(cfg, model, table, category, geometry, predict_runtime, tiling)
                threshold = calibration.threshold if calibration else cfg.metrics.threshold
                min_area = calibration.min_area if calibration else 0.0
                ckpt = tmp / f"{category}.pt"
                save_checkpoint(ckpt, model, geometry, threshold, encoder_weights=weights_source, config=config,
                                iteration=recipe.iterations, min_area=min_area,
                                extra={"variant": variant_name, "category": category, "seed": cfg.seed,
                                       "mlflow_run_id": run_id,
                                       "calibration": calibration.to_dict() if calibration else None})
                history.to_csv(tmp / f"{category}_history.csv", index=False)
                seconds[category] = round(earlier + time.perf_counter() - start, 1)
                tracker.log_metrics(run_id, {"train_seconds": seconds[category],
                                             **({"calibrated_threshold": calibration.threshold,
                                                 "calibration_fpr": calibration.fpr} if calibration else {})})
                metadata = {"variant": variant_name, "category": category, "arch": recipe.arch,
                            "threshold": threshold, "min_area": min_area, "encoder_weights": weights_source}
                tracker.log_model(run_id, functools.partial(
                    save_mlflow_model, deployable(model, geometry, threshold, min_area), metadata=metadata))
                status = "FINISHED"
            finally:
                tracker.end_run(run_id, status)
            runs[category] = run_id
        write_json(tmp / "runs.json", runs)
        write_json(tmp / "timing.json", seconds)
    if store is not None:
        store.discard(snapshots)
