"""Speed benchmark: our training step and prediction against a naive reference, one process.

    python -m lab.bench                      # writes lab/findings/benchmark.json and .md
    python -m lab.bench --sizes 64 --batches 2 --levers-at 64 2 --predict-size 64 --out /tmp/bench  # smoke

The reference is Algorithm 1 written the obvious way: fp32, NCHW, images and masks decoded
from disk and resized every iteration, and separate encoder passes for the defect, normal
and pasted images. Ours is the code the pipeline trains with (:func:`fsds.engine.batches.sample_batch`
and :func:`fsds.engine.training.train_step` over images decoded once) with the ``train.precision`` and
``train.channels_last`` and ``train.fp32_depthwise`` of params.yaml as they resolve on this CPU
(:func:`fsds.engine.device.set_up_runtime`). Both train the same network (B+NBR+CaP on the network of
the last of ``methods``, the default run's, or of ``--variant``, with its encoder weights and the
encoder stages the pipeline leaves as loaded: :func:`fsds.pipeline.plan.make_recipe`) from the same
weights on the same draws. At one size and batch each lever is also added in turn, to show what each
pays. The reference is a thin variation of the real code: the same ``sample_batch`` and
``train_step``, fed by :class:`DiskImages` instead of the cache.

Reported: medians over the timed steps after warm-up (the setups take their steps in turn, so
drifts in the machine's speed weigh on all alike), the ratios, the share of the step spent
preparing data, the peak resident memory of each setup, and achieved GFLOP/s (FLOPs counted by
``torch.utils.flop_counter``) against the CPU's nominal peak.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import platform
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from fsds.config import Config, Variant, parse_config
from fsds.data.images import load_images, load_masks, normalize
from fsds.data.synthetic import generate_synthetic
from fsds.engine.batches import Batch, TrainData, sample_batch
from fsds.engine.device import Runtime, cpu_flags, cpu_name, set_up_runtime
from fsds.engine.prediction import inference_model, predict_probabilities
from fsds.engine.recipe import Recipe
from fsds.engine.training import train_step, trainable_model
from fsds.io import write_json, write_text
from fsds.method.networks import Segmenter, build_model
from fsds.method.registry import network
from fsds.method.weights import encoder_weights
from fsds.pipeline import plan
from lab.variants import lab_params

VARIANT = Variant(nbr="cosine", cap="weighted", seg_loss="bce")  # B+NBR+CaP: the step that needs all three encoder passes


# --- the machine --------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    mhz = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                mhz = float(line.split(":", 1)[1])
                break
    except OSError:
        pass
    flags = cpu_flags()
    model = cpu_name() if Path("/proc/cpuinfo").exists() else platform.processor() or "unknown"
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
    generate_synthetic(root, seed=seed, n_train_good=12, n_test_good=1, n_per_defect=2, size=source_size,
                       categories=["fabric"])
    cat = root / "fabric"
    defects = sorted(p for p in (cat / "test").rglob("*.png") if p.parent.name != "good")
    masks = [str(cat / "ground_truth" / d.parent.name / f"{d.stem}_mask.png") for d in defects]
    return Files([str(d) for d in defects], masks, sorted(str(p) for p in (cat / "train" / "good").glob("*.png")))


class DiskImages:
    """Images (or masks) decoded and resized from disk each time they are indexed: what the naive
    reference feeds :func:`fsds.engine.batches.sample_batch` in place of the uint8 cache."""

    def __init__(self, paths: list[str], size: int, masks: bool = False) -> None:
        self.paths, self.size, self.masks = paths, size, masks

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: np.ndarray) -> torch.Tensor:
        paths = [self.paths[i] for i in index]
        return load_masks(paths, self.size) if self.masks else load_images(paths, self.size, desc="decode")


# --- the training step under each setup ----------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Setup:
    """Which speed levers a training step uses; all off is the naive reference."""

    cache: bool = False  # images decoded and resized once (uint8 in memory), not every step
    bf16: bool = False  # bf16 autocast
    channels_last: bool = False  # NHWC memory layout
    fp32_depthwise: bool = False  # depthwise convolutions in fp32 under bf16 autocast (training)

    def describe(self) -> str:
        return " + ".join(name for name in LEVERS if getattr(self, name)) or "reference"

    def runtime(self) -> Runtime:
        """Where and how the network runs under these levers: always this CPU."""
        return Runtime(torch.device("cpu"), torch.bfloat16 if self.bf16 else None, self.channels_last,
                       self.fp32_depthwise)


LEVERS = ("cache", "bf16", "channels_last", "fp32_depthwise")  # in the order the lever table adds them


REFERENCE = Setup()


def pipeline_setup(cfg: Config, training: bool = True) -> Setup:
    """The levers the pipeline uses with these params on this machine's CPU, to train or to predict
    (the runtime :func:`fsds.engine.device.set_up_runtime` resolves, on the CPU whatever ``train.device``)."""
    tc = cfg.train
    runtime = set_up_runtime("cpu", tc.precision, tc.channels_last, tc.fp32_depthwise, tc.num_threads,
                             training=training)
    return Setup(cache=True, bf16=runtime.amp_dtype is not None, channels_last=runtime.channels_last,
                 fp32_depthwise=runtime.fp32_depthwise)


def lever_setups(ours: Setup) -> list[Setup]:
    """Reference, then ours' levers switched on one at a time."""
    setups = [REFERENCE]
    for k in range(1, len(LEVERS) + 1):
        setup = Setup(**{n: getattr(ours, n) and i < k for i, n in enumerate(LEVERS)})
        if setup != setups[-1]:
            setups.append(setup)
    return setups


