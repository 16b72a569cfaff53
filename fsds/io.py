"""File input and output shared by the stages: atomic writes, image and mask decoding, probability maps.

Every file a stage produces is written to a temporary sibling and renamed into place, so
a stage that dies halfway leaves either the old file or nothing, never a torn one.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from fsds.errors import InputError


def _sweep(path: Path) -> None:
    """Remove what a writer of ``path`` that was killed left beside it (its temporary copies)."""
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    shutil.rmtree(path.with_name(f".{path.name}.old"), ignore_errors=True)


def _prepare(path: str | Path) -> Path:
    """``path``'s folder made, and what an earlier writer killed there left removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep(path)
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds.
    Temporary copies left by an earlier writer that was killed are removed first."""
    path = _prepare(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder; it replaces ``path`` only if the block succeeds.
    Temporary folders left by an earlier writer that was killed are removed first."""
    path = _prepare(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_torch_file(path: str | Path, what: str, fix: str, device: Any = "cpu") -> Any:
    """``torch.load`` of one of fsds's own files (``what``: "checkpoint", "memory"), trusted (full
    pickles); a truncated, damaged or foreign file is an :class:`InputError` of one line naming the file,
    what is wrong and ``fix``, not torch's traceback."""
    import pickle
    import zipfile

    import torch

    try:
        return torch.load(path, map_location=device, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{what} {path} cannot be read: it is truncated, damaged or not a PyTorch file "
                         f"({reason}); {fix}") from exc


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image as uint8 RGB ``(H, W, 3)``; grayscale is expanded to three channels."""
    return _decoded_rgb(path, str(path))


def decode_rgb(data: bytes, name: str) -> np.ndarray:
    """An image file's bytes (PNG, JPEG, BMP, TIFF) decoded as :func:`read_rgb` decodes the file;
    ``name`` says which image in an error."""
    return _decoded_rgb(io.BytesIO(data), name)


def _decoded_rgb(source: str | Path | io.BytesIO, name: str) -> np.ndarray:
    try:
        with Image.open(source) as img:
            img.load()
            return np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"cannot read image {name}: {exc}; replace or remove the file") from exc


MID_GREY_LIMIT = 0.05  # anti-aliased edges are far fewer; a photograph filed as a mask is far more


def read_mask(path: str | Path) -> np.ndarray:
    """Decode a mask as a boolean ``(H, W)`` array (white = defect; anti-aliased edges are
    binarised at 128). A colour image, or one with many mid-grey pixels, is refused: it is
    most likely an image filed as a mask."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("1", "L", "P", "I", "I;16", "LA", "RGB", "RGBA"):
                raise InputError(f"mask {path} has unsupported mode {img.mode}; save it as 8-bit grayscale")
            if img.mode in ("P", "RGB", "RGBA"):
                rgb = np.asarray(img.convert("RGB"))
                if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()):
                    raise InputError(f"mask {path} is a colour image; masks must be grayscale or binary, "
                                     "white (>127) for defect pixels on black")
            grey = np.asarray(img.convert("L"))
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"cannot read mask {path}: {exc}; replace or remove the file") from exc
    mid = np.count_nonzero((grey > 32) & (grey < 223)) / max(grey.size, 1)
    if mid > MID_GREY_LIMIT:
        raise InputError(f"mask {path} is not binary: {mid:.0%} of its pixels are mid-grey; is it an image rather "
                         "than a mask? Masks are white (>127) for defect pixels on black")
    return grey > 127


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of an image, checking that the file is whole without decoding its pixels
    (PNG: every chunk's checksum; JPEG: the end-of-image marker)."""
    try:
        with Image.open(path) as img:
            size = img.height, img.width
            fmt = img.format
            img.verify()
        if fmt == "JPEG":
            with open(path, "rb") as fh:
                fh.seek(max(0, Path(path).stat().st_size - 64))
                if b"\xff\xd9" not in fh.read():
                    raise OSError("truncated JPEG: no end-of-image marker")
        return size
    except (OSError, SyntaxError, UnidentifiedImageError) as exc:  # PIL's verify raises SyntaxError too
        raise InputError(f"cannot read image {path}: {exc}; replace or remove the file") from exc


def save_probabilities(path: str | Path, probs: np.ndarray | list[np.ndarray], images: list[str]) -> None:
    """The predict stage's maps: uint8 probabilities, ``(N, S, S)`` or N maps of their own sizes
    (kept as one flat array and their shapes), with the image path of each."""
    arrays: dict[str, np.ndarray] = {"images": np.asarray(images)}
    if not isinstance(probs, np.ndarray) and probs and len({p.shape for p in probs}) == 1:
        probs = np.stack(probs)  # one size (MVTec at a working scale): stored as the squashed maps are
    if isinstance(probs, np.ndarray):
        arrays["probs"] = probs
    else:
        arrays["flat"] = np.concatenate([p.ravel() for p in probs]) if probs else np.empty(0, np.uint8)
        arrays["shapes"] = np.asarray([p.shape for p in probs], dtype=np.int64).reshape(-1, 2)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)


def load_probabilities(path: str | Path) -> tuple[np.ndarray | list[np.ndarray], list[str]]:
    """What :func:`save_probabilities` wrote: the maps (stacked, or a list) and their image paths."""
    with np.load(path, allow_pickle=False) as data:
        images = data["images"].tolist()
        if "probs" in data:
            return data["probs"], images
        flat, shapes = data["flat"], data["shapes"]
        ends = np.cumsum([h * w for h, w in shapes])
        return [flat[e - h * w : e].reshape(h, w) for e, (h, w) in zip(ends, shapes)], images
