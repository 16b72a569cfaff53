"""Fetch an archive of :data:`fsds.data.archives.ARCHIVES`: verified and resumable.

``fetch`` copies an archive from an offline mirror folder (``FSDS_DATA_MIRROR``) or downloads
it, resuming a partial ``.part`` file, and verifies it before giving it its final name, so a
file under the final name is always a verified one.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from fsds.data.archives import CHUNK, Archive, DownloadError

MIRROR_ENV = "FSDS_DATA_MIRROR"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, archive: Archive) -> None:
    """Check ``path`` against the archive's size, then sha256, where they are known."""
    path = Path(path)
    try:
        actual_size = path.stat().st_size
    except OSError as exc:
        raise DownloadError(f"cannot verify {path}: {exc}") from exc
    if archive.size is not None and actual_size != archive.size:
        raise DownloadError(
            f"size check failed for {path}: expected {archive.size} bytes, got {actual_size}"
        )
    if archive.sha256 is not None:
        actual = _sha256(path)
        if actual != archive.sha256.lower():
            raise DownloadError(
                f"sha256 check failed for {path}: expected {archive.sha256}, got {actual}"
            )


def fetch(
    archive: Archive, downloads: Path, mirror: Path | None = None, *, timeout: float = 30
) -> Path:
    """Return ``downloads/<name>``, verified: already there, copied from the mirror
    folder (default ``$FSDS_DATA_MIRROR``) or downloaded (resuming a ``.part`` file)."""
    downloads = Path(downloads)
    downloads.mkdir(parents=True, exist_ok=True)
    final = downloads / archive.name
    if final.is_file():
        try:
            verify(final, archive)
            return final
        except DownloadError:
            final.unlink()  # a corrupt file someone put there: fetch it again
    if mirror is None and os.environ.get(MIRROR_ENV):
        mirror = Path(os.environ[MIRROR_ENV])
    if mirror is not None and (Path(mirror) / archive.name).is_file():
        return _copy_from_mirror(Path(mirror) / archive.name, final, archive)
    missing = f"; {MIRROR_ENV}={mirror} has no {archive.name}" if mirror is not None else ""
    return _download(archive, final, timeout, missing)


def _copy_from_mirror(source: Path, final: Path, archive: Archive) -> Path:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        shutil.copyfile(source, tmp)
        try:
            verify(tmp, archive)
        except DownloadError as exc:
            raise DownloadError(f"mirror file {source} is not the expected archive: {exc}") from exc
        os.chmod(tmp, 0o644)  # mkstemp makes it private; it is a public archive
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def _download(archive: Archive, final: Path, timeout: float, missing: str) -> Path:
    part = final.with_name(final.name + ".part")
    hint = f"Put {archive.name} in a folder and set {MIRROR_ENV}=/that/folder"
    for _ in range(2):  # a second round only after the server refused our Range (416)
        start = part.stat().st_size if part.is_file() else 0
        if start and archive.sha256 is None:
            # Without a checksum nothing would catch a resumed file that mixes two versions
            # (e.g. a GitHub zip rebuilt in between), so such downloads start over.
            start = 0
        if archive.size is not None and start > archive.size:
            part.unlink()
            start = 0
        if archive.size is not None and start == archive.size:
            break  # a previous run got every byte but died before renaming
        headers = {"User-Agent": "fsds-download"}
        if start:
            headers["Range"] = f"bytes={start}-"
        request = urllib.request.Request(archive.url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and start:
                part.unlink()
                continue
            raise DownloadError(f"cannot download {archive.url} ({exc}{missing}). {hint}") from exc
        except (OSError, http.client.HTTPException) as exc:  # offline, DNS, refused, timeout
            reason = f"{getattr(exc, 'reason', exc)}{missing}"
            raise DownloadError(f"cannot download {archive.url} ({reason}). {hint}") from exc
        with response:
            _receive(response, part, start, archive)
        break
    try:
        verify(part, archive)
    except DownloadError as exc:
        part.unlink(missing_ok=True)  # never resume from (or keep) corrupt bytes
        raise DownloadError(f"{exc}; the download was deleted, run again to retry") from exc
    os.replace(part, final)
    return final


def _receive(response, part: Path, start: int, archive: Archive) -> None:
    """Append the response body to ``part`` (or rewrite it if the server sent it all)."""
    mode = "wb"
    if start and response.status == 206:
        content_range = response.headers.get("Content-Range", "")
        if not content_range.startswith(f"bytes {start}-"):
            raise DownloadError(f"{archive.url} answered an unexpected range {content_range!r}")
        mode = "ab"
    else:
        start = 0  # the server ignored Range and sends the whole file: start over
    length = response.headers.get("Content-Length", "")
    expected = start + int(length) if length.isdigit() else archive.size
    received = start
    try:
        with open(part, mode) as fh, tqdm(
            total=expected, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
            desc=archive.name,
        ) as bar:
            while chunk := response.read(CHUNK):
                fh.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    except (OSError, http.client.HTTPException) as exc:
        raise DownloadError(
            f"download of {archive.url} stopped after {received} bytes ({exc}); "
            f"run again to resume from {part}"
        ) from exc
    if expected is not None and received < expected:
        raise DownloadError(
            f"download of {archive.url} stopped after {received} of {expected} bytes; "
            f"run again to resume from {part}"
        )
