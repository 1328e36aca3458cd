"""Namespace mode: a workspace in a network namespace of its own (root only).

The LD_PRELOAD shim cannot catch statically linked programs or raw syscalls; a network
namespace isolates anything. ``tunnelmesh proxy run --netns --workspace NAME -- CMD`` creates
the namespace ``tmws-X-Y`` for the workspace IP ``127.18.X.Y`` (loopback only: no other
interface, no route out), adds that IP to its ``lo``, runs CMD inside and removes the namespace
(and any process left in it) when CMD ends.

The proxy reaches such a workspace when started with ``--netns``: for an upstream
``127.18.X.Y`` whose namespace exists, :func:`workspace_connector` creates the socket inside the
namespace (``setns`` around ``socket()``; the socket stays there) and connects to the workspace
IP, then to 127.0.0.1 (a server that bound only 127.0.0.1 in its private namespace).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
from collections.abc import Awaitable, Callable, Sequence

from tunnelmesh.abc import Upstream
from tunnelmesh.errors import ConfigError

from tunnelmesh_proxy.routing import workspace_ip

__all__ = ["namespace_name", "run_in_namespace", "workspace_connector"]

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
_WORKSPACE_IP = re.compile(r"127\.18\.(\d{1,3})\.(\d{1,3})")


def namespace_name(ip: str) -> str:
    """``127.18.X.Y`` to the namespace name ``tmws-X-Y``."""
    match = _WORKSPACE_IP.fullmatch(ip)
    if match is None:
        raise ValueError(f"not a workspace IP: {ip}")
    return f"tmws-{match.group(1)}-{match.group(2)}"


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def socket_in_namespace(path: str, family: int = socket.AF_INET) -> socket.socket:
    """A non-blocking TCP socket created inside the network namespace at ``path``.

    Only the calling thread switches namespace, and only around ``socket()``.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
        try:
            _setns(target)
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            finally:
                _setns(own)
        finally:
            os.close(target)
    finally:
        os.close(own)
    sock.setblocking(False)
    return sock


def workspace_connector(
    netns_dir: str = NETNS_DIR,
) -> Callable[[Upstream], Awaitable[socket.socket | None]]:
    """The proxy's connector for ``--netns`` (see the module docstring)."""

    async def connect(upstream: Upstream) -> socket.socket | None:
        match = _WORKSPACE_IP.fullmatch(upstream.host)
        if match is None:
            return None
        path = os.path.join(netns_dir, f"tmws-{match.group(1)}-{match.group(2)}")
        if not os.path.exists(path):
            return None
        loop = asyncio.get_running_loop()
        error: OSError | None = None
        for host in (upstream.host, "127.0.0.1"):
            sock = socket_in_namespace(path)
            try:
                await loop.sock_connect(sock, (host, upstream.port))
            except ConnectionRefusedError as exc:
                sock.close()
                error = exc
                continue
            except BaseException:
                sock.close()
                raise
            return sock
        assert error is not None
        raise error

    return connect


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            ["ip", *args], capture_output=True, text=True, timeout=30, check=False
        )
    except FileNotFoundError:
        raise ConfigError(
            "namespace mode needs iproute2's `ip` (apt-get install iproute2)"
        ) from None
    if check and proc.returncode != 0:
        raise ConfigError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def _kill_namespace_processes(name: str) -> None:
    for _ in range(50):
        pids = [int(p) for p in _ip("netns", "pids", name, check=False).stdout.split()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(-1, os.WNOHANG)


def run_in_namespace(workspace: str, command: Sequence[str], netns_dir: str = NETNS_DIR) -> int:
    """Run ``command`` in the workspace's own network namespace; return its exit status.

    Raises:
        ConfigError: not root, no ``ip``, the workspace already runs in a namespace.
    """
    if os.geteuid() != 0:
        raise ConfigError("namespace mode needs root (or use the LD_PRELOAD shim without --netns)")
    ip = workspace_ip(workspace)
    if ip is None:
        raise ConfigError(f"invalid workspace name: {workspace}")
    name = namespace_name(ip)
    if os.path.exists(os.path.join(netns_dir, name)):
        raise ConfigError(f"workspace {workspace} already runs in network namespace {name}")
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "addr", "add", f"{ip}/32", "dev", "lo")
        env = dict(os.environ, CMUX_WORKSPACE_INTERNAL=workspace)
        env.pop("LD_PRELOAD", None)
        try:
            child = subprocess.Popen(["ip", "netns", "exec", name, *command], env=env)
        except OSError as exc:
            raise ConfigError(f"cannot run {command[0]}: {exc.strerror}") from None

        def forward(signum: int, _frame: object) -> None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

        old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            status = child.wait()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
        return status if status >= 0 else 128 - status
    finally:
        _kill_namespace_processes(name)
        _ip("netns", "del", name, check=False)
