"""fsds.data.archives, .download and .extract: registry, mirror/HTTP fetch with resume, and safe
atomic extraction.

Everything runs on tmp_path and a loopback HTTP server; nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import re
import socket
import stat
import tarfile
import threading
import time
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from fsds.data.archives import ARCHIVES, MVTEC_CATEGORIES, Archive, DownloadError
from fsds.data.download import MIRROR_ENV, fetch, verify
from fsds.data.extract import MARKER, UnsafeArchiveError, _Extractor, extract

MAGNETIC_MIRROR = Path("/work/shared/datasets/magnetic_tile")
CATEGORIES = (
    "bottle cable capsule carpet grid hazelnut leather metal_nut pill screw tile "
    "toothbrush transistor wood zipper"
).split()


GITHUB_ZIP = r"https://github\.com/[^/]+/([^/]+)/archive/refs/heads/([^/]+)\.zip"


def _archive_for(data: bytes, url: str, *, size: bool = True, sha: bool = True) -> Archive:
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    return Archive(
        name,
        url,
        len(data) if size else None,
        hashlib.sha256(data).hexdigest() if sha else None,
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _no_mirror(monkeypatch):
    monkeypatch.delenv(MIRROR_ENV, raising=False)


# ---------------------------------------------------------------------------- registry


def test_registry_is_consistent():
    for key, archive in ARCHIVES.items():
        last = urlsplit(archive.url).path.rsplit("/", 1)[-1]
        github = re.fullmatch(GITHUB_ZIP, archive.url)
        if github:  # GitHub serves <branch>.zip under the name <repo>-<branch>.zip
            assert archive.name == f"{github[1]}-{github[2]}.zip", key
        else:
            assert archive.name == last, key
        assert archive.url.startswith("https://")
        if archive.sha256 is not None:
            assert re.fullmatch(r"[0-9a-f]{64}", archive.sha256), key
        if archive.size is not None:
            assert archive.size > 0
    for category in CATEGORIES:
        assert ARCHIVES[f"mvtec/{category}"].name == f"{category}.tar.xz"
    assert set(MVTEC_CATEGORIES) == set(CATEGORIES)
    assert ARCHIVES["mvtec"].name == "mvtec_anomaly_detection.tar.xz"
    tile = ARCHIVES["magnetic_tile"]
    assert tile.name == "Magnetic-tile-defect-datasets.-master.zip"
    assert tile.size is None and tile.sha256 is None


# ------------------------------------------------------------------------ mirror fetch


def test_fetch_from_mirror_copies_verifies_and_is_idempotent(tmp_path, monkeypatch):
    data = os.urandom(5000)
    mirror, downloads = tmp_path / "mirror", tmp_path / "dl"
    mirror.mkdir()
    (mirror / "data.tar.xz").write_bytes(data)
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    archive = _archive_for(data, f"http://127.0.0.1:{_closed_port()}/x/data.tar.xz")

    path = fetch(archive, downloads)
    assert path == downloads / "data.tar.xz" and path.read_bytes() == data
    assert sorted(p.name for p in downloads.iterdir()) == ["data.tar.xz"]

    before = path.stat().st_mtime_ns
    (mirror / "data.tar.xz").unlink()  # a second fetch must need neither mirror nor network
    assert fetch(archive, downloads) == path
    assert path.stat().st_mtime_ns == before


@pytest.mark.parametrize("check", ["size", "sha256"])
def test_fetch_refuses_a_corrupt_mirror_file(tmp_path, check):
    data = b"good archive bytes"
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    bad = data + b"!" if check == "size" else data.upper()
    (mirror / "a.zip").write_bytes(bad)
    archive = _archive_for(data, f"http://127.0.0.1:{_closed_port()}/a.zip")
    with pytest.raises(DownloadError, match=f"{check} check failed") as info:
        fetch(archive, tmp_path / "dl", mirror)
    message = str(info.value)
    expected = str(len(data)) if check == "size" else archive.sha256
    actual = str(len(bad)) if check == "size" else hashlib.sha256(bad).hexdigest()
    assert expected in message and actual in message and str(mirror / "a.zip") in message
    assert list((tmp_path / "dl").iterdir()) == []  # nothing under the final name, no temp


def test_fetch_replaces_a_corrupt_file_already_in_downloads(tmp_path):
    data = b"the real thing"
    mirror, downloads = tmp_path / "mirror", tmp_path / "dl"
    mirror.mkdir()
    downloads.mkdir()
    (mirror / "a.zip").write_bytes(data)
    (downloads / "a.zip").write_bytes(b"truncated")
    archive = _archive_for(data, "https://example.invalid/a.zip")
    assert fetch(archive, downloads, mirror).read_bytes() == data


def test_verify_reports_missing_file(tmp_path):
    with pytest.raises(DownloadError, match="cannot verify"):
        verify(tmp_path / "nope.zip", Archive("nope.zip", "https://x/nope.zip", 1))


# ---------------------------------------------------------------------- offline / HTTP


def test_fetch_offline_without_mirror_fails_fast_with_a_useful_message(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/files/Magnetic-tile-defect-datasets.-master.zip"
    archive = _archive_for(b"", url, size=False, sha=False)
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as info:
        fetch(archive, tmp_path / "dl", timeout=5)
    assert time.monotonic() - t0 < 5
    message = str(info.value)
    assert url in message and archive.name in message and MIRROR_ENV in message
    assert list((tmp_path / "dl").iterdir()) == []


def test_fetch_names_a_mirror_that_lacks_the_file(tmp_path):
    archive = _archive_for(b"x", f"http://127.0.0.1:{_closed_port()}/a.zip")
    (tmp_path / "mirror").mkdir()
    with pytest.raises(DownloadError, match=f"{MIRROR_ENV}=.*mirror has no a.zip"):
        fetch(archive, tmp_path / "dl", tmp_path / "mirror")


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves server.root; honours ``Range: bytes=N-`` unless server.honour_range is off."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        path = self.server.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        wanted = self.headers.get("Range")
        self.server.ranges.append(wanted)
        if wanted and self.server.honour_range:
            start = int(wanted.removeprefix("bytes=").split("-")[0])
            body = data[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # recorded before the write: the client can finish reading (and the test assert)
        # before this thread runs another line
        self.server.served.append(len(body))
        self.wfile.write(body)

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture()
def server(tmp_path):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    srv.root = tmp_path / "www"
    srv.root.mkdir()
    srv.ranges, srv.served, srv.honour_range = [], [], True
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_fetch_downloads_over_http(server, tmp_path):
    data = os.urandom(50_000)
    (server.root / "a.tar.gz").write_bytes(data)
    path = fetch(_archive_for(data, f"{server.url}/a.tar.gz"), tmp_path / "dl")
    assert path.read_bytes() == data
    assert server.ranges == [None]
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.tar.gz"]


def test_fetch_resumes_a_partial_download(server, tmp_path):
    data = os.urandom(100_000)
    half = len(data) // 2
    (server.root / "a.zip").write_bytes(data)
    downloads = tmp_path / "dl"
    downloads.mkdir()
    (downloads / "a.zip.part").write_bytes(data[:half])
    path = fetch(_archive_for(data, f"{server.url}/a.zip"), downloads)
    assert server.ranges == [f"bytes={half}-"]
    assert server.served == [len(data) - half]  # only the remainder crossed the wire
    assert path.read_bytes() == data and not (downloads / "a.zip.part").exists()


def test_fetch_starts_over_when_the_server_ignores_range(server, tmp_path):
    data = os.urandom(20_000)
    server.honour_range = False
    (server.root / "a.zip").write_bytes(data)
    downloads = tmp_path / "dl"
    downloads.mkdir()
    (downloads / "a.zip.part").write_bytes(b"stale bytes of another version")
    path = fetch(_archive_for(data, f"{server.url}/a.zip"), downloads)
    assert server.ranges == ["bytes=30-"] and path.read_bytes() == data


def test_fetch_deletes_a_corrupt_download(server, tmp_path):
    (server.root / "a.zip").write_bytes(b"not what the registry promised")
    archive = Archive("a.zip", f"{server.url}/a.zip", sha256="0" * 64)
    with pytest.raises(DownloadError, match="sha256 check failed"):
        fetch(archive, tmp_path / "dl")
    assert list((tmp_path / "dl").iterdir()) == []


def test_fetch_http_error_names_url_and_mirror(server, tmp_path):
    archive = Archive("missing.zip", f"{server.url}/missing.zip")
    with pytest.raises(DownloadError, match="404") as info:
        fetch(archive, tmp_path / "dl")
    assert archive.url in str(info.value) and MIRROR_ENV in str(info.value)


# ----------------------------------------------------------------------------- extract


def _zip(path: Path, members: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    mode = "w:xz" if path.name.endswith(".xz") else "w"
    with tarfile.open(path, mode) as tar:
        for member in members:
            if isinstance(member, tuple):
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
            else:
                tar.addfile(member)
    return path


def _special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.lstat().st_mtime_ns for p in root.rglob("*")}


def test_extract_zip_is_atomic_and_idempotent(tmp_path):
    members = {"top/": b"", "top/a.txt": b"alpha", "top/sub/b.bin": b"\0" * 10}
    archive = _zip(tmp_path / "ds.zip", members)
    target = tmp_path / "out" / "ds"
    assert extract(archive, target) == target
    assert (target / "top" / "a.txt").read_bytes() == b"alpha"
    assert (target / "top" / "sub" / "b.bin").stat().st_size == 10
    assert (target / MARKER).is_file()
    assert sorted(p.name for p in target.parent.iterdir()) == ["ds"]  # no temp folder left

    before = _snapshot(target)
    archive.unlink()  # the second call must not even open the archive
    assert extract(archive, target) == target
    assert _snapshot(target) == before


def test_extract_tar_xz_with_inner_links(tmp_path):
    members = [
        _special("top", tarfile.DIRTYPE),
        ("./top/a.txt", b"alpha"),
        _special("top/link", tarfile.SYMTYPE, "a.txt"),
        _special("top/sub/hard", tarfile.LNKTYPE, "top/a.txt"),
    ]
    archive = _tar(tmp_path / "ds.tar.xz", members)
    target = tmp_path / "out" / "ds"
    extract(archive, target)
    assert (target / "top" / "link").is_symlink()
    assert (target / "top" / "link").read_bytes() == b"alpha"
    assert (target / "top" / "sub" / "hard").read_bytes() == b"alpha"
    before = _snapshot(target)
    assert extract(archive, target) == target and _snapshot(target) == before


def test_extract_replaces_a_leftover_without_marker(tmp_path):
    archive = _zip(tmp_path / "ds.zip", {"top/a.txt": b"alpha"})
    target = tmp_path / "ds"
    (target / "top").mkdir(parents=True)
    (target / "top" / "half_written.txt").write_text("x")
    extract(archive, target)
    assert sorted(p.name for p in (target / "top").iterdir()) == ["a.txt"]


def _hostile_archive(kind: str, folder: Path) -> Path:
    """Build only the archive a test needs (the bombs take a moment to compress)."""
    zeros = b"\0" * (4 << 20)
    link = tarfile.SYMTYPE
    builders = {
        "zip absolute": lambda: _zip(folder / "abs.zip", {"ok.txt": b"1", "/tmp/evil.txt": b"x"}),
        "zip dotdot": lambda: _zip(folder / "dotdot.zip", {"ok.txt": b"1", "../evil.txt": b"x"}),
        "zip bomb": lambda: _zip(folder / "bomb.zip", {"zeros.bin": zeros}),
        "tar absolute": lambda: _tar(folder / "abs.tar", [("/tmp/evil.txt", b"x")]),
        "tar dotdot": lambda: _tar(folder / "dotdot.tar.xz", [("top/../../evil.txt", b"x")]),
        "tar symlink out": lambda: _tar(folder / "s.tar", [_special("top/l", link, "../../evil")]),
        "tar symlink abs": lambda: _tar(folder / "s.tar", [_special("l", link, "/etc/passwd")]),
        "tar write via link": lambda: _tar(
            folder / "via.tar", [_special("l", link, ".."), ("l/evil.txt", b"x")]
        ),
        # Each link looks inside when it is made; together they lead out of the folder.
        "tar link chain": lambda: _tar(
            folder / "chain.tar",
            [_special("a", link, "x/.."), _special("x", link, "."), ("a/evil.txt", b"x")],
        ),
        "tar dangling chain": lambda: _tar(
            folder / "chain2.tar", [_special("a", link, "x/.."), _special("x", link, ".")]
        ),
        "tar hardlink out": lambda: _tar(
            folder / "hard.tar", [_special("h", tarfile.LNKTYPE, "../evil.txt")]
        ),
        "tar device": lambda: _tar(folder / "dev.tar", [_special("top/null", tarfile.CHRTYPE)]),
        "tar fifo": lambda: _tar(folder / "fifo.tar", [_special("top/pipe", tarfile.FIFOTYPE)]),
        "tar bomb": lambda: _tar(folder / "bomb.tar.xz", [("zeros.bin", zeros)]),
    }
    folder.mkdir(parents=True, exist_ok=True)
    return builders[kind]()


HOSTILE = [
    "zip absolute", "zip dotdot", "zip bomb", "tar absolute", "tar dotdot", "tar symlink out",
    "tar symlink abs", "tar write via link", "tar link chain", "tar dangling chain",
    "tar hardlink out", "tar device", "tar fifo", "tar bomb",
]  # fmt: skip


@pytest.mark.parametrize("kind", HOSTILE)
def test_extract_refuses_hostile_archives(tmp_path, kind):
    archive = _hostile_archive(kind, tmp_path / "src")
    out = tmp_path / "work" / "out"
    with pytest.raises(UnsafeArchiveError) as info:
        extract(archive, out / "ds")
    assert str(archive) in str(info.value) and "member" in str(info.value)
    assert list(out.iterdir()) == []  # neither the target nor a temporary folder
    assert not list(tmp_path.rglob("evil*"))


def test_extract_caps_the_unpacked_size(tmp_path):
    archive = _zip(tmp_path / "ds.zip", {"a.bin": os.urandom(1000)}, zipfile.ZIP_STORED)
    with pytest.raises(UnsafeArchiveError, match="zip bomb"):
        extract(archive, tmp_path / "out" / "ds", max_bytes=500)
    with pytest.raises(UnsafeArchiveError):
        extract(archive, tmp_path / "out" / "ds", max_ratio=0.5)
    assert list((tmp_path / "out").iterdir()) == []
    assert extract(archive, tmp_path / "out" / "ds").is_dir()  # default limits: fine


def test_extract_stops_when_a_member_exceeds_its_declared_size(tmp_path):
    ex = _Extractor(tmp_path, tmp_path / "x.zip", limit=10**6)
    with pytest.raises(UnsafeArchiveError, match="more than its declared 3 bytes"):
        ex.file("a.bin", io.BytesIO(b"0123456789"), 3)


def test_extract_reports_corrupt_and_unknown_archives(tmp_path):
    (tmp_path / "bad.tar.xz").write_bytes(b"this is not xz")
    with pytest.raises(DownloadError, match="cannot extract"):
        extract(tmp_path / "bad.tar.xz", tmp_path / "out" / "ds")
    (tmp_path / "x.rar").write_bytes(b"")
    with pytest.raises(DownloadError, match="unknown archive type"):
        extract(tmp_path / "x.rar", tmp_path / "out" / "ds")
    assert list((tmp_path / "out").iterdir()) == []


# ------------------------------------------------------------- the real offline mirror


@pytest.mark.skipif(
    not (MAGNETIC_MIRROR / ARCHIVES["magnetic_tile"].name).is_file(),
    reason="no offline copy of the Magnetic Tile zip on this machine",
)
def test_fetch_magnetic_tile_from_the_shared_mirror(tmp_path, monkeypatch):
    # Copies 53 MB; the zip is only listed, never extracted here.
    monkeypatch.setenv(MIRROR_ENV, str(MAGNETIC_MIRROR))
    archive = ARCHIVES["magnetic_tile"]
    path = fetch(archive, tmp_path)
    assert path == tmp_path / archive.name
    assert path.stat().st_size == (MAGNETIC_MIRROR / archive.name).stat().st_size
    # The shared mirror is read-only; the copy must not be, or it could not be replaced.
    assert stat.S_IMODE(path.stat().st_mode) & stat.S_IWUSR
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    assert any(n.startswith("Magnetic-tile-defect-datasets.-master/MT_Free/") for n in names)
