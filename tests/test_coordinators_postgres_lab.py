"""Three coordinators on one PostgreSQL and real peers (issue 18): the namespace lab.

Three ``tunnelmesh serve`` processes (A, B, C), each in its own lab host with its own
``public_url``, share one throwaway PostgreSQL cluster, which they reach through its unix
socket (the server itself listens on the root namespace's loopback only). Three ``tunnelmesh
join`` nodes with TUN devices and the UDP (WireGuard) transport are attached to different
coordinators: alpha (the first, so the admin) to A, beta to B, gamma to C. One mesh serves
every test of this file, in order:

* a filter rule added through A is enforced by gamma, a peer of C, within 2 s (TCP connects
  from beta that worked are dropped), and its removal through A lets them through again;
* PostgreSQL stopped: the coordinators answer reads, refuse writes with 503 and Retry-After,
  and the mesh carries on (pings, a byte-exact TCP transfer, names resolved by the peers' mesh
  DNS); PostgreSQL started again: writes resume, a write through A is seen through C, nothing
  written before the outage is lost;
* ``kill -9`` of B: beta is online on another coordinator within 15 s with the same name and
  mesh IP, and a paced TCP transfer from beta to gamma running across the kill arrives whole.

The admin's calls go through an agent process in alpha's namespace that holds alpha's session
(the stored context, as ``tunnelmesh filter coordinator add`` uses it) and can send a request
to any of the coordinators; it prints each answer's status, Retry-After and wall-clock times.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tunnelmesh_udp")
pytest.importorskip("tunnelmesh_postgres")

from tunnelmesh.testing import lab_unavailable_reason
from tunnelmesh.testing.lab import Host, Lab
from tunnelmesh.testing.mesh import TOKEN, MeshLab, NodeProcess
from tunnelmesh.testing.postgres import PostgresCluster, postgres_unavailable_reason

pytestmark = pytest.mark.lab

ATTACHED = {"alpha": "a", "beta": "b", "gamma": "c"}  # peer -> the coordinator it joins
FILTERED = 7100  # the port the filter case denies
# Peers are offline after three intervals without a heartbeat: 2 s leaves a node process
# starved of CPU on a loaded 2-core machine 6 s before it counts as gone.
HEARTBEAT = 2

# Alpha's session against any coordinator: one JSON request per stdin line
# ({"method", "server", "path", "body"}), one "answer {...}" line per request.
AGENT = """
import asyncio, json, sys, time
import aiohttp
from tunnelmesh.control import daemon
from tunnelmesh.control.contexts import ContextStore
from tunnelmesh.coordinator.ca import COORDINATOR_NAME

async def main():
    store = ContextStore()
    client = daemon.client_for(store.get(None), store)
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        req = json.loads(line)
        body = req.get("body")
        out = {"sent": time.time()}
        try:
            async with client.http.request(
                req["method"],
                req["server"] + req["path"],
                data=None if body is None else json.dumps(body).encode(),
                headers={
                    "Authorization": "Bearer " + client.session_token,
                    "Content-Type": "application/json",
                },
                server_hostname=COORDINATOR_NAME,
            ) as r:
                raw = await r.read()
                out.update(status=r.status, retry_after=r.headers.get("Retry-After"))
                try:
                    out["body"] = json.loads(raw) if raw else None
                except ValueError:
                    out["body"] = raw.decode(errors="replace")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            out.update(status=0, error=repr(exc))
        out["done"] = time.time()
        print("answer " + json.dumps(out), flush=True)
    await client.aclose()

asyncio.run(main())
"""

# Accepts TCP connections on argv[1]:argv[2] and closes them.
LISTENER = """
import socket, sys
s = socket.create_server((sys.argv[1], int(sys.argv[2])), backlog=128)
print("ready", flush=True)
while True:
    s.accept()[0].close()
