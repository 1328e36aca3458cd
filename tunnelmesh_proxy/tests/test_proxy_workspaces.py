"""Workspace isolation: the LD_PRELOAD shim (built with the system compiler) and namespace mode."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tunnelmesh_proxy.netns import namespace_name, workspace_connector
from tunnelmesh_proxy.routing import CmuxRule, Router, workspace_ip
from tunnelmesh_proxy.server import ProxyServer
from tunnelmesh_proxy.shim import build_shim, shim_environment
from tunnelmesh_proxy.testing import read_response, request_bytes

MAIN = "import sys; from tunnelmesh.cli import main; sys.exit(main())"

# An HTTP server on 0.0.0.0 (or argv[2]) and port argv[1]; says "ready" once listening.
SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = ("%s:%d" % self.connection.getsockname()[:2]).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
srv = http.server.HTTPServer((sys.argv[2] if len(sys.argv) > 2 else "0.0.0.0", int(sys.argv[1])), H)
print("ready", flush=True)
srv.serve_forever()
"""

# Connects to localhost:argv[1] and prints what the server says (or the error).
CLIENT = """
import socket, sys
print(socket.getaddrinfo("localhost", int(sys.argv[1]), type=socket.SOCK_STREAM)[0][4][0])
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
except OSError as exc:
    print("refused" if isinstance(exc, ConnectionRefusedError) else repr(exc)); sys.exit(0)
s.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
data = b""
while chunk := s.recv(4096):
    data += chunk
print(data.rpartition(b"\\r\\n\\r\\n")[2].decode())
"""

needs_cc = pytest.mark.skipif(
    shutil.which("cc") is None, reason="needs a C compiler (apt-get install gcc)"
)


def _wait_ready(proc: subprocess.Popen[str], timeout: float = 30) -> None:
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    assert out and out[0].strip() == "ready", f"server did not start: {out}"


