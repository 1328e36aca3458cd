"""``tunnelmesh wg`` end to end over loopback: a real ``serve`` and real ``tunnelmesh``
processes (each with its own TUNNELMESH_HOME), a concentrator peer that reports its endpoint in
its heartbeat. The printed config is a wg-quick config, the QR code decodes (zbarimg) to exactly
that config, and the private key it holds is nowhere in the coordinator's state, files or logs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tunnelmesh.cli import main
from tunnelmesh.control.client import ControlClient, PeerStatus, fetch_ca
from tunnelmesh.control.messages import ConcentratorStatus
from tunnelmesh.identity import Identity

TOKEN = "wg-cli-token-0123456789abcdef"
MAIN = "import sys; from tunnelmesh.cli import main; sys.exit(main())"
ENDPOINT = "198.51.100.7:51820"


def env_for(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        TUNNELMESH_HOME=str(home),
        TUNNELMESH_TOKEN=TOKEN,
        TUNNELMESH_NO_TRUST="1",
        TUNNELMESH_LOAD_PLUGINS="wg",
        PYTHONUNBUFFERED="1",
    )
    env.pop("TUNNELMESH_CONFIG", None)
    env.pop("TUNNELMESH_JSON", None)
    return env


def tm(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``tunnelmesh ARGS`` as HOME's user: ``join`` as its own process, the commands that
    only call the coordinator's API in this process (the same ``main``, a second each less)."""
    if args[0] == "join":
        proc = subprocess.run(
            [sys.executable, "-c", MAIN, *args],
            env=env_for(home),
            capture_output=True,
            text=True,
            timeout=60,
        )
    else:
        out, err = io.StringIO(), io.StringIO()
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(env_for(home))
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(list(args))
        finally:
            os.environ.clear()
            os.environ.update(saved)
        proc = subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())
    if check and proc.returncode != 0:
        raise AssertionError(f"tunnelmesh {' '.join(args)} failed: {proc.stderr}{proc.stdout}")
    return proc


