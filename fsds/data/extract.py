"""Unpack an archive safely: atomically, and refusing anything that could escape the folder.

``extract`` unpacks into a temporary sibling folder and renames it into place only when
everything succeeded; it refuses members that could write outside the folder, special files
and decompression bombs.
"""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

from fsds.data.archives import CHUNK, DownloadError

MARKER = ".fsds-complete"
DEFAULT_MAX_RATIO = 200.0
DEFAULT_MAX_BYTES = 64 << 30  # hard cap: the full MVTec AD unpacks to about 5 GB


class UnsafeArchiveError(DownloadError):
    """An archive holds a member that must not be extracted."""


class _Extractor:
    """Writes members under ``root`` itself (no extractall), checking each one first."""

    def __init__(self, root: Path, archive: Path, limit: int) -> None:
        self.root, self.archive, self.limit = root, archive, limit
        self.real_root = os.path.realpath(root)
        self.declared = 0
        self.links: list[Path] = []

    def refuse(self, member: str, why: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"refusing to extract {self.archive}: member {member!r} {why}")

    def inside(self, path: str | Path) -> bool:
        real = os.path.realpath(path)
        return real == self.real_root or real.startswith(self.real_root + os.sep)

    def path(self, name: str) -> Path | None:
        """Destination of a member, or None for the archive root itself."""
        if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
            raise self.refuse(name, "has an absolute path")
        parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self.refuse(name, "has a '..' component")
        if not parts:
            return None
        dest = self.root.joinpath(*parts)
        # realpath follows links extracted earlier, so a member cannot write through one.
        if not self.inside(dest.parent):
            raise self.refuse(name, "would be written outside the folder through a link")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
            dest.unlink()  # a later member replaces an earlier one, never writes through it
        return dest

    def directory(self, name: str) -> None:
        if (dest := self.path(name)) is not None:
            dest.mkdir(exist_ok=True)

    def file(self, name: str, src: BinaryIO, declared: int) -> None:
        self.declared += declared
        if self.declared > self.limit:
            raise self.refuse(name, f"takes the unpacked size past {self.limit} bytes")
        dest = self.path(name)
        if dest is None:
            raise self.refuse(name, "is a file at the archive root")
        written = 0
        with open(dest, "wb") as out:
            while block := src.read(CHUNK):
                written += len(block)
                if written > declared:  # a lying header: stop before filling the disk
                    raise self.refuse(name, f"holds more than its declared {declared} bytes")
                out.write(block)

    def symlink(self, name: str, target: str) -> None:
        dest = self.path(name)
        if dest is None or os.path.isabs(target) or target.startswith("\\"):
            raise self.refuse(name, f"is a link to {target!r} outside the folder")
        if not self.inside(dest.parent / target):
            raise self.refuse(name, f"is a link to {target!r} outside the folder")
        os.symlink(target, dest)
        self.links.append(dest)

    def hardlink(self, name: str, target: str) -> None:
        source = self.root.joinpath(*[p for p in target.split("/") if p not in ("", ".")])
        if os.path.isabs(target) or ".." in target.split("/") or not self.inside(source):
            raise self.refuse(name, f"is a hard link to {target!r} outside the folder")
        if not source.is_file():
            raise self.refuse(name, f"is a hard link to {target!r}, not an extracted file")
        dest = self.path(name)
        if dest is None:
            raise self.refuse(name, "is a hard link at the archive root")
        shutil.copyfile(source, dest)  # a copy: the unpacked files stay independent

    def check_links(self) -> None:
        # Links are checked when made, but a later link can redirect an earlier one.
        for link in self.links:
            if not self.inside(link):
                raise self.refuse(str(link.relative_to(self.root)), "resolves outside the folder")


def _extract_zip(path: Path, ex: _Extractor) -> None:
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        total = sum(info.file_size for info in infos)
        if total > ex.limit:  # the central directory tells before anything is written
            biggest = max(infos, key=lambda info: info.file_size)
            raise UnsafeArchiveError(
                f"refusing to extract {path}: its members declare {total} unpacked bytes "
                f"(largest: member {biggest.filename!r}, {biggest.file_size} bytes), "
                f"more than the limit of {ex.limit} (a zip bomb?)"
            )
        for info in infos:
            # Unix file type bits; zips made elsewhere (or by writestr) leave them at 0.
            kind = stat.S_IFMT(info.external_attr >> 16) if info.create_system == 3 else 0
            if info.is_dir() or kind == stat.S_IFDIR:
                ex.directory(info.filename)
            elif kind == stat.S_IFLNK:
                ex.symlink(info.filename, zf.read(info).decode("utf-8"))
            elif kind not in (0, stat.S_IFREG):
                raise ex.refuse(info.filename, "is a device, FIFO or socket")
            else:
                with zf.open(info) as src:
                    ex.file(info.filename, src, info.file_size)


def _extract_tar(path: Path, ex: _Extractor) -> None:
    # One sequential pass: members are checked as they come, and a refusal discards the
    # whole temporary folder, so nothing of a hostile archive survives.
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            if member.isdir():
                ex.directory(member.name)
            elif member.issym():
                ex.symlink(member.name, member.linkname)
            elif member.islnk():
                ex.hardlink(member.name, member.linkname)
            elif member.isreg():
                src = tar.extractfile(member)
                if src is None:
                    raise ex.refuse(member.name, "has no data")
                with src:
                    ex.file(member.name, src, member.size)
            else:
                raise ex.refuse(member.name, "is a device, FIFO or other special file")


# Corrupt or truncated archives surface as any of these, depending on the compressor.
_READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, ValueError, OSError,
                lzma.LZMAError, zlib.error, gzip.BadGzipFile)
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")


def extract(
    archive_path: Path,
    target: Path,
    *,
    max_ratio: float = DEFAULT_MAX_RATIO,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Path:
    """Unpack a zip or tar archive into ``target`` atomically and return ``target``.

    Does nothing when ``target`` already holds the completion marker. Refuses (with
    ``UnsafeArchiveError``) absolute or ``..`` paths, links leading outside, special files,
    and more than ``max_ratio`` x the archive's size or ``max_bytes`` of unpacked data.
    """
    archive_path, target = Path(archive_path), Path(target)
    if (target / MARKER).is_file():
        return target
    lower = archive_path.name.lower()
    if lower.endswith(".zip"):
        unpack = _extract_zip
    elif lower.endswith(_TAR_SUFFIXES):
        unpack = _extract_tar
    else:
        raise DownloadError(f"cannot extract {archive_path}: unknown archive type")
    try:
        limit = int(min(max_ratio * archive_path.stat().st_size, max_bytes))
    except OSError as exc:
        raise DownloadError(f"cannot extract {archive_path}: {exc}") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".extracting", dir=target.parent))
    try:
        ex = _Extractor(tmp, archive_path, limit)
        try:
            unpack(archive_path, ex)
        except _READ_ERRORS as exc:
            raise DownloadError(f"cannot extract {archive_path}: {exc}") from exc
        ex.check_links()
        (tmp / MARKER).write_text(f"extracted from {archive_path.name}\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the dataset is not
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)  # a leftover without the marker: incomplete
        elif os.path.lexists(target):
            target.unlink()
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
