"""The control-plane CLI end to end over loopback: serve, join, peers, status, context, leave.

Each command runs as a real ``tunnelmesh`` process (``tunnelmesh.cli.main``), with its own TUNNELMESH_HOME;
the coordinator listens on 127.0.0.1 with ports chosen by the kernel.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

TOKEN = "cli-test-token-0123456789abcdef"
MAIN = "import sys; from tunnelmesh.cli import main; sys.exit(main())"


def stop(proc: subprocess.Popen[str], timeout: float = 20) -> None:
    """SIGTERM ``proc`` and wait; a stop that hangs fails the test but never leaks the process."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


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
        stop(proc)


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
        [sys.executable, "-c", MAIN, "join", "--server", coordinator, "--once"],
        env=dict(env_for(env_home), TUNNELMESH_TOKEN="wrong-token-wrong-token"),
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


# --- where the join token comes from (issue 11) -----------------------------------------------


def _without_token(home: Path) -> dict[str, str]:
    env = env_for(home)
    del env["TUNNELMESH_TOKEN"]
    return env


def test_token_on_the_command_line_leaves_the_running_process_argv(
    tmp_path: Path, coordinator: str
) -> None:
    """`join --token T` re-execs itself with T in its environment: /proc/PID/cmdline has no T."""
    args = ["join", "--server", coordinator, "--token", TOKEN, "--name", "argv", "--no-tun"]
    proc = subprocess.Popen(
        [sys.executable, "-c", MAIN, *args, "--duration", "60"],
        env=_without_token(tmp_path / "a"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        wait_line(proc, r"joined .*")
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert b"join" in cmdline and b"--server" in cmdline
        assert not any(TOKEN.encode() in arg for arg in cmdline), cmdline
        assert b"--token" not in cmdline
    finally:
        stop(proc)
    ctx_file = (tmp_path / "a" / "contexts.json").read_text()
    assert TOKEN not in ctx_file and "auth_token" not in ctx_file


def test_token_file_first_join_then_no_token_again(tmp_path: Path, coordinator: str) -> None:
    home = tmp_path / "a"
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    args = ["join", "--server", coordinator, "--name", "alpha", "--once"]
    proc = subprocess.run(
        [sys.executable, "-c", MAIN, *args, "--token-file", str(token_file)],
        env=_without_token(home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "joined" in proc.stdout, proc.stderr
    assert TOKEN not in (home / "contexts.json").read_text()
    # the same key joins again with its signature alone: no token anywhere
    proc = subprocess.run(
        [sys.executable, "-c", MAIN, "join", "--once"],
        env=_without_token(home),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "joined" in proc.stdout and "as alpha" in proc.stdout, (
        proc.stderr
    )


def test_first_join_without_token_and_terminal_says_how(tmp_path: Path, coordinator: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", MAIN, "join", "--server", coordinator, "--once"],
        env=_without_token(tmp_path / "a"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("tunnelmesh: error: no mesh join token")
    assert "--token-file" in proc.stderr and "TUNNELMESH_TOKEN" in proc.stderr


def test_first_join_prompts_for_the_token_on_a_terminal(tmp_path: Path, coordinator: str) -> None:
    import pty

    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", MAIN, "join", "--server", coordinator, "--once"],
            env=_without_token(tmp_path / "a"),
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # no controlling terminal: getpass reads the pty (stdin)
        )
        os.close(slave)
        slave = -1
        assert proc.stderr is not None
        prompt = b""
        while not prompt.endswith(b": "):  # getpass flushes input typed before its prompt
            char = proc.stderr.read(1)
            assert char, prompt
            prompt += char
        os.write(master, TOKEN.encode() + b"\n")
        out_b, err_b = proc.communicate(timeout=30)
        out, err = out_b.decode(), prompt.decode() + err_b.decode()
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert proc.returncode == 0, err
    assert "mesh join token" in err and "joined" in out
    assert TOKEN not in out and TOKEN not in err


def test_old_contexts_lose_their_stored_token(tmp_path: Path) -> None:
    from tunnelmesh.control.contexts import ContextStore

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "contexts.json").write_text(
        json.dumps(
            {
                "active": "work",
                "contexts": {
                    "work": {"name": "work", "server": "https://c:8443", "auth_token": TOKEN}
                },
            }
        )
    )
    store = ContextStore(home)
    assert store.get("work").server == "https://c:8443"
    text = (home / "contexts.json").read_text()
    assert TOKEN not in text and "auth_token" not in text


# --- admin commands: peers delete/release, group, token rotate (issue 11) ----------------------


def test_admin_commands_and_what_a_peer_may_not_do(tmp_path: Path, coordinator: str) -> None:
    admin, beta, new = tmp_path / "admin", tmp_path / "beta", tmp_path / "new"
    assert (
        "(admin)" in tm(admin, "join", "--server", coordinator, "--name", "boss", "--once").stdout
    )
    tm(beta, "join", "--server", coordinator, "--name", "beta", "--once")
    beta_id = json.loads(tm(beta, "status", "--json").stdout)["peer_id"]

    refused = tm(beta, "peers", "delete", "boss", check=False)
    assert refused.returncode == 1 and "403" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert tm(beta, "group", "create", "ops", check=False).returncode == 1
    assert tm(beta, "token", "rotate", check=False).returncode == 1

    tm(admin, "group", "create", "ops")
    tm(admin, "group", "add", "ops", "beta")
    groups = {g["name"]: g for g in json.loads(tm(beta, "group", "list", "--json").stdout)}
    assert groups["ops"]["members"] == [beta_id]  # stored by peer ID
    assert set(groups) == {"admins", "everyone", "ops"}

    new_token = tmp_path / "new-token"
    tm(admin, "token", "rotate", "--write-to", str(new_token))
    assert stat_mode(new_token) == 0o600
    fresh = new_token.read_text().strip()
    assert fresh != TOKEN
    # a new key with the old token is refused; with the new one it joins
    old = tm(new, "join", "--server", coordinator, "--name", "newbie", "--once", check=False)
    assert old.returncode == 1
    env = dict(env_for(new), TUNNELMESH_TOKEN=fresh)
    proc = subprocess.run(
        [sys.executable, "-c", MAIN, "join", "--server", coordinator, "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    # beta joined before the rotation: it re-registers with its key alone
    rejoin = tm(beta, "join", "--once")
    assert "as beta" in rejoin.stdout

    tm(admin, "peers", "delete", "beta")
    taken = tm(tmp_path / "thief", "join", "--server", coordinator, "--name", "beta", "--once",
               check=False)  # fmt: skip
    assert taken.returncode == 1  # the old token no longer joins anyone
    env = dict(env_for(tmp_path / "thief"), TUNNELMESH_TOKEN=fresh)
    args = ["join", "--server", coordinator, "--name", "beta", "--once"]
    proc = subprocess.run(
        [sys.executable, "-c", MAIN, *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert "registered as 'beta-2'" in proc.stdout, proc.stderr
    assert "released beta" in tm(admin, "peers", "release", "beta").stdout


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_device_approval_and_sighup_demotion(tmp_path: Path) -> None:
    """approve_new_peers: a new key's join waits until an admin approves it; removing the
    admin's entry from admin_peers and sending SIGHUP to `serve` demotes it at once."""
    from tunnelmesh.identity import Identity

    admin_home, new_home = tmp_path / "admin", tmp_path / "new"
    admin_home.mkdir(mode=0o700)
    boss = Identity.generate()
    boss.save(admin_home / "id_ed25519")
    cfg = tmp_path / "server.yaml"
    base = (
        f'auth_token: "{TOKEN}"\nlisten: "127.0.0.1:0"\nstun_listen: "127.0.0.1:0"\n'
        f'data_dir: "{tmp_path / "state"}"\napprove_new_peers: true\n'
    )
    cfg.write_text(base + f'admin_peers: ["{boss.fingerprint}"]\n')
    serve = subprocess.Popen(
        [sys.executable, "-c", MAIN, "serve", "-c", str(cfg), "--duration", "120"],
        env=env_for(tmp_path / "coord-home"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    waiting = None
    try:
        url = wait_line(serve, r"https://127\.0\.0\.1:\d+")
        out = tm(admin_home, "join", "--server", url, "--name", "boss", "--once").stdout
        assert "(admin)" in out
        once = tm(new_home, "join", "--server", url, "--name", "newbie", "--once")
        assert "waits for an admin's approval" in once.stderr and "joined" not in once.stdout
        assert "newbie" in tm(admin_home, "peers", "pending").stdout
        waiting = subprocess.Popen(  # a join that waits, signature only (no token needed)
            [sys.executable, "-c", MAIN, "join", "--no-tun", "--duration", "60"],
            env=dict(env_for(new_home), TUNNELMESH_TOKEN=""),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert waiting.stderr is not None
        assert "waiting..." in waiting.stderr.readline()
        assert "approved newbie" in tm(admin_home, "peers", "approve", "newbie").stdout
        assert "joined" in wait_line(waiting, r"joined .*")
        assert "newbie" in tm(admin_home, "peers").stdout

        cfg.write_text(base + f'admin_peers: ["{Identity.generate().peer_id}"]\n')
        serve.send_signal(signal.SIGHUP)
        assert "admin flag of boss" in wait_line(serve, r"config reloaded.*")
        # status tells what the coordinator says now, not the flag of the last registration
        assert not json.loads(tm(admin_home, "status", "--json").stdout)["admin"]
        assert "[admin]" not in tm(admin_home, "status").stdout
        refused = tm(admin_home, "peers", "pending", check=False)
        assert refused.returncode == 1 and "403" in refused.stderr
    finally:
        for proc in (waiting, serve):
            if proc is None:
                continue
            stop(proc)


def test_scrub_token_removes_every_spelling_and_nothing_else() -> None:
    from tunnelmesh.cli.join_cmd import scrub_token

    t = "s3cret-token-0123456789"
    base = ["python", "-c", "code", "join", "--name", "a"]
    for spelled in (["--token", t], ["-t", t], [f"--token={t}"], [f"-t{t}"]):
        assert scrub_token([*base, *spelled, "--once"], t) == [*base, "--once"]
    assert scrub_token([*base, "--once"], t) is None  # not on this command line: no re-exec
    assert scrub_token([*base, "--name", t], t) is None  # only the token option's value


def test_a_control_plane_only_join_stops_on_one_sigterm(tmp_path: Path, coordinator: str) -> None:
    """`join --no-tun`: a SIGTERM as the first heartbeat's STUN answer arrives was swallowed
    (Python 3.11 wait_for returned the answer instead of the cancellation), and most such
    daemons, stopped right after joining, never ended. A stop now also names a slow step."""
    for i in range(6):
        args = ["join", "--server", coordinator, "--name", f"ctl{i}", "--no-tun"]
        err = tmp_path / f"err{i}"
        with err.open("w") as errf:
            proc = subprocess.Popen(
                [sys.executable, "-c", MAIN, *args, "--duration", "60"],
                env=env_for(tmp_path / f"h{i}"),
                stdout=subprocess.PIPE,
                stderr=errf,
                text=True,
            )
        try:
            wait_line(proc, r"joined .*")
            proc.terminate()  # at once: the first heartbeat asks STUN just now
            proc.wait(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            assert proc.stdout is not None
            proc.stdout.close()
        # the handlers are installed before joining (it was -15 when the signal came first)
        assert proc.returncode == 0, err.read_text()
        assert "stopping:" not in err.read_text(), err.read_text()


def test_a_sigterm_while_join_registers_stops_it_cleanly(tmp_path: Path) -> None:
    """A SIGTERM that reached `join` before its signal handlers (installed only after
    registering) killed it with the default action (-15, no cleanup). The coordinator here
    accepts the connection and never answers, so `join` is still registering when the SIGTERM
    comes, at once."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(20)
    port = listener.getsockname()[1]
    args = ["join", "--server", f"https://127.0.0.1:{port}", "--name", "early", "--no-tun"]
    proc = subprocess.Popen(
        [sys.executable, "-c", MAIN, *args],
        env=env_for(tmp_path / "h"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        conn, _ = listener.accept()  # join is in its first request now
        proc.terminate()
        _, err = proc.communicate(timeout=15)
        conn.close()
    finally:
        listener.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)
    assert proc.returncode == 0, (proc.returncode, err)
    assert "stopped before joining" in err, err
    assert "Traceback" not in err, err


def test_a_sigterm_before_the_event_loop_stops_join_cleanly(tmp_path: Path) -> None:
    """Before its event loop runs, `join` reads its token file: a SIGTERM there ends it with
    "stopped (SIGTERM)" and status 0, not the default action's -15. The token file is a FIFO,
    so the moment `join` reads it is known (a non-blocking open for writing succeeds)."""
    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    args = ["join", "--server", "https://127.0.0.1:9", "--token-file", str(fifo), "--no-tun"]
    env = env_for(tmp_path / "h")
    env.pop("TUNNELMESH_TOKEN")
    proc = subprocess.Popen(
        [sys.executable, "-c", MAIN, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    writer = -1
    try:
        deadline = time.monotonic() + 20
        while writer < 0 and time.monotonic() < deadline and proc.poll() is None:
            try:
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: nobody reads it yet
                time.sleep(0.02)
        assert writer >= 0, "join never opened its token file"
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    finally:
        if writer >= 0:
            os.close(writer)
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)
    assert proc.returncode == 0, (proc.returncode, err)
    assert "stopped (SIGTERM)" in err, err


def test_filter_coordinator_commands(tmp_path: Path, coordinator: str) -> None:
    """``tunnelmesh filter coordinator``: admins add and remove, every peer lists."""
    admin, beta = tmp_path / "admin", tmp_path / "beta"
    tm(admin, "join", "--server", coordinator, "--name", "boss", "--once")
    tm(beta, "join", "--server", coordinator, "--name", "beta", "--once")
    beta_id = json.loads(tm(beta, "status", "--json").stdout)["peer_id"]
    refused = tm(beta, "filter", "coordinator", "add", "--port", "22", check=False)
    assert refused.returncode == 1 and "403" in refused.stderr and "Traceback" not in refused.stderr
    out = tm(admin, "filter", "coordinator", "add", "--port", "5432", "--action", "deny",
             "--source-peer", "beta", "--ttl", "600").stdout  # fmt: skip
    assert out.startswith(f"deny tcp/5432 from beta {beta_id} on every peer, expires 2")
    listed = tm(beta, "filter", "coordinator", "list").stdout
    assert "api" in listed and "5432" in listed and beta_id in listed
    rules = json.loads(tm(beta, "filter", "coordinator", "list", "--json").stdout)
    assert [(r["port"], r["source_peer"]) for r in rules] == [(5432, beta_id)]
    gone = tm(admin, "filter", "coordinator", "remove", "--port", "5432", "--source-peer", "beta")
    assert "removed tcp/5432" in gone.stdout
    assert tm(beta, "filter", "coordinator", "list").stdout.strip() == "no coordinator rules"
    missing = tm(admin, "filter", "coordinator", "remove", "--port", "5432", check=False)
    assert missing.returncode == 1 and "404" in missing.stderr