def train_data(setup: Setup, files: Files, size: int) -> TrainData:
    """The training images as ``sample_batch`` reads them: decoded once into the uint8 cache
    (``cache``), or decoded from disk at every draw (the reference)."""
    if setup.cache:
        return TrainData(load_images(files.defects, size, desc="cache"), load_masks(files.masks, size),
                         files.defects, load_images(files.normals, size, desc="cache"))
    return TrainData(DiskImages(files.defects, size), DiskImages(files.masks, size, masks=True), files.defects,
                     DiskImages(files.normals, size))


def pipeline_network(cfg: Config, variant: str) -> tuple[str, dict[str, torch.Tensor] | None]:
    """The network of ``variant`` and its encoder weights as the train stage loads them (None: random)."""
    net = plan.model_of(cfg, variant)
    state, _ = encoder_weights(net.arch, net.encoder_weights)
    return net.arch, state


def bench_recipe(cfg: Config, arch: str, pretrained: bool, batch: int) -> Recipe:
    """B+NBR+CaP (:data:`VARIANT`) on ``arch`` as the pipeline would train it (``pretrained``: its
    encoder loaded, so the stages ``train.frozen_encoder_stages`` names stay as loaded), at ``batch``."""
    return dataclasses.replace(plan.make_recipe(cfg, VARIANT, arch, pretrained), batch_size=batch)


class Runner:
    """One setup's model, optimizer and data, stepping on the shared draws."""

    def __init__(self, recipe: Recipe, setup: Setup, base: Segmenter, files: Files, size: int) -> None:
        self.recipe, self.setup, self.runtime = recipe, setup, setup.runtime()
        # The same network trains the same parameters under every setup: the stages the pipeline
        # leaves as loaded (train.frozen_encoder_stages) stay so in the reference too.
        self.model, self.optimizer = trainable_model(recipe, self.runtime)
        self.model.load_state_dict(base.state_dict())
        self.data = train_data(setup, files, size)  # the cache is filled here, before the timed steps
        self.totals: list[float] = []
        self.datas: list[float] = []

    def draw(self, i: int) -> Batch:
        """Draw ``i`` of Algorithm 1 (the same for every setup: the rng is seeded with ``i``)."""
        return sample_batch(self.data, np.random.default_rng(i), self.recipe, self.model.input_stats,
                            self.runtime.device, self.runtime.channels_last)

    def train_step(self, batch: Batch) -> None:
        train_step(self.model, self.optimizer, batch, self.recipe, self.runtime.amp_dtype)

    def step(self, i: int, timed: bool = True) -> None:
        start = time.perf_counter()
        batch = self.draw(i)
        drawn = time.perf_counter()
        self.train_step(batch)
        if timed:
            self.totals.append(time.perf_counter() - start)
            self.datas.append(drawn - start)

    def result(self, info: dict[str, Any]) -> dict[str, Any]:
        batch = self.draw(0)
        flops = count_flops(lambda: self.train_step(batch))
        step_s = float(np.median(self.totals))
        return {
            "setup": self.setup.describe(), "it_per_s": 1 / step_s, "step_s": step_s,
            "step_s_all": self.totals, "data_share": float(np.sum(self.datas) / np.sum(self.totals)),
            "gflop_per_step": flops / 1e9, "gflop_per_s": flops / 1e9 / step_s,
            "peak_gflop_per_s": peak_gflops(info, self.setup.bf16),
        }


