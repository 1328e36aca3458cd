"""Low-level helpers of the namespace lab: running commands, naming runs, reaping stale runs.

Every lab namespace is named ``<prefix>-<pid>-<seq>-<node>``: ``pid`` is the process that built
the lab and ``seq`` counts labs inside that process. Before creating anything a lab writes
``/run/tunnelmesh-lab/<pid>-<seq>`` holding the start time of that process (from
``/proc/<pid>/stat``), so a namespace whose creator died, or whose PID was reused by another
program, is recognised as stale and reaped by the next lab. Reaping kills the processes still
inside the namespace, by PID, then deletes the namespace; the veth pairs inside go with it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tunnelmesh.errors import LabError

__all__ = [
    "DEFAULT_PREFIX",
    "REGISTRY_DIR",
    "list_namespaces",
    "namespace_pids",
    "new_run_id",
    "process_start_time",
    "reap_stale",
    "remove_namespace",
    "run_command",
]

DEFAULT_PREFIX = "tml"
REGISTRY_DIR = Path("/run/tunnelmesh-lab")
_NAME_RE = re.compile(r"^(?P<prefix>[a-z]+)-(?P<pid>\d+)-(?P<seq>\d+)-(?P<node>.+)$")
_seq = itertools.count()


def run_command(
    cmd: Sequence[str],
    *,
    check: bool = True,
    timeout: float | None = 30,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` with captured text output.

    Raises:
        LabError: when it exits non-zero (with ``check``), times out, or cannot be started; the
            message holds the command line and its stderr.
    """
    try:
        proc = subprocess.run(
            list(cmd),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=None if env is None else dict(env),
            input=input,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{shlex.join(cmd)} timed out after {timeout}s") from exc
    except OSError as exc:
        raise LabError(f"{shlex.join(cmd)} could not start: {exc}") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise LabError(f"{shlex.join(cmd)} failed with exit code {proc.returncode}: {detail}")
    return proc


def process_start_time(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot, or None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19]


def new_run_id() -> str:
    """A run id unique on this machine while this process lives: ``<pid>-<seq>``."""
    return f"{os.getpid()}-{next(_seq)}"


def register_run(run_id: str) -> Path:
    """Record the creator of ``run_id`` so later labs can tell whether it is still alive."""
    REGISTRY_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = REGISTRY_DIR / run_id
    path.write_text(f"{process_start_time(os.getpid())}\n")
    return path


def list_namespaces() -> list[str]:
    """Names of all named network namespaces (``ip netns list``)."""
    out = run_command(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def namespace_pids(ns: str) -> list[int]:
    """PIDs of the processes whose network namespace is ``ns``."""
    out = run_command(["ip", "netns", "pids", ns], check=False).stdout
    return [int(tok) for tok in out.split() if tok.isdigit()]


def _kill_pids(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def remove_namespace(ns: str, *, grace: float = 1.0) -> None:
    """Kill every process inside ``ns`` (by PID: TERM, then KILL) and delete the namespace."""
    pids = namespace_pids(ns)
    if pids:
        _kill_pids(pids, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            time.sleep(0.02)
            pids = namespace_pids(ns)
        _kill_pids(pids, signal.SIGKILL)
    run_command(["ip", "netns", "delete", ns], check=False)


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _run_alive(pid: int, run_id: str) -> bool:
    if not _pid_exists(pid):
        return False
    try:
        recorded = (REGISTRY_DIR / run_id).read_text().strip()
    except OSError:
        # No record: the PID is alive and we cannot prove it was reused, so leave it alone.
        return True
    return recorded == str(process_start_time(pid))


def reap_stale(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Delete lab namespaces (and registry files) left by lab runs whose process has died.

    Returns:
        The names of the namespaces removed.
    """
    reaped: list[str] = []
    live_runs: set[str] = set()  # each run is judged once, by its first namespace
    stale_runs: set[str] = set()
    for ns in list_namespaces():
        m = _NAME_RE.match(ns)
        if m is None or m["prefix"] != prefix:
            continue
        run_id = f"{m['pid']}-{m['seq']}"
        if run_id in live_runs:
            continue
        if run_id not in stale_runs:
            if _run_alive(int(m["pid"]), run_id):
                live_runs.add(run_id)
                continue
            stale_runs.add(run_id)
        remove_namespace(ns, grace=0.2)
        shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)  # its own resolv.conf
        reaped.append(ns)
        (REGISTRY_DIR / run_id).unlink(missing_ok=True)
    if REGISTRY_DIR.is_dir():
        # Records of dead processes go too. (A record whose PID was reused stays until that
        # PID dies: another prefix's namespaces may still need it to be recognised.)
        for path in REGISTRY_DIR.iterdir():
            m = re.fullmatch(r"(\d+)-(\d+)", path.name)
            if m and not _pid_exists(int(m[1])):
                path.unlink(missing_ok=True)
    return reaped