"""

# A new TCP connection to argv[1]:argv[2] every 50 ms (argv[3] s to connect); prints
# "up T" / "down T" whenever the outcome changes, T the wall-clock start of that attempt.
PROBE = """
import socket, sys, time
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
state = None
while True:
    t = time.time()
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        now = "up"
    except OSError:
        now = "down"
    if now != state:
        print(now, "%.3f" % t, flush=True)
        state = now
    time.sleep(0.05)
"""


class Agent:
    """The agent process in alpha's namespace (see :data:`AGENT`)."""

    def __init__(self, proc: NodeProcess) -> None:
        self.proc = proc

    def call(
        self, method: str, server: str, path: str, body: Any = None, timeout: float = 20.0
    ) -> dict[str, Any]:
        stdin = self.proc.proc.stdin
        assert stdin is not None
        mark = len(self.proc.lines)
        stdin.write(json.dumps({"method": method, "server": server, "path": path, "body": body}))
        stdin.write("\n")
        stdin.flush()
        line = self.proc.wait_line("^answer ", timeout, mark).string
        answer: dict[str, Any] = json.loads(line.removeprefix("answer "))
        return answer

    def ok(self, method: str, server: str, path: str, body: Any = None) -> Any:
        r = self.call(method, server, path, body)
        assert r["status"] in (200, 201, 204), r
        return r["body"]


@dataclass
class Scale:
    mesh: MeshLab
    cluster: PostgresCluster
    urls: dict[str, str]  # coordinator letter -> URL
    coordinators: dict[str, NodeProcess]
    agent: Agent

    def host(self, peer: str) -> Host:
        return self.mesh.peers[peer].host

    def ip(self, peer: str) -> str:
        return self.mesh.peers[peer].mesh_ip


