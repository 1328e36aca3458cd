"""Attack suite, hardening part (issue 11): what a local user or a flooding source can no longer do.

Each test plays one attack and checks that it is refused, bounded or harmless:

* a local user reading secrets: the node key, the coordinator's state database and SQLite's
  ``-wal``/``-shm`` files (they hold the mesh CA's key) are 0600 from the first start, whatever
  the umask; a data dir or home open to other users is refused with the fix in the message;
* a thief of the mesh CA's key (or the coordinator's operator) vouching for other names to peers
  that installed the CA in their trust store: the CA is name-constrained to the mesh;
* floods: challenge requests are charged to their source and never evict another source's
  challenge; heartbeats are paced per peer and their pushes coalesced; endpoints a peer
  announces must be unicast IP:port (a clear 400, counted, nothing changed).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import ipaddress
import logging
import os
import random
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tunnelmesh.config import ServerConfig
from tunnelmesh.control import daemon
from tunnelmesh.control.client import ControlClient
from tunnelmesh.control.contexts import Context, ContextStore
from tunnelmesh.control.messages import Heartbeat, RegisterRequest, RendezvousRequest
from tunnelmesh.coordinator.auth import FailureLimiter, registration_message, token_binding
from tunnelmesh.coordinator.ca import COORDINATOR_NAME, MeshCa, client_ssl_context
from tunnelmesh.coordinator.core import (
    HEARTBEAT_BURST,
    MAX_NAMES_PER_KEY,
    PUSH_COALESCE,
    REGISTER_BURST,
    ApiFailure,
    Coordinator,
)
from tunnelmesh.coordinator.push import MAX_QUEUED_BYTES, PushHub
from tunnelmesh.coordinator.server import CoordinatorServer
from tunnelmesh.coordinator.sqlite import SqliteStore
from tunnelmesh.coordinator.store import PeerRecord
from tunnelmesh.errors import ConfigError
from tunnelmesh.identity import Identity
from tunnelmesh.metrics.coordinator import CoordinatorCollector
from tunnelmesh.proto import WireGuard
from tunnelmesh.proto.ratelimit import (
    PACKETS_BURSTABLE,
    PACKETS_PER_SECOND,
    HandshakeRateLimiter,
)

TOKEN = "attack-token-0123456789abcdef"


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _server_config(data_dir: Path) -> ServerConfig:
    return ServerConfig(auth_token=TOKEN, data_dir=str(data_dir))


# --- 1. files and secrets -----------------------------------------------------------------------


def test_state_db_wal_shm_are_0600_from_the_first_start(
    tmp_path: Path, permissive_umask: None
) -> None:
    data = tmp_path / "fresh" / "state"

    async def main() -> None:
        coord = Coordinator(_server_config(data))
        await coord.load()  # first start: creates the database and the mesh CA (a write)
        try:
            files = [data / "state.db", data / "state.db-wal", data / "state.db-shm"]
            for f in files:
                assert f.exists(), f
                assert _mode(f) == 0o600, (f, oct(_mode(f)))
            assert _mode(data) == 0o700
            assert _mode(data.parent) == 0o700  # missing parents are created private too
        finally:
            await coord.close()

    asyncio.run(main())


def test_node_key_and_contexts_are_0600_with_a_permissive_umask(
    tmp_path: Path, permissive_umask: None
) -> None:
    key = tmp_path / "home" / "id_ed25519"
    Identity.load_or_create(key)
    assert _mode(key) == 0o600
    assert _mode(key.parent) == 0o700
    store = ContextStore(tmp_path / "ctxhome")
    store.put(Context(name="m", server="https://127.0.0.1:1", session_token="secret"))
    assert _mode(store.path) == 0o600
    assert _mode(store.home) == 0o700


def test_a_data_dir_open_to_others_is_refused_and_left_untouched(tmp_path: Path) -> None:
    data = tmp_path / "state"
    data.mkdir()
    data.chmod(0o755)

    async def main() -> None:
        coord = Coordinator(_server_config(data))
        with pytest.raises(ConfigError) as err:
            await coord.load()
        assert f"chmod 700 {data}" in str(err.value)
        assert "0755" in str(err.value)

    asyncio.run(main())
    assert list(data.iterdir()) == []  # no database, no CA written into the open directory
    data.chmod(0o700)

    async def again() -> None:  # after the fix the same directory works
        coord = Coordinator(_server_config(data))
        await coord.load()
        await coord.close()

    asyncio.run(again())
    assert _mode(data / "state.db") == 0o600


def test_join_refuses_a_home_open_to_others_before_contacting_anyone(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o750)

    async def main() -> None:
        with pytest.raises(ConfigError) as err:
            await daemon.join(
                server="https://127.0.0.1:9",  # never dialled: refused before any request
                token=TOKEN,
                context_name="m",
                name="n",
                key_path=home / "id_ed25519",
                store=ContextStore(home),
            )
        assert f"chmod 700 {home}" in str(err.value)

    asyncio.run(main())
    assert not (home / "id_ed25519").exists()


# --- 2. the mesh CA is name-constrained ---------------------------------------------------------


def _leaf(ca: MeshCa, *names: str) -> x509.Certificate:
    """A leaf signed with the CA's key, as a thief of that key would make it."""
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False
        )
        .sign(ca.key, hashes.SHA256())
    )


