"""Prediction on image files of any size: masks, overlays and a CSV of scores and decisions."""

from __future__ import annotations

import csv
import io
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from fsds.data.images import resize_image, resize_probabilities
from fsds.deploy.model import DeployedModel
from fsds.engine.device import Runtime
from fsds.engine.prediction import CPU, Tiling, predict_probabilities
from fsds.errors import InputError, MissingFileError
from fsds.evaluation.metrics import defect_area
from fsds.io import atomic_path, read_rgb, write_text

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
BATCH_SIZE = 2  # images per network pass: at 512 px on a 2-core CPU the fastest end to end (lab/findings/speed.md)


def image_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files named, or found (sorted, not recursively) in the folders named."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise MissingFileError(f"{item} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise MissingFileError(f"{item}: no such image or folder")
    stems = [p.stem for p in files]
    clash = sorted({s for s in stems if stems.count(s) > 1})
    if clash:
        raise InputError(f"several inputs are named {clash[0]!r} (apart from the suffix); their outputs "
                         "would overwrite each other: predict them into separate --out folders")
    return files


@dataclass
class Prediction:
    image: str
    height: int
    width: int
    score: float  # predicted defect area as a fraction of the image (the paper's anomaly score)
    max_probability: float
    defective: bool
    error: str = ""  # why the image could not be inspected ("" = it was)

    @property
    def decision(self) -> str:
        return "error" if self.error else "defect" if self.defective else "good"


def unreadable(path: Path, reason: str) -> Prediction:
    """The row of an image that could not be read: no score, decision ``error``, the reason."""
    return Prediction(str(path), 0, 0, float("nan"), float("nan"), False, reason)


def decision_rule(model: DeployedModel, threshold: float | None = None,
                  min_area: float | None = None) -> tuple[float, float]:
    """The pixel threshold and the image's minimum defect area to decide with: those given, else the
    model's own (a model saved before ``min_area`` existed decides on any pixel: 0)."""
    threshold = model.threshold if threshold is None else float(threshold)
    min_area = getattr(model, "min_area", 0.0) if min_area is None else float(min_area)
    if not 0.0 < threshold < 1.0:
        raise InputError(f"--threshold must lie strictly between 0 and 1, got {threshold}")
    if not 0.0 <= min_area < 1.0:
        raise InputError(f"--min-area is a fraction of the image in [0, 1), got {min_area}")
    return threshold, min_area


def judge(image: str, shape: tuple[int, int], prob: np.ndarray, threshold: float,
          min_area: float) -> tuple[np.ndarray, Prediction]:
    """The network's map of one image brought back to the image's ``shape``, and its row: the defect
    area (pixels at or above ``threshold``), the largest probability, defective when the area
    exceeds ``min_area``."""
    full = resize_probabilities(prob, *shape)
    area = defect_area(full, threshold)
    return full, Prediction(image, shape[0], shape[1], area, float(full.max()), area > min_area)


def mask_image(mask: np.ndarray) -> np.ndarray:
    """A boolean mask as the 8-bit image ``fsds predict`` writes: white = defect."""
    return (mask * 255).astype(np.uint8)


def overlay(rgb: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image with the predicted defect tinted red and its other pixels as they are."""
    out = rgb.astype(np.float32)
    red = np.array([255.0, 0.0, 0.0], dtype=np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * red
    return out.round().astype(np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    """Lossless PNG at zlib level 1: several times faster to encode than PIL's default level 6, for
    slightly larger files (lab/findings/speed.md)."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _write_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(png_bytes(array))


@torch.no_grad()
def predict_files(model: DeployedModel, files: Sequence[Path], out: str | Path, runtime: Runtime = CPU,
                  threshold: float | None = None, min_area: float | None = None, batch_size: int = BATCH_SIZE,
                  tiling: Tiling = Tiling(), strict: bool = False) -> list[Prediction]:
    """Masks (``masks/<stem>.png``, white = defect), overlays (``overlays/<stem>.png``) at each image's
    own size, and ``predictions.csv`` with each image's score and decision: defective when the
    predicted defect area exceeds ``min_area``, by default the model's own (calibrated on its held-out
    normals to flag about ``metrics.image_fpr`` of good parts; 0, any pixel, for a model without). A
    pixel is a defect at or above ``threshold``, by default the model's own (its calibrated threshold,
    else ``metrics.threshold`` of its training).

    Images are sized as the model was trained (squashed, or at its working scale, any aspect
    ratio) and predicted as the predict stage predicts (:func:`fsds.engine.prediction.predict_probabilities`
    on the ``runtime``; in tiles with a ``tiling``). An image that cannot be read is skipped and listed
    with its reason (decision ``error``) and the others are inspected, unless ``strict``: then it stops
    the run (:class:`InputError`) before predictions.csv is written."""
    threshold, min_area = decision_rule(model, threshold, min_area)
    out = Path(out)
    geometry = model.geometry

    def read(chunk: Sequence[Path]) -> tuple[list[np.ndarray | str], list[np.ndarray]]:
        """Each image of ``chunk`` decoded (or why it cannot be), and the readable ones resized."""
        rgbs: list[np.ndarray | str] = []
        for path in chunk:
            try:
                rgbs.append(read_rgb(path))
            except InputError as exc:
                if strict:
                    raise
                rgbs.append(str(exc))
        return rgbs, [resize_image(rgb, geometry.shape(*rgb.shape[:2])) for rgb in rgbs if not isinstance(rgb, str)]

    def write(path: Path, rgb: np.ndarray, prob: np.ndarray) -> Prediction:
        full, result = judge(str(path), rgb.shape[:2], prob, threshold, min_area)
        mask = full >= threshold
        _write_png(out / "masks" / f"{path.stem}.png", mask_image(mask))
        _write_png(out / "overlays" / f"{path.stem}.png", overlay(rgb, mask))
        bar.update(1)
        return result

    # Decoding the next batch and writing the last one's PNGs run in two threads while the network
    # runs (PIL and zlib leave the GIL; lab/findings/speed.md). Results come back in input order; an
    # unreadable image becomes its row, any other failure in either thread stops the run.
    chunks = [files[start : start + batch_size] for start in range(0, len(files), batch_size)]
    bar = tqdm(total=len(files), desc="predict", unit="img")
    with ThreadPoolExecutor(1, thread_name_prefix="fsds-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="fsds-write") as writer:
        pending: list[Future[Prediction] | Prediction] = []
        next_read = reader.submit(read, chunks[0]) if chunks else None
        for i, chunk in enumerate(chunks):
            rgbs, images = next_read.result()
            if i + 1 < len(chunks):
                next_read = reader.submit(read, chunks[i + 1])
            probs = iter(predict_probabilities(model.net, images, runtime, batch_size=batch_size, tiling=tiling,
                                               progress=False) if images else [])
            for path, rgb in zip(chunk, rgbs):
                if isinstance(rgb, str):
                    tqdm.write(f"skipped {path}: {rgb}")
                    pending.append(unreadable(path, rgb))
                    bar.update(1)
                else:
                    pending.append(writer.submit(write, path, rgb, next(probs)))
        results = [p.result() if isinstance(p, Future) else p for p in pending]
    bar.close()
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["image", "height", "width", "score", "max_probability", "decision", "error"])
    for r in results:
        if r.error:
            writer.writerow([r.image, "", "", "", "", r.decision, r.error])
        else:
            writer.writerow([r.image, r.height, r.width, f"{r.score:.6f}", f"{r.max_probability:.4f}", r.decision, ""])
    write_text(out / "predictions.csv", buf.getvalue())
    return results
