"""The push channel sends deltas: what one change costs, and the order of deltas on the peer.

A change of one peer is one message of constant size to every connected peer, whatever the
size of the mesh (the bytes are counted); the peer's table ignores deltas that are not newer,
asks for a new snapshot when revisions are skipped, and ends equal to the coordinator's table
whatever order the deltas came in.
"""

from __future__ import annotations

import asyncio
import base64
import random
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from test_coord_api import TOKEN, client, config, run, until
from tunnelmesh.config import ServerConfig
from tunnelmesh.control.messages import (
    Heartbeat,
    PeerGone,
    PeerInfo,
    PeerUpserted,
    PushMessage,
    RegisterRequest,
    Snapshot,
    decode_push,
    encode,
)
from tunnelmesh.control.peertable import PeerTable
from tunnelmesh.coordinator.auth import registration_message, token_binding
from tunnelmesh.coordinator.core import PUSH_COALESCE, Coordinator
from tunnelmesh.coordinator.server import CoordinatorServer
from tunnelmesh.identity import Identity


class RecordingWs:
    """Stands in for a peer's WebSocket: keeps every frame the hub writes."""

    def __init__(self) -> None:
        self.frames: list[str] = []

    async def send_str(self, data: str) -> None:
        self.frames.append(data)

    async def close(self) -> None:
        pass

    def messages(self) -> list[bytes]:
        return [line.encode() for f in self.frames for line in f.split("\n") if line]


async def _register(coord: Coordinator, ident: Identity, name: str) -> None:
    nonce = coord.issue_challenge("127.0.0.1")
    msg = registration_message(nonce, name, ident.public_openssh, token_binding(TOKEN, nonce))
    req = RegisterRequest(
        name=name,
        public_key=ident.public_openssh,
        nonce=base64.b64encode(nonce).decode(),
        signature=base64.b64encode(ident.sign(msg)).decode(),
    )
    await coord.register(req, TOKEN, "127.0.0.1")


async def _cost_of_one_change(tmp_path: Path, n: int) -> tuple[list[int], int, int]:
    """Mesh of ``n`` peers, each reporting a path to every other one (the maps that grow with
    the mesh); all connected to the push channel. Returns the size of every message each
    subscriber got for one endpoint change of one peer, the number of subscribers, and the
    size of that peer's full record (GET /api/v1/peers)."""
    cfg = ServerConfig(auth_token=TOKEN, data_dir=str(tmp_path / f"state{n}"), joins_burst=100000)
    coord = Coordinator(cfg)
    await coord.load()
    idents = [Identity.generate() for _ in range(n)]
    for i, ident in enumerate(idents):
        await _register(coord, ident, f"p{i:04d}")
    names = [f"p{i:04d}" for i in range(n)]
    for i, ident in enumerate(idents):
        rec = coord.peers[ident.peer_id]
        others = [x for x in names if x != names[i]]
        coord.heartbeat(
            rec,
            Heartbeat(
                endpoints=[f"192.0.2.{i % 250 + 1}:2223"],
                transports=dict.fromkeys(others, "udp"),
                rtt_ms=dict.fromkeys(others, 12.5),
                reasons=dict.fromkeys(others, "direct path"),
            ),
            "127.0.0.1",
        )
    await asyncio.sleep(PUSH_COALESCE * 4)  # the joins' pushes are out
    subs: list[Any] = []
    for ident in idents:
        ws = RecordingWs()
        coord.hub.attach(ident.peer_id, ws, coord.snapshot_message())  # type: ignore[arg-type]
        subs.append(ws)
    await asyncio.sleep(0.05)
    for ws in subs:
        ws.frames.clear()  # the snapshots: paid once per connection, not per change
    changed = coord.peers[idents[0].peer_id]
    hb = Heartbeat(
        endpoints=["192.0.2.1:2223", "198.51.100.7:40000"],
        transports=dict.fromkeys(names[1:], "udp"),
        rtt_ms=dict.fromkeys(names[1:], 12.5),
        reasons=dict.fromkeys(names[1:], "direct path"),
    )
    coord.heartbeat(changed, hb, "127.0.0.1")
    await asyncio.sleep(PUSH_COALESCE * 4)
    sizes = [len(m) for ws in subs for m in ws.messages()]
    for ws in subs:
        for m in ws.messages():
            msg = decode_push(m)
            assert isinstance(msg, PeerUpserted) and msg.peer.peer_id == changed.peer_id
            assert "198.51.100.7:40000" in msg.peer.endpoints
    full = len(encode(coord.info(changed)))
    await coord.close()
    return sizes, len(subs), full


