"""The admin dashboard in a real browser, inside a lab peer's namespace (issue 12).

``tunnelmesh serve`` with ``join_mesh:`` and ``admin: {enabled: true}`` serves the dashboard on
its own mesh IP, port 443. Three ``tunnelmesh join`` peers (TUN; UDP, SSH and relay transports)
join it. Debian's Chromium, driven by Playwright (``tunnelmesh_admin.browser``), runs inside a
peer's namespace and opens ``https://this.tm/``: the name comes from the peer's own mesh
resolver, the packets go through its TUN device and the tunnel, and the certificate verifies
against the mesh CA imported into the browser's own store (NSS, with certutil).

alpha is an admin (``admin_peers`` names its key), beta a member. Checked:

* the peers page lists alpha, beta and gamma, with the transport alpha uses to each;
* traffic from beta to gamma moves gamma's chart within 3 s;
* alpha adds a coordinator deny rule in the page and a TCP connect from beta to gamma is
  refused within 2 s; removing it in the page restores the connection;
* forcing beta onto the relay in the page: the peer list ``tunnelmesh peers`` prints shows
  ``relay`` within 5 s, and ``tunnelmesh peers`` on beta prints it;
* storage (S3 on the coordinator's mesh IP): a bucket and object alpha made with the CLI are
  listed by the dashboard, which reads them through S3 with alpha's own credential;
* the map (``locations: true``; each peer's peer.yaml gives its place) shows the three peers'
  markers on the offline world outline;
* no console error, no CSP violation, and no request that left the dashboard's origin;
* a form another site posts to the dashboard (Origin null, cross-site) gets 403 and changes
  nothing;
* beta's browser gets 403 from the server for every admin route of the dashboard.

Screenshots of every page go to ``$TUNNELMESH_ADMIN_SCREENSHOTS`` (default: the test's tmp dir).
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tunnelmesh_udp")
pytest.importorskip("tunnelmesh_relay")
pytest.importorskip("tunnelmesh_admin")
pytest.importorskip("playwright")

from test_e2e_server_peer_lab import linked, poll
from tunnelmesh.identity import Identity
from tunnelmesh.testing.lab import Host, Lab, wait_for_line
from tunnelmesh.testing.mesh import MeshLab

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs Debian's chromium"),
    pytest.mark.skipif(shutil.which("certutil") is None, reason="needs certutil (libnss3-tools)"),
]

SINK_PORT, FILTERED_PORT = 7100, 7101
PLACES = {
    "alpha": (52.52, 13.40, "Berlin"),
    "beta": (35.68, 139.69, "Tokyo"),
    "gamma": (-33.87, 151.21, "Sydney"),
}

# A TCP server on each port given: reads and drops everything (gamma's mesh IP).
SINK = """
import socket, sys, threading
def serve(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], port))
    s.listen()
    while True:
        c, _ = s.accept()
        threading.Thread(target=drain, args=(c,), daemon=True).start()
def drain(c):
    while c.recv(65536):
        pass
for p in sys.argv[2:]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

# Sends to argv[1]:argv[2] for argv[3] seconds, ~2 MB/s.
SEND = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print("sending", flush=True)
end = time.monotonic() + float(sys.argv[3])
chunk = b"x" * 65536
while time.monotonic() < end:
    s.sendall(chunk)
    time.sleep(0.03)
"""

# Connects to argv[1]:argv[2] every 0.1 s; prints "up <t>"/"down <t>" at each change.
PROBE = """
import socket, sys, time
state = None
while True:
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=0.5).close()
        now = "up"
    except OSError:
        now = "down"
    if now != state:
        print(now, time.time(), flush=True)
        state = now
    time.sleep(0.1)
