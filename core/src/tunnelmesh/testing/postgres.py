"""A throwaway PostgreSQL cluster for tests: Debian's server, its own data dir, stopped after.

:class:`PostgresCluster` runs ``initdb`` in a directory you give it and starts the server on
127.0.0.1 on a free port (and a unix socket in the same directory), with one superuser
``tunnelmesh`` that logs in with a random password over TCP (scram-sha-256, as a real
deployment would). Nothing of the machine's own PostgreSQL is used or touched: no system
cluster, no ``/etc/postgresql``, no service.

PostgreSQL refuses to run as root. When the tests run as root (CI), the server programs run as
the ``postgres`` user Debian's package creates (else ``nobody``) and the directory is handed to
that user; otherwise they run as the current user.

For pytest, the tunnelmesh plugin provides ``postgres_cluster`` (one per session) and
``postgres_dsn`` (a fresh database per test, dropped after); both skip with the reason when
PostgreSQL is not installed (``apt-get install postgresql``; ``scripts/system-deps.sh`` does)::

    async def test_something(postgres_dsn):
        store = PostgresStore(postgres_dsn)

A namespace lab whose coordinators run in their own network namespaces reaches the server
through its unix socket (:meth:`PostgresCluster.socket_dsn_for`).

A test that stops the database on purpose (``cluster.stop()``, later ``cluster.start()``) keeps
its port and data, as a restarted server would.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tunnelmesh.errors import LabError

__all__ = ["PostgresCluster", "postgres_bin_dir", "postgres_unavailable_reason"]

SUPERUSER = "tunnelmesh"


def postgres_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding initdb and pg_ctl, or None."""
    found = []
    for d in glob.glob("/usr/lib/postgresql/*/bin"):
        p = Path(d)
        if (p / "initdb").exists() and (p / "pg_ctl").exists() and (p / "postgres").exists():
            try:
                found.append((int(p.parent.name.split(".")[0]), p))
            except ValueError:
                continue
    return max(found)[1] if found else None