@contextlib.contextmanager
def in_workspace(
    workspace: str, *cmd: str, netns: bool = False, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    args = [sys.executable, "-c", MAIN, "proxy", "run", "--workspace", workspace]
    if netns:
        args.append("--netns")
    proc = subprocess.Popen([*args, "--", *cmd], stdout=subprocess.PIPE, text=True, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        proc.stdout.close()  # type: ignore[union-attr]


async def fetch_via_proxy(workspace: str, port: int, **options: object) -> tuple[int, bytes]:
    server = ProxyServer(Router([CmuxRule()]), **options)
    await server.listen([("127.0.0.1", 0)])
    try:
        reader, writer = await asyncio.open_connection(*server.addresses[0])
        headers = {"X-Cmux-Port-Internal": str(port), "X-Cmux-Workspace-Internal": workspace}
        writer.write(request_bytes("/", headers))
        resp = await read_response(reader)
        writer.close()
        return resp.status, resp.body
    finally:
        await server.aclose(grace=1)


def client_in(workspace: str, port: int, env: dict[str, str]) -> list[str]:
    """What CLIENT prints when run in ``workspace``: the IP of localhost, then the answer."""
    cmd = [sys.executable, "-c", MAIN, "proxy", "run", "-w", workspace, "--"]
    proc = subprocess.run(
        [*cmd, sys.executable, "-c", CLIENT, str(port)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    return proc.stdout.split()


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# --- the LD_PRELOAD shim -----------------------------------------------------------------------------


@needs_cc
def test_shim_builds_once_per_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    lib = build_shim(None)
    assert lib.is_file() and lib.is_relative_to(tmp_path) and lib.suffix == ".so"
    mtime = lib.stat().st_mtime_ns
    assert build_shim(None) == lib and lib.stat().st_mtime_ns == mtime  # reused
    other = build_shim(tmp_path / "out" / "x.so")
    assert other.is_file()


def test_shim_environment_prepends_the_preload() -> None:
    env = shim_environment(
        {"LD_PRELOAD": "/a.so", "CMUX_PRELOAD_DISABLE": "1"}, "/s.so", "workspace-1"
    )
    assert env["LD_PRELOAD"] == "/s.so /a.so"
    assert env["CMUX_WORKSPACE_INTERNAL"] == "workspace-1"
    assert "CMUX_PRELOAD_DISABLE" not in env


@needs_cc
def test_same_port_in_two_workspaces_with_the_shim(tmp_path: Path) -> None:
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
    ip_a, ip_b = workspace_ip("workspace-a"), workspace_ip("workspace-b")
    assert ip_a and ip_b
    port = free_port(ip_a)
    with in_workspace("workspace-a", sys.executable, "-c", SERVER, str(port), env=env) as a:
        _wait_ready(a)
        with in_workspace("workspace-b", sys.executable, "-c", SERVER, str(port), env=env) as b:
            _wait_ready(b)
            # both bound 0.0.0.0:port; the shim turned that into their workspace IPs
            assert asyncio.run(fetch_via_proxy("workspace-a", port)) == (
                200,
                f"{ip_a}:{port}".encode(),
            )
            assert asyncio.run(fetch_via_proxy("workspace-b", port)) == (
                200,
                f"{ip_b}:{port}".encode(),
            )
            # a client in workspace-b reaching 127.0.0.1:port gets workspace-b's server...
            assert client_in("workspace-b", port, env) == [ip_b, f"{ip_b}:{port}"]
            # ...and one in a workspace without a server reaches nothing
            assert client_in("workspace-c", port, env) == [workspace_ip("workspace-c"), "refused"]


@needs_cc
def test_shim_detects_a_workspace_directory_and_can_be_disabled(tmp_path: Path) -> None:
    lib = build_shim(tmp_path / "lib.so")
    script = "import socket; print(socket.getaddrinfo('localhost', 80, type=socket.SOCK_STREAM)[0][4][0])"
    base = {k: v for k, v in os.environ.items() if not k.startswith("CMUX_")}

    def resolve(cwd: Path, **env: str) -> str:
        out = subprocess.run(
            [sys.executable, "-c", script],
            cwd=cwd,
            env={**base, "LD_PRELOAD": str(lib), **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return out.stdout.strip()

    ws = tmp_path / "workspace-9"
    ws.mkdir()
    (ws / "src").mkdir()
    assert resolve(ws) == "127.18.0.9"
    assert resolve(ws / "src") in ("127.0.0.1", "::1")  # only the basename counts
    assert resolve(tmp_path, CMUX_WORKSPACE_INTERNAL="/x/workspace-a") == "127.18.176.32"
    assert resolve(ws, CMUX_PRELOAD_DISABLE="1") in ("127.0.0.1", "::1")


@needs_cc
def test_run_reports_a_missing_command(tmp_path: Path) -> None:
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            MAIN,
            "proxy",
            "run",
            "-w",
            "workspace-1",
            "--",
            "no-such-command-tm",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 1 and "cannot run no-such-command-tm" in proc.stderr


# --- namespace mode ------------------------------------------------------------------------------------


@pytest.mark.lab
def test_namespace_mode_isolates_and_cleans_up() -> None:
    workspace = f"workspace-{50000 + os.getpid() % 10000}"
    ip = workspace_ip(workspace)
    assert ip is not None
    ns_path = Path("/run/netns") / namespace_name(ip)
    assert not ns_path.exists()
    port = 18000 + os.getpid() % 1000
    # the server binds 127.0.0.1 only: inside its namespace nobody else has that port
    with in_workspace(
        workspace, sys.executable, "-c", SERVER, str(port), "127.0.0.1", netns=True
    ) as proc:
        _wait_ready(proc)
        assert ns_path.exists()
        links = subprocess.run(
            ["ip", "-n", ns_path.name, "-o", "link"], capture_output=True, text=True, check=True
        ).stdout
        assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]
        # from the root namespace the workspace is out of reach...
        status, _ = asyncio.run(fetch_via_proxy(workspace, port))
        assert status == 502
        # ...but a proxy started with --netns connects inside the namespace
        status, body = asyncio.run(
            fetch_via_proxy(workspace, port, connector=workspace_connector())
        )
        assert (status, body) == (200, f"127.0.0.1:{port}".encode())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) in (0, 128 + signal.SIGTERM, -signal.SIGTERM)
    assert not ns_path.exists()


@pytest.mark.lab
def test_namespace_mode_removes_the_namespace_when_the_command_fails() -> None:
    workspace = f"workspace-{60000 + os.getpid() % 5000}"
    ns_path = Path("/run/netns") / namespace_name(workspace_ip(workspace) or "")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            MAIN,
            "proxy",
            "run",
            "--netns",
            "-w",
            workspace,
            "--",
            sys.executable,
            "-c",
            "import os, sys; print(os.path.exists('/run/netns')); sys.exit(3)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 3, proc.stderr
    assert not ns_path.exists()
