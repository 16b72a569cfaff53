"""Speed benchmark: our training step and prediction against a naive reference, one process.

    python -m fsds.bench                      # writes reports/benchmark.json and .md
    python -m fsds.bench --sizes 64 --steps 3 --out /tmp/bench   # a smoke run

The reference is Algorithm 1 written the obvious way: fp32, NCHW, images and masks decoded
from disk and resized every iteration, and separate encoder passes for the defect, normal
and pasted images. Ours is the code the pipeline trains with (:func:`fsds.training.sample_batch`
and :func:`fsds.training.train_step` over images decoded once), with ``train.precision: auto``
and channels-last. Both train the same network (B+NBR+CaP, AlbuNet-34) from the same weights
on the same synthetic images, with CaP on every other step. Reported: medians over the timed
steps (after warm-up), the ratios, the share of our step spent preparing data, peak resident
memory of each phase, and achieved GFLOP/s (FLOPs counted by ``torch.utils.flop_counter``)
against the CPU's nominal peak.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image

from fsds.augmentation import crop_and_paste
from fsds.config import ModelConfig, Variant
from fsds.images import load_images, load_masks, normalize
from fsds.io import read_mask, read_rgb, write_json, write_text
from fsds.losses import cap_lambda, nbr_loss, weighted_bce
from fsds.model import build_model
from fsds.prediction import predict_probabilities
from fsds.training import Batch, TrainData, resolve_precision, sample_batch, train_step

VARIANT = Variant(nbr="cosine", cap="weighted")


# --- the machine --------------------------------------------------------------------------

def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    mhz = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("cpu MHz") and mhz is None:
                mhz = float(line.split(":", 1)[1])
    except OSError:
        pass
    flags = cpu_flags()
    return {
        "cpu": model, "cores": os.cpu_count(), "mhz": mhz, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "capability": torch.backends.cpu.get_cpu_capability(),
        "amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags,
    }


def peak_gflops(info: dict[str, Any], bf16: bool) -> float | None:
    """Nominal peak: cores x clock x FLOPs per cycle (AVX-512 fp32: 2 FMA x 16 lanes x 2;
    AMX bf16: 1024; AVX-512 bf16 dot products: 128)."""
    if not info["mhz"]:
        return None
    if bf16:
        per_cycle = 1024 if info["amx_bf16"] else 128 if info["avx512_bf16"] else 64
    else:
        per_cycle = 64 if "AVX512" in info["capability"] else 32
    return info["cores"] * info["mhz"] / 1000 * per_cycle


@contextmanager
def peak_rss() -> Iterator[dict[str, float]]:
    """Peak resident memory (MiB) of this process while the block runs, sampled every 5 ms."""
    out = {"mib": 0.0}
    stop = threading.Event()
    page = os.sysconf("SC_PAGE_SIZE")

    def sample() -> None:
        while not stop.is_set():
            rss = int(Path("/proc/self/statm").read_text().split()[1]) * page / 2**20
            out["mib"] = max(out["mib"], rss)
            stop.wait(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()


# --- the data -----------------------------------------------------------------------------

@dataclasses.dataclass
class Files:
    defects: list[str]
    masks: list[str]
    normals: list[str]


def make_files(root: Path, source_size: int, seed: int = 0) -> Files:
    """A small synthetic category on disk (the images the reference decodes every step)."""
    from fsds.synthetic import generate_synthetic

    generate_synthetic(root, seed=seed, n_train_good=12, n_test_good=1, n_per_defect=2, size=source_size,
                       categories=["fabric"])
    cat = root / "fabric"
    defects = sorted(p for p in (cat / "test").rglob("*.png") if p.parent.name != "good")
    masks = [str(cat / "ground_truth" / d.parent.name / f"{d.stem}_mask.png") for d in defects]
    return Files([str(d) for d in defects], masks, sorted(str(p) for p in (cat / "train" / "good").glob("*.png")))


def _decode(path: str, size: int) -> torch.Tensor:
    img = Image.fromarray(read_rgb(path)).resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def _decode_mask(path: str, size: int) -> torch.Tensor:
    img = Image.fromarray((read_mask(path) * 255).astype(np.uint8)).resize((size, size), Image.NEAREST)
    return torch.from_numpy(np.asarray(img) > 127)[None].float()


# --- the two training steps ---------------------------------------------------------------

def reference_step(model, optimizer, files: Files, idx_d, idx_n, use_cap: bool, size: int) -> float:
    """Algorithm 1 the obvious way; returns the seconds spent decoding."""
    start = time.perf_counter()
    x_d = torch.stack([normalize(_decode(files.defects[i], size)[None])[0] for i in idx_d])
    y = torch.stack([_decode_mask(files.masks[i], size) for i in idx_d])
    x_n = torch.stack([normalize(_decode(files.normals[i], size)[None])[0] for i in idx_n])
    data_seconds = time.perf_counter() - start
    f_d = model.encode(x_d)
    f_n = model.encode(x_n)
    lam = None
    if use_cap:
        f_p = model.encode(crop_and_paste(x_d, x_n, y))
        logits = model.decode(f_p)
        lam = cap_lambda(f_d[-1], f_p[-1])
    else:
        logits = model.decode(f_d)
    loss = weighted_bce(logits, y, lam) + nbr_loss(f_d[-1], f_n[-1], y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return data_seconds


def _timed(step: Callable[[int], float], steps: int, warmup: int) -> tuple[list[float], list[float]]:
    totals, datas = [], []
    for i in range(warmup + steps):
        start = time.perf_counter()
        data = step(i)
        if i >= warmup:
            totals.append(time.perf_counter() - start)
            datas.append(data)
    return totals, datas


def count_flops(step: Callable[[], Any]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def bench_training(files: Files, size: int, m: int, steps: int, warmup: int, info: dict[str, Any]) -> dict[str, Any]:
    torch.manual_seed(0)
    base = build_model(ModelConfig())
    rng = np.random.default_rng(0)
    draws = [(rng.integers(0, len(files.defects), m), rng.integers(0, len(files.normals), m), i % 2 == 0)
             for i in range(warmup + steps + 1)]

    ref = build_model(ModelConfig())
    ref.load_state_dict(base.state_dict())
    ref.train()
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-4)
    with peak_rss() as ref_mem:
        ref_t, ref_data = _timed(lambda i: reference_step(ref, ref_opt, files, *draws[i], size), steps, warmup)
    ref_flops = count_flops(lambda: reference_step(ref, ref_opt, files, *draws[-1], size))

    ours = build_model(ModelConfig())
    ours.load_state_dict(base.state_dict())
    ours = ours.to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(ours.parameters(), lr=1e-4)
    amp = resolve_precision("auto", torch.device("cpu"))
    cpu = torch.device("cpu")
    with peak_rss() as our_mem:
        data = TrainData(load_images(files.defects, size, desc="bench"), load_masks(files.masks, size).to(torch.uint8),
                         files.defects, load_images(files.normals, size, desc="bench"))
        sampler = np.random.default_rng(0)

        def our_step(i: int) -> float:
            start = time.perf_counter()
            batch = sample_batch(data, sampler, m, VARIANT, 0.0, True, cpu)
            batch = dataclasses.replace(batch, defect=batch.defect.contiguous(memory_format=torch.channels_last),
                                        normal=batch.normal.contiguous(memory_format=torch.channels_last),
                                        use_cap=draws[i][2])
            data_seconds = time.perf_counter() - start
            train_step(ours, opt, batch, VARIANT, 1.0, amp, i)
            return data_seconds

        our_t, our_data = _timed(our_step, steps, warmup)
    our_flops = count_flops(lambda: our_step(len(draws) - 1))
    ref_s, our_s = float(np.median(ref_t)), float(np.median(our_t))
    return {
        "size": size, "batch": m, "steps": steps,
        "reference": {"it_per_s": 1 / ref_s, "step_s": ref_s, "data_share": float(np.sum(ref_data) / np.sum(ref_t)),
                      "peak_rss_mib": ref_mem["mib"], "gflop_per_step": ref_flops / 1e9,
                      "gflop_per_s": ref_flops / 1e9 / ref_s, "peak_gflop_per_s": peak_gflops(info, False)},
        "ours": {"it_per_s": 1 / our_s, "step_s": our_s, "data_share": float(np.sum(our_data) / np.sum(our_t)),
                 "peak_rss_mib": our_mem["mib"], "gflop_per_step": our_flops / 1e9,
                 "gflop_per_s": our_flops / 1e9 / our_s, "precision": "bf16" if amp else "fp32",
                 "peak_gflop_per_s": peak_gflops(info, amp is not None)},
        "speedup": ref_s / our_s,
    }


def bench_prediction(files: Files, size: int, n: int, info: dict[str, Any]) -> dict[str, Any]:
    torch.manual_seed(0)
    model = build_model(ModelConfig()).eval()
    paths = (files.defects + files.normals)[:n]
    with peak_rss() as ref_mem, torch.no_grad():
        start = time.perf_counter()
        for path in paths:
            torch.sigmoid(model(normalize(_decode(path, size)[None])))
        ref_s = time.perf_counter() - start
    fast = model.to(memory_format=torch.channels_last)
    amp = resolve_precision("auto", torch.device("cpu"))
    with peak_rss() as our_mem:
        start = time.perf_counter()
        images = load_images(paths, size, desc="bench")
        predict_probabilities(fast, images, batch_size=8, amp_dtype=amp, channels_last=True)
        our_s = time.perf_counter() - start
    return {
        "size": size, "images": len(paths),
        "reference": {"img_per_s": len(paths) / ref_s, "peak_rss_mib": ref_mem["mib"]},
        "ours": {"img_per_s": len(paths) / our_s, "peak_rss_mib": our_mem["mib"], "precision": "bf16" if amp else "fp32"},
        "speedup": ref_s / our_s,
    }


def markdown(result: dict[str, Any]) -> str:
    info = result["machine"]
    lines = [
        "# Benchmark: training step and prediction, ours against a naive reference",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores at {info['mhz']} MHz, torch {info['torch']} "
        f"({info['threads']} threads, {info['capability']}, AMX bf16 {'yes' if info['amx_bf16'] else 'no'}). "
        f"Command: `{result['command']}`. Medians over {result['steps']} timed steps after {result['warmup']} warm-up.",
        "",
        "## Training (B+NBR+CaP, AlbuNet-34)",
        "",
        "| size | batch | ref it/s | ours it/s | speedup | data share ref / ours | peak RSS ref / ours (MiB) | GFLOP/s ref / ours (peak) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["training"]:
        a, b = r["reference"], r["ours"]
        lines.append(
            f"| {r['size']} | {r['batch']} | {a['it_per_s']:.3f} | {b['it_per_s']:.3f} | **{r['speedup']:.2f}x** | "
            f"{a['data_share']:.1%} / {b['data_share']:.1%} | {a['peak_rss_mib']:.0f} / {b['peak_rss_mib']:.0f} | "
            f"{a['gflop_per_s']:.0f} ({a['peak_gflop_per_s'] or 0:.0f}) / {b['gflop_per_s']:.0f} ({b['peak_gflop_per_s'] or 0:.0f}) |"
        )
    lines += ["", "## Prediction", "", "| size | images | ref img/s | ours img/s | speedup | peak RSS ref / ours (MiB) |",
              "|---|---|---|---|---|---|"]
    for r in result["prediction"]:
        a, b = r["reference"], r["ours"]
        lines.append(f"| {r['size']} | {r['images']} | {a['img_per_s']:.2f} | {b['img_per_s']:.2f} | "
                     f"**{r['speedup']:.2f}x** | {a['peak_rss_mib']:.0f} / {b['peak_rss_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="*", type=int, default=[256, 512])
    parser.add_argument("--batches", nargs="*", type=int, default=[2, 4], help="the paper's 1-shot / 5-shot batches")
    parser.add_argument("--predict-size", type=int, default=512)
    parser.add_argument("--predict-images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--source-size", type=int, default=512, help="size of the images on disk")
    parser.add_argument("--out", default="reports/benchmark", help="writes <out>.json and <out>.md")
    args = parser.parse_args()

    info = machine()
    with tempfile.TemporaryDirectory() as tmp:
        files = make_files(Path(tmp), args.source_size)
        training = [bench_training(files, s, m, args.steps, args.warmup, info) for s in args.sizes for m in args.batches]
        prediction = [bench_prediction(files, args.predict_size, args.predict_images, info)]
    result = {"machine": info, "command": "python -m fsds.bench " + " ".join(os.sys.argv[1:]), "steps": args.steps,
              "warmup": args.warmup, "training": training, "prediction": prediction}
    write_json(f"{args.out}.json", result)
    write_text(f"{args.out}.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