def _run_as() -> pwd.struct_passwd | None:
    """The user to run the server as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    return None


def postgres_unavailable_reason() -> str | None:
    """Why a test PostgreSQL cluster cannot run here, or None when it can."""
    if os.name != "posix":
        return "the PostgreSQL fixture needs a POSIX system"
    if postgres_bin_dir() is None:
        return (
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): "
            "apt-get install postgresql (scripts/system-deps.sh)"
        )
    if os.geteuid() == 0 and _run_as() is None:
        return "running as root and no 'postgres' or 'nobody' user to run PostgreSQL as"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    """One PostgreSQL server with its data in ``root`` (created; removed by :meth:`close`).

    Args:
        root: an empty or missing directory for the cluster (data, socket, log); a new
            temporary directory when None. When we are root the server's user must be able to
            reach it (pytest's ``tmp_path`` is not: it is private to root), so pass None then.
        port: the TCP port on 127.0.0.1; a free one when 0.

    Raises:
        LabError: PostgreSQL is not installed or initdb/pg_ctl failed (with their output).
    """

    def __init__(self, root: str | Path | None = None, *, port: int = 0) -> None:
        reason = postgres_unavailable_reason()
        if reason is not None:
            raise LabError(reason)
        bindir = postgres_bin_dir()
        assert bindir is not None
        self.bindir = bindir
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="tm-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.logfile = self.root / "postgres.log"
        self.port = port or _free_port()
        self.password = secrets.token_hex(16)
        self.user = _run_as()
        self._initialized = False

    # --- running the server's programs -----------------------------------------------------

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs.update(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[])
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C",
            "LC_ALL": "C",
            "HOME": str(self.root),
        }
        done = subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            env=env,
            cwd=self.root,
            timeout=120,
            check=False,
            **kwargs,
        )
        if check and done.returncode != 0:
            log = self.logfile.read_text(errors="replace")[-4000:] if self.logfile.exists() else ""
            raise LabError(
                f"{args[0]} failed ({done.returncode}): {done.stderr.strip()} "
                f"{done.stdout.strip()}\n{log}"
            )
        return done

    def _own(self, path: Path) -> None:
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)

    def init(self) -> None:
        """Create the cluster (initdb); :meth:`start` calls it the first time."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        self._own(self.root)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        self._own(self.socket_dir)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        self._own(pwfile)
        try:
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-instructions",
                "--no-sync",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# tunnelmesh test cluster\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "max_connections = 200\n"
                "shared_buffers = 32MB\n"
                "fsync = off\n"  # a throwaway cluster: a crash of the machine loses nothing
                "full_page_writes = off\n"
                "logging_collector = off\n"
            )
        self._initialized = True

    def start(self) -> None:
        """Start the server (initdb first when needed) and wait until it accepts connections."""
        if not self._initialized and not (self.data / "PG_VERSION").exists():
            self.init()
        self._initialized = True
        if not self.logfile.exists():
            self.logfile.touch()
            self._own(self.logfile)
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "60", "start"
        )

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are ended); idempotent."""
        if self.running():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def kill(self) -> None:
        """SIGKILL the postmaster (a crash); :meth:`start` recovers as after a power cut."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (_alive(pid) or _children(pid)):
                time.sleep(0.05)
            # A killed postmaster that nobody reaps stays a zombie, and PostgreSQL takes the
            # PID in its lock files for a live server: they go, as after a reboot.
            (self.data / "postmaster.pid").unlink(missing_ok=True)
            for name in (f".s.PGSQL.{self.port}.lock", f".s.PGSQL.{self.port}"):
                (self.socket_dir / name).unlink(missing_ok=True)

    def pid(self) -> int | None:
        """The postmaster's PID while it runs, else None."""
        try:
            first = (self.data / "postmaster.pid").read_text().split("\n", 1)[0]
            pid = int(first)
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def running(self) -> bool:
        return self.pid() is not None

    def close(self) -> None:
        """Stop the server (killing it if a stop does not finish) and remove the directory."""
        try:
            self.stop()
        except (LabError, subprocess.TimeoutExpired):
            self.kill()
        if self.running():
            self.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- databases ---------------------------------------------------------------------------

    def dsn_for(self, dbname: str) -> str:
        """A libpq connection string for ``dbname`` over TCP with the superuser's password."""
        return (
            f"host=127.0.0.1 port={self.port} dbname={dbname} user={SUPERUSER} "
            f"password={self.password} connect_timeout=5"
        )

    def socket_dsn_for(self, dbname: str) -> str:
        """A libpq connection string for ``dbname`` over the server's unix socket.

        A unix socket is a file, not an address: processes in other network namespaces of this
        machine (the coordinators of a namespace lab) reach the server through it, while the
        TCP port stays on the root namespace's loopback. Local connections are trusted (no
        password); the socket's directory is readable by the server's user and root only.
        """
        return (
            f"host={self.socket_dir} port={self.port} dbname={dbname} user={SUPERUSER} "
            "connect_timeout=5"
        )

    @property
    def dsn(self) -> str:
        """The connection string of the ``postgres`` database."""
        return self.dsn_for("postgres")

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run ``sql`` with psql over the unix socket; its output (tuples only, unaligned)."""
        done = self._run(
            "psql",
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.port),
            "-U",
            SUPERUSER,
            "-d",
            dbname,
            "-c",
            sql,
        )
        return done.stdout

    def create_database(self, name: str | None = None) -> str:
        """Create a database (a random name when None); return its connection string."""
        name = name or f"tm_{secrets.token_hex(6)}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name``, ending its sessions first."""
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


def _children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (a killed postmaster's backends exit soon)."""
    out = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[1]) == pid:
            out.append(int(Path(stat).parent.name))
    return out
