"""``tunnelmesh demo``: a coordinator and three peers in network namespaces, one behind a NAT.

:func:`run_demo` is the command: build a :class:`~tunnelmesh.testing.mesh.MeshLab`, start
everything with the installed plugins, ping every peer from every other by name and by mesh
IP, time a short TCP transfer per pair, print a table, keep the mesh up until Ctrl-C or
``duration``, and remove everything it made.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tunnelmesh.cli._table import format_table
from tunnelmesh.errors import LabError, TunnelmeshError
from tunnelmesh.testing.lab import Lab
from tunnelmesh.testing.mesh import DOMAIN, MeshLab

__all__ = ["DemoInterrupted", "run_demo"]


class DemoInterrupted(Exception):
    """SIGINT/SIGTERM arrived: unwind and clean up."""


# --- the command ---------------------------------------------------------------------------


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn SIGINT/SIGTERM/SIGHUP into :class:`DemoInterrupted` so cleanup runs."""

    def handler(signum: int, frame: object) -> None:
        raise DemoInterrupted(signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _fmt_rate(mbps: float) -> str:
    return f"{mbps / 1000:.2f} Gbit/s" if mbps >= 1000 else f"{mbps:.0f} Mbit/s"


def run_demo(
    *,
    duration: float | None = None,
    transfer_seconds: float = 1.0,
    say: Callable[[str], None] = print,
    verbose: bool = False,
) -> int:
    """Run the demo; returns the exit code (0: every peer reached every other, both ways).

    Args:
        duration: keep the mesh up this many seconds after the results (None: until Ctrl-C).
        transfer_seconds: length of each pair's TCP transfer.
        say: where progress lines and the table go.
        verbose: also show every line the tunnelmesh processes print.
    """
    from tunnelmesh.testing import lab_unavailable_reason

    why = lab_unavailable_reason()
    if why is not None:
        raise TunnelmeshError(f"tunnelmesh demo: {why}")
    from tunnelmesh._manager import make_plugin_manager

    if not make_plugin_manager().build_registry("transports").transports:
        raise TunnelmeshError(
            "tunnelmesh demo needs a transport plugin: pip install 'tunnelmesh[udp]'"
        )
    t0 = time.monotonic()

    def step(text: str) -> None:
        say(f"[{time.monotonic() - t0:5.1f}s] {text}")

    interesting = re.compile(r"link (up|down)|error|Traceback|warning", re.I)

    def echo(line: str) -> None:
        if verbose or interesting.search(line):
            step("  " + line)

    workdir = Path(tempfile.mkdtemp(prefix="tunnelmesh-demo-"))
    ok = False
    finished = False
    lab: Lab | None = None
    mesh: MeshLab | None = None
    try:
        with _signals_raise():
            lab = Lab()
            mesh = MeshLab(lab, workdir, echo=echo)
            names = ["alpha", "beta", "gamma"]
            for n in names:
                mesh.add_peer(n, behind_nat=(n == "gamma"))
            step(
                f"lab: coordinator {mesh.coord_host.address}, alpha and beta on the wan "
                f"(100.64.0.0/24), gamma behind a full-cone NAT ({mesh.nat.outside_address})"
            )
            mesh.start_coordinator()
            step(f"coordinator up: {mesh.server_url} (STUN on udp 3478)")
            for p in mesh.start_peers(names):
                step(f"{p.name} joined: mesh IP {p.mesh_ip}, TUN tm0 up")
            took = mesh.wait_links(timeout=40)
            step(f"every peer has a link to every other ({took:.1f} s)")
            rows: list[tuple[str, ...]] = [
                ("FROM", "TO", "MESH IP", "BY NAME", "TRANSPORT", "PATH", "RTT", "THROUGHPUT")
            ]
            failures = 0
            port = 5201
            for src in names:
                status = {p["name"]: p for p in mesh.peers[src].status()["peers"]}
                for dst in names:
                    if dst == src:
                        continue
                    ip = mesh.peers[dst].mesh_ip
                    by_ip = mesh.ping(src, ip)
                    by_name = mesh.ping(src, f"{dst}.{DOMAIN}", count=1)
                    name_ok = by_name is not None and by_name[0] == ip
                    rate = "-"
                    if by_ip is not None:
                        port += 1
                        try:
                            r = mesh.transfer(src, dst, seconds=transfer_seconds, port=port)
                            rate = _fmt_rate(r["mbps"])
                        except (LabError, TunnelmeshError) as exc:
                            rate = f"failed ({str(exc).splitlines()[0][:40]})"
                    if by_ip is None or not name_ok:
                        failures += 1
                    st = status.get(dst, {})
                    rows.append(
                        (
                            src,
                            dst,
                            ip,
                            "ok" if name_ok else "FAILED",
                            st.get("transport") or "-",
                            st.get("endpoint") or "-",
                            f"{by_ip[1]:.2f} ms" if by_ip else "FAILED",
                            rate,
                        )
                    )
                    step(
                        f"{src} -> {dst}: ping {ip} "
                        f"{'ok' if by_ip else 'FAILED'}, {dst}.{DOMAIN} "
                        f"{'ok' if name_ok else 'FAILED'}, transfer {rate}"
                    )
            say("")
            say(format_table(rows))
            say("")
            ok = failures == 0
            if ok:
                say(f"all {len(rows) - 1} paths work, by name and by IP")
            else:
                say(f"{failures} of {len(rows) - 1} paths FAILED")
            finished = True
            if duration is None:
                step("mesh is up; Ctrl-C to stop and remove everything")
                while True:
                    time.sleep(3600)
            elif duration > 0:
                step(f"mesh is up; stopping in {duration:g} s (or Ctrl-C)")
                time.sleep(duration)
    except DemoInterrupted as exc:
        say("")
        step(f"{exc}: stopping")
    finally:
        with contextlib.suppress(DemoInterrupted), _ignore_signals():
            if mesh is not None:
                mesh.close()
            if lab is not None:
                lab.close()
            shutil.rmtree(workdir, ignore_errors=True)
            step("removed every namespace, process and file the demo made")
    if not finished:
        return 130
    return 0 if ok else 1


@contextlib.contextmanager
def _ignore_signals() -> Iterator[None]:
    """Cleanup must not be interrupted half-way by a second Ctrl-C."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
