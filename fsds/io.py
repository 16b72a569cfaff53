"""File input and output shared by the stages: atomic writes and image decoding.

Every file a stage produces is written to a temporary sibling and renamed into place, so
a stage that dies halfway leaves either the old file or nothing, never a torn one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    """Yield a fresh temporary folder; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image as uint8 RGB ``(H, W, 3)``; grayscale is expanded to three channels."""
    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}; replace or remove the file") from exc


def read_mask(path: str | Path) -> np.ndarray:
    """Decode a mask as a boolean ``(H, W)`` array (anti-aliased masks are binarised at 128)."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("1", "L", "P", "I", "I;16", "LA", "RGB", "RGBA"):
                raise ValueError(f"mask {path} has unsupported mode {img.mode}; save it as 8-bit grayscale")
            return np.asarray(img.convert("L")) > 127
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"cannot read mask {path}: {exc}; replace or remove the file") from exc


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of an image without decoding its pixels."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}; replace or remove the file") from exc
