"""The behaviour every :class:`~tunnelmesh.coordinator.store.StateStore` must show, as checks.

A backend's tests call each check with a factory of new, unopened stores that all reach the
same (fresh, empty) database; checks that need several coordinators call it more than once::

    import asyncio, pytest
    from tunnelmesh.testing import statestore

    @pytest.mark.parametrize("check", statestore.CHECKS, ids=lambda c: c.__name__)
    def test_conformance(check, tmp_path):
        asyncio.run(check(lambda: SqliteStore(tmp_path / "state.db")))

:data:`CHECKS` is what every backend passes (SQLite included: several stores on one SQLite file
serialize their writes). :data:`SHARED_CHECKS` is what a store for several coordinators must add:
the change feed (a write through one store reaches the others' :meth:`changes`).

Every check opens its stores and closes them, also when it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec

from tunnelmesh.control.messages import Counters
from tunnelmesh.coordinator.alloc import AllocationError, IpAllocator, name_candidates
from tunnelmesh.coordinator.store import (
    ClientRecord,
    Group,
    NameReserved,
    PeerRecord,
    StateStore,
    StoreChange,
    StoreConflict,
)
from tunnelmesh.errors import StateStoreError

__all__ = ["CHECKS", "SHARED_CHECKS", "Factory", "client", "peer"]

Factory = Callable[[], StateStore]
Check = Callable[[Factory], Awaitable[None]]


def peer(i: int, *, name: str = "", mesh_ip: str | None = None, **kw: object) -> PeerRecord:
    """A peer record with a made-up key (``i`` tells peers apart); ``mesh_ip=""`` leaves the
    address to :meth:`~StateStore.claim_peer`."""
    return PeerRecord(
        peer_id=f"{i:016x}",
        public_key=f"ssh-ed25519 KEY{i}",
        name=name or f"peer{i}",
        mesh_ip=str(ipaddress.ip_address("10.99.0.0") + 1 + i) if mesh_ip is None else mesh_ip,
        **kw,  # type: ignore[arg-type]
    )


@contextlib.asynccontextmanager
async def _opened(factory: Factory, n: int = 1) -> AsyncIterator[list[StateStore]]:
    stores: list[StateStore] = []
    try:
        for _ in range(n):
            store = factory()
            await store.open()
            stores.append(store)
        yield stores
    finally:
        for store in stores:
            await store.close()


async def _raises(exc: type[BaseException], aw: Awaitable[object]) -> BaseException:
    try:
        await aw
    except exc as caught:
        return caught
    raise AssertionError(f"expected {exc.__name__}")


async def check_peers_round_trip(factory: Factory) -> None:
    """Every field of a peer comes back as written; a second put replaces it."""
    rec = peer(
        1,
        is_admin=True,
        is_coordinator=True,
        session_hash="ab" * 32,
        created_at=1.5,
        last_seen=2.5,
        endpoints=["192.0.2.1:51820"],
        transports={"b": "udp"},
        rtt_ms={"b": 1.25},
        reasons={"b": "direct"},
        counters=Counters(bytes_sent=7, bytes_received=9, dropped=1),
        version="1.2.3",
        allow_exit_traffic=True,
        aliases=["db"],
        pending=True,
    )
    async with _opened(factory) as (store,):
        assert await store.load_peers() == []
        assert await store.get_peer(rec.peer_id) is None
        await store.put_peer(rec)
        assert await store.load_peers() == [rec]
        assert await store.get_peer(rec.peer_id) == rec
        changed = msgspec.structs.replace(rec, name="renamed", pending=False)
        await store.put_peer(changed)
        assert await store.load_peers() == [changed]
        names = await store.load_names()
        assert names == {"peer1": rec.peer_id, "renamed": rec.peer_id}  # the old one stays
    async with _opened(factory) as (again,):  # durable across a reopen
        assert await again.get_peer(rec.peer_id) == changed


async def check_uniqueness(factory: Factory) -> None:
    """Another peer cannot take a held name, mesh IP or key; a refused write changes nothing."""
    async with _opened(factory) as (store,):
        a = peer(1)
        await store.put_peer(a)
        await _raises(NameReserved, store.put_peer(peer(2, name=a.name)))
        await _raises(StoreConflict, store.put_peer(peer(3, mesh_ip=a.mesh_ip)))
        clash = msgspec.structs.replace(peer(4), public_key=a.public_key)
        await _raises(StoreConflict, store.put_peer(clash))
        assert await store.load_peers() == [a]
        assert await store.load_names() == {a.name: a.peer_id}
        assert await store.load_addresses() == {a.mesh_ip: a.peer_id}


async def check_tombstones(factory: Factory) -> None:
    """A deleted peer's name stays its key's until released; its address is freed."""
    async with _opened(factory) as (store,):
        a = peer(1)
        await store.put_peer(a)
        assert not await store.release_name(a.name)  # a live peer holds it
        assert await store.delete_peer(a.peer_id)
        assert not await store.delete_peer(a.peer_id)
        assert await store.get_peer(a.peer_id) is None
        assert await store.load_names() == {a.name: a.peer_id}
        assert await store.load_addresses() == {}
        err = await _raises(NameReserved, store.put_peer(peer(2, name=a.name)))
        assert isinstance(err, NameReserved) and err.owner == a.peer_id
        await store.put_peer(peer(3, mesh_ip=a.mesh_ip))  # the address is free again
        assert await store.release_name(a.name)
        assert not await store.release_name(a.name)
        await store.put_peer(peer(2, name=a.name))
        assert (await store.load_names())[a.name] == peer(2).peer_id


async def check_liveness(factory: Factory) -> None:
    """A liveness batch updates last_seen and status only, skips deleted peers."""
    async with _opened(factory) as (store,):
        a, b = peer(1, last_seen=10.0), peer(2, last_seen=10.0)
        await store.put_peer(a)
        await store.put_peer(b)
        await store.delete_peer(b.peer_id)
        seen = msgspec.structs.replace(a, last_seen=20.0, endpoints=["192.0.2.9:1"], version="9")
        gone = msgspec.structs.replace(b, last_seen=30.0)
        await store.put_liveness([seen, gone])
        await store.put_liveness([])
        assert await store.load_peers() == [seen]
        assert await store.load_liveness(15.0) == {a.peer_id: 20.0}
        assert await store.load_liveness(20.0) == {}


async def check_meta(factory: Factory) -> None:
    """Named blobs: absent, first writer wins with put_meta_if_absent, put_meta replaces."""
    async with _opened(factory) as (store,):
        assert await store.get_meta("k") is None
        assert await store.put_meta_if_absent("k", b"one") == b"one"
        assert await store.put_meta_if_absent("k", b"two") == b"one"
        await store.put_meta("k", b"\x00three")
        assert await store.get_meta("k") == b"\x00three"


async def check_groups(factory: Factory) -> None:
    """Groups: members sorted and unique, replaced whole (created_at kept), deleted."""
    async with _opened(factory) as (store,):
        assert await store.load_groups() == []
        await store.put_group(Group(name="ops", members=["b", "a", "b"], created_at=5.0))
        await store.put_group(Group(name="dev", members=[], created_at=6.0))
        assert await store.load_groups() == [
            Group(name="dev", members=[], created_at=6.0),
            Group(name="ops", members=["a", "b"], created_at=5.0),
        ]
        await store.put_group(Group(name="ops", members=["c"], created_at=99.0))
        assert (await store.load_groups())[1] == Group(name="ops", members=["c"], created_at=5.0)
        assert await store.delete_group("ops")
        assert not await store.delete_group("ops")
        assert [g.name for g in await store.load_groups()] == ["dev"]


async def check_documents(factory: Factory) -> None:
    """Documents by collection and key: put replaces, collections are apart, delete."""
    async with _opened(factory) as (store,):
        assert await store.get_doc("rules", "a") is None
        assert await store.load_docs("rules") == {}
        await store.put_doc("rules", "b", b"2")
        await store.put_doc("rules", "a", b"1")
        await store.put_doc("clients", "a", b"other")
        await store.put_doc("rules", "a", b"1bis")
        assert await store.load_docs("rules") == {"a": b"1bis", "b": b"2"}
        assert await store.get_doc("clients", "a") == b"other"
        assert await store.delete_doc("rules", "a")
        assert not await store.delete_doc("rules", "a")
        assert await store.load_docs("rules") == {"b": b"2"}


async def check_claim_peer(factory: Factory) -> None:
    """claim_peer takes the first free name and address, keeps a given address, says why not."""
    pool = IpAllocator("10.7.0.0/29")  # 6 addresses
    async with _opened(factory) as (store,):
        a = await store.claim_peer(
            peer(1, name="web", mesh_ip=""), names=["web"], ips=pool.candidates(b"1")
        )
        assert a.name == "web" and a.mesh_ip == next(pool.candidates(b"1"))
        assert await store.get_peer(a.peer_id) == a
        b = await store.claim_peer(
            peer(2, name="web", mesh_ip=""),
            names=name_candidates("web", rename=True),
            ips=[a.mesh_ip, *pool.candidates(b"2")],
        )
        assert b.name == "web-2" and b.mesh_ip != a.mesh_ip
        err = await _raises(
            NameReserved,
            store.claim_peer(peer(3, name="web", mesh_ip=""), names=["web"], ips=["10.7.0.6"]),
        )
        assert isinstance(err, NameReserved) and (err.name, err.owner) == ("web", a.peer_id)
        # A peer that re-registers keeps its address (ips is not read) and may rename.
        again = await store.claim_peer(
            msgspec.structs.replace(a, name="www"), names=["www"], ips=[]
        )
        assert (again.name, again.mesh_ip) == ("www", a.mesh_ip)
        # Everything else of the range, then one too many.
        for i in range(4):
            await store.claim_peer(
                peer(10 + i, mesh_ip=""), names=[f"n{i}"], ips=pool.candidates(b"x")
            )
        await _raises(
            AllocationError,
            store.claim_peer(peer(20, mesh_ip=""), names=["n20"], ips=pool.candidates(b"y")),
        )
        assert await store.get_peer(peer(20).peer_id) is None
        assert "n20" not in await store.load_names()
        held = await store.load_addresses()
        assert len(held) == 6 and len(set(held.values())) == 6


async def check_addresses_and_names_of_others(factory: Factory) -> None:
    """Owners that are not peers (clients) hold names and addresses in the same tables."""
    async with _opened(factory) as (store,):
        a = peer(1)
        await store.put_peer(a)
        assert await store.reserve_name("phone", "c1") == "c1"
        assert await store.reserve_name("phone", "c2") == "c1"
        assert await store.reserve_name(a.name, "c2") == a.peer_id
        ip = await store.claim_address("c1", [a.mesh_ip, "10.99.0.50", "10.99.0.51"])
        assert ip == "10.99.0.50"
        assert await store.claim_address("c1", ["10.99.0.51"]) == ip  # one address an owner
        await _raises(StoreConflict, store.put_peer(peer(2, mesh_ip=ip)))
        await _raises(NameReserved, store.put_peer(peer(2, name="phone")))
        assert not await store.release_address(a.peer_id)  # a live peer's
        assert await store.release_address("c1")
        assert not await store.release_address("c1")
        assert await store.load_addresses() == {a.mesh_ip: a.peer_id}
        await store.put_peer(peer(2, mesh_ip=ip))
        assert await store.release_name("phone")


def client(i: int, name: str, mesh_ip: str, *, key: str = "") -> ClientRecord:
    """A client record (a WireGuard client of a concentrator peer)."""
    return ClientRecord(
        client_id=f"c{i:015x}",
        name=name,
        kind="wireguard",
        public_key=key or f"WGKEY{i}",
        mesh_ip=mesh_ip,
        concentrator=peer(1).peer_id,
        preshared_key="psk" if i % 2 else "",
        expires_at=float(i),
        created_by=peer(1).peer_id,
        created_at=1.0,
    )


async def check_clients(factory: Factory) -> None:
    """Clients share the peers' names and addresses: neither side can take the other's name
    or IP, a key is one client's; a refused write changes nothing; delete frees name and IP."""
    async with _opened(factory) as (store,):
        alpha = peer(1, name="alpha", mesh_ip="10.99.0.5")
        await store.put_peer(alpha)
        phone = client(1, "phone", "10.99.0.6")
        await store.put_client(phone)
        assert await store.load_clients() == [phone]
        for bad in (
            client(2, "tablet", alpha.mesh_ip),  # a peer's IP
            client(2, "tablet", phone.mesh_ip),  # another client's IP
            client(2, "alpha", "10.99.0.7"),  # a peer's name
            client(2, "tablet", "10.99.0.7", key=phone.public_key),  # the same key, another ID
        ):
            await _raises(StoreConflict, store.put_client(bad))
        await _raises(StoreConflict, store.put_peer(peer(3, name="beta", mesh_ip=phone.mesh_ip)))
        await _raises(StoreConflict, store.put_peer(peer(3, name="phone", mesh_ip="10.99.0.8")))
        await _raises(
            StoreConflict, store.put_peer(msgspec.structs.replace(alpha, mesh_ip=phone.mesh_ip))
        )
        claimed = await store.claim_peer(
            peer(4, name="phone", mesh_ip=""),
            names=name_candidates("phone", rename=True),
            ips=[phone.mesh_ip, "10.99.0.9"],
        )
        assert (claimed.name, claimed.mesh_ip) == ("phone-2", "10.99.0.9")
        assert await store.load_clients() == [phone]
        assert await store.get_peer(alpha.peer_id) == alpha
        # a client may move and rename; its old name is freed (no tombstone for clients)
        moved = msgspec.structs.replace(phone, name="mobile", mesh_ip="10.99.0.10", enabled=False)
        await store.put_client(moved)
        names = await store.load_names()
        assert names["mobile"] == phone.client_id and "phone" not in names
        assert (await store.load_addresses())["10.99.0.10"] == phone.client_id
        assert phone.mesh_ip not in await store.load_addresses()
        # a tombstoned peer name stays its key's
        await store.delete_peer(alpha.peer_id)
        await _raises(NameReserved, store.put_client(client(5, "alpha", "10.99.0.11")))
        assert await store.delete_client(phone.client_id)
        assert not await store.delete_client(phone.client_id)
        assert await store.load_clients() == []
        assert "mobile" not in await store.load_names()
        assert "10.99.0.10" not in await store.load_addresses()


