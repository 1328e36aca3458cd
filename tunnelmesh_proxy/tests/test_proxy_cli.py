"""``tunnelmesh proxy`` as a process: listening line, flags and env, errors, signals, workers."""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from importlib.metadata import entry_points

import pytest
from click.testing import CliRunner
from tunnelmesh._manager import make_plugin_manager
from tunnelmesh.cli import build_cli, main

MAIN = "import sys; from tunnelmesh.cli import main; sys.exit(main())"
LISTENING = re.compile(r"^tunnelmesh proxy: listening on (?P<addrs>.+?) \(")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = f"{self.server.server_address[0]} {self.path}".encode()  # type: ignore[index]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def upstream(host: str) -> Iterator[int]:
    server = http.server.ThreadingHTTPServer((host, 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CMUX_", "TUNNELMESH_PROXY_"))}
    env.update(extra)
    return env


@contextlib.contextmanager
def proxy_process(
    *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], list[tuple[str, int]]]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", MAIN, "proxy", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or clean_env(),
    )
    try:
        line = _readline(proc, 20)
        match = LISTENING.match(line)
        assert match, (
            f"no listening line: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        )
        addrs = []
        for item in match.group("addrs").split(", "):
            host, _, port = item.rpartition(":")
            addrs.append((host.strip("[]"), int(port)))
        yield proc, addrs
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    return out[0] if out else ""


def get(addr: tuple[str, int], path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    with socket.create_connection(addr, timeout=10) as sock:
        lines = [
            f"GET {path} HTTP/1.1",
            "Host: t",
            "Connection: close",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> int:
    proc.send_signal(sig)
    return proc.wait(20)


# --- serving ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serves_and_stops_gracefully(sig: int) -> None:
    with upstream("127.18.1.1") as port, proxy_process("--listen", "127.0.0.1:0") as (proc, addrs):
        assert addrs[0][0] == "127.0.0.1"
        headers = {"X-Cmux-Port-Internal": str(port), "X-Cmux-Workspace-Internal": "workspace-257"}
        assert get(addrs[0], "/x", headers) == (200, b"127.18.1.1 /x")
        assert stop(proc, sig) == 0


def test_cmux_env_vars_are_used_and_flags_win() -> None:
    env = clean_env(CMUX_LISTEN="127.0.0.1:0", CMUX_UPSTREAM_HOST="127.18.1.2")
    with upstream("127.18.1.2") as port, proxy_process(env=env) as (proc, addrs):
        assert get(addrs[0], "/", {"X-Cmux-Port-Internal": str(port)}) == (200, b"127.18.1.2 /")
        assert stop(proc) == 0
    env = clean_env(CMUX_LISTEN="not-an-address", CMUX_UPSTREAM_HOST="127.18.1.99")
    with (
        upstream("127.18.1.3") as port,
        proxy_process("--listen", "127.0.0.1:0", "--upstream-host", "127.18.1.3", env=env) as (
            proc,
            addrs,
        ),
    ):
        assert get(addrs[0], "/", {"X-Cmux-Port-Internal": str(port)}) == (200, b"127.18.1.3 /")
        assert stop(proc) == 0


def test_tunnelmesh_env_vars_win_over_cmux_ones() -> None:
    env = clean_env(
        TUNNELMESH_PROXY_LISTEN="127.0.0.1:0",
        CMUX_LISTEN="bad",
        TUNNELMESH_PROXY_UPSTREAM_HOST="127.18.1.4",
    )
    with upstream("127.18.1.4") as port, proxy_process(env=env) as (proc, addrs):
        assert get(addrs[0], "/", {"X-Cmux-Port-Internal": str(port)}) == (200, b"127.18.1.4 /")
        assert stop(proc) == 0


def test_listen_list_is_deduplicated() -> None:
    args = ("--listen", "127.0.0.1:0,127.0.0.1:0", "--listen", "127.0.0.1:0")
    with proxy_process(*args) as (proc, addrs):
        assert len(addrs) == 1
        assert get(addrs[0], "/", {}) == (400, b"missing required header: X-Cmux-Port-Internal")
        assert stop(proc) == 0


def test_two_workers_share_the_sockets() -> None:
    with (
        upstream("127.18.1.5") as port,
        proxy_process("--listen", "127.0.0.1:0", "--workers", "2") as (
            proc,
            addrs,
        ),
    ):
        for i in range(6):
            assert get(
                addrs[0],
                f"/{i}",
                {"X-Cmux-Port-Internal": str(port), "X-Cmux-Workspace-Internal": "w-261"},
            ) == (
                200,
                f"127.18.1.5 /{i}".encode(),
            )
        assert stop(proc) == 0


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("item", ["localhost:8080", "8080", ":8080", "127.0.0.1:99999"])
def test_bad_listen_is_a_usage_error(item: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["proxy", "--listen", item]) == 2
    err = capsys.readouterr().err
    assert "--listen" in err and "invalid socket address" in err


def test_bind_failure_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["proxy", "--listen", f"127.0.0.1:{port}"]) == 1
    out = capsys.readouterr()
    assert out.err.strip().splitlines() == [
        f"tunnelmesh: error: cannot listen on 127.0.0.1:{port}: address already in use"
    ]
    assert out.out == ""


# --- help, plugin wiring -----------------------------------------------------------------------------


def test_help_names_every_env_var() -> None:
    result = CliRunner().invoke(build_cli(), ["proxy", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for var in (
        "TUNNELMESH_PROXY_LISTEN",
        "CMUX_LISTEN",
        "TUNNELMESH_PROXY_UPSTREAM_HOST",
        "CMUX_UPSTREAM_HOST",
        "TUNNELMESH_PROXY_WORKERS",
        "TUNNELMESH_PROXY_HEADER_TIMEOUT",
        "TUNNELMESH_PROXY_IDLE_TIMEOUT",
        "TUNNELMESH_PROXY_PEERS_FILE",
        "TUNNELMESH_PROXY_NETNS",
        "TUNNELMESH_PROXY_MESH",
    ):
        assert var in text
    options = re.findall(r"^\s+(--[a-z-]+)", result.output, re.M)
    assert text.count("env var:") >= len(options) - 1  # every option but --help
    for sub in ("shim", "run"):
        assert sub in result.output


def test_run_needs_a_command() -> None:
    result = CliRunner().invoke(build_cli(), ["proxy", "run", "--workspace", "workspace-1"])
    assert result.exit_code == 2 and "COMMAND" in result.output


def test_entry_point_loads_and_registers_rules_in_order() -> None:
    (ep,) = [ep for ep in entry_points(group="tunnelmesh") if ep.name == "proxy"]
    assert ep.value == "tunnelmesh_proxy.plugin"
    assert ep.dist is not None and ep.dist.name == "tunnelmesh-proxy"
    registry = make_plugin_manager().build_registry()
    names = list(registry.proxy_rules)
    assert names.index("mesh") < names.index("cmux")
    assert registry.provided_by("proxy") == {"proxy rule": ["cmux", "mesh"]}


def test_peers_file_feeds_the_mesh_rule(tmp_path) -> None:  # type: ignore[no-untyped-def]
    peers = tmp_path / "hosts"
    peers.write_text("127.18.1.6 web.tunnelmesh\n")
    with (
        upstream("127.18.1.6") as port,
        proxy_process("--mesh", "--listen", "127.0.0.1:0", "--peers-file", str(peers)) as (
            proc,
            addrs,
        ),
    ):
        assert get(
            addrs[0], "/p", {"X-Tunnelmesh-Peer": "web", "X-Cmux-Port-Internal": str(port)}
        ) == (
            200,
            b"127.18.1.6 /p",
        )
        assert get(
            addrs[0], "/", {"X-Tunnelmesh-Peer": "db", "X-Cmux-Port-Internal": str(port)}
        ) == (
            400,
            b"unknown peer: db",
        )
        assert stop(proc) == 0


def test_mesh_rule_is_off_by_default(tmp_path) -> None:  # type: ignore[no-untyped-def]
    peers = tmp_path / "hosts"
    peers.write_text("127.18.1.6 web.tunnelmesh\n")
    with (
        upstream("127.0.0.1") as port,
        proxy_process("--listen", "127.0.0.1:0", "--peers-file", str(peers)) as (proc, addrs),
    ):
        # Without --mesh the peer header is not a route: the request goes where the cmux
        # rule sends it (the upstream host), not to the peer's 127.18.1.6.
        assert get(
            addrs[0], "/p", {"X-Tunnelmesh-Peer": "web", "X-Cmux-Port-Internal": str(port)}
        ) == (200, b"127.0.0.1 /p")
        assert stop(proc) == 0


@pytest.mark.parametrize(
    ("args", "warned"),
    [
        (["--mesh", "--listen", "0.0.0.0:8080,127.0.0.1:8080"], "0.0.0.0:8080"),
        (["--mesh", "--listen", "[::]:8080"], "[::]:8080"),
        (["--mesh", "--listen", "127.0.0.1:8080,[::1]:8080"], None),
        (["--listen", "0.0.0.0:8080"], None),  # no mesh rule: nothing to warn about
    ],
)
def test_mesh_rule_on_a_non_loopback_address_warns(
    args: list[str], warned: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tunnelmesh_proxy.server

    seen: list[object] = []

    def fake_serve(make_router, addresses, **kwargs):  # type: ignore[no-untyped-def]
        seen.append([rule.name for rule in make_router().rules])
        return 0

    # In-process, with serve() replaced: nothing binds a non-loopback address.
    monkeypatch.setattr(tunnelmesh_proxy.server, "serve", fake_serve)
    result = CliRunner().invoke(build_cli(), ["proxy", *args])
    assert result.exit_code == 0, result.output
    assert seen == [["mesh", "cmux"] if "--mesh" in args else ["cmux"]]
    if warned is None:
        assert "warning" not in result.output
    else:
        assert f"warning: the mesh rule (--mesh) listens on {warned}:" in result.output
        assert "127.0.0.1" not in result.output.split("listens on", 1)[1].split(":")[0]


def test_mesh_exposure_names_only_non_loopback_addresses() -> None:
    from tunnelmesh_proxy.cli import mesh_exposure
    from tunnelmesh_proxy.mesh import MeshPeerRule
    from tunnelmesh_proxy.routing import CmuxRule, Router

    addrs = [("0.0.0.0", 8080), ("127.0.0.1", 8080), ("::1", 8081), ("::", 8082)]
    with_mesh = Router([MeshPeerRule(dict().get), CmuxRule()])
    assert mesh_exposure(with_mesh, addrs) == ["0.0.0.0:8080", "[::]:8082"]
    assert mesh_exposure(Router([CmuxRule()]), addrs) == []