def _verifies(ca: MeshCa, leaf: x509.Certificate, name: str) -> bool:
    """The cryptography (webpki-style) verifier: does a client that trusts ``ca`` accept it?"""
    try:
        subject: x509.verification.Subject = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        subject = x509.DNSName(name)
    verifier = (
        x509.verification.PolicyBuilder()
        .store(x509.verification.Store([ca.cert]))
        .time(dt.datetime.now(dt.UTC))
        .build_server_verifier(subject)
    )
    try:
        verifier.verify(leaf, [])
    except x509.verification.VerificationError:
        return False
    return True


def _openssl_verifies(tmp_path: Path, ca: MeshCa, leaf: x509.Certificate) -> bool:
    (tmp_path / "ca.pem").write_text(ca.cert_pem)
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    proc = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "leaf.pem")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return proc.returncode == 0


def test_a_leaf_for_a_foreign_name_under_the_mesh_ca_is_rejected(tmp_path: Path) -> None:
    ca = MeshCa.create("corp", mesh_cidr="10.42.0.0/16", tls_names=["coord.example.net"])
    nc = ca.cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert nc.critical
    accepted = ["alice.corp", "this.tm", "db.tunnelmesh", "10.42.7.9", "coord.example.net"]
    for name in accepted:
        assert _verifies(ca, _leaf(ca, name), name), name
    for name in ["example.com", "corp.example.com", "192.168.1.1", "10.43.0.1", "2001:db8::1"]:
        assert not _verifies(ca, _leaf(ca, name), name), name
    # One foreign name among mesh names spoils the whole certificate.
    assert not _verifies(ca, _leaf(ca, "alice.corp", "example.com"), "alice.corp")
    if shutil.which("openssl"):
        assert _openssl_verifies(tmp_path, ca, _leaf(ca, "alice.corp"))
        assert not _openssl_verifies(tmp_path, ca, _leaf(ca, "example.com"))


def test_the_coordinator_certificate_stays_inside_the_constraints(tmp_path: Path) -> None:
    cfg = msgspec.structs.replace(
        _server_config(tmp_path / "state"), tls_names=["coord.example.net", "203.0.113.7"]
    )

    async def main() -> None:
        coord = Coordinator(cfg)
        await coord.load()
        try:
            assert coord.ca is not None
            cert = coord.ca.issue_server_cert(
                ["localhost", "somehost", *cfg.tls_names], ["127.0.0.1", "192.168.1.20"]
            )
            leaf = x509.load_pem_x509_certificates(cert.cert_pem)[0]
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert set(san.get_values_for_type(x509.DNSName)) == {
                COORDINATOR_NAME,
                "localhost",
                "coord.example.net",
            }
            ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
            assert ips == {"127.0.0.1", "203.0.113.7"}
            for name in (COORDINATOR_NAME, "coord.example.net", "127.0.0.1", "203.0.113.7"):
                assert _verifies(coord.ca, leaf, name), name
        finally:
            await coord.close()

    asyncio.run(main())


