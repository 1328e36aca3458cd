"""A mesh of real processes in the namespace lab: the demo's and the e2e tests' harness.

:class:`MeshLab` runs real ``tunnelmesh serve`` and ``tunnelmesh join`` processes in hosts of
a :class:`~tunnelmesh.testing.lab.Lab`: start a coordinator and peers, wait for their links,
ping, resolve names, time TCP transfers (:class:`Transfer`, with
:mod:`tunnelmesh.testing.transfer`), restart and stop them. ``tunnelmesh demo``
(:mod:`tunnelmesh.testing.demo`) and the e2e lab tests are built on it.

Names resolve through each peer's own mesh DNS resolver: the node serves it on
``127.0.0.53:53`` inside its namespace, and ``/etc/netns/<namespace>/resolv.conf`` (which
``ip netns exec`` bind-mounts over ``/etc/resolv.conf``) points there; those files are removed
at teardown. Nothing is sent outside the lab's namespaces, and the namespaces have no route to
the machine's own network.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunnelmesh.control_socket import ControlError, request
from tunnelmesh.errors import LabError
from tunnelmesh.testing.lab import Host, Lab

__all__ = ["DOMAIN", "NETNS_ETC", "TOKEN", "MeshLab", "NodeProcess", "Peer", "Transfer"]

TOKEN = "demo-token-" + "0123456789abcdef" * 2
NETNS_ETC = Path("/etc/netns")
DOMAIN = "tunnelmesh"


class NodeProcess:
    """A tunnelmesh process in a lab host; its output is collected by a reader thread."""

    def __init__(
        self, name: str, proc: subprocess.Popen[str], echo: Callable[[str], None] | None
    ) -> None:
        self.name = name
        self.proc = proc
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._echo = echo
        self._terminated = False
        self._thread = threading.Thread(target=self._read, name=f"out-{name}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
            if self._echo is not None:
                self._echo(f"[{self.name}] {line}")
        with self._cond:
            self._cond.notify_all()

    def wait_line(self, pattern: str, timeout: float, start: int = 0) -> re.Match[str]:
        """The first output line (from index ``start``) matching ``pattern``.

        Raises:
            LabError: no such line within ``timeout`` s, or the process ended first.
        """
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        i = start
        with self._cond:
            while True:
                while i < len(self.lines):
                    m = rx.search(self.lines[i])
                    if m:
                        return m
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._thread.is_alive()):
                    tail = "\n".join(self.lines[-15:])
                    state = "exited" if self.proc.poll() is not None else "still running"
                    raise LabError(
                        f"{self.name}: no line matching {pattern!r} within {timeout:g} s "
                        f"({state}); last output:\n{tail}"
                    )
                self._cond.wait(min(left, 0.5))

    def terminate(self) -> None:
        """Send SIGTERM once and return at once (:meth:`stop` then waits without a second one);
        several processes told so stop side by side."""
        if self.proc.poll() is None and not self._terminated:
            self._terminated = True
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (unless :meth:`terminate` sent it), wait, SIGKILL when it does not stop;
        returns the exit code."""
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._thread.join(5)
        return self.proc.returncode


@dataclass
class Peer:
    """A mesh peer of the lab: its host, home directory, process and mesh IP."""

    name: str
    host: Host
    home: Path
    behind_nat: bool = False
    node: NodeProcess | None = None
    mesh_ip: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def control_socket(self) -> Path:
        return self.home / "node.sock"

    def status(self) -> dict[str, Any]:
        """The node's ``node.status`` (over its control socket, a file: no network)."""
        data: dict[str, Any] = request(self.control_socket, "node.status", timeout=5)
        return data