def test_one_change_costs_one_constant_size_message_per_peer(tmp_path: Path) -> None:
    async def main() -> None:
        small, n_small, full_small = await _cost_of_one_change(tmp_path, 20)
        large, n_large, full_large = await _cost_of_one_change(tmp_path, 160)
        # One message per subscriber, every one the same size ...
        assert len(small) == n_small and len(large) == n_large
        assert len(set(small)) == 1 and len(set(large)) == 1
        # ... and the same size in a mesh of 20 and of 160: O(N) messages of constant size.
        # (Up to the digits of the changed peer's mesh IP and timestamps, which differ between
        # the two meshes: at most 8 + 8 characters.)
        assert abs(small[0] - large[0]) <= 16
        assert sum(large) == n_large * large[0]
        # What the whole record would have cost (its path maps grow with the mesh): the
        # O(N^2) bytes per change the push channel no longer pays.
        assert full_large > 5 * full_small
        assert full_large * n_large > 20 * sum(large)

    run(main())


# --- order of deltas on the peer --------------------------------------------------------------


def _peer(pid: str, name: str, port: int) -> PeerInfo:
    return PeerInfo(
        name=name,
        peer_id=pid,
        public_key="ssh-ed25519 AAAA" + pid,
        wg_public_key="k" + pid,
        mesh_ip=f"10.0.0.{int(pid, 16) % 250 + 1}",
        endpoints=[f"192.0.2.1:{port}"],
    )


def _history(seed: int, steps: int) -> tuple[list[PushMessage], dict[str, PeerInfo]]:
    """Deltas after a snapshot at revision 10, and the coordinator's table after them."""
    rnd = random.Random(seed)
    truth: dict[str, PeerInfo] = {}
    msgs: list[PushMessage] = []
    rev = 10
    for i in range(steps):
        pid = f"{rnd.randrange(6):016x}"
        rev += 1
        if pid in truth and rnd.random() < 0.3:
            del truth[pid]
            msgs.append(PeerGone(peer_id=pid, name=f"n{pid[-1]}", revision=rev))
        else:
            truth[pid] = _peer(pid, f"n{pid[-1]}", 1000 + i)
            msgs.append(PeerUpserted(peer=truth[pid], revision=rev))
    return msgs, truth


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 30), st.randoms(use_true_random=False))
def test_deltas_in_any_order_never_leave_a_wrong_table_unnoticed(
    seed: int, steps: int, rnd: random.Random
) -> None:
    msgs, truth = _history(seed, steps)
    delivered = list(msgs)
    rnd.shuffle(delivered)
    if rnd.random() < 0.5:  # duplicates and losses as well
        delivered += rnd.sample(msgs, k=min(3, len(msgs)))
        del delivered[rnd.randrange(len(delivered))]
    table = PeerTable(self_id="ff" * 8)
    table.apply(Snapshot(peers=[], revision=10))
    for m in delivered:
        table.apply(m)
    # A lost last delta shows only when the next one comes (the next change of any peer, as
    # on a live channel): without it no revision is skipped and nothing can tell.
    probe = _peer(f"{99:016x}", "probe", 1)
    truth = {**truth, probe.peer_id: probe}
    table.apply(PeerUpserted(peer=probe, revision=10 + steps + 1))
    if not table.needs_resync:
        # No gap seen: every delta arrived once, in order, so the table is the truth.
        assert table.peers == truth
    # What the driver does on needs_resync: a new connection, a new snapshot.
    table.apply(Snapshot(peers=sorted(truth.values(), key=lambda p: p.name), revision=99))
    assert table.peers == truth and not table.needs_resync


def test_a_late_delta_never_overwrites_a_newer_one() -> None:
    table = PeerTable(self_id="ff" * 8)
    table.apply(Snapshot(peers=[], revision=1))
    new = _peer("01", "a", 2)
    old = _peer("01", "a", 1)
    table.apply(PeerUpserted(peer=new, revision=2))
    assert table.apply(PeerUpserted(peer=old, revision=2)) == []  # a duplicate
    assert table.apply(PeerGone(peer_id="01", name="a", revision=1)) == []  # late
    assert table.peers["01"] == new and table.stale == 2 and not table.needs_resync
    table.apply(PeerUpserted(peer=_peer("02", "b", 3), revision=5))  # 3 and 4 were lost
    assert table.needs_resync and "02" in table.peers  # the newest record is still taken