def _private(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def _start_coordinator(mesh: MeshLab, host: Host, letter: str, state: str) -> NodeProcess:
    url = f"https://{host.address}:8443"
    cfg = mesh.workdir / f"server-{letter}.yaml"
    cfg.write_text(
        f'auth_token: "{TOKEN}"\n'
        f'listen: "{host.address}:8443"\n'
        f'stun_listen: "{host.address}:3478"\n'
        f'data_dir: "{mesh.workdir / f"coord-{letter}-state"}"\n'
        f"heartbeat_interval: {HEARTBEAT}s\n"
        f'public_url: "{url}"\n'
        f"state: {state}\n"
    )
    proc = host.python(
        "-m", "tunnelmesh", "serve", "-c", str(cfg),
        env=mesh.env(mesh.workdir / f"coord-{letter}-home"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    return NodeProcess(f"coord-{letter}", proc, mesh.echo)


@pytest.fixture(scope="module")
def scale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scale]:
    for why in (lab_unavailable_reason(), postgres_unavailable_reason()):
        if why is not None:
            pytest.skip(why)
    workdir = tmp_path_factory.mktemp("scale")
    cluster = PostgresCluster()  # its own temporary directory, reachable by its user
    lab = Lab()
    mesh: MeshLab | None = None
    coordinators: dict[str, NodeProcess] = {}
    agent: NodeProcess | None = None
    try:
        mesh = MeshLab(lab, workdir)
        cluster.start()
        cluster.create_database("mesh")
        # the coordinators' namespaces reach it through its unix socket
        dsn_file = _private(workdir / "postgres.dsn", cluster.socket_dsn_for("mesh"))
        key_file = _private(workdir / "state.key", secrets.token_hex(32))
        state = f'{{backend: postgres, dsn_file: "{dsn_file}", encryption_key_file: "{key_file}"}}'
        hosts = {"a": mesh.coord_host, "b": lab.add_host("coordb"), "c": lab.add_host("coordc")}
        for peer in ATTACHED:
            mesh.add_peer(peer)
        for letter, host in hosts.items():  # all at once: they share the CA through the store
            coordinators[letter] = _start_coordinator(mesh, host, letter, state)
        for proc in coordinators.values():
            proc.wait_line("coordinator listening", 60)
        urls = {letter: f"https://{h.address}:8443" for letter, h in hosts.items()}
        mesh.start_peer("alpha", server=urls["a"])  # the first key: the admin
        with ThreadPoolExecutor(2) as pool:
            started = [
                pool.submit(mesh.start_peer, p, server=urls[ATTACHED[p]]) for p in ("beta", "gamma")
            ]
            for f in started:
                f.result()
        mesh.wait_links(timeout=30)
        alpha = mesh.peers["alpha"]
        agent = NodeProcess(
            "agent",
            alpha.host.python(
                "-c", AGENT, env=mesh.env(alpha.home),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            ),
            None,
        )  # fmt: skip
        agent.wait_line("^ready", 30)
        yield Scale(mesh, cluster, urls, coordinators, Agent(agent))
    finally:
        if agent is not None:
            agent.stop(5)
        if mesh is not None:
            mesh.close()
        for proc in coordinators.values():
            proc.stop(10)
        lab.close()
        cluster.close()


def _wait(pred: Any, timeout: float, what: str, period: float = 0.1) -> float:
    """Poll ``pred`` until it holds; the seconds it took."""
    t0 = time.monotonic()
    while not pred():
        assert time.monotonic() - t0 < timeout, f"not within {timeout} s: {what}"
        time.sleep(period)
    return time.monotonic() - t0


def _filter_rules(s: Scale, peer: str) -> list[dict[str, Any]]:
    p = s.mesh.peers[peer]
    out = p.host.run(
        [sys.executable, "-m", "tunnelmesh", "filter", "list", "--json", "--socket",
         str(p.control_socket)],
        env=s.mesh.env(p.home),
    ).stdout  # fmt: skip
    rules: list[dict[str, Any]] = json.loads(out)["rules"]
    return rules


def test_a_rule_added_through_a_is_enforced_by_a_peer_of_c_within_2s(scale: Scale) -> None:
    s = scale
    gamma_ip = s.ip("gamma")
    listener = NodeProcess(
        "listener",
        s.host("gamma").python("-c", LISTENER, gamma_ip, str(FILTERED),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
        None,
    )  # fmt: skip
    probe: NodeProcess | None = None
    try:
        listener.wait_line("^ready", 20)
        probe = NodeProcess(
            "probe",
            s.host("beta").python("-c", PROBE, gamma_ip, str(FILTERED), "1.0",
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
            None,
        )  # fmt: skip
        probe.wait_line("^up ", 20)
        mark = len(probe.lines)
        added = s.agent.call(
            "POST",
            s.urls["a"],
            "/api/v1/filter/rules",
            {"port": FILTERED, "protocol": "tcp", "action": "deny"},
        )
        assert added["status"] in (200, 201), added
        down = float(probe.wait_line("^down ", 10, mark).string.split()[1])
        enforced = down - added["sent"]
        mark = next(i for i in range(mark, len(probe.lines)) if probe.lines[i].startswith("down"))
        # gamma (a peer of C) dropped them: its coordinator layer holds the rule and counts
        rule = next(
            r for r in _filter_rules(s, "gamma")
            if r["layer"] == "coordinator" and r["port"] == FILTERED
        )  # fmt: skip
        assert rule["action"] == "deny" and rule["denied"] > 0, rule
        assert not any(line.startswith("up") for line in probe.lines[mark:])  # none got through
        mark = len(probe.lines)
        removed = s.agent.call("DELETE", s.urls["a"], f"/api/v1/filter/rules/tcp/{FILTERED}")
        assert removed["status"] in (200, 204), removed
        # (an attempt under way when the rule goes waits out its 1 s connect timeout)
        up = float(probe.wait_line("^up ", 10, mark).string.split()[1])
        restored = up - removed["sent"]
        print(
            f"rule added through A, enforced by gamma (on C) {enforced * 1000:.0f} ms after the "
            f"request was sent; removed, connects again {restored * 1000:.0f} ms after"
        )
        assert enforced <= 2.0, f"enforced {enforced:.2f} s after the request"
    finally:
        if probe is not None:
            probe.stop(5)
        listener.stop(5)


def _peers(s: Scale, letter: str) -> dict[str, dict[str, Any]]:
    r = s.agent.call("GET", s.urls[letter], "/api/v1/peers")
    assert r["status"] == 200, r
    return {p["name"]: p for p in r["body"]["peers"]}


def _groups(s: Scale, letter: str) -> set[str]:
    r = s.agent.call("GET", s.urls[letter], "/api/v1/groups")
    assert r["status"] == 200, r
    return {g["name"] for g in r["body"]["groups"]}


def _offline(s: Scale, letters: str) -> list[str]:
    """``letter:peer`` for every peer a coordinator of ``letters`` lists as offline."""
    return [
        f"{letter}:{name}"
        for letter in letters
        for name, p in _peers(s, letter).items()
        if not p.get("online")  # (false is left out of the JSON)
    ]


def _attached(s: Scale, peer: str) -> str:
    """The coordinator ``peer`` talks to now: the one it joined through, or the last one its
    log says it moved to."""
    url = s.urls[ATTACHED[peer]]
    node = s.mesh.peers[peer].node
    assert node is not None
    for line in list(node.lines):
        if m := re.search(r"moving to (https://\S+)", line):
            url = m.group(1)
    return next(letter for letter, u in s.urls.items() if u == url)


def _transfer_ok(s: Scale, src: str, dst: str, nbytes: int, port: int) -> None:
    r = s.mesh.transfer(src, dst, nbytes=nbytes, port=port)
    assert r["sent"] == r["received"] == nbytes, r
    assert r["sent_sha256"] == r["received_sha256"], r


def _resolves(s: Scale, peer: str, name: str) -> bool:
    out = s.host(peer).run(["getent", "hosts", f"{name}.tunnelmesh"], check=False).stdout
    return out.split()[:1] == [s.ip(name)]


def test_database_down_reads_answer_writes_503_mesh_unaffected_then_nothing_lost(
    scale: Scale,
) -> None:
    s = scale
    s.agent.ok("POST", s.urls["a"], "/api/v1/groups", {"name": "before"})
    _wait(lambda: "before" in _groups(s, "c"), 5, "the group through A seen through C")
    ips = {name: p["mesh_ip"] for name, p in _peers(s, "a").items()}
    s.cluster.stop()
    stopped = time.monotonic()
    try:
        # Reads, from every coordinator's memory.
        for letter in ("a", "b", "c"):
            assert {n: p["mesh_ip"] for n, p in _peers(s, letter).items()} == ips
            assert "before" in _groups(s, letter)
        # Writes: refused with 503 and Retry-After, nothing done.
        for letter, path, body in (
            ("a", "/api/v1/groups", {"name": "during"}),
            ("c", "/api/v1/filter/rules", {"port": 7200, "action": "deny"}),
        ):
            r = s.agent.call("POST", s.urls[letter], path, body)
            assert r["status"] == 503 and r["retry_after"] == "5", r
        # The mesh: pings, DNS and a byte-exact transfer between peers of different
        # coordinators; the nodes still reach their coordinators (heartbeats from memory).
        for src, dst in (("alpha", "gamma"), ("gamma", "beta"), ("beta", "alpha")):
            assert s.mesh.ping(src, s.ip(dst), count=1, deadline=5) is not None, (src, dst)
            assert _resolves(s, src, dst), (src, dst)
        _transfer_ok(s, "beta", "gamma", 8 << 20, 5320)
        assert all(p.status()["coordinator_reachable"] for p in s.mesh.peers.values())
        assert "during" not in _groups(s, "b")
        outage = time.monotonic() - stopped
        # Heartbeats are shared through the database: without it no coordinator knows that
        # the others' peers are gone, and none calls them offline (pushing that to its peers).
        assert outage > 3 * HEARTBEAT and not _offline(s, "abc")
    finally:
        s.cluster.start()
    # Back: writes resume (the pool reconnects), a write through A is seen through C.
    t0 = time.monotonic()
    while (r := s.agent.call("POST", s.urls["a"], "/api/v1/groups", {"name": "after"}))[
        "status"
    ] == 503:
        assert time.monotonic() - t0 < 60, r
        time.sleep(0.2)
    assert r["status"] in (200, 201), r
    resumed = time.monotonic() - t0
    # B and C hear of it through their change feeds, whose listening connections reconnect
    # with back-off (at most 2 s between tries) and then reload what they missed.
    seen = _wait(
        lambda: all("after" in _groups(s, letter) for letter in "bc"),
        15,
        "the write after recovery, through B and C",
    )
    for letter in ("a", "b", "c"):
        groups = _groups(s, letter)
        assert {"before", "after"} <= groups and "during" not in groups, (letter, groups)
        assert {n: p["mesh_ip"] for n, p in _peers(s, letter).items()} == ips
    assert not _offline(s, "abc")
    print(
        f"PostgreSQL down for {outage:.1f} s: reads answered, writes 503, mesh unaffected; "
        f"writes resumed {resumed:.1f} s after it was started again, the first one seen "
        f"through B and C {seen:.1f} s after it was made"
    )


def test_kill_9_of_a_coordinator_its_peer_moves_within_15s_and_a_transfer_survives(
    scale: Scale,
) -> None:
    s = scale
    beta = s.mesh.peers["beta"]
    # beta knows every coordinator (the registration answer, the push channel)
    cache = next(beta.home.glob("contexts/*/coordinators.json"))
    _wait(
        lambda: set(json.loads(cache.read_text())) == set(s.urls.values()),
        10,
        "beta knows the three coordinators",
    )
    # Every coordinator lists every peer online, and keeps doing so: the heartbeats of a
    # peer of another coordinator reach it through the database in time (flush and poll a
    # quarter interval each), it does not flap offline between them.
    _wait(lambda: not _offline(s, "abc"), 15, "every peer online at every coordinator")
    for _ in range(12):  # 3 s: several flushes and polls (half a second each)
        assert not _offline(s, "abc")
        time.sleep(0.25)
    victim = _attached(s, "beta")  # B, unless a slow answer moved beta on meanwhile
    live = [letter for letter in "abc" if letter != victim]
    before = _peers(s, live[0])["beta"]
    nbytes, rate = 12 << 20, 2 << 20  # about 6 s, across the kill and the move
    transfer = s.mesh.start_transfer("beta", "gamma", nbytes=nbytes, rate=rate, port=5330)
    try:
        node = beta.node
        assert node is not None
        mark = len(node.lines)
        assert transfer.sender.proc.poll() is None  # under way
        killed = time.time()
        s.coordinators[victim].proc.send_signal(signal.SIGKILL)
        s.coordinators[victim].proc.wait(10)
        moved = node.wait_line(r"moving to (https://\S+)", 15, mark).group(1)
        letter = next(x for x in live if s.urls[x] == moved)

        def heartbeat_after_kill() -> bool:
            seen = s.agent.call("GET", s.urls[letter], "/api/v1/peers/beta")
            return seen["status"] == 200 and seen["body"]["last_seen"] > killed

        _wait(heartbeat_after_kill, 15 - (time.time() - killed), "beta heartbeats after kill")
        took = time.time() - killed
        for other in live:  # every live coordinator: the same name and IP, online
            now = _peers(s, other)["beta"]
            assert now["mesh_ip"] == before["mesh_ip"] and now["peer_id"] == before["peer_id"]
            assert now["online"], now
        result = transfer.finish(60)
    finally:
        transfer.stop()
    assert result["sent"] == result["received"] == nbytes, result
    assert result["sent_sha256"] == result["received_sha256"], result
    print(
        f"kill -9 of {victim.upper()}: beta heartbeating to {moved} {took:.2f} s later, same IP "
        f"{before['mesh_ip']}; a {nbytes >> 20} MiB transfer beta -> gamma across it arrived "
        f"whole ({result['seconds']:.1f} s)"
    )
