"""FilterService over a real control socket, and `tunnelmesh filter` end to end against it."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from tunnelmesh._manager import make_plugin_manager
from tunnelmesh.cli import build_cli
from tunnelmesh.config import FilterConfig, FilterRule
from tunnelmesh.control_socket import ControlError, ControlServer, arequest, request
from tunnelmesh.filter import FilterService, Layer, PortFilter, Rule
from tunnelmesh.filter.craft import ACK, SYN, tcp

ME, A = "10.42.0.1", "10.42.0.2"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Daemon:
    """A FilterService serving on a unix socket from an event loop in a thread."""

    def __init__(self, path: Path, service: FilterService) -> None:
        self.path = path
        self.service = service
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Daemon:
        self.thread.start()
        self.call(self.service.start(socket_path=self.path))
        return self

    def call(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)  # type: ignore[arg-type]

    def __exit__(self, *exc: object) -> None:
        self.call(self.service.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def daemon(tmp_path: Path, clock: Clock) -> Iterator[Daemon]:
    engine = PortFilter(default_deny=True, clock=clock)
    service = FilterService(engine, local_name="me", clock=clock)
    service.apply_config(
        FilterConfig(default_deny=True, rules=[FilterRule(port=22, source_peer="alpha")])
    )
    service.set_coordinator_rules([Rule(port=3306, action="deny")])
    service.set_service_ports([("tcp", 443)])
    with Daemon(tmp_path / "ctl.sock", service) as d:
        yield d


def run_cli(daemon: Daemon, *args: str) -> tuple[int, str]:
    pm = make_plugin_manager(entry_points=False)
    result = CliRunner().invoke(
        build_cli(pm),
        ["filter", *args],
        obj=pm,
        env={"TUNNELMESH_CONTROL_SOCKET": str(daemon.path)},
    )
    return result.exit_code, result.output + (
        str(result.exception or "") if result.exit_code else ""
    )


def test_socket_is_private(daemon: Daemon) -> None:
    mode = os.stat(daemon.path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


def test_list_shows_every_layer(daemon: Daemon) -> None:
    data = request(daemon.path, "filter.list")
    layers = {(r["layer"], r["port"], r["action"]) for r in data["rules"]}
    assert layers == {
        ("coordinator", 3306, "deny"),
        ("config", 22, "allow"),
        ("service", 443, "allow"),
    }
    assert data["default_deny"] is True


def test_cli_add_list_remove_applies_without_restart(daemon: Daemon, clock: Clock) -> None:
    engine = daemon.service.engine
    syn = tcp(A, ME, 40000, 8080, SYN)
    assert engine.verdicts([syn], "alpha", True, now=clock.now) == [False]
    code, out = run_cli(daemon, "add", "--port", "8080", "--source-peer", "alpha")
    assert code == 0, out
    assert "allow tcp/8080 from alpha" in out
    assert engine.verdicts([syn], "alpha", True, now=clock.now) == [True]
    code, out = run_cli(daemon, "list")
    assert code == 0, out
    line = next(ln for ln in out.splitlines() if "8080" in ln)
    assert line.split()[:5] == ["runtime", "tcp", "8080", "allow", "alpha"]
    assert line.split()[-2:] == ["1", "0"]  # the SYN above was counted
    code, out = run_cli(daemon, "remove", "--port", "8080", "--source-peer", "alpha")
    assert code == 0, out
    assert engine.verdicts([tcp(A, ME, 40001, 8080, SYN)], "alpha", True, now=clock.now) == [False]
    code, out = run_cli(daemon, "remove", "--port", "8080")
    assert code == 1 and "no runtime rule for tcp port 8080" in out


def test_cli_deny_cuts_a_live_flow(daemon: Daemon, clock: Clock) -> None:
    engine = daemon.service.engine
    assert engine.verdicts([tcp(A, ME, 40000, 22, SYN)], "alpha", True, now=clock.now) == [True]
    assert engine.verdicts([tcp(A, ME, 40000, 22, ACK)], "alpha", True, now=clock.now) == [True]
    code, out = run_cli(daemon, "add", "--port", "22", "--action", "deny", "--source-peer", "alpha")
    assert code == 0, out
    assert engine.verdicts([tcp(A, ME, 40000, 22, ACK)], "alpha", True, now=clock.now) == [False]


def test_ttl_rule_expires(daemon: Daemon, clock: Clock) -> None:
    code, out = run_cli(daemon, "add", "--port", "9000", "--protocol", "udp", "--ttl", "30")
    assert code == 0, out
    assert any(r["port"] == 9000 for r in request(daemon.path, "filter.list")["rules"])
    clock.now += 31
    assert not any(r["port"] == 9000 for r in request(daemon.path, "filter.list")["rules"])


def test_add_rejects_bad_requests(daemon: Daemon) -> None:
    with pytest.raises(ControlError, match="this peer itself"):
        request(daemon.path, "filter.add", {"port": 80, "source_peer": "me"})
    with pytest.raises(ControlError, match="ttl"):
        request(daemon.path, "filter.add", {"port": 80, "ttl": 10**9})
    with pytest.raises(ControlError, match="protocol"):
        request(daemon.path, "filter.add", {"port": 80, "protocol": "sctp"})
    with pytest.raises(ControlError, match="port"):
        request(daemon.path, "filter.add", {"port": 0})
    with pytest.raises(ControlError, match="unknown command"):
        request(daemon.path, "filter.frobnicate")
    code, out = run_cli(daemon, "add", "--port", "70000")
    assert code == 2 and "70000" in out
    # The daemon keeps serving.
    assert request(daemon.path, "filter.list")["default_deny"] is True


def test_malformed_lines_get_an_error_and_the_server_keeps_serving(daemon: Daemon) -> None:
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(daemon.path))
        s.sendall(b"not json\n")
        reply = json.loads(s.makefile().readline())
    assert reply == {"ok": False, "error": "malformed request"}
    assert request(daemon.path, "filter.list")["tracked"] == 0


def test_async_client(daemon: Daemon) -> None:
    data = asyncio.run(arequest(daemon.path, "filter.list"))
    assert data["default_deny"] is True


def test_no_daemon_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="not running"):
        request(tmp_path / "missing.sock", "filter.list")
    pm = make_plugin_manager(entry_points=False)
    result = CliRunner().invoke(
        build_cli(pm), ["filter", "list", "--socket", str(tmp_path / "x.sock")], obj=pm
    )
    assert result.exit_code == 1
    assert "daemon is not running" in str(result.exception)


def test_stale_socket_file_is_replaced_and_a_live_one_is_not(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "ctl.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens

    async def main() -> None:
        server = ControlServer(path, {"ping": lambda p: "pong"})
        await server.start()
        try:
            assert await arequest(path, "ping") == "pong"
            with pytest.raises(ControlError, match="another tunnelmesh daemon"):
                await ControlServer(path).start()
        finally:
            await server.aclose()
        assert not path.exists()

    asyncio.run(main())


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_only_root_can_use_the_socket(daemon: Daemon) -> None:
    import errno

    from tunnelmesh.control_socket import _connect_error

    code = (
        "import os, socket\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        f"    s.connect({str(daemon.path)!r}); print('connected')\n"
        "except OSError as exc:\n"
        "    print(exc.errno)\n"
    )
    # The socket's directory must be traversable by the other user for this check.
    os.chmod(daemon.path.parent, 0o755)
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd="/",
    ).stdout.strip()
    assert out == str(errno.EACCES)
    assert "run as root" in str(_connect_error(str(daemon.path), OSError(errno.EACCES, "x")))


def test_peer_credentials_are_checked(tmp_path: Path) -> None:
    async def main() -> None:
        async with ControlServer(tmp_path / "c.sock", {"x": lambda p: 1}, allowed_uids=frozenset()):
            with pytest.raises(ControlError, match="run as root"):
                await arequest(tmp_path / "c.sock", "x")

    asyncio.run(main())


def test_service_from_config_and_layers() -> None:
    cfg = FilterConfig(
        default_deny=False, allow_icmp=False, rules=[FilterRule(port=25, action="deny")]
    )
    service = FilterService.from_config(cfg, local_name="me")
    assert service.engine.default_deny is False and service.engine.allow_icmp is False
    assert [r.port for r in service.engine.layer_rules(Layer.CONFIG)] == [25]
    assert not service.engine.decide("tcp", 25, "alpha")
    service.set_coordinator_rules([FilterRule(port=80, action="deny")])
    assert not service.engine.decide("tcp", 80, "alpha")


def test_config_rules_take_a_peer_id_and_follow_that_key() -> None:
    """A peer's own rule may name its source by peer ID (as the peer.yaml template shows): it
    applies to the name that key has now, and a key that takes the name later gets nothing."""
    key, other = "3f2a9c0d1e4b5a67", "0123456789abcdef"
    cfg = FilterConfig(rules=[FilterRule(port=3306, action="deny", source_peer=key)])
    service = FilterService.from_config(cfg, local_name="me")
    syn = tcp("10.42.0.5", "10.42.0.1", 40000, 3306, SYN)
    names = {key: "db-client"}
    service.follow_peers(names.get)
    assert service.engine.verdicts([syn], "db-client", True) == [False]
    assert service.engine.verdicts([syn], "alpha", True) == [True]
    # the key is renamed: the rule follows it
    names[key] = "db-client-2"
    service.follow_peers(names.get)
    syn = tcp("10.42.0.5", "10.42.0.1", 40001, 3306, SYN)
    assert service.engine.verdicts([syn], "db-client-2", True) == [False]
    # another key registers the old name: it is not denied
    names[other] = "db-client"
    service.follow_peers(names.get)
    syn = tcp("10.42.0.6", "10.42.0.1", 40002, 3306, SYN)
    assert service.engine.verdicts([syn], "db-client", True) == [True]
    # the key leaves: its rule matches nobody
    del names[key]
    service.follow_peers(names.get)
    assert service.engine.layer_rules(Layer.CONFIG) == []
    # a name still works as before
    named = FilterService.from_config(
        FilterConfig(rules=[FilterRule(port=22, action="deny", source_peer="beta")])
    )
    assert not named.engine.decide("tcp", 22, "beta")