def test_an_old_unconstrained_ca_is_kept_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "TunnelMesh CA (.tunnelmesh)")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )  # what MeshCa.create made before name constraints
    old = MeshCa(cert, key)
    assert old.name_constraints is None and old.permits("example.com")
    assert _verifies(old, _leaf(old, "example.com"), "example.com")  # what constraints stop

    async def main() -> None:
        store = SqliteStore(tmp_path / "state" / "state.db")
        await store.open()
        await store.put_meta_if_absent("mesh_ca", old.to_bytes())
        await store.close()
        coord = Coordinator(_server_config(tmp_path / "state"))
        with caplog.at_level(logging.WARNING, logger="tunnelmesh.coordinator.core"):
            await coord.load()
        try:
            assert coord.ca is not None and coord.ca.cert == cert  # peers pinned it: kept
        finally:
            await coord.close()

    asyncio.run(main())
    assert "the mesh CA has no name constraints" in caplog.text


# --- 4. bounded under abuse ---------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _request(
    ident: Identity, name: str, nonce: bytes, endpoints: list[str], token: str = TOKEN
) -> RegisterRequest:
    msg = registration_message(nonce, name, ident.public_openssh, token_binding(token, nonce))
    return RegisterRequest(
        name=name,
        public_key=ident.public_openssh,
        nonce=base64.b64encode(nonce).decode(),
        signature=base64.b64encode(ident.sign(msg)).decode(),
        endpoints=endpoints,
    )


async def _coordinator(tmp_path: Path, clock: _Clock) -> Coordinator:
    coord = Coordinator(_server_config(tmp_path / "state"), clock=clock)
    await coord.load()
    return coord


async def _join(coord: Coordinator, name: str, source: str = "192.0.2.1") -> PeerRecord:
    ident = Identity.generate()
    nonce = coord.issue_challenge(source)
    resp = await coord.register(_request(ident, name, nonce, []), TOKEN, source)
    return coord.peers[resp.peer_id]