class Coordinator:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "coord-home"
        self.state = root / "state"
        self.log = root / "serve.log"
        self.url = ""
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        cfg = self.root / "server.yaml"
        cfg.write_text(
            f'auth_token: "{TOKEN}"\nlisten: "127.0.0.1:0"\nstun_listen: "127.0.0.1:0"\n'
            f'data_dir: "{self.state}"\nheartbeat_interval: 10s\n'
        )
        log = open(self.log, "w")  # noqa: SIM115 - the process writes it until stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", MAIN, "--log-level", "debug", "serve", "-c", str(cfg)],
            env=env_for(self.home),
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        log.close()
        deadline = time.monotonic() + 30
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if m := re.search(r"https://127\.0\.0\.1:\d+", line):
                self.url = m.group(0)
                return
        raise AssertionError(f"serve did not start: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    c = Coordinator(tmp_path)
    c.start()
    try:
        yield c
    finally:
        c.stop()


def concentrator(url: str, name: str = "conc", *, exit_node: bool = False) -> None:
    """Register a peer that serves WireGuard clients at ENDPOINT (its heartbeat says so), or
    (``exit_node``) one that is an exit node."""

    async def main() -> None:
        ca = await fetch_ca(url, TOKEN)
        status = (
            PeerStatus(allow_exit_traffic=True)
            if exit_node
            else PeerStatus(concentrator=ConcentratorStatus(endpoint=ENDPOINT))
        )
        c = ControlClient(
            server=url,
            identity=Identity.generate(),
            ca_pem=ca,
            auth_token=TOKEN,
            name=name,
            status=lambda: status,
        )
        try:
            await c.register()
            await c.heartbeat()
        finally:
            await c.aclose()

    asyncio.run(asyncio.wait_for(main(), 30))


def zbarimg(path: Path) -> str:
    """The text of the QR code in ``path`` exactly (zbarimg --raw ends it with one newline)."""
    out = subprocess.run(
        ["zbarimg", "--raw", "-q", str(path)], capture_output=True, timeout=30, check=True
    ).stdout
    assert out.endswith(b"\n")
    return out[:-1].decode("utf-8")


def files_under(*roots: Path) -> list[Path]:
    return [p for r in roots if r.exists() for p in r.rglob("*") if p.is_file()]


needs_zbar = pytest.mark.skipif(
    shutil.which("zbarimg") is None, reason="zbarimg missing (Debian zbar-tools)"
)


@needs_zbar
def test_add_prints_the_config_once_its_qr_code_decodes_to_it_and_the_key_stays_here(
    tmp_path: Path, coordinator: Coordinator
) -> None:
    admin, member = tmp_path / "admin", tmp_path / "member"
    assert "(admin)" in tm(admin, "join", "--server", coordinator.url, "--name", "boss",
                           "--once").stdout  # fmt: skip
    tm(member, "join", "--server", coordinator.url, "--name", "member", "--once")
    concentrator(coordinator.url)

    png, svg = tmp_path / "phone.png", tmp_path / "phone.svg"
    added = tm(admin, "wg", "add", "phone", "--preshared-key", "--expires", "30d", "--qr", str(png))
    config = added.stdout
    fields = dict(
        line.split(" = ", 1) for line in config.splitlines() if " = " in line
    )  # fmt: skip
    assert config.startswith("[Interface]\nPrivateKey = ")
    assert "\n[Peer]\n" in config
    private = fields["PrivateKey"]
    assert len(base64.b64decode(private, validate=True)) == 32
    shown = json.loads(tm(member, "wg", "show", "phone", "--json").stdout)
    conc = json.loads(tm(member, "peers", "--json").stdout)
    conc_info = next(p for p in conc if p["name"] == "conc")
    assert fields["Address"] == f"{shown['mesh_ip']}/32"
    assert fields["DNS"] == conc_info["mesh_ip"]
    assert fields["PublicKey"] == conc_info["wg_public_key"]
    assert fields["Endpoint"] == ENDPOINT
    assert fields["AllowedIPs"] == "172.30.0.0/16"  # the mesh prefix (server.yaml default)
    assert fields["PersistentKeepalive"] == "25"
    assert len(base64.b64decode(fields["PresharedKey"], validate=True)) == 32
    assert shown["has_preshared_key"] is True and "preshared_key" not in shown
    assert shown["expires_at"] > time.time() + 29 * 86400
    # the public key the coordinator holds is the one of the printed private key
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    derived = X25519PrivateKey.from_private_bytes(base64.b64decode(private)).public_key()
    assert base64.b64encode(derived.public_bytes_raw()).decode() == shown["public_key"]
    # the terminal QR code goes to stderr: stdout is the config alone (wg add ... > phone.conf)
    assert "█" in added.stderr or "▀" in added.stderr
    assert zbarimg(png) == config
    assert png.stat().st_mode & 0o777 == 0o600
    # wg-quick reads it (strip parses the whole file; no interface is touched)
    if shutil.which("wg-quick"):
        conf = tmp_path / "wgphone.conf"
        conf.write_text(config)
        stripped = subprocess.run(
            ["wg-quick", "strip", str(conf)], capture_output=True, text=True, timeout=30
        )
        assert stripped.returncode == 0, stripped.stderr
        assert f"PrivateKey = {private}" in stripped.stdout
        assert "Address" not in stripped.stdout and "DNS" not in stripped.stdout

    # an SVG as well, and a user's own public key: no private key anywhere in the output
    user_public = shown["public_key"][:-4] + "AAA="  # another valid 32-byte key
    own = tm(admin, "wg", "add", "laptop", "--public-key", user_public, "--qr", str(svg))
    assert "PrivateKey = " not in own.stdout.replace("# PrivateKey = ", "")
    assert svg.read_text().lstrip().startswith("<?xml")

    # the coordinator's state, files and logs never held the printed private key
    coordinator.stop()  # flush the log and the database
    raw_private = base64.b64decode(private)
    searched = [*files_under(coordinator.state, coordinator.home), coordinator.log]
    assert any(p.name == "state.db" for p in searched)
    found_public = False
    for path in searched:
        data = path.read_bytes()
        assert private.encode() not in data, path
        assert raw_private not in data, path
        found_public |= shown["public_key"].encode() in data
    assert found_public, "the search never saw the client's public key: it searched nothing"
    assert "phone" in coordinator.log.read_text()
    # nor did the admin's own home: the key went to stdout and the QR file only
    for path in files_under(admin):
        assert private.encode() not in path.read_bytes(), path


def test_list_show_disable_enable_remove_and_peers(
    tmp_path: Path, coordinator: Coordinator
) -> None:
    admin, member = tmp_path / "admin", tmp_path / "member"
    tm(admin, "join", "--server", coordinator.url, "--name", "boss", "--once")
    tm(member, "join", "--server", coordinator.url, "--name", "member", "--once")
    refused = tm(member, "wg", "add", "phone", check=False)
    assert refused.returncode == 1 and "403" in refused.stderr and "admins only" in refused.stderr
    assert "Traceback" not in refused.stderr
    none = tm(admin, "wg", "add", "phone", check=False)
    assert none.returncode == 1 and "no peer serves WireGuard clients" in none.stderr
    concentrator(coordinator.url)
    added = json.loads(tm(admin, "wg", "add", "phone", "--json").stdout)
    assert added["config"].startswith("[Interface]\nPrivateKey = ")
    assert added["client"]["name"] == "phone"
    concentrator(coordinator.url, "exit", exit_node=True)
    full = json.loads(tm(admin, "wg", "add", "laptop", "--full-tunnel", "exit", "--json").stdout)
    assert "\nAllowedIPs = 0.0.0.0/0\n" in full["config"]
    assert full["exit_name"] == "exit"
    tm(admin, "wg", "remove", "laptop")

    listing = tm(member, "wg", "list").stdout
    assert re.search(r"^phone\s+\S+\s+conc\s+active\s+never\s+never$", listing, re.M), listing
    assert [c["name"] for c in json.loads(tm(member, "wg", "list", "--json").stdout)] == ["phone"]
    shown = tm(member, "wg", "show", "phone").stdout
    assert re.search(r"^concentrator:\s+conc \(", shown, re.M), shown
    peers = tm(member, "peers").stdout
    assert re.search(r"^phone\s+\S+\s+conc\s+active\s+-\s+never$", peers, re.M), peers

    assert tm(member, "wg", "disable", "phone", check=False).returncode == 1
    assert "disabled phone" in tm(admin, "wg", "disable", "phone").stdout
    assert "was disabled already" in tm(admin, "wg", "disable", "phone").stdout
    assert re.search(r"^phone\s.*\sdisabled\s", tm(member, "wg", "list").stdout, re.M)
    assert "enabled phone" in tm(admin, "wg", "enable", "phone").stdout
    assert "removed phone" in tm(admin, "wg", "remove", "phone").stdout
    assert "no WireGuard clients" in tm(member, "wg", "list").stdout
    assert "phone" not in tm(member, "peers").stdout
    gone = tm(admin, "wg", "show", "phone", check=False)
    assert gone.returncode == 1 and "no WireGuard client named 'phone'" in gone.stderr
    bad = tm(admin, "wg", "add", "x", "--expires", "soon", check=False)
    assert bad.returncode == 2 and "--expires" in bad.stderr
    bad = tm(admin, "wg", "add", "x", "--qr", str(tmp_path / "x.jpg"), check=False)
    assert bad.returncode == 2 and ".png or .svg" in bad.stderr
    bad = tm(admin, "wg", "add", "x", "--public-key", "nope", check=False)
    assert bad.returncode == 1 and "44 characters of base64" in bad.stderr