def peak_step_memory(recipe: Recipe, setup: Setup, base: Segmenter, files: Files, size: int) -> float:
    """Peak resident memory (MiB) of the process while one setup, alone, is built and takes a step."""
    gc.collect()
    with peak_rss() as mem:
        runner = Runner(recipe, setup, base, files, size)
        runner.step(0, timed=False)
        del runner
    gc.collect()
    return mem["mib"]


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                         _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """A convolution's backward: as many FLOPs as its forward for each gradient it computes (input,
    weight). torch's own formula ignores ``groups`` and so counts a depthwise convolution's backward
    as a dense one's (145x too many for EfficientNet-Lite's 144-channel 5x5)."""
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops(step: Callable[[], Any]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        step()
    return float(counter.get_total_flops())


def bench_training(recipe: Recipe, encoder_state: dict[str, torch.Tensor] | None, files: Files, size: int,
                   ours: Setup, steps: int, warmup: int, info: dict[str, Any], levers: bool = False) -> dict[str, Any]:
    """Reference against ours at one size and ``recipe.batch_size``; with ``levers``, also each lever
    added in turn. Every setup starts from one network: ``recipe.arch`` with ``encoder_state`` loaded."""
    torch.manual_seed(0)
    base = build_model(recipe.arch, encoder_state)
    setups = lever_setups(ours) if levers else [REFERENCE, ours]
    # Interleaved: step i of every setup runs before step i + 1 of any, so a machine that slows
    # down or speeds up during the run (other tenants, turbo) weighs on all setups alike.
    runners = [Runner(recipe, s, base, files, size) for s in setups]
    for i in range(warmup + steps):
        for runner in runners:
            runner.step(i, timed=i >= warmup)
    rows = [runner.result(info) for runner in runners]
    del runners
    for row, setup in zip(rows, setups):
        row["peak_rss_mib"] = peak_step_memory(recipe, setup, base, files, size)
    mine = rows[setups.index(ours)]
    return {"size": size, "batch": recipe.batch_size, "reference": rows[0], "ours": mine, "steps": rows,
            "speedup": rows[0]["step_s"] / mine["step_s"]}


def bench_prediction(arch: str, files: Files, size: int, n: int, ours: Setup, batch_size: int, repeats: int,
                     info: dict[str, Any]) -> dict[str, Any]:
    """Images per second: one image at a time, decoded from disk, fp32 NCHW (reference) against the
    pipeline's prediction (decode once, batch norms folded, ours' batch size, precision and layout)."""
    torch.manual_seed(0)
    model = build_model(arch).eval()
    paths = ((files.defects + files.normals) * n)[:n]
    with torch.no_grad():
        forward_flops = count_flops(lambda: model(normalize(load_images(paths[:1], size, desc="decode"), model.input_stats)))

    def reference() -> None:
        with torch.no_grad():
            for path in paths:
                torch.sigmoid(model(normalize(load_images([path], size, desc="decode"), model.input_stats)))

    fast = build_model(arch)
    fast.load_state_dict(model.state_dict())
    fast = inference_model(fast, ours.channels_last)  # what the predict stage does after loading

    def pipeline() -> None:
        images = load_images(paths, size, desc="predict load")
        predict_probabilities(fast, images, ours.runtime(), batch_size=batch_size, progress=False)

    out = {"size": size, "images": len(paths), "repeats": repeats, "batch": batch_size}
    runs = (("reference", reference, False), ("ours", pipeline, ours.bf16))
    times: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    memory: dict[str, float] = {}
    for rep in range(repeats + 1):  # interleaved; the first round (warm-up) also measures peak memory
        for name, run, _ in runs:
            with peak_rss() as mem:
                start = time.perf_counter()
                run()
                seconds = time.perf_counter() - start
            if rep:
                times[name].append(seconds)
            else:
                memory[name] = mem["mib"]
    for name, _, bf16 in runs:
        seconds = float(np.median(times[name]))
        out[name] = {"setup": REFERENCE.describe() if name == "reference" else ours.describe(),
                     "img_per_s": len(paths) / seconds, "peak_rss_mib": memory[name],
                     "gflop_per_s": forward_flops * len(paths) / 1e9 / seconds, "peak_gflop_per_s": peak_gflops(info, bf16)}
    out["speedup"] = out["ours"]["img_per_s"] / out["reference"]["img_per_s"]
    return out


def _gflops(row: dict[str, Any]) -> str:
    peak = row["peak_gflop_per_s"]
    return f"{row['gflop_per_s']:.0f}" + (f" ({row['gflop_per_s'] / peak:.0%} of {peak:.0f})" if peak else "")


def markdown(result: dict[str, Any]) -> str:
    info = result["machine"]
    lines = [
        "# Benchmark: training step and prediction, ours against a naive reference",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores at {info['mhz']} MHz, torch {info['torch']} "
        f"({info['threads']} threads, {info['capability']}, AMX bf16 {'yes' if info['amx_bf16'] else 'no'}, "
        f"AVX-512 bf16 {'yes' if info['avx512_bf16'] else 'no'}). Command: `{result['command']}`; "
        f"{result['seconds']:.0f} s in all. Medians over {result['steps']} timed steps after {result['warmup']} warm-up; "
        "the setups take their steps in turn (step i of each before step i + 1 of any), so drifts in the "
        "machine's speed weigh on all alike. Peak RSS: one setup alone building its data and taking a step.",
        "",
        "Reference: fp32, NCHW, images decoded from disk every step, one encoder pass per kind of image. "
        f"Ours: what the pipeline does with `{result['params']}` on this CPU (training: {result['ours']}; "
        f"prediction: {result.get('ours_predict', result['ours'])}, with batch norms folded). "
        f"Both train B+NBR+CaP on {result.get('network', 'AlbuNet-34')} from the same weights on the same draws. "
        "GFLOP/s counts the network's FLOPs with `torch.utils.flop_counter`; the peak is cores x clock x "
        "FLOPs per cycle (fp32 AVX-512: 64, AVX2: 32; bf16 AMX: 1024, AVX-512 bf16: 128).",
        "",
        "## Training step",
        "",
        "| size | batch | reference it/s | ours it/s | speedup | data share ref / ours | peak RSS ref / ours (MiB) "
        "| GFLOP/s ref | GFLOP/s ours |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["training"]:
        a, b = r["reference"], r["ours"]
        lines.append(
            f"| {r['size']} | {r['batch']} | {a['it_per_s']:.3f} | {b['it_per_s']:.3f} | **{r['speedup']:.2f}x** | "
            f"{a['data_share']:.1%} / {b['data_share']:.1%} | {a['peak_rss_mib']:.0f} / {b['peak_rss_mib']:.0f} | "
            f"{_gflops(a)} | {_gflops(b)} |"
        )
    levers = [r for r in result["training"] if len(r["steps"]) > 2]
    for r in levers:
        lines += ["", f"## Each lever added in turn ({r['size']} px, batch {r['batch']})", "",
                  "| setup | it/s | x reference | x previous row | data share | GFLOP/s |", "|---|---|---|---|---|---|"]
        prev = None
        for row in r["steps"]:
            gain = f"{row['it_per_s'] / prev:.2f}x" if prev else ""
            name = row["setup"] + (" (**ours**)" if row["setup"] == r["ours"]["setup"] else "")
            lines.append(f"| {name} | {row['it_per_s']:.3f} | {row['it_per_s'] / r['reference']['it_per_s']:.2f}x "
                         f"| {gain} | {row['data_share']:.1%} | {_gflops(row)} |")
            prev = row["it_per_s"]
    lines += ["", "## Prediction", "",
              "| size | images | ours' batch | reference img/s | ours img/s | speedup | peak RSS ref / ours (MiB) "
              "| GFLOP/s ref | GFLOP/s ours |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in result["prediction"]:
        a, b = r["reference"], r["ours"]
        lines.append(f"| {r['size']} | {r['images']} | {r['batch']} | {a['img_per_s']:.2f} | {b['img_per_s']:.2f} | "
                     f"**{r['speedup']:.2f}x** | {a['peak_rss_mib']:.0f} / {b['peak_rss_mib']:.0f} | {_gflops(a)} | {_gflops(b)} |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = parse_config(lab_params(args.params))
    variant = args.variant or cfg.methods[-1]
    plan.check(cfg, [variant])
    ours, ours_predict = pipeline_setup(cfg), pipeline_setup(cfg, training=False)  # sets train.num_threads
    arch, encoder_state = pipeline_network(cfg, variant)
    pretrained = encoder_state is not None
    info = machine()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        files = make_files(Path(tmp), args.source_size)
        training = [
            bench_training(bench_recipe(cfg, arch, pretrained, m), encoder_state, files, size, ours, args.steps,
                           args.warmup, info, levers=(size, m) == tuple(args.levers_at))
            for size in args.sizes for m in args.batches
        ]
        prediction = [bench_prediction(arch, files, args.predict_size, args.predict_images, ours_predict,
                                       plan.predict_batch_size(cfg, args.predict_size), args.repeats, info)]
    return {"machine": info, "command": "python -m lab.bench " + " ".join(sys.argv[1:]), "params": args.params,
            "network": f"{arch} ({network(arch).label}; variant {variant}'s network, "
                       f"{plan.frozen_stages(cfg, pretrained)} encoder stages left as loaded: "
                       "train.frozen_encoder_stages)",
            "ours": ours.describe(), "ours_predict": ours_predict.describe(), "steps": args.steps, "warmup": args.warmup,
            "seconds": time.perf_counter() - start, "training": training, "prediction": prediction}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--batches", nargs="+", type=int, default=[2, 4], help="the paper's 1-shot / 5-shot batches")
    parser.add_argument("--levers-at", nargs=2, type=int, default=[512, 2], metavar=("SIZE", "BATCH"),
                        help="where to time each lever added in turn")
    parser.add_argument("--predict-size", type=int, default=512)
    parser.add_argument("--predict-images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="prediction passes over the images (median)")
    parser.add_argument("--steps", type=int, default=6, help="timed training steps per setup (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--source-size", type=int, default=512, help="size of the images on disk")
    parser.add_argument("--params", default="params.yaml",
                        help="whose train.precision/channels_last/fp32_depthwise are ours (with lab/variants.yaml)")
    parser.add_argument("--variant", default="", help="whose network to time (default: the last of methods)")
    parser.add_argument("--out", default="lab/findings/benchmark", help="writes <out>.json and <out>.md")
    args = parser.parse_args(argv)
    for name in ("sizes", "batches"):
        if any(v < 1 for v in getattr(args, name)):
            parser.error(f"--{name} must be positive")
    if args.steps < 1 or args.warmup < 0 or args.repeats < 1:
        parser.error("--steps and --repeats must be >= 1, --warmup >= 0")
    result = run(args)
    write_json(f"{args.out}.json", result)
    write_text(f"{args.out}.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