def test_a_challenge_flood_from_one_source_does_not_stop_another_sources_registration(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        clock = _Clock()
        coord = await _coordinator(tmp_path, clock)
        try:
            genuine = Identity.generate()
            nonce = coord.issue_challenge("192.0.2.10")
            # 100,000 challenge requests from one source, more than the whole book holds
            # (the book used to forget the oldest nonce of anybody: the genuine one first).
            limited = 0
            for _ in range(100_000):
                try:
                    coord.issue_challenge("203.0.113.66")
                except ApiFailure as f:
                    assert f.status == 429
                    limited += 1
            assert limited > 99_000  # charged: the flooder is soon over its allowance
            assert coord.challenges.outstanding("203.0.113.66") <= coord.challenges.per_source
            assert len(coord.challenges) <= coord.challenges.per_source + 1
            resp = await coord.register(
                _request(genuine, "genuine", nonce, []), TOKEN, "192.0.2.10"
            )
            assert resp.name == "genuine"
            # An IPv6 flooder is one source per /64, whatever address of it it uses.
            for i in range(1, 1000):
                with contextlib.suppress(ApiFailure):
                    coord.issue_challenge(f"2001:db8:66:1::{i:x}")
            per_source = coord.challenges.per_source
            assert coord.challenges.outstanding("2001:db8:66:1::/64") <= per_source
        finally:
            await coord.close()

    asyncio.run(main())


def test_a_heartbeat_flood_is_rate_limited_and_pushed_once(tmp_path: Path) -> None:
    async def main() -> None:
        clock = _Clock()
        coord = await _coordinator(tmp_path, clock)
        pushed: list[bytes] = []
        coord.hub.broadcast = lambda data, exclude=None: pushed.append(data)  # type: ignore[method-assign]
        try:
            rec = await _join(coord, "flooder")
            pushed.clear()
            accepted = refused = 0
            for i in range(1000):  # every heartbeat announces different endpoints
                hb = Heartbeat(endpoints=[f"198.51.100.{i % 250 + 1}:{1000 + i}"])
                try:
                    coord.heartbeat(rec, hb, "198.51.100.1:1")
                    accepted += 1
                except ApiFailure as f:
                    assert f.status == 429 and f.retry_after > 0
                    refused += 1
            assert accepted == HEARTBEAT_BURST and refused == 1000 - accepted
            assert coord.stats["heartbeats_limited"] == refused
            limited = {
                s.labels["limit"]: s.value
                for m in CoordinatorCollector(coord).samples()
                if m.name == "tunnelmesh_coordinator_limited"
                for s in m.samples
            }
            assert limited["heartbeat_pace"] == refused  # what an operator sees in /metrics
            assert coord.liveness.heap_size() <= 2
            await asyncio.sleep(PUSH_COALESCE * 4)
            assert len(pushed) == 1  # ten changes, one push: the record as it is now
            assert rec.endpoints[0].encode() in pushed[0]
            clock.now += 60.0  # the allowance refills: a normal pace is never refused
            for _ in range(5):
                coord.heartbeat(rec, Heartbeat(endpoints=rec.endpoints), "198.51.100.1:1")
                clock.now += float(coord.config.heartbeat_interval)
        finally:
            await coord.close()

    asyncio.run(main())


BAD_ENDPOINTS = [
    "127.0.0.1:51820",  # loopback: the peers would send to themselves
    "[::1]:51820",
    "0.0.0.0:51820",  # unspecified
    "[::]:51820",
    "224.0.0.1:51820",  # multicast
    "[ff02::1]:51820",
    "255.255.255.255:51820",  # broadcast
    "192.0.2.1:0",  # port 0
    "192.0.2.1:65536",
    "example.com:51820",  # a name, not an address
    "192.0.2.1",
    "::1:51820",  # IPv6 without brackets
    "[::ffff:127.0.0.1]:51820",  # loopback in disguise
]


@pytest.mark.parametrize("endpoint", BAD_ENDPOINTS)
def test_announced_endpoints_must_be_unicast_ip_port(tmp_path: Path, endpoint: str) -> None:
    async def main() -> None:
        clock = _Clock()
        coord = await _coordinator(tmp_path, clock)
        try:
            rec = await _join(coord, "peer")
            good = ["192.0.2.7:51820", "[2001:db8::7]:51820", "10.1.2.3:1"]
            coord.heartbeat(rec, Heartbeat(endpoints=good), "192.0.2.7:1")
            before = coord.stats["bad_endpoints"]
            with pytest.raises(ApiFailure) as err:
                coord.heartbeat(rec, Heartbeat(endpoints=[good[0], endpoint]), "192.0.2.7:1")
            assert err.value.status == 400 and err.value.error == "bad_endpoint"
            assert repr(endpoint) in err.value.message
            assert coord.stats["bad_endpoints"] == before + 1
            assert rec.endpoints == good  # nothing changed
            with pytest.raises(ApiFailure) as err:  # registration refuses it too (charged)
                ident = Identity.generate()
                nonce = coord.issue_challenge("192.0.2.8")
                await coord.register(_request(ident, "other", nonce, [endpoint]), TOKEN, "x")
            assert err.value.status == 400 and coord.stats["bad_endpoints"] == before + 2
            assert coord.peer_by_name("other") is None
        finally:
            await coord.close()

    asyncio.run(main())


# --- 5. handshake initiations are rate-limited per source under load (sans-IO) ------------------


def test_the_handshake_limiter_paces_each_source_like_wireguard_go() -> None:
    lim = HandshakeRateLimiter()
    a, a_other_port, b = ("192.0.2.1", 51820), ("192.0.2.1", 40000), ("192.0.2.2", 51820)
    assert [lim.allow(a, 10.0) for _ in range(7)] == [True] * PACKETS_BURSTABLE + [False] * 2
    assert not lim.allow(a_other_port, 10.0)  # another port of the same host: same source
    assert lim.allow(b, 10.0)  # another host has its own bucket
    assert lim.allow(a, 10.0 + 1 / PACKETS_PER_SECOND)  # one more every 50 ms
    assert not lim.allow(a, 10.0 + 1 / PACKETS_PER_SECOND)
    # An IPv6 host is one source across its /64.
    v6 = [(f"2001:db8:1:2::{i:x}", 51820) for i in range(1, 10)]
    assert [lim.allow(addr, 20.0) for addr in v6] == [True] * PACKETS_BURSTABLE + [False] * 4
    assert lim.allow(("2001:db8:1:3::1", 51820), 20.0)
    # Idle sources are forgotten (their buckets would be full again anyway).
    lim.allow(b, 30.0)
    assert len(lim) == 1


def test_a_full_limiter_refuses_new_sources_rather_than_forgetting_old_ones() -> None:
    lim = HandshakeRateLimiter(max_entries=3)
    for i in range(3):
        assert lim.allow((f"198.51.100.{i}", 1), 0.0)
    assert not lim.allow(("203.0.113.9", 1), 0.0)  # a flood of new addresses cannot
    assert lim.refused_new == 1  # reset the buckets of the sources already tracked
    for _ in range(PACKETS_BURSTABLE - 1):
        assert lim.allow(("198.51.100.0", 1), 0.0)
    assert not lim.allow(("198.51.100.0", 1), 0.0)
    assert lim.allow(("203.0.113.9", 1), 2.0)  # once the idle ones are gone there is room


def _engines() -> tuple[WireGuard, WireGuard, WireGuard]:
    rng = random.Random(7)
    responder = WireGuard(rng.randbytes(32), rng=rng.randbytes, wall_offset=1.7e9)
    genuine = WireGuard(rng.randbytes(32), rng=rng.randbytes, wall_offset=1.7e9)
    flooder = WireGuard(rng.randbytes(32), rng=rng.randbytes, wall_offset=1.7e9)
    responder.add_peer(genuine.public_key, name="genuine", endpoint=("10.0.0.1", 51820))
    for engine in (genuine, flooder):
        engine.add_peer(responder.public_key, name="responder", endpoint=("10.0.0.2", 51820))
    return responder, genuine, flooder


def _cookie_for(engine: WireGuard, responder: WireGuard, addr: tuple[str, int]) -> bytes:
    """Run the cookie exchange from ``addr``; return the engine's initiation, now with mac2."""
    peer = engine.peer_by_name("responder")
    assert peer is not None
    engine.initiate(peer, 0.0)
    [(init, _)] = engine.datagrams_to_send()
    responder.receive_datagram(init, addr, 0.0)
    [(reply, to)] = responder.datagrams_to_send()
    assert to == addr and len(reply) == 64
    engine.receive_datagram(reply, ("10.0.0.2", 51820), 0.0)
    return peer.cookie.add_macs(init, 0.0)


def test_an_initiation_flood_with_a_valid_cookie_gets_20_a_second_of_curve25519_work() -> None:
    responder, genuine, flooder = _engines()
    responder.force_under_load = True
    flood_addr = ("203.0.113.66", 40000)
    flood = _cookie_for(flooder, responder, flood_addr)
    assert flood[-16:] != bytes(16)  # it can receive at its address: mac2 is valid
    seconds, per_second = 3, 1000
    for i in range(seconds * per_second):
        responder.receive_datagram(flood, flood_addr, 0.0 + i / per_second)
    responder.datagrams_to_send()
    processed = responder.drops["bad_handshake"]  # initiations that cost a Curve25519 DH
    assert responder.drops["ratelimited"] == seconds * per_second - processed
    assert processed <= PACKETS_BURSTABLE + seconds * PACKETS_PER_SECOND + 1
    # A genuine peer elsewhere still gets through, under the same load.
    genuine_addr = ("10.0.0.1", 51820)
    retry = _cookie_for(genuine, responder, genuine_addr)
    responder.receive_datagram(retry, genuine_addr, float(seconds))
    [(resp, to)] = responder.datagrams_to_send()
    assert len(resp) == 92 and to == genuine_addr


def test_out_of_load_nothing_is_rate_limited() -> None:
    responder, _, flooder = _engines()
    responder.under_load_threshold = 10**9
    peer = flooder.peer_by_name("responder")
    assert peer is not None
    flooder.initiate(peer, 0.0)
    [(init, _)] = flooder.datagrams_to_send()
    for i in range(200):
        responder.receive_datagram(init, ("203.0.113.66", 40000), i * 0.001)
    assert responder.drops["ratelimited"] == 0
    assert responder.drops["bad_handshake"] == 200  # each one was looked at


class _StuckWs:
    """A push channel whose peer never reads: every send waits forever."""

    def __init__(self) -> None:
        self.closed = False

    async def send_str(self, data: str) -> None:
        await asyncio.Event().wait()

    async def close(self) -> None:
        self.closed = True


class _ReadingWs:
    def __init__(self) -> None:
        self.received = 0

    async def send_str(self, data: str) -> None:
        self.received += data.count("\n") + 1

    async def close(self) -> None:
        pass


def test_a_peer_that_never_reads_its_push_channel_costs_bounded_memory() -> None:
    async def main() -> None:
        hub = PushHub()
        stuck, reading = _StuckWs(), _ReadingWs()
        sub = hub.attach("stuck", stuck, b"snapshot")  # type: ignore[arg-type]
        hub.attach("reading", reading, b"snapshot")  # type: ignore[arg-type]
        await asyncio.sleep(0)
        record = b"x" * 64 * 1024  # a peer record as large as a heartbeat can make it
        peak = 0
        for _ in range(400):  # 25 MiB of changes
            hub.broadcast(record)
            peak = max(peak, sub.queued_bytes)
            await asyncio.sleep(0)
        assert peak <= MAX_QUEUED_BYTES
        assert not hub.is_connected("stuck")  # closed: it starts again from a snapshot
        assert hub.is_connected("reading") and reading.received == 401
        await hub.close()

    asyncio.run(main())


def test_failed_attempts_from_one_ipv6_64_share_one_allowance() -> None:
    lim = FailureLimiter(burst=5, per_minute=1.0)
    for i in range(5):
        lim.charge(f"2001:db8:7:7::{i + 1:x}", 0.0)
    assert lim.retry_after("2001:db8:7:7::beef", 0.0) > 0  # a new address of the same /64
    assert lim.retry_after("2001:db8:7:8::1", 0.0) == 0  # the next /64 is another source


def test_over_the_api_a_challenge_flood_from_one_address_leaves_another_free(
    tmp_path: Path,
) -> None:
    """The same attack end to end: the flooder at 127.0.0.2, a genuine peer at 127.0.0.1."""

    async def main() -> None:
        cfg = msgspec.structs.replace(
            _server_config(tmp_path / "state"), listen="127.0.0.1:0", stun_listen="127.0.0.1:0"
        )
        async with CoordinatorServer(cfg, run_join_mesh=False) as server:
            assert server.coordinator.ca is not None
            ca_pem = server.coordinator.ca.cert_pem
            ssl_ctx = client_ssl_context(ca_pem)
            flooder = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), ssl=ssl_ctx)
            statuses = []
            async with aiohttp.ClientSession(connector=flooder) as http:
                for _ in range(100):
                    async with http.post(
                        server.url + "/api/v1/register/challenge",
                        server_hostname=COORDINATOR_NAME,
                    ) as resp:
                        statuses.append(resp.status)
            free = server.coordinator.challenges.per_source
            assert statuses == [200] * free + [429] * (100 - free)
            assert server.coordinator.challenges.outstanding("127.0.0.2") == free
            async with ControlClient(
                server=server.url,
                identity=Identity.generate(),
                ca_pem=ca_pem,
                auth_token=TOKEN,
                name="genuine",
            ) as client:
                resp = await client.register()  # from 127.0.0.1: untouched by the flood
            assert resp.name == "genuine"

    asyncio.run(main())