def test_a_peer_that_missed_a_delta_reconnects_for_a_snapshot(tmp_path: Path) -> None:
    async def main() -> None:
        async with CoordinatorServer(config(tmp_path, heartbeat_interval=0.5)) as server:
            coord = server.coordinator
            a = await client(server, "alpha")
            task = asyncio.create_task(a.run())
            await until(
                lambda: coord.hub.is_connected(a.identity.peer_id) and a.table.revision >= 0
            )
            # A change alpha never hears of: its channel sees revision r+2 next, not r+1.
            coord.revision += 1
            b = await client(server, "beta")
            await until(lambda: a.resyncs == 1 and not a.table.needs_resync)
            await until(lambda: a.table.by_name("beta") is not None)
            assert a.table.revision == coord.revision
            # Later deltas continue from the new snapshot.
            c = await client(server, "gamma")
            await until(lambda: a.table.by_name("gamma") is not None)
            assert a.resyncs == 1 and a.table.revision == coord.revision
            await a.aclose()
            await task
            for x in (b, c):
                await x.aclose()

    run(main())


def test_push_messages_of_old_coordinators_still_decode() -> None:
    # A coordinator before deltas sent every field; a peer today takes them as they are.
    info = _peer("01", "a", 1)
    full = msgspec.structs.replace(info, transports={"b": "udp"}, rtt_ms={"b": 1.0})
    msg = decode_push(encode(PeerUpserted(peer=full, revision=3)))
    assert isinstance(msg, PeerUpserted) and msg.peer.transports == {"b": "udp"}


def test_snapshots_derive_each_wireguard_key_once(tmp_path: Path, monkeypatch: Any) -> None:
    """Every push snapshot carries every peer's WireGuard key. The coordinator derives it from
    the peer's key once, not at every snapshot (about 70 µs a key: a 10,000-peer mesh spent
    0.7 s of CPU on each push channel that connected, which stalled the coordinator past the
    peers' heartbeat timeouts when a hundred connected at once)."""
    from tunnelmesh.coordinator import views

    real = views.x25519_public_of
    derived: list[bytes] = []

    def counting(raw: bytes) -> bytes:
        derived.append(raw)
        return real(raw)

    monkeypatch.setattr(views, "x25519_public_of", counting)
    views.wg_public_key.cache_clear()
    idents = [Identity.generate() for _ in range(20)]

    async def main() -> None:
        cfg = ServerConfig(auth_token=TOKEN, data_dir=str(tmp_path / "state"), joins_burst=1000)
        coord = Coordinator(cfg)
        await coord.load()
        for i, ident in enumerate(idents):
            await _register(coord, ident, f"p{i:02d}")
        before = len(derived)
        snapshots = [msgspec.json.decode(coord.snapshot_message(), type=Snapshot) for _ in range(5)]
        assert len(derived) == before  # registering derived each key once; snapshots none
        assert before == len(idents)
        expected = {i.public_openssh: base64.b64encode(i.x25519_public()).decode() for i in idents}
        for snap in snapshots:
            assert {p.public_key: p.wg_public_key for p in snap.peers} == expected
        await coord.close()

    run(main())


def test_channels_connecting_together_share_one_snapshot(tmp_path: Path) -> None:
    """Push channels that connect at the same revision within a second get the same snapshot
    bytes (one encoding of the whole mesh, not one per channel); any announced change, or a
    second passing, gives a fresh one."""
    now = [1_000_000.0]
    idents = [Identity.generate() for _ in range(5)]

    async def main() -> None:
        cfg = ServerConfig(auth_token=TOKEN, data_dir=str(tmp_path / "state"), joins_burst=1000)
        coord = Coordinator(cfg, clock=lambda: now[0])
        await coord.load()
        for i, ident in enumerate(idents):
            await _register(coord, ident, f"p{i}")
        first = coord.snapshot_message()
        assert coord.snapshot_message() is first  # reused, not encoded again
        rec = coord.peer_by_name("p1")
        assert rec is not None
        coord.heartbeat(rec, Heartbeat(endpoints=["192.0.2.7:4000"]), "127.0.0.1:1")
        await asyncio.sleep(PUSH_COALESCE + 0.2)  # the change is announced: a new revision
        changed = coord.snapshot_message()
        snap = msgspec.json.decode(changed, type=Snapshot)
        assert snap.revision > msgspec.json.decode(first, type=Snapshot).revision
        assert {p.name: p.endpoints for p in snap.peers}["p1"] == ["192.0.2.7:4000"]
        now[0] += 1.5  # same revision, a second later: encoded again
        again = coord.snapshot_message()
        assert again is not changed and again == changed
        await coord.close()

    run(main())
