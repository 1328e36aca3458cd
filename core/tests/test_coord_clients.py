"""Clients of concentrator peers in core: the state store (schema v3, a mesh IP and a name held
by a peer or a client, never both), the coordinator's client book (IPAM, names, the per-peer
push, expiry), and the peer side (the peer table's ClientsChanged, DNS names)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from tunnelmesh.config import ServerConfig
from tunnelmesh.control.messages import (
    ClientInfo,
    Clients,
    Snapshot,
    decode_push,
)
from tunnelmesh.control.peertable import ClientsChanged, PeerTable
from tunnelmesh.control.urls import endpoint_problem
from tunnelmesh.coordinator.clients import ClientRefused
from tunnelmesh.coordinator.core import Coordinator
from tunnelmesh.coordinator.store import PeerRecord
from tunnelmesh.dns.backend import CoordinatorBackend
from tunnelmesh.identity import Identity


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def peer(name: str, ip: str) -> PeerRecord:
    ident = Identity.generate()
    return PeerRecord(peer_id=ident.peer_id, public_key=ident.public_openssh, name=name, mesh_ip=ip)


def server_config(tmp_path: Path, **kw: Any) -> ServerConfig:
    return ServerConfig(auth_token="t" * 32, data_dir=str(tmp_path / "state"), **kw)


async def add(coord: Coordinator, name: str, conc: str, raw: bytes | None = None, **kw: Any) -> Any:
    raw = raw or os.urandom(32)
    return await coord.clients.add(
        name=name, kind="wireguard", public_key=raw.hex(), raw_key=raw, concentrator=conc, **kw
    )


async def with_peer(coord: Coordinator, name: str, ip: str, *, index: bool = True) -> PeerRecord:
    """A peer written to the store (``index``: and known to this coordinator; else as another
    coordinator of the same database would have written it)."""
    rec = await coord.store.claim_peer(peer(name, ip), names=[name], ips=[ip])
    if index:
        coord._index(rec)
        coord.alloc.mark_used(rec.mesh_ip)
    return rec


# --- the store ------------------------------------------------------------------------------


def test_a_client_holds_its_name_and_address_in_the_store_beside_the_peers(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        coord = Coordinator(server_config(tmp_path))
        await coord.load()
        try:
            conc = await with_peer(coord, "conc", "172.30.0.5")
            raw = os.urandom(32)
            first_choice = next(coord.alloc.candidates(b"client\0" + raw))
            # another coordinator of the same database registered a peer this one has not
            # heard of yet: its name and its address are the store's, not ours to give
            await with_peer(coord, "phone", "172.30.0.6", index=False)
            await with_peer(coord, "other", first_choice, index=False)
            with pytest.raises(ClientRefused) as refused:
                await add(coord, "phone", conc.peer_id, raw)
            assert (refused.value.status, refused.value.error) == (409, "name_taken")
            rec = await add(coord, "tablet", conc.peer_id, raw)
            assert rec.mesh_ip not in (first_choice, "172.30.0.5", "172.30.0.6")
            assert (await coord.store.load_names())["tablet"] == rec.client_id
            assert (await coord.store.load_addresses())[rec.mesh_ip] == rec.client_id
            # and no peer can take the client's name or address afterwards
            from tunnelmesh.coordinator.store import NameReserved

            with pytest.raises(NameReserved):
                await coord.store.claim_peer(
                    peer("tablet", ""), names=["tablet"], ips=["172.30.0.9"]
                )
            taken = await coord.store.claim_peer(
                peer("late", ""), names=["late"], ips=[rec.mesh_ip, "172.30.0.10"]
            )
            assert taken.mesh_ip == "172.30.0.10"
            # removing the client frees both
            assert await coord.clients.remove(rec)
            assert "tablet" not in await coord.store.load_names()
            assert rec.mesh_ip not in await coord.store.load_addresses()
            assert await coord.store.load_docs("clients") == {}
        finally:
            await coord.close()

    run(main())


def test_clients_survive_a_restart(tmp_path: Path) -> None:
    cfg = server_config(tmp_path)
    psk = "c2VjcmV0LXByZXNoYXJlZC1rZXktMDEyMzQ1Njc4OTA="

    async def first() -> Any:
        coord = Coordinator(cfg)
        await coord.load()
        try:
            conc = await with_peer(coord, "conc", "172.30.0.5")
            return await add(coord, "phone", conc.peer_id, preshared_key=psk, expires_at=1e12)
        finally:
            await coord.close()

    async def second() -> None:
        coord = Coordinator(cfg)
        await coord.load()
        try:
            assert coord.clients.by_name("phone") == rec
            assert coord.alloc.is_used(rec.mesh_ip)
            assert coord.name_owner("phone") == rec.client_id
        finally:
            await coord.close()

    rec = run(first())
    run(second())


def test_another_coordinator_of_the_database_follows_the_clients(tmp_path: Path) -> None:
    from tunnelmesh.coordinator.store import StoreChange

    async def main() -> None:
        a = Coordinator(server_config(tmp_path))
        b = Coordinator(server_config(tmp_path))
        await a.load()
        await b.load()
        try:
            conc = await with_peer(a, "conc", "172.30.0.5")
            rec = await add(a, "phone", conc.peer_id)
            await b.apply_store_change(StoreChange(kind="client", key=rec.client_id, origin="a"))
            assert b.clients.by_name("phone") == rec
            assert b.alloc.is_used(rec.mesh_ip)
            assert "phone.tunnelmesh" in {r.name for r in b.dns_records()}
            assert await a.clients.remove(rec)
            await b.reload_from_store()
            assert b.clients.by_name("phone") is None
            assert not b.alloc.is_used(rec.mesh_ip)
        finally:
            await a.close()
            await b.close()

    run(main())


def test_a_preshared_key_is_sealed_with_the_state_key(tmp_path: Path) -> None:
    from tunnelmesh.config import StateConfig
    from tunnelmesh.errors import ConfigError

    key_file = tmp_path / "state.key"
    key_file.write_text(os.urandom(32).hex())
    key_file.chmod(0o600)
    plain_cfg = server_config(tmp_path)
    sealed_cfg = server_config(tmp_path, state=StateConfig(encryption_key_file=str(key_file)))
    psks = [
        "c2VjcmV0LXByZXNoYXJlZC1rZXktMDEyMzQ1Njc4OTA=",
        "YW5vdGhlci1wcmVzaGFyZWQta2V5LTAxMjM0NTY3ODk=",
    ]

    def on_disk() -> bytes:
        state = tmp_path / "state"
        return b"".join(p.read_bytes() for p in state.iterdir() if p.name.startswith("state.db"))

    async def add_one(cfg: ServerConfig, name: str, psk: str, conc: bool) -> None:
        coord = Coordinator(cfg)
        await coord.load()
        try:
            peer_rec = (
                await with_peer(coord, "conc", "172.30.0.5") if conc else coord.peer_by_name("conc")
            )
            assert peer_rec is not None
            await add(coord, name, peer_rec.peer_id, preshared_key=psk)
        finally:
            await coord.close()

    async def reopen(cfg: ServerConfig) -> dict[str, str]:
        coord = Coordinator(cfg)
        await coord.load()
        try:
            return {r.name: r.preshared_key for r in coord.clients.records.values()}
        finally:
            await coord.close()

    run(add_one(plain_cfg, "phone", psks[0], True))  # before a key was configured: plain
    assert psks[0].encode() in on_disk()  # the search sees plaintext where it is
    run(add_one(sealed_cfg, "tablet", psks[1], False))  # with a key: sealed, and phone's too
    # (phone's is re-sealed in its row; its old bytes may stay in a freed part of a page)
    assert psks[1].encode() not in on_disk()
    assert run(reopen(sealed_cfg)) == {"phone": psks[0], "tablet": psks[1]}
    with pytest.raises(ConfigError, match="encryption_key_file"):
        run(reopen(plain_cfg))


def test_a_store_failure_while_adding_leaves_nothing_held(tmp_path: Path) -> None:
    from tunnelmesh.errors import StateStoreError

    async def main() -> None:
        coord = Coordinator(server_config(tmp_path))
        await coord.load()
        try:
            conc = await with_peer(coord, "conc", "172.30.0.5")
            store: Any = coord.store
            real = store.claim_address

            async def down(*args: Any, **kw: Any) -> str:
                raise StateStoreError("the database went away")

            store.claim_address = down
            with pytest.raises(ClientRefused) as refused:
                await add(coord, "phone", conc.peer_id)
            assert (refused.value.status, refused.value.error) == (503, "store_unavailable")
            assert "phone" not in await store.load_names()
            store.claim_address = real
            rec = await add(coord, "phone", conc.peer_id)  # the name was not left held
            assert coord.clients.by_name("phone") == rec
        finally:
            await coord.close()

    run(main())


# --- the coordinator's client book ------------------------------------------------------------


def test_the_book_allocates_pushes_per_peer_and_expires(tmp_path: Path) -> None:
    now = [1000.0]

    async def main() -> None:
        coord = Coordinator(server_config(tmp_path), clock=lambda: now[0])
        await coord.load()
        try:
            conc = await with_peer(coord, "conc", "172.30.0.5")
            other = await with_peer(coord, "other", "172.30.0.6")
            book = coord.clients
            rec = await book.add(
                name="phone",
                kind="wireguard",
                public_key="k1",
                raw_key=os.urandom(32),
                concentrator=conc.peer_id,
                preshared_key="c2VjcmV0LXBzaw==",
                expires_at=1010.0,
            )
            assert rec.mesh_ip not in (conc.mesh_ip, other.mesh_ip)
            assert coord.alloc.is_used(rec.mesh_ip)
            assert coord.name_owner("phone") == rec.client_id
            with pytest.raises(ClientRefused) as refused:
                await book.add(
                    name="conc",
                    kind="wireguard",
                    public_key="k2",
                    raw_key=os.urandom(32),
                    concentrator=conc.peer_id,
                )
            assert refused.value.status == 409
            mine = decode_push(book.message_for(conc.peer_id))
            theirs = decode_push(book.message_for(other.peer_id))
            assert isinstance(mine, Clients) and isinstance(theirs, Clients)
            assert mine.clients[0].preshared_key == "c2VjcmV0LXBzaw=="
            assert theirs.clients[0].preshared_key == ""
            names = {r.name: r.ip for r in coord.dns_records()}
            assert names["phone.tunnelmesh"] == rec.mesh_ip
            # expiry: the next poll after it passes pushes the client as inactive
            book.poll(now[0])
            assert book.stats["expired"] == 0
            now[0] = 1010.0
            book.poll(now[0])
            assert book.stats["expired"] == 1
            assert not decode_push(book.message_for("")).clients[0].active  # type: ignore[union-attr]
            assert "phone.tunnelmesh" not in {r.name for r in coord.dns_records()}
            assert await book.remove(rec)
            assert not coord.alloc.is_used(rec.mesh_ip)
            assert coord.name_owner("phone") is None
        finally:
            await coord.close()

    run(main())


# --- the peer side --------------------------------------------------------------------------


def info(name: str = "phone", **kw: Any) -> ClientInfo:
    kw.setdefault("mesh_ip", "172.30.9.9")
    return ClientInfo(
        client_id="aa" * 8,
        name=name,
        kind="wireguard",
        public_key="k",
        concentrator="bb" * 8,
        **kw,
    )


def test_the_peer_table_reports_the_whole_client_list_on_change() -> None:
    table = PeerTable("self")
    assert table.clients is None
    assert table.apply(Snapshot(peers=[], revision=0)) == []
    first = Clients(clients=[info()])
    (change,) = table.apply(first)
    assert isinstance(change, ClientsChanged) and change.clients == (info(),)
    assert table.apply(first) == []  # the same list again: nothing changed
    (change,) = table.apply(Clients(clients=[info(active=False)]))
    assert isinstance(change, ClientsChanged) and not change.clients[0].live(0.0)
    (change,) = table.apply(Clients(clients=[]))
    assert isinstance(change, ClientsChanged) and change.clients == ()


def test_a_client_is_live_while_active_and_not_expired() -> None:
    assert info().live(1e12)
    assert info(expires_at=100.0).live(99.9)
    assert not info(expires_at=100.0).live(100.0)
    assert not info(active=False).live(0.0)


def test_dns_answers_active_clients_and_never_over_a_peer() -> None:
    backend = CoordinatorBackend(networks=["172.30.0.0/16"])
    backend.apply_push(Snapshot(peers=[], revision=0))
    backend.set("alpha", ["172.30.0.5"])
    backend.apply_push(
        Clients(
            clients=[
                info("phone", mesh_ip="172.30.9.9"),
                info("tablet", mesh_ip="172.30.9.10", active=False),
                info("alpha", mesh_ip="172.30.9.11"),
            ]
        )
    )
    assert backend.lookup("phone", "A") == ["172.30.9.9"]
    assert backend.lookup("172.30.9.9", "PTR") == ["phone"]
    assert backend.lookup("tablet", "A") is None
    assert backend.lookup("alpha", "A") == ["172.30.0.5"]  # the peer's name wins
    backend.apply_push(Snapshot(peers=[], revision=1))  # a new snapshot keeps the clients
    assert backend.lookup("phone", "A") == ["172.30.9.9"]
    backend.apply_push(Clients(clients=[]))
    assert backend.lookup("phone", "A") is None


def test_a_concentrator_endpoint_may_be_a_host_name() -> None:
    assert endpoint_problem("vpn.example.org:51820", names=True) is None
    assert endpoint_problem("203.0.113.1:51820", names=True) is None
    assert endpoint_problem("vpn.example.org:51820") is not None  # peers' endpoints: IPs only
    for bad in ("vpn..example:1", "-x.example:1", "host:0", "host:70000", "a b:1", "1.2.3:5"):
        assert endpoint_problem(bad, names=True) is not None, bad
    assert endpoint_problem("127.0.0.1:51820", names=True) is not None
