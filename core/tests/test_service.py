"""``tunnelmesh service``: the generated units pass systemd-analyze (verify, security <= 3.0),
hold no secret, their state is 0700/0600, uninstall leaves nothing; sd_notify datagrams;
one line without systemd."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from tunnelmesh._manager import make_plugin_manager
from tunnelmesh.cli import build_cli
from tunnelmesh.control.contexts import Context, ContextStore
from tunnelmesh.identity import Identity
from tunnelmesh.service import sdnotify
from tunnelmesh.service.systemd import Unit, render_unit

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze missing (systemd)")
TOKEN = "mesh-token-" + "t0k3n" * 6
SESSION = "session-" + "s3ss" * 8


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    h.mkdir(mode=0o700)
    monkeypatch.setenv("TUNNELMESH_HOME", str(h))
    return h


@pytest.fixture
def joined(home: Path) -> Identity:
    """A context 'work' as `tunnelmesh join` leaves it (fake coordinator, real key file)."""
    ident = Identity.generate()
    ident.save(home / "id_ed25519")
    ca = home / "contexts" / "work" / "ca.pem"
    ca.parent.mkdir(parents=True, mode=0o700)
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n")
    ContextStore(home).put(
        Context(
            name="work",
            server="https://coord.example:8443",
            peer_name="alice",
            mesh_ip="10.99.0.2",
            mesh_cidr="10.99.0.0/16",
            session_token=SESSION,
            ca_path=str(ca),
            key_path=str(home / "id_ed25519"),
        )
    )
    return ident


def cli(*args: str) -> tuple[int, str]:
    pm = make_plugin_manager()
    result = CliRunner().invoke(build_cli(pm), list(args), obj=pm)
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


def secrets_of(ident: Identity, key_file: Path) -> list[str]:
    seed = ident._seed()
    out = [TOKEN, SESSION, seed.hex(), base64.b64encode(seed).decode()]
    out += [ln for ln in key_file.read_text().splitlines() if ln and not ln.startswith("-----")]
    return out


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


def fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for d in ("etc/systemd/system", "var/lib", "run"):
        (root / d).mkdir(parents=True)
    return root


def check_unit(unit: Path) -> float:
    """systemd-analyze verify (nothing on stderr) and the security exposure level."""
    assert ANALYZE is not None
    verify = subprocess.run(
        [ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert verify.stderr == "" and verify.returncode == 0, verify.stderr
    sec = subprocess.run(
        [ANALYZE, "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", sec.stdout)
    assert m, sec.stdout + sec.stderr
    return float(m.group(1))


@needs_analyze
def test_join_unit_is_valid_hardened_and_secret_free(
    joined: Identity, home: Path, tmp_path: Path
) -> None:
    root = fake_root(tmp_path)
    before = files(root)
    code, out = cli("service", "install", "--root", str(root))
    assert code == 0, out
    unit = root / "etc/systemd/system/tunnelmesh-work.service"
    state = root / "var/lib/tunnelmesh-work"
    text = unit.read_text()
    assert "Type=notify" in text and "CAP_NET_RAW" not in text
    assert "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE\n" in text
    assert "ExecStopPost=" in text and " cleanup" in text
    assert check_unit(unit) <= 3.0
    # no secret in the unit or beside it; the state directory is the owner's only
    for s in secrets_of(joined, home / "id_ed25519"):
        for f in unit.parent.rglob("*"):
            assert s not in f.read_text(errors="replace"), f
    assert (state.stat().st_mode & 0o777) == 0o700
    for f in state.rglob("*"):
        assert (f.stat().st_mode & 0o777) == (0o700 if f.is_dir() else 0o600), f
    # the service's copy works on its own: its context, key and config
    copy = ContextStore(state).get("work")
    # no join token either: the service's key re-registers with its signature alone
    assert copy.key_path == "/var/lib/tunnelmesh-work/id_ed25519"
    assert "auth_token" not in (state / "contexts.json").read_text()
    assert Identity.load(state / "id_ed25519").peer_id == joined.peer_id
    assert "control_socket: /run/tunnelmesh-work/node.sock" in (state / "peer.yaml").read_text()

    code, out = cli("service", "uninstall", "--root", str(root), "--context", "work")
    assert code == 0, out
    assert files(root) == before  # nothing left
    assert not state.exists()


@needs_analyze
def test_exit_node_unit_with_resolv_conf_still_scores_3_or_better(
    joined: Identity, home: Path, tmp_path: Path
) -> None:
    cfg = tmp_path / "peer.yaml"
    cfg.write_text(
        'allow_exit_traffic: true\ndns:\n  listen: "127.0.0.53:53"\n  system: resolv.conf\n'
    )
    root = fake_root(tmp_path)
    code, out = cli("service", "install", "--root", str(root), "-c", str(cfg))
    assert code == 0, out
    unit = root / "etc/systemd/system/tunnelmesh-work.service"
    text = unit.read_text()
    assert "ProtectKernelTunables=no" in text  # ip_forward
    assert "ReadWritePaths=/etc\n" in text  # resolv.conf swap
    assert check_unit(unit) <= 3.0


@needs_analyze
def test_serve_unit(tmp_path: Path, home: Path) -> None:
    data = tmp_path / "coord-data"
    cfg = tmp_path / "server.yaml"
    key = tmp_path / "coord-key"
    Identity.generate().save(key)
    cfg.write_text(
        f'auth_token: "{TOKEN}"\n'
        f'data_dir: "{data}"\n'
        f'join_mesh:\n  name: coord\n  private_key: "{key}"\n'
    )
    root = fake_root(tmp_path)
    before = files(root)
    code, out = cli("service", "install", "--mode", "serve", "--root", str(root), "-c", str(cfg))
    assert code == 0, out
    unit = root / "etc/systemd/system/tunnelmesh-server.service"
    text = unit.read_text()
    assert f"ReadWritePaths={data}\n" in text
    assert TOKEN not in text
    assert check_unit(unit) <= 3.0
    state = root / "var/lib/tunnelmesh-server"
    assert TOKEN in (state / "server.yaml").read_text()
    assert (state / "server.yaml").stat().st_mode & 0o777 == 0o600
    code, out = cli("service", "uninstall", "--mode", "serve", "--root", str(root), "--purge")
    assert code == 0, out
    assert files(root) == before


def test_serve_install_takes_the_join_mesh_key_from_before_tunnelmesh_home(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A default ``join_mesh.private_key`` whose key is still in ``$HOME/.tunnelmesh`` (an
    install from before it followed ``TUNNELMESH_HOME``): the service gets that key, not none."""
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    old = tmp_path / "user" / ".tunnelmesh" / "id_ed25519"
    Identity.generate().save(old)
    ContextStore(home).put(Context(name="coord", server="https://c:1", key_path=str(old)))
    cfg = tmp_path / "server.yaml"
    cfg.write_text(
        f'auth_token: "{TOKEN}"\ndata_dir: "{tmp_path / "coord-data"}"\njoin_mesh:\n  name: coord\n'
    )
    root = fake_root(tmp_path)
    code, out = cli("service", "install", "--mode", "serve", "--root", str(root), "-c", str(cfg))
    assert code == 0, out
    state = root / "var/lib/tunnelmesh-server"
    assert (state / "id_ed25519").read_bytes() == old.read_bytes()
    assert not (home / "id_ed25519").exists()


