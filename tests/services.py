"""Real services for the team tests, started on loopback in throw-away folders: a PostgreSQL server
(Debian's ``postgresql``), an MLflow tracking server on it, an OpenSSH server (``openssh-server``).

Each is started with the commands the README's team section gives a user. A machine without a
server program skips the tests that need it, naming the package to install; under
``FSDS_REQUIRE_SERVICES=1`` (what ``.ci/run`` sets, after installing them) it fails instead, so a CI
run never passes without them.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

REQUIRED = os.environ.get("FSDS_REQUIRE_SERVICES") == "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing(what: str, package: str) -> None:
    """Skip (or, under ``FSDS_REQUIRE_SERVICES=1``, fail) naming what to install."""
    message = f"{what} not found: install Debian's {package} (apt-get install {package}), as .ci/run does"
    if REQUIRED:
        pytest.fail(message)
    pytest.skip(message)


def need_module(module: str, package: str) -> None:
    """Skip (or fail, as :func:`missing`) when a Python package of the ``team`` extra is absent."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        message = f"{package} not installed: pip install -e '.[team]' (make installs it)"
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)


def postgres_bin() -> Path:
    """The folder of PostgreSQL's server programs (``initdb``, ``pg_ctl``; Debian keeps them off PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    missing("PostgreSQL's initdb", "postgresql")
    raise AssertionError  # not reached


def wait_until(check, what: str, proc: subprocess.Popen | None = None, log: Path | None = None,
               timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except OSError:
            pass
        tail = log.read_text()[-3000:] if log and log.exists() else ""
        assert proc is None or proc.poll() is None, f"{what} exited:\n{tail}"
        assert time.monotonic() < deadline, f"{what} did not come up in {timeout:.0f} s:\n{tail}"
        time.sleep(0.3)


def stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass
class Postgres:
    port: int
    user: str
    password: str
    database: str

    def uri(self, password: str | None = None) -> str:
        return (f"postgresql+psycopg://{self.user}:{self.password if password is None else password}"
                f"@127.0.0.1:{self.port}/{self.database}")


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    """A PostgreSQL server on loopback in a throw-away data folder, with a password-protected role and
    database ``mlflow``. ``initdb`` and ``pg_ctl`` refuse to run as root: as root they run as the
    ``postgres`` user (``nobody`` if there is none), in a folder under /tmp that it owns."""
    need_module("psycopg", "psycopg (MLflow's PostgreSQL driver)")
    bin_dir = postgres_bin()
    as_user: list[str] = []
    if os.geteuid() == 0:
        name = "postgres" if _has_user("postgres") else "nobody"
        as_user = ["runuser", "-u", name, "--"]
    root = Path(tempfile.mkdtemp(prefix="fsds-pg-"))
    os.chmod(root, 0o755)
    if as_user:
        entry = pwd.getpwnam(as_user[2])
        os.chown(root, entry.pw_uid, entry.pw_gid)
    db = Postgres(free_port(), "mlflow", "team-secret", "mlflow")
    (root / "pw").write_text(db.password + "\n")
    if as_user:
        os.chown(root / "pw", entry.pw_uid, entry.pw_gid)
    env = {**os.environ, "PGPASSWORD": db.password}

    def sh(*args: str) -> None:
        proc = subprocess.run([*as_user, *args], env=env, capture_output=True, text=True, timeout=300, cwd=root)
        assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"

    # The README's commands (team section), with a throw-away folder and port.
    sh(str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", db.user, f"--pwfile={root / 'pw'}",
       "-A", "scram-sha-256", "--no-sync")
    try:
        sh(str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "server.log"), "-w",
           "-o", f"-p {db.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        sh(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(db.port), "-U", db.user, db.database)
        yield db
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop"],
                       capture_output=True, timeout=120, cwd=root)
        shutil.rmtree(root, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@contextlib.contextmanager
def mlflow_server(backend_uri: str, folder: Path) -> Iterator[str]:
    """``mlflow server`` on loopback over ``backend_uri``, artifacts proxied by it into ``folder``."""
    port = free_port()
    log = folder / "mlflow-server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", backend_uri, "--artifacts-destination", str(folder / "artifacts")],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200, "mlflow server",
                   proc, log)
        yield uri
    finally:
        stop(proc)


@dataclass
class Sshd:
    port: int
    user: str
    keyfile: Path
    known_hosts_line: str

    def url(self, path: Path) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{path}"


@contextlib.contextmanager
def sshd_server(folder: Path) -> Iterator[Sshd]:
    """OpenSSH's server on loopback with a throw-away host key, admitting this user with a throw-away
    key only (no password, no PAM)."""
    need_module("dvc_ssh", "dvc-ssh (DVC's SSH remote)")
    sshd = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
    if sshd is None or shutil.which("ssh-keygen") is None:
        missing("OpenSSH's sshd", "openssh-server")
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"fsds-test-{name}", "-f",
                        str(folder / name)], check=True, capture_output=True, timeout=60)
    (folder / "authorized_keys").write_text((folder / "user_key.pub").read_text())
    port = free_port()
    (folder / "sshd_config").write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {folder / 'host_key'}",
        f"AuthorizedKeysFile {folder / 'authorized_keys'}", f"PidFile {folder / 'sshd.pid'}",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
        "PermitRootLogin prohibit-password", "Subsystem sftp internal-sftp", "MaxStartups 50", "MaxSessions 50",
    ]) + "\n")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
    log = folder / "sshd.log"
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(folder / "sshd_config")], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    host_key = (folder / "host_key.pub").read_text().split()
    try:
        wait_until(lambda: socket.create_connection(("127.0.0.1", port), timeout=2).close() is None, "sshd", proc, log)
        yield Sshd(port, pwd.getpwuid(os.geteuid()).pw_name, folder / "user_key",
                   f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}")
    finally:
        stop(proc)