class MeshLab:
    """A coordinator and peers as real processes in a namespace lab.

    Args:
        lab: an open lab (the caller closes it).
        workdir: where homes, configs and the coordinator's state go.
        echo: called with every output line of every process, prefixed with its name (None:
            quiet).
        nat_kind: the NAT in front of peers added with ``behind_nat=True``.
        heartbeat: the coordinator's heartbeat interval (seconds).
    """

    def __init__(
        self,
        lab: Lab,
        workdir: Path,
        *,
        echo: Callable[[str], None] | None = None,
        nat_kind: str = "full-cone",
        heartbeat: str = "1s",
        env: dict[str, str] | None = None,
    ) -> None:
        self.lab = lab
        self.workdir = workdir
        self.echo = echo
        self.heartbeat = heartbeat
        self.extra_env = dict(env or {})
        self.nat = lab.add_nat("nat", kind=nat_kind)  # type: ignore[arg-type]
        self.coord_host = lab.add_host("coord")
        self.coordinator: NodeProcess | None = None
        self.peers: dict[str, Peer] = {}
        self._netns_dirs: list[Path] = []
        _reap_netns_etc()
        self.server_config = workdir / "server.yaml"
        self.server_config.write_text(
            f'auth_token: "{TOKEN}"\n'
            f'listen: "{self.coord_host.address}:8443"\n'
            f'stun_listen: "{self.coord_host.address}:3478"\n'
            f'data_dir: "{workdir / "coord-state"}"\n'
            f"heartbeat_interval: {heartbeat}\n"
        )

    @property
    def server_url(self) -> str:
        return f"https://{self.coord_host.address}:8443"

    def env(self, home: Path) -> dict[str, str]:
        env = dict(os.environ)
        for key in list(env):
            if key.startswith("TUNNELMESH_") and key not in ("TUNNELMESH_LOAD_PLUGINS",):
                del env[key]
        env.update(
            TUNNELMESH_HOME=str(home),
            TUNNELMESH_TOKEN=TOKEN,
            TUNNELMESH_NO_TRUST="1",
            PYTHONUNBUFFERED="1",
            **self.extra_env,
        )
        return env

    # --- processes ------------------------------------------------------------------------

    def start_coordinator(
        self, timeout: float = 60.0, command: tuple[str, ...] = ("-m", "tunnelmesh")
    ) -> NodeProcess:
        """Run ``tunnelmesh serve`` (``command``: the Python arguments before ``serve``)."""
        home = self.workdir / "coord-home"
        proc = self.coord_host.python(
            *command,
            "serve",
            "-c",
            str(self.server_config),
            env=self.env(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.coordinator = NodeProcess("coord", proc, self.echo)
        self.coordinator.wait_line("coordinator listening", timeout)
        return self.coordinator

    def stop_coordinator(self) -> None:
        if self.coordinator is not None:
            self.coordinator.stop()
            self.coordinator = None

    def add_peer(self, name: str, *, behind_nat: bool = False, nat: Any = None) -> Peer:
        """Add a host for a peer (not started yet), with its config and resolv.conf.

        Args:
            behind_nat: behind the mesh lab's own NAT (``self.nat``).
            nat: behind this NAT instead (from ``lab.add_nat``).
        """
        if nat is None and behind_nat:
            nat = self.nat
        host = self.lab.add_host(name, switch=nat.inside if nat is not None else None)
        behind_nat = nat is not None
        home = self.workdir / name
        home.mkdir(parents=True, exist_ok=True, mode=0o700)  # a home holds secrets: owner only
        peer = Peer(name, host, home, behind_nat)
        (home / "peer.yaml").write_text(
            f"name: {name}\n"
            f'control_socket: "{peer.control_socket}"\n'
            "tun:\n  name: tm0\n"
            'dns:\n  listen: "127.0.0.53:53"\n  system: "off"\n'
        )
        self._resolv_conf(host)
        self.peers[name] = peer
        return peer

    def _resolv_conf(self, host: Host) -> None:
        NETNS_ETC.mkdir(mode=0o755, exist_ok=True)
        d = NETNS_ETC / host.ns
        d.mkdir(exist_ok=True)
        self._netns_dirs.append(d)
        (d / "resolv.conf").write_text(
            f"nameserver 127.0.0.53\nsearch {DOMAIN}\noptions timeout:1 attempts:2\n"
        )

    def start_peer(self, name: str, timeout: float = 60.0, *, server: str = "") -> Peer:
        """Run ``tunnelmesh join`` for a peer; wait until its node is up.

        Args:
            server: the coordinator URL to join through (default: the lab's coordinator).
        """
        node = self._spawn_peer(name, server)
        self._wait_registered(name, node, timeout)
        node.wait_line("node up:", timeout)
        return self.peers[name]

    def start_peers(self, names: list[str], timeout: float = 60.0) -> list[Peer]:
        """:meth:`start_peer` for each of ``names``, side by side: the first starts alone and
        registers first (so it is the mesh's admin when the coordinator is new, as with
        :meth:`start_peer` one after the other), then the others start together; returns
        when every node is up."""
        if not names:
            return []
        nodes = {names[0]: self._spawn_peer(names[0], "")}
        self._wait_registered(names[0], nodes[names[0]], timeout)
        nodes.update((n, self._spawn_peer(n, "")) for n in names[1:])
        for name, node in nodes.items():
            self._wait_registered(name, node, timeout)
            node.wait_line("node up:", timeout)
        return [self.peers[n] for n in names]

    def _spawn_peer(self, name: str, server: str) -> NodeProcess:
        """Start ``tunnelmesh join`` for a peer (returns at once)."""
        peer = self.peers[name]
        proc = peer.host.python(
            "-m",
            "tunnelmesh",
            "-c",
            str(peer.home / "peer.yaml"),
            "join",
            "--server",
            server or self.server_url,
            "--name",
            name,
            env=self.env(peer.home),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        peer.node = NodeProcess(name, proc, self.echo)
        return peer.node

    def _wait_registered(self, name: str, node: NodeProcess, timeout: float) -> None:
        m = node.wait_line(r"mesh IP (\S+),", timeout)  # joined, or resumed offline
        self.peers[name].mesh_ip = m.group(1)

    def stop_peer(self, name: str) -> None:
        peer = self.peers[name]
        if peer.node is not None:
            peer.node.stop()
            peer.node = None

    def close(self) -> None:
        """Stop every process and remove the resolv.conf files (the caller closes the lab).

        The peers get SIGTERM together and stop side by side, then the coordinator.
        """
        nodes = [peer.node for peer in self.peers.values() if peer.node is not None]
        for node in nodes:
            node.terminate()
        for node in nodes:
            with contextlib.suppress(Exception):
                node.stop(timeout=10)
        with contextlib.suppress(Exception):
            self.stop_coordinator()
        for d in self._netns_dirs:
            shutil.rmtree(d, ignore_errors=True)
        self._netns_dirs.clear()
        with contextlib.suppress(OSError):
            NETNS_ETC.rmdir()  # only when empty: nothing else uses it then

    # --- checks ---------------------------------------------------------------------------

    def wait_links(self, names: list[str] | None = None, timeout: float = 30.0) -> float:
        """Wait until every peer of ``names`` has a link to every other; returns seconds."""
        names = names or list(self.peers)
        start = time.monotonic()
        deadline = start + timeout
        missing: list[str] = []
        while True:
            missing = []
            for n in names:
                try:
                    st = self.peers[n].status()
                except ControlError as exc:
                    missing.append(f"{n}: {exc}")
                    continue
                linked = {p["name"] for p in st["peers"] if p["link"]}
                missing += [f"{n}->{o}" for o in names if o != n and o not in linked]
            if not missing:
                return time.monotonic() - start
            if time.monotonic() > deadline:
                raise LabError(f"no links after {timeout:g} s: {', '.join(missing)}")
            time.sleep(0.2)

    def ping(
        self, src: str, target: str, *, count: int = 3, deadline: float = 15.0
    ) -> tuple[str, float] | None:
        """Ping ``target`` (a mesh IP or a name) from peer ``src`` until it answers.

        Returns:
            The address ping resolved and the average RTT in ms, or None when nothing answered
            within ``deadline`` seconds.
        """
        host = self.peers[src].host
        end = time.monotonic() + deadline
        while True:
            proc = host.run(
                ["ping", "-c", str(count), "-i", "0.2", "-W", "1", target],
                check=False,
                timeout=count + 10,
            )
            m = re.search(r"rtt min/avg/max/mdev = [\d.]+/([\d.]+)/", proc.stdout)
            resolved = re.search(r"^PING \S+ \(([\d.]+)\)", proc.stdout, re.M)
            if proc.returncode == 0 and m and resolved:
                return resolved.group(1), float(m.group(1))
            if time.monotonic() > end:
                return None
            time.sleep(0.3)

    def start_transfer(
        self, src: str, dst: str, *, nbytes: int, rate: float, port: int, timeout: float = 60.0
    ) -> Transfer:
        """Start a paced TCP transfer in the background (``rate`` bytes per second);
        :meth:`Transfer.finish` waits for it and returns what :meth:`transfer` returns."""
        d = self.peers[dst]
        sink = NodeProcess(
            f"sink-{dst}",
            d.host.python(
                "-m", "tunnelmesh.testing.transfer", "sink", d.mesh_ip, str(port),
                "--timeout", str(timeout),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            ),
            None,
        )  # fmt: skip
        try:
            sink.wait_line("^ready", 20)
            sender = NodeProcess(
                f"send-{src}",
                self.peers[src].host.python(
                    "-m", "tunnelmesh.testing.transfer", "send", d.mesh_ip, str(port),
                    "--bytes", str(nbytes), "--rate", str(rate), "--timeout", str(timeout),
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                ),
                None,
            )  # fmt: skip
            sender.wait_line("^connected", 20)
        except BaseException:
            sink.stop(5)
            raise
        return Transfer(sender, sink)

    def transfer(
        self, src: str, dst: str, *, seconds: float = 0.0, nbytes: int = 0, port: int = 5201
    ) -> dict[str, Any]:
        """A TCP transfer from peer ``src`` to peer ``dst``'s mesh IP.

        Returns:
            ``sent``/``received`` byte counts, both sha256 digests, ``mbps`` and ``seconds``.
        """
        d = self.peers[dst]
        sink = NodeProcess(
            f"sink-{dst}",
            d.host.python(
                "-m",
                "tunnelmesh.testing.transfer",
                "sink",
                d.mesh_ip,
                str(port),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            ),
            None,
        )
        try:
            sink.wait_line("^ready", 20)
            args = ["--seconds", str(seconds)] if seconds else ["--bytes", str(nbytes)]
            out = (
                self.peers[src]
                .host.run(
                    [
                        sys.executable,
                        "-m",
                        "tunnelmesh.testing.transfer",
                        "send",
                        d.mesh_ip,
                        str(port),
                        *args,
                    ],
                    timeout=60,
                )
                .stdout
            )
            sent = re.search(r"sent (\d+) sha256 (\w+)", out)
            got = sink.wait_line(r"received (\d+) sha256 (\w+) seconds ([\d.]+) mbps ([\d.]+)", 20)
        finally:
            sink.stop(5)
        assert sent is not None
        return {
            "sent": int(sent.group(1)),
            "sent_sha256": sent.group(2),
            "received": int(got.group(1)),
            "received_sha256": got.group(2),
            "seconds": float(got.group(3)),
            "mbps": float(got.group(4)),
        }


class Transfer:
    """A running paced transfer (see :meth:`MeshLab.start_transfer`)."""

    def __init__(self, sender: NodeProcess, sink: NodeProcess) -> None:
        self.sender = sender
        self.sink = sink

    def finish(self, timeout: float = 60.0) -> dict[str, Any]:
        """Wait for both ends; ``sent``/``received`` counts and sha256 digests."""
        try:
            sent = self.sender.wait_line(r"sent (\d+) sha256 (\w+)", timeout)
            got = self.sink.wait_line(
                r"received (\d+) sha256 (\w+) seconds ([\d.]+) mbps ([\d.]+)", 20
            )
        finally:
            self.stop()
        return {
            "sent": int(sent.group(1)),
            "sent_sha256": sent.group(2),
            "received": int(got.group(1)),
            "received_sha256": got.group(2),
            "seconds": float(got.group(3)),
            "mbps": float(got.group(4)),
        }

    def stop(self) -> None:
        self.sender.terminate()
        self.sink.terminate()
        self.sender.stop(5)
        self.sink.stop(5)


def _reap_netns_etc() -> None:
    """Remove ``/etc/netns/<lab namespace>`` directories whose namespace is gone (a killed run)."""
    from tunnelmesh.testing import _netns

    if not NETNS_ETC.is_dir():
        return
    live = set(_netns.list_namespaces())
    prefix = _netns.DEFAULT_PREFIX + "-"
    for d in NETNS_ETC.iterdir():
        if d.name.startswith(prefix) and d.name not in live:
            shutil.rmtree(d, ignore_errors=True)