"""


class Browser:
    """``python -m tunnelmesh_admin.browser`` in a lab host; one JSON answer per command."""

    def __init__(self, host: Host, url: str, env: dict[str, str]) -> None:
        self.proc = host.python(
            "-m",
            "tunnelmesh_admin.browser",
            url,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_json(60)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_json(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"browser: no answer in {timeout} s; {self.log[-20:]}"
                ) from None
            if line.startswith("{"):
                return json.loads(line)  # type: ignore[no-any-return]
            self.log.append(line.rstrip())

    def __call__(self, op: str, timeout: float = 30.0, **kw: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        got = self.wait_json(timeout + 30)
        assert "error" not in got, (op, kw, got)
        return got

    def close(self) -> None:
        try:
            self("quit")
        finally:
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def browser_env(mesh: MeshLab, name: str, tmp: Path) -> dict[str, str]:
    """HOME with an NSS store that trusts the peer's mesh CA (what the browser checks)."""
    home = tmp / f"browser-{name}"
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    ca = next(mesh.peers[name].home.rglob("ca.crt"))
    subprocess.run(["certutil", "-N", "-d", f"sql:{nssdb}", "--empty-password"], check=True)
    subprocess.run(
        [
            "certutil",
            "-A",
            "-d",
            f"sql:{nssdb}",
            "-t",
            "C,,",
            "-n",
            "tunnelmesh-mesh",
            "-i",
            str(ca),
        ],
        check=True,
    )
    return {**mesh.env(mesh.peers[name].home), "HOME": str(home)}


@pytest.fixture
def mesh(lab: Lab, tmp_path: Path) -> Iterator[MeshLab]:
    m = MeshLab(lab, tmp_path)
    try:
        yield m
    finally:
        m.close()


def tm(mesh: MeshLab, name: str, *args: str) -> str:
    peer = mesh.peers[name]
    return peer.host.run(
        [sys.executable, "-m", "tunnelmesh", *args], timeout=60, env=mesh.env(peer.home)
    ).stdout


def admin_routes(mesh: MeshLab) -> list[tuple[str, str]]:
    """``(method, path template)`` of every admin and self-or-admin route the dashboard serves
    with the plugins installed here (the same table ``tunnelmesh serve`` builds)."""
    from tunnelmesh import Policy
    from tunnelmesh._manager import make_plugin_manager
    from tunnelmesh.config import load_server_config
    from tunnelmesh.coordinator import Coordinator
    from tunnelmesh.coordinator.api import build_app, route_table
    from tunnelmesh_admin.service import EXCLUDED_ROUTES

    pm = make_plugin_manager()
    registry = pm.build_registry()
    cfg = load_server_config(str(mesh.server_config), registry.config_sections)
    table = route_table(build_app(Coordinator(cfg), pm))
    return [
        (m, p)
        for m, p, policy in table
        if m != "HEAD"
        and policy in (Policy.ADMIN, Policy.SELF_OR_ADMIN)
        and (m, p) not in EXCLUDED_ROUTES
    ]