async def check_concurrent_claims(factory: Factory) -> None:
    """300 claims at once through 3 stores: 300 distinct names and addresses, none lost."""
    pool = IpAllocator("10.8.0.0/23")  # 510 addresses: the hash starts collide often
    async with _opened(factory, 3) as stores:

        async def claim(i: int) -> PeerRecord:
            store = stores[i % 3]
            want = f"node{i % 7}"  # 7 names asked for by 300 keys: suffixes decide
            rec = peer(i, name=want, mesh_ip="")
            return await store.claim_peer(
                rec,
                names=name_candidates(want, rename=True),
                ips=pool.candidates(i.to_bytes(4, "big")),
            )

        got = await asyncio.gather(*(claim(i) for i in range(300)))
        assert len({r.name for r in got}) == 300
        assert len({r.mesh_ip for r in got}) == 300
        stored = await stores[0].load_peers()
        assert len(stored) == 300
        assert {(r.peer_id, r.name, r.mesh_ip) for r in stored} == {
            (r.peer_id, r.name, r.mesh_ip) for r in got
        }
        held = await stores[1].load_addresses()
        assert held == {r.mesh_ip: r.peer_id for r in got}


async def check_closed(factory: Factory) -> None:
    """A closed store refuses work with StateStoreError; close is idempotent; changes ends."""
    store = factory()
    await store.open()
    feed = store.changes()
    await store.close()
    await store.close()
    await _raises(StateStoreError, store.load_peers())
    await _raises(StateStoreError, store.put_meta("k", b"v"))
    async with asyncio.timeout(10):
        async for change in feed:
            assert isinstance(change, StoreChange)