def test_a_peer_renaming_itself_again_and_again_reserves_at_most_four_names(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        clock = _Clock()
        coord = await _coordinator(tmp_path, clock)
        try:
            ident = Identity.generate()
            other = await _join(coord, "bystander")
            for i in range(30):  # re-registrations under new names: the signature alone
                nonce = coord.issue_challenge("192.0.2.5")
                token = TOKEN if i == 0 else ""
                req = _request(ident, f"alias-{i}", nonce, [], token)
                await coord.register(req, token, "192.0.2.5")
                clock.now += 10.0  # its registration pace: one every 10 s after a burst
            mine = [n for n, pid in coord._names.items() if pid == ident.peer_id]
            assert len(mine) == MAX_NAMES_PER_KEY
            assert "alias-29" in mine and "alias-0" not in mine
            assert coord.name_owner("bystander") == other.peer_id  # others' names untouched
            dump = "\n".join(await coord.store.dump())  # type: ignore[attr-defined]
            assert "alias-0" not in dump and "alias-29" in dump
        finally:
            await coord.close()

    asyncio.run(main())


def test_a_key_registering_in_a_loop_is_paced(tmp_path: Path) -> None:
    async def main() -> None:
        clock = _Clock()
        coord = await _coordinator(tmp_path, clock)
        try:
            ident = Identity.generate()
            statuses = []
            for _ in range(15):
                nonce = coord.issue_challenge("192.0.2.6")
                try:
                    await coord.register(_request(ident, "looper", nonce, []), TOKEN, "192.0.2.6")
                    statuses.append(200)
                except ApiFailure as f:
                    statuses.append(f.status)
            assert statuses == [200] * int(REGISTER_BURST) + [429] * (15 - int(REGISTER_BURST))
            assert coord.stats["registrations_limited"] == 15 - int(REGISTER_BURST)
            clock.now += 10.0
            nonce = coord.issue_challenge("192.0.2.6")
            await coord.register(_request(ident, "looper", nonce, []), TOKEN, "192.0.2.6")
        finally:
            await coord.close()

    asyncio.run(main())


def test_serve_refuses_a_data_dir_open_to_others_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "state"
    data.mkdir()
    data.chmod(0o755)
    config = tmp_path / "server.yaml"
    config.write_text(
        f'auth_token: "{TOKEN}"\nlisten: "127.0.0.1:0"\nstun_listen: "127.0.0.1:0"\n'
        f'data_dir: "{data}"\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "tunnelmesh", "serve", "--config", str(config), "--no-tun"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TUNNELMESH_HOME": str(tmp_path / "home")},
    )
    assert proc.returncode != 0
    assert f"chmod 700 {data}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(data.iterdir()) == []


def test_rendezvous_requests_at_one_peer_are_paced(tmp_path: Path) -> None:
    async def main() -> None:
        clock = _Clock()
        coord = await _coordinator(tmp_path, clock)
        sent: list[tuple[str, bytes]] = []
        coord.hub.send_to = lambda pid, data: sent.append((pid, data)) or True  # type: ignore[method-assign]
        try:
            asker = await _join(coord, "asker")
            target = await _join(coord, "target")
            other = await _join(coord, "other")
            statuses = []
            for _ in range(100):
                try:
                    coord.rendezvous(asker, RendezvousRequest(to="target"))
                    statuses.append(200)
                except ApiFailure as f:
                    statuses.append(f.status)
            assert statuses.count(200) == 5 and statuses.count(429) == 95
            assert coord.stats["rendezvous_limited"] == 95
            assert [pid for pid, _ in sent] == [target.peer_id] * 5  # the target's queue is spared
            coord.rendezvous(asker, RendezvousRequest(to="other"))  # another pair: its own pace
            coord.rendezvous(target, RendezvousRequest(to="asker"))
            clock.now += 1.0
            coord.rendezvous(asker, RendezvousRequest(to="target"))  # one a second after that
            assert len(sent) == 8 and sent[5][0] == other.peer_id
        finally:
            await coord.close()

    asyncio.run(main())


def test_a_token_holder_minting_keys_from_one_source_is_paced(tmp_path: Path) -> None:
    """Each key that joins and leaves keeps its name reserved (a row for good): a source may
    join ``joins_burst`` new keys at once, then ``joins_per_minute``."""

    async def main() -> None:
        clock = _Clock()
        cfg = msgspec.structs.replace(
            _server_config(tmp_path / "state"), joins_burst=3, joins_per_minute=6.0
        )
        coord = Coordinator(cfg, clock=clock)
        await coord.load()
        try:
            keys = [Identity.generate() for _ in range(10)]
            statuses = []
            for i, ident in enumerate(keys):
                nonce = coord.issue_challenge("198.51.100.9")
                try:
                    req = _request(ident, f"minted-{i}", nonce, [])
                    await coord.register(req, TOKEN, "198.51.100.9")
                    statuses.append(200)
                except ApiFailure as f:
                    statuses.append(f.status)
            assert statuses == [200] * 3 + [429] * 7
            assert coord.stats["registrations_limited"] == 7
            await _join(coord, "elsewhere", source="192.0.2.77")  # another source: its own pace
            nonce = coord.issue_challenge("198.51.100.9")  # a known key is no new join
            req = _request(keys[0], "minted-0", nonce, [], token="")
            await coord.register(req, "", "198.51.100.9")
            clock.now += 10.0  # then one new key every 10 s (6 a minute)
            await _join(coord, "minted-late", source="198.51.100.9")
        finally:
            await coord.close()

    asyncio.run(main())