def test_the_dashboard_in_a_browser_on_a_peer(mesh: MeshLab, tmp_path: Path) -> None:
    shots = Path(os.environ.get("TUNNELMESH_ADMIN_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    alpha_key = Identity.generate()
    coord_sock = tmp_path / "coord-home" / "node.sock"
    with mesh.server_config.open("a") as f:
        f.write(
            f'admin_peers: ["{alpha_key.peer_id}"]\n'
            "locations: true\n"
            "admin:\n  enabled: true\n"
            "s3:\n  enabled: true\n"
            "join_mesh:\n"
            "  name: coord\n"
            f'  private_key: "{tmp_path / "coord-key"}"\n'
            f'  control_socket: "{coord_sock}"\n'
            "  tun:\n    name: tm0\n"
            '  dns:\n    listen: "127.0.0.53:53"\n    system: "off"\n    forward: false\n'
        )
    for name in ("alpha", "beta", "gamma"):
        mesh.add_peer(name)
        lat, lon, city = PLACES[name]
        cfg = mesh.peers[name].home / "peer.yaml"
        cfg.write_text(cfg.read_text() + f"location: {{lat: {lat}, lon: {lon}, city: {city}}}\n")
    alpha_home = mesh.peers["alpha"].home
    alpha_key.save(alpha_home / "id_ed25519")
    cfg = alpha_home / "peer.yaml"
    cfg.write_text(cfg.read_text() + f'private_key: "{alpha_home / "id_ed25519"}"\n')

    coord = mesh.start_coordinator()
    coord_ip = coord.wait_line(r"mesh peer coord: mesh IP (\S+) \(node up on tm0\)", 60).group(1)
    coord.wait_line(r"admin: dashboard on https://", 30)
    mesh.start_peers(["alpha", "beta", "gamma"])
    mesh.wait_links(["alpha", "beta", "gamma"], timeout=60)
    for name in ("alpha", "beta"):
        poll(lambda n=name: linked(mesh.peers[n].control_socket, "coord"), 30, f"{name}->coord")
        route = mesh.peers[name].host.route_get(coord_ip)
        assert route is not None and " dev tm0 " in route, route

    gamma = mesh.peers["gamma"]
    sink = gamma.host.python(
        "-c", SINK, gamma.mesh_ip, str(SINK_PORT), str(FILTERED_PORT), stdout=subprocess.PIPE
    )
    wait_for_line(sink, "ready")

    admin = Browser(
        mesh.peers["alpha"].host, "https://this.tm", browser_env(mesh, "alpha", tmp_path)
    )
    member: Browser | None = None
    try:
        # --- overview and peers ---------------------------------------------------------------
        assert admin("goto", url="/")["status"] == 200
        admin("wait_text", selector="header .who", text="admin")
        admin("screenshot", path=str(shots / "overview.png"))
        admin("goto", url="/peers")
        for name in ("beta", "gamma"):
            admin(
                "wait_text",
                selector=f'#peers tr[data-name="{name}"] td.path',
                text="udp",
                timeout=15,
            )
        rows = admin("text", selector="#peers tbody")["text"]
        for name in ("alpha", "beta", "gamma", "coord"):
            assert name in rows, rows
        assert "this peer" in admin("text", selector='#peers tr[data-name="alpha"] td.path')["text"]
        admin("screenshot", path=str(shots / "peers.png"))

        # --- traffic moves gamma's chart within 3 s -----------------------------------------------
        admin("goto", url="/peers/gamma")
        admin("wait_attr", selector="#traffic-chart", name="data-points", above=1, timeout=10)
        rx_before = int(admin("attr", selector="#rx-total", name="data-bytes")["value"])
        beta = mesh.peers["beta"]
        sender = beta.host.python(
            "-c", SEND, gamma.mesh_ip, str(SINK_PORT), "12", stdout=subprocess.PIPE
        )
        wait_for_line(sender, "sending", timeout=10)
        moved = admin(
            "wait_attr", selector="#traffic-chart", name="data-last-rx", above=100_000, timeout=3
        )
        print(f"chart moved {moved['seconds']:.2f} s after the traffic started")
        # the total under the rate moves with it (it once stayed at the page's load-time figure)
        admin("wait_attr", selector="#rx-total", name="data-bytes", above=rx_before + 1_000_000)
        time.sleep(2)
        admin("screenshot", path=str(shots / "peer.png"))

        # --- a coordinator filter rule from the page ------------------------------------------------
        admin("goto", url="/filter")
        assert admin("attr", selector="#coord-rules", name="data-api")["value"]
        probe = beta.host.python(
            "-c", PROBE, gamma.mesh_ip, str(FILTERED_PORT), stdout=subprocess.PIPE, text=True
        )
        wait_for_line(probe, "up", timeout=10)
        admin("fill", selector="#add-rule input[name=port]", value=FILTERED_PORT)
        admin("select", selector="#add-rule select[name=action]", value="deny")
        clicked = time.time()
        admin("click", selector="#add-rule button[type=submit]")
        line = wait_for_line(probe, "down", timeout=10)
        refused_after = float(line.split()[1]) - clicked
        print(f"filter rule: connect refused {refused_after:.2f} s after the click")
        assert refused_after < 2.0
        admin("wait_text", selector="#coord-rules", text=str(FILTERED_PORT))
        # the coordinator's own node enforces it too: its four layers with their counters
        for _ in range(20):
            admin("goto", url="/filter")
            if str(FILTERED_PORT) in admin("text", selector="#node-rules")["text"]:
                break
            time.sleep(0.5)
        node_rules = admin("text", selector="#node-rules")["text"]
        assert "coordinator" in node_rules and str(FILTERED_PORT) in node_rules, node_rules
        admin("screenshot", path=str(shots / "filter.png"))
        clicked = time.time()
        admin(
            "click",
            selector=f'#coord-rules tr[data-port="{FILTERED_PORT}"] button[data-remove]',
        )
        for _ in range(50):  # the click removed it (the page's DELETE may still be on its way)
            got = admin("fetch", method="GET", path="/api/v1/filter/rules")
            ports = [r["port"] for r in json.loads(got["body"])["rules"]]
            if FILTERED_PORT not in ports:
                break
            time.sleep(0.1)
        assert FILTERED_PORT not in ports, got
        line = wait_for_line(probe, "up", timeout=20)
        print(f"filter rule removed: connect back {float(line.split()[1]) - clicked:.2f} s after")

        # --- forcing beta onto the relay --------------------------------------------------------------
        admin("goto", url="/peers/beta")
        assert admin("count", selector="#transport")["count"] == 1
        before = tm(mesh, "beta", "peers")
        assert "relay" not in before, before
        admin("select", selector="#transport select[name=force]", value="relay")
        clicked = time.monotonic()
        admin("click", selector="#transport form:first-of-type button[type=submit]")
        # `tunnelmesh peers` prints beta's paths from the coordinator's peer list (beta's
        # heartbeats): watch that list (the same JSON, through the dashboard) every 0.1 s,
        # then run the CLI (a new process: its start-up alone takes seconds on a loaded
        # machine) to see it print relay
        seen = 0.0
        while not seen:
            got = admin("fetch", method="GET", path="/api/v1/peers/beta")
            if "relay" in json.loads(got["body"]).get("transports", {}).values():
                seen = time.monotonic() - clicked
            assert time.monotonic() - clicked < 30, "beta never reported relay"
            time.sleep(0.1)
        shown = tm(mesh, "beta", "peers")
        printed = time.monotonic() - clicked
        assert "relay" in shown, shown
        print(
            f"forced relay: in the peer list `tunnelmesh peers` prints {seen:.2f} s after the "
            f"click; the CLI run printing it ended at {printed:.2f} s"
        )
        assert seen < 5.0
        admin("goto", url="/peers/beta")
        admin("wait_text", selector="#paths", text="relay", timeout=15)
        admin("screenshot", path=str(shots / "peer-relay.png"))

        # --- storage: a bucket alpha made with the CLI, seen through the dashboard ------------------
        notes = tmp_path / "notes.txt"
        notes.write_text("meeting notes over the mesh\n" * 40)
        tm(mesh, "alpha", "buckets", "create", "team")
        tm(mesh, "alpha", "buckets", "put", str(notes), "team", "notes/2026-12-06.txt")
        admin("goto", url="/s3")
        assert "team" in admin("text", selector="#buckets")["text"]
        admin("goto", url="/s3/team?prefix=notes/")
        assert "notes/2026-12-06.txt" in admin("text", selector="#objects")["text"]
        admin("screenshot", path=str(shots / "storage.png"))

        for page, shot in (("/dns", "dns.png"), ("/groups", "groups.png")):
            admin("goto", url=page)
            admin("screenshot", path=str(shots / shot))
        admin("goto", url="/map")
        placed = admin("text", selector="#locations")["text"]
        for name, (_, _, city) in PLACES.items():  # from the peers' heartbeats
            assert name in placed and city in placed, placed
        assert admin("count", selector="#worldmap .marker")["count"] == 3
        admin("screenshot", path=str(shots / "map.png"))

        report = admin("report")
        assert report["errors"] == [], report
        assert report["csp"] == [], report
        assert report["off_origin"] == [], report
        assert report["requests"] > 10

        # a form posted to the dashboard from another site: refused by the server, nothing made
        posted = admin(
            "foreign_form", path="/api/v1/groups", fields={'{"name": "evil", "x': '": 1}'}
        )
        assert posted["status"] == 403 and "cross_origin" in posted["body"], posted
        admin("goto", url="/groups")
        assert "evil" not in admin("text", selector="#groups")["text"]

        # --- the member's browser: 403 from the server for every admin action ------------------------
        member = Browser(beta.host, "https://this.tm", browser_env(mesh, "beta", tmp_path))
        member("goto", url="/groups")
        assert "member" in member("text", selector="header .who")["text"]
        assert member("count", selector="form.api")["count"] == 0  # no admin forms shown
        routes = admin_routes(mesh)
        assert ("POST", "/api/v1/groups") in routes
        for method, template in routes:
            path = re.sub(
                r"\{(\w+)(?::[^}]*)?\}",
                lambda m: "alpha" if m.group(1) == "name" else "x",
                template,
            )
            got = member(
                "fetch", method=method, path=path, body=None if method in ("GET", "DELETE") else {}
            )
            assert got["status"] == 403, (method, path, got)
        member_report = member("report")
        assert member_report["off_origin"] == [] and member_report["csp"] == [], member_report
        member("screenshot", path=str(shots / "groups-member.png"))
    finally:
        admin.close()
        if member is not None:
            member.close()
    print("screenshots:", ", ".join(sorted(p.name for p in shots.glob("*.png"))))
