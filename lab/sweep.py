"""A quick in-process comparison: train each variant per (profile, shot, seed) on one category of
data on disk and score it on the category's test images, without DVC or MLflow.

    python -m lab.sweep ../shared/datasets/mvtec_transistor_512 transistor \\
        --variant L0_B --profiles cpu fast --shots 1 5 --seeds 0 1 2 -S split.unit=category
    python -m lab.sweep <root> <category> --variant L0_B L0_B_Dice --profiles fast fast_crops

Variants and profiles are params.yaml's and the lab's own (``lab/variants.yaml``: e.g. ``L0_B_Dice``,
``fast_crops``, ``cpu``). Each run is what the pipeline's split, train, predict and metrics stages do for
that category (the same functions, the same recipe and runtime from :mod:`fsds.pipeline.plan`, the
same per-category seed), at ``metrics.threshold`` and at the calibrated threshold (``*_cal``). Every
run appends one JSON line to ``--out`` as it finishes (so a long sweep can be read while it runs) and
the end prints mean (std) over the seeds of each setting (variant and profile) and the paired
per-seed differences from the first setting as markdown (``--summarize FILE`` prints them for lines
already written, e.g. several sweeps appended to one file; ``--base SETTING`` takes the differences
from another setting, ``--pair-overrides`` pairs runs made with and without ``-S`` overrides,
``--metrics`` picks the columns, ``--by-type`` prints per defect type whether the shots showed it or
not). Variants with a ``memory`` build it once per split; variants that differ only in their memory
use share one trained segmenter. For results to commit, run a grid (``python -m stages.grid run``): it versions every cell;
this is for deciding what is worth a grid.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import yaml

from fsds.config import Config, parse_config
from fsds.data.datasets import index_dataset
from fsds.data.split import category_split, k_shot_split
from fsds.engine.batches import category_geometry, load_train_data
from fsds.engine.prediction import inference_model, predict_category
from fsds.engine.training import train_segmenter
from fsds.errors import InputError
from fsds.evaluation.metrics import by_defect_type, evaluate_category
from fsds.evaluation.tables import markdown_table
from fsds.method.weights import encoder_weights
from fsds.pipeline import plan
from fsds.pipeline.grid import apply_overrides
from fsds.pipeline.predict import typical_side
from fsds.pipeline.memory import category_memory
from fsds.pipeline.train import calibrate, category_seed, fuse_late
from lab.variants import lab_params

SUMMARY = ("iou", "iou_pooled", "dice", "aupro", "pixel_auroc", "image_auroc_max", "iou_cal", "train_seconds")


def segmenter_key(cfg: Config, variant: str) -> tuple:
    """What decides a variant's trained segmenter (not its labels, nor a memory used alone or late): variants with the
    same key train the same network (the same seed on the same machine), so a sweep trains it once."""
    v = cfg.variant(variant)
    v = dataclasses.replace(v, memory="input" if v.memory == "input" else "none", label="", paper="", family="")
    return v, cfg.profile, cfg.shot, cfg.seed


def run_one(cfg: Config, table: pd.DataFrame, category: str, variant: str,
            cache: dict | None = None, gates: Sequence[float] = ()) -> dict[str, Any]:
    """Train ``variant`` on ``category`` of a split ``table`` and return its test metrics. ``cache`` keeps
    the memory and the trained segmenters of this split for the variants after it. A late-fused variant
    is also scored with each fixed gate of ``gates`` (``other_gates``)."""
    cache = {} if cache is None else cache
    use = cfg.variant(variant).memory
    net = plan.model_of(cfg, variant)
    encoder_state, _ = encoder_weights(net.arch, net.encoder_weights)
    recipe = plan.recipe(cfg, variant, pretrained=encoder_state is not None)
    geometry = category_geometry(table, category, cfg.train.image_size, cfg.train.working_size)
    data = load_train_data(table, category, geometry)
    memory = None
    if use != "none":
        if "memory" not in cache:
            cache["memory"] = category_memory(cfg, table, category)[0]
        memory = cache["memory"].memory
    start = time.perf_counter()
    key = segmenter_key(cfg, variant)
    if use == "alone":
        model = memory
    elif key in cache:
        model = copy.deepcopy(cache[key])
    else:
        model, _, _ = train_segmenter(recipe, plan.train_runtime(cfg), data, seed=category_seed(cfg.seed, category),
                                      encoder_state=encoder_state, memory=memory if use == "input" else None,
                                      progress_desc=f"{variant} {cfg.profile} {cfg.shot}-shot seed {cfg.seed}")
        cache[key] = copy.deepcopy(model)
    seconds = time.perf_counter() - start
    runtime, tiling = plan.predict_runtime(cfg), plan.tiling(cfg)
    if use == "late":
        model = fuse_late(cfg, model, memory, table, category, geometry, runtime, tiling)
    result = {**score(cfg, model, table, category, geometry), "train_seconds": seconds,
              "n_shots": len(data.defect_images), "scale": geometry.scale}
    if use != "none":
        result["memory_seconds"] = cache["memory"].info["seconds"]
    if use == "late":
        result["gate"] = float(model.gate)
        result["other_gates"] = {}
        for gate in gates:  # the same fused model with a fixed gate instead of the calibrated one
            fixed = copy.deepcopy(model)
            fixed.gate.fill_(min(gate, 1e4))
            result["other_gates"][str(gate)] = score(cfg, fixed, table, category, geometry)

    return result


def score(cfg: Config, model, table: pd.DataFrame, category: str, geometry) -> dict[str, Any]:
    """The test metrics of a trained ``model``, calibrated and predicted as the pipeline does."""
    runtime, tiling = plan.predict_runtime(cfg), plan.tiling(cfg)
    calibration = calibrate(cfg, model, table, category, geometry, runtime, tiling)  # as the train stage, before folding
    test = category_split(table, category)["test"]  # predicted as the predict stage does
    probs, _ = predict_category(inference_model(copy.deepcopy(model), runtime.channels_last), test, geometry,
                                cfg.metrics.threshold, runtime,
                                batch_size=plan.predict_batch_size(cfg, typical_side(geometry, test)), tiling=tiling)
    metrics, per_image = evaluate_category(probs, test, cfg.metrics.threshold,
                                           calibration.threshold if calibration else None,
                                           calibration.min_area if calibration else 0.0)
    seen = set(category_split(table, category)["train_defect"]["defect_type"])
    types = by_defect_type(probs, test, per_image, seen)
    flat = {f"{group}_{m}": types[group][m] for group in ("seen", "unseen") if group in types
            for m in ("iou", "pixel_auroc", "aupro")}
    image = {"min_area": calibration.min_area, "image_reached": calibration.image_reached} if calibration else {}
    return {**metrics, **flat, **image, "by_type": types}


def sweep(base: dict[str, Any], root: str | Path, category: str, variants: Sequence[str], profiles: Sequence[str],
          shots: Sequence[int], seeds: Sequence[int], out: Path, overrides: Sequence[str] = (),
          gates: Sequence[float] = ()) -> pd.DataFrame:
    index = index_dataset(root, [category])
    rows = []
    for shot in shots:
        for seed in seeds:
            for profile in profiles:
                cfg = parse_config(apply_overrides(base, {"profile": profile, "shot": shot, "seed": seed,
                                                          "methods": list(variants), "train.eval_every": 0}))
                plan.check(cfg, variants)
                table = k_shot_split(index, shot, seed, cfg.split.unit, cfg.split.calibration_normals)
                cache: dict = {}
                for variant in variants:
                    result = run_one(cfg, table, category, variant, cache, gates)
                    common = {"category": category, "profile": profile, "lr": cfg.train.lr, "shot": shot,
                              "seed": seed, "overrides": " ".join(overrides),
                              "calibration_normals": cfg.split.calibration_normals}
                    lines = [{"variant": variant, **common, **{k: v for k, v in result.items() if k != "other_gates"}}]
                    lines += [{"variant": f"{variant}@gate{gate}", **common, **metrics, "gate": float(gate)}
                              for gate, metrics in result.get("other_gates", {}).items()]
                    with out.open("a") as f:
                        f.writelines(json.dumps(row) + "\n" for row in lines)
                    rows += lines
    return pd.DataFrame(rows)


def _mean_std(values: pd.Series | None, signed: bool = False) -> str:
    if values is None or values.isna().all():  # a metric lines from before it existed lack
        return "-"
    text = f"{values.mean():+.4f}" if signed else f"{values.mean():.4f}"
    return f"{text} ({values.std(ddof=1):.4f})" if len(values) > 1 else text


def summary(results: pd.DataFrame, metrics: Sequence[str] = SUMMARY, base: str | None = None,
            overrides_in_setting: bool = False) -> str:
    """Mean (std) over seeds per (category, overrides, shot) and setting (variant, profile) of each of
    ``metrics``, then each setting's paired difference (per seed) from the group's ``base`` setting
    (e.g. ``"L0_B_NBR_CaP fast"``; the first setting of the group if None or not in it).
    ``overrides_in_setting``: a line's ``-S`` overrides name part of its setting instead of its group,
    so that runs with and without an override are paired (e.g. ``"L0_B fast train.augment=false"``)."""
    compared = [m for m in metrics if m != "train_seconds"]
    results = results.assign(overrides=results["overrides"].fillna("")) if "overrides" in results else \
        results.assign(overrides="")
    results = results.assign(setting=results["variant"] + " " + results["profile"])
    if overrides_in_setting:
        results = results.assign(setting=(results["setting"] + " " + results["overrides"]).str.strip(), overrides="")
    # lines from before calibration trained on every normal; runs that held some out are another group
    held = results["calibration_normals"].fillna(0) if "calibration_normals" in results else 0
    results = results.assign(calibration_normals=held)
    keys = ["category", "overrides", "calibration_normals", "shot"]
    twice = results[results.duplicated([*keys, "setting", "seed"])]
    if not twice.empty:
        row = twice.iloc[0]
        raise InputError(f"{row['category']} {row['variant']} {row['shot']}-shot, profile {row['profile']}, seed "
                         f"{row['seed']} was run twice; keep one of its lines")
    rows, diffs = [], []
    for (category, overrides, held, shot), runs in results.groupby(keys, sort=False):
        category = " ".join(filter(None, [category, overrides, f"{int(held)} normals held out" if held else ""]))
        settings = list(dict.fromkeys(runs["setting"]))
        if base in settings:
            settings = [base, *(x for x in settings if x != base)]
        reference = runs[runs["setting"] == settings[0]].set_index("seed")
        for setting in settings:
            group = runs[runs["setting"] == setting]
            rows.append([category, str(shot), setting, "/".join(f"{lr:g}" for lr in group["lr"].unique()), str(len(group)),
                         *(_mean_std(group.get(m)) for m in metrics)])
            if setting != settings[0]:
                paired = group.set_index("seed")
                seeds = paired.index.intersection(reference.index)
                diffs.append([category, str(shot), f"{setting} - {settings[0]}", str(len(seeds)),
                              *(_mean_std(paired.loc[seeds, m] - reference.loc[seeds, m] if m in paired else None,
                                          signed=True)
                                for m in compared)])
    out = markdown_table(["run", "shot", "variant, profile", "lr", "seeds", *metrics], rows)
    if diffs:
        out += "\n\n" + markdown_table(["run", "shot", "difference", "seeds", *compared], diffs)
    return out


def type_summary(results: pd.DataFrame) -> str:
    """Per defect type, for each (category, overrides, shot) and setting: mean (std) over the seeds of
    IoU, pixel AUROC and AUPRO, split by whether the seed's shots showed that type (runs with
    ``by_type``, written since issue 20)."""
    rows = []
    for line in results.itertuples():
        types = getattr(line, "by_type", None)
        if not isinstance(types, dict):  # a line from before per-type results
            continue
        overrides = line.overrides if isinstance(getattr(line, "overrides", None), str) else ""
        held = getattr(line, "calibration_normals", 0)
        held = int(held) if held == held else 0  # NaN on lines from before held-out normals
        run = " ".join(filter(None, [line.category, overrides, f"{held} normals held out" if held else ""]))
        for name, m in types.items():
            if name in ("seen", "unseen"):
                continue
            rows.append({"run": run, "shot": line.shot, "setting": f"{line.variant} {line.profile}", "type": name,
                         "shown": "seen" if m["seen"] else "unseen", "seed": line.seed, **m})
    if not rows:
        raise InputError("no per-type results (by_type) in these lines; they come from sweeps since issue 20")
    frame = pd.DataFrame(rows)
    rank = {setting: i for i, setting in enumerate(dict.fromkeys(frame["setting"]))}
    frame = frame.assign(rank=frame["setting"].map(rank)).sort_values(["run", "shot", "rank", "type", "shown"],
                                                                      kind="stable")
    out = []
    for (run, shot, _, setting, name, shown), group in frame.groupby(
            ["run", "shot", "rank", "setting", "type", "shown"], sort=False):
        out.append([run, str(shot), setting, name, shown, str(len(group)),
                    *(_mean_std(group[m]) for m in ("iou", "pixel_auroc", "aupro"))])
    return markdown_table(["run", "shot", "variant, profile", "defect type", "in the shots", "seeds", "iou",
                           "pixel_auroc", "aupro"], out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", help="a dataset in MVTec layout (a folder of category folders)")
    parser.add_argument("category", nargs="?")
    parser.add_argument("--summarize", type=Path, metavar="JSONL",
                        help="print the summary of runs already written (no training)")
    parser.add_argument("--variant", nargs="+",
                        help="variants of params.yaml or lab/variants.yaml (each trained on the same splits)")
    parser.add_argument("--profiles", nargs="+")
    parser.add_argument("--shots", nargs="+", type=int, default=[1])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("-S", dest="set", action="append", default=[], metavar="KEY=VALUE",
                        help="a params override as for dvc exp run, e.g. split.unit=category (YAML value)")
    parser.add_argument("--metrics", nargs="+", default=list(SUMMARY),
                        help="the columns of the summary, e.g. unseen_iou unseen_pixel_auroc unseen_aupro "
                             "(per defect type: seen_* / unseen_* for the types the shots showed or not)")
    parser.add_argument("--base", metavar="SETTING",
                        help='the setting the differences are from, e.g. "L0_B_NBR_CaP fast" (default: the first)')
    parser.add_argument("--pair-overrides", action="store_true",
                        help="with --summarize: a line's -S overrides are part of its setting, so runs with and "
                             "without them are paired (e.g. the base \"L0_B fast\" against \"L0_B fast train.augment=false\")")
    parser.add_argument("--by-type", action="store_true",
                        help="with --summarize: per defect type, split by whether the shots showed it")
    parser.add_argument("--gates", nargs="+", type=float, default=[],
                        help="late-fused variants: also score each of these fixed gates (variant@gate<g>; inf: the maximum)")
    parser.add_argument("--params", default="params.yaml", help="read with lab/variants.yaml added")
    parser.add_argument("--out", type=Path, default=Path("sweep.jsonl"), help="JSON lines, appended")
    args = parser.parse_args(argv)
    if args.summarize:
        results = pd.read_json(args.summarize, lines=True)
        print(type_summary(results) if args.by_type else
              summary(results, args.metrics, args.base, overrides_in_setting=args.pair_overrides))
        return
    if not (args.root and args.category and args.variant and args.profiles):
        parser.error("give ROOT CATEGORY --variant V --profiles P [P ...], or --summarize JSONL")
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"-S {item}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    base = apply_overrides(lab_params(args.params), overrides)
    results = sweep(base, args.root, args.category, args.variant, args.profiles, args.shots, args.seeds, args.out,
                    args.set, args.gates)
    print(summary(results, args.metrics, args.base))


if __name__ == "__main__":
    main()
