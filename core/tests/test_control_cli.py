"""The control-plane CLI end to end over loopback: serve, join, peers, status, context, leave.

Each command runs as a real ``tunnelmesh`` process (``tunnelmesh.cli.main``), with its own TUNNELMESH_HOME;
the coordinator listens on 127.0.0.1 with ports chosen by the kernel.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

TOKEN = "cli-test-token-0123456789abcdef"
MAIN = "import sys; from tunnelmesh.cli import main; sys.exit(main())"


def env_for(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        TUNNELMESH_HOME=str(home),
        TUNNELMESH_TOKEN=TOKEN,
        TUNNELMESH_NO_TRUST="1",
        TUNNELMESH_LOAD_PLUGINS="",
        PYTHONUNBUFFERED="1",
    )
    env.pop("TUNNELMESH_CONFIG", None)
    return env


def tm(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-c", MAIN, *args],
        env=env_for(home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"tunnelmesh {' '.join(args)} failed: {proc.stderr}{proc.stdout}")
    return proc


def wait_line(proc: subprocess.Popen[str], pattern: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if m := re.search(pattern, line):
            return m.group(0)
    raise AssertionError(f"no line matching {pattern!r}")


def poll(fn, timeout: float = 15.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        result = fn()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[str]:
    cfg = tmp_path / "server.yaml"
    cfg.write_text(
        f'auth_token: "{TOKEN}"\nlisten: "127.0.0.1:0"\nstun_listen: "127.0.0.1:0"\n'
        f'data_dir: "{tmp_path / "state"}"\nheartbeat_interval: 1s\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", MAIN, "serve", "-c", str(cfg), "--duration", "120"],
        env=env_for(tmp_path / "coord-home"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield wait_line(proc, r"https://127\.0\.0\.1:\d+")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        assert proc.stdout is not None
        proc.stdout.close()


def test_join_peers_status_leave(tmp_path: Path, coordinator: str) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    out = tm(a, "join", "--server", coordinator, "--name", "alpha", "--once").stdout
    assert "joined" in out and "(admin)" in out
    ip_a = re.search(r"mesh IP (\S+),", out).group(1)  # type: ignore[union-attr]
    daemon = subprocess.Popen(
        [sys.executable, "-c", MAIN, "join", "--duration", "60"],
        env=env_for(a),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert f"mesh IP {ip_a}," in wait_line(daemon, r"joined .*")  # restart keeps the IP
        tm(b, "join", "--server", coordinator, "--name", "beta", "--once")

        def alpha_online() -> bool:
            rows = json.loads(tm(b, "peers", "--json").stdout)
            return any(r["name"] == "alpha" and r["online"] for r in rows)

        assert poll(alpha_online)
        rows = json.loads(tm(b, "peers", "--json").stdout)  # the whole mesh, this node marked
        assert {(r["name"], r["self"]) for r in rows} == {("alpha", False), ("beta", True)}
        table = tm(b, "peers").stdout
        assert table.splitlines()[0].split()[:3] == ["NAME", "MESH", "IP"]
        assert "alpha" in table and ip_a in table
        status = json.loads(tm(a, "status", "--json").stdout)
        assert status["coordinator_reachable"] and status["mesh_ip"] == ip_a
        assert status["peers_total"] == 1
        assert "default" in tm(a, "context", "list").stdout
        shown = tm(a, "context", "show").stdout
        assert TOKEN not in shown and "(set)" in shown
        out = tm(b, "leave").stdout
        assert "left" in out
        assert "no other peers" in poll(
            lambda: "no other peers" in tm(a, "peers").stdout and tm(a, "peers").stdout
        )
        assert tm(b, "status", check=False).returncode == 1  # context deleted
    finally:
        daemon.terminate()
        daemon.wait(timeout=20)
        assert daemon.stdout is not None
        daemon.stdout.close()


def test_join_errors_are_one_line(tmp_path: Path, coordinator: str) -> None:
    env_home = tmp_path / "c"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            MAIN,
            "join",
            "--server",
            coordinator,
            "--token",
            "wrong-token-wrong-token",
            "--once",
        ],
        env=env_for(env_home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("tunnelmesh: error:") and "could not prove" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-c", MAIN, "join", "--server", "127.0.0.1:1", "--once"],
        env=env_for(env_home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "cannot reach" in proc.stderr


def _peer_names(home: Path) -> list[str]:
    return [r["name"] for r in json.loads(tm(home, "peers", "--json").stdout) if not r["self"]]


def test_join_without_terminal_does_not_prompt_for_trust(tmp_path: Path, coordinator: str) -> None:
    """No --yes/--no-trust and no terminal: the CA is not installed, and the user is told."""
    env = env_for(tmp_path / "a")
    del env["TUNNELMESH_NO_TRUST"]
    env["TUNNELMESH_CA_STORE_DIR"] = str(tmp_path / "ca-store")
    args = ["join", "--server", coordinator, "--name", "alpha", "--once"]
    proc = subprocess.run(
        [sys.executable, "-c", MAIN, *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "not installing the mesh CA" in proc.stderr and "--yes" in proc.stderr
    assert "joined" in proc.stdout
    assert not (tmp_path / "ca-store").exists()
    assert "default" in tm(tmp_path / "a", "context", "list").stdout


def test_join_trust_is_asked_before_registering(tmp_path: Path, coordinator: str) -> None:
    """An unanswered trust prompt (EOF on a terminal) leaves no peer on the coordinator."""
    import pty

    env = env_for(tmp_path / "ghost")
    del env["TUNNELMESH_NO_TRUST"]
    env["TUNNELMESH_CA_STORE_DIR"] = str(tmp_path / "ca-store")
    args = ["join", "--server", coordinator, "--name", "ghost", "--once"]
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", MAIN, *args],
            env=env,
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.close(slave)
        slave = -1
        os.write(master, b"\x04")  # Ctrl-D: the prompt's read gets EOF and aborts
        out, _ = proc.communicate(timeout=30)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert proc.returncode != 0 and "trust store" in out
    tm(tmp_path / "b", "join", "--server", coordinator, "--name", "beta", "--once")
    assert _peer_names(tmp_path / "b") == []  # no ghost: the aborted join never registered