async def check_origin(factory: Factory) -> None:
    """Every open store has its own origin ID."""
    async with _opened(factory, 2) as (a, b):
        assert a.origin and b.origin and a.origin != b.origin


async def check_change_feed(factory: Factory) -> None:
    """A write through one store reaches another store's changes(), with the writer's origin,
    in commit order; a refused write notifies nobody."""
    async with _opened(factory, 2) as (a, b):
        seen: list[StoreChange] = []
        done = asyncio.Event()

        async def listen() -> None:
            async for change in a.changes():
                seen.append(change)
                if change.kind == "doc":
                    done.set()

        task = asyncio.create_task(listen())
        try:
            await asyncio.sleep(0.2)  # the listener is up
            p = peer(1)
            await b.put_peer(p)
            await _raises(StoreConflict, b.put_peer(peer(2, name=p.name)))
            await b.put_group(Group(name="ops"))
            await b.put_meta("m", b"1")
            await b.delete_peer(p.peer_id)
            await b.release_name(p.name)
            await b.put_doc("rules", "r1", b"x")
            async with asyncio.timeout(10):
                await done.wait()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        mine = [(c.kind, c.key) for c in seen if c.origin == b.origin]
        assert mine == [
            ("peer", p.peer_id),
            ("group", "ops"),
            ("meta", "m"),
            ("peer", p.peer_id),
            ("name", p.name),
            ("doc", "rules/r1"),
        ], mine


CHECKS: list[Check] = [
    check_peers_round_trip,
    check_uniqueness,
    check_tombstones,
    check_liveness,
    check_meta,
    check_groups,
    check_documents,
    check_claim_peer,
    check_addresses_and_names_of_others,
    check_clients,
    check_concurrent_claims,
    check_closed,
    check_origin,
]
"""Checks every :class:`StateStore` passes."""

SHARED_CHECKS: list[Check] = [check_change_feed]
"""Checks a store shared by several coordinators passes too."""