@pytest.mark.skipif(Path("/run/systemd/system").is_dir(), reason="systemd runs on this host")
def test_without_systemd_one_clear_line(tmp_path: Path) -> None:
    env = {**os.environ, "TUNNELMESH_HOME": str(tmp_path)}
    for args in (["install"], ["status"], ["logs"], ["uninstall"]):
        proc = subprocess.run(
            [sys.executable, "-m", "tunnelmesh", "service", *args, "--mode", "serve"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert proc.returncode == 1, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "systemd is not running on this host" in lines[0], lines


def test_unit_quotes_paths_with_spaces() -> None:
    text = render_unit(
        Unit(
            name="tunnelmesh-x",
            description="x",
            exec_start=["/opt/my venv/bin/python", "-m", "tunnelmesh", "join"],
            exec_stop_post=["/usr/bin/python3", "-m", "tunnelmesh", "cleanup"],
            home="/var/lib/tunnelmesh-x",
        )
    )
    assert 'ExecStart="/opt/my venv/bin/python" -m tunnelmesh join\n' in text


# --- sd_notify ---------------------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    try:
        yield s
    finally:
        s.close()


def test_notify_sends_one_datagram(notify_socket: socket.socket) -> None:
    assert sdnotify.notify("READY=1", "STATUS=up")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=up"


def test_no_notify_socket_sends_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.watchdog_interval() is None


def test_watchdog_interval(notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sdnotify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # another process's watchdog
    assert sdnotify.watchdog_interval() is None


def test_watchdog_pings_while_alive_only(notify_socket: socket.socket) -> None:
    alive = [True]

    async def main() -> None:
        task = asyncio.ensure_future(sdnotify.watchdog(lambda: alive[0], interval=0.05))
        await asyncio.sleep(0.18)
        alive[0] = False
        await asyncio.sleep(0.15)
        task.cancel()

    asyncio.run(main())
    notify_socket.settimeout(0.1)
    got = []
    try:
        while True:
            got.append(notify_socket.recv(100))
    except TimeoutError:
        pass
    assert 2 <= len(got) <= 5 and set(got) == {b"WATCHDOG=1"}, got


# --- cleanup (what touches no system state; the lab test does the rest) ---------------------


def test_cleanup_refuses_while_the_node_runs(tmp_path: Path) -> None:
    from tunnelmesh.config import PeerConfig
    from tunnelmesh.service.cleanup import CleanupError, cleanup

    sock_path = tmp_path / "node.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(1)
    try:
        with pytest.raises(CleanupError, match="the node is running"):
            cleanup(PeerConfig(control_socket=str(sock_path)))
    finally:
        listener.close()


def test_cleanup_of_a_coordinator_without_a_node(tmp_path: Path, home: Path) -> None:
    cfg = tmp_path / "server.yaml"
    cfg.write_text(f'auth_token: "{TOKEN}"\ndata_dir: "{tmp_path / "data"}"\n')
    code, out = cli("-c", str(cfg), "cleanup", "--mode", "serve")
    assert code == 0, out
    assert "no join_mesh" in out and "nothing to undo" in out


def test_cleanup_leaves_shared_state_to_another_running_node(tmp_path: Path) -> None:
    from tunnelmesh.config import DnsConfig, PeerConfig
    from tunnelmesh.service.cleanup import cleanup

    other = tmp_path / "other.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(other))
    listener.listen(1)
    stale = tmp_path / "dead.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(stale))  # a socket file nobody listens on
    dead.close()
    try:
        done = cleanup(
            PeerConfig(control_socket=str(stale), dns=DnsConfig(enabled=False)),
            others=[str(other)],
        )
    finally:
        listener.close()
    assert done[0].startswith(f"another tunnelmesh node runs ({other})"), done
    assert done[1:] == [f"removed the stale control socket {stale}"]
    assert not stale.exists()
