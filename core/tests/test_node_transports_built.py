"""The node builds every registered transport through ``Transport.from_node`` (no getattr probe):
the default constructor call, an override reading the node as a ``TransportHost``, and a
transport that cannot be built for a node is skipped."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
from tunnelmesh.abc import Link, StunProber, Transport, TransportCapabilities, TransportHost
from tunnelmesh.config import PeerConfig
from tunnelmesh.control.contexts import Context, ContextStore
from tunnelmesh.identity import Identity
from tunnelmesh.node import Node
from tunnelmesh.registry import Registry


class _Base(Transport):
    async def listen(self, on_link: Callable[[Link], None]) -> None:
        pass

    async def dial(self, peer: str, endpoints: Sequence[str], *, public_key: bytes = b"") -> Link:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


class Default(_Base):
    """Built by the default ``from_node``: the UDP transport's constructor arguments."""

    name = "default"

    def __init__(self, private_key: bytes, *, listen: str, mtu: int) -> None:
        self.args = (private_key, listen, mtu)


class Custom(_Base):
    """Overrides ``from_node`` and reads the node through the protocol."""

    name = "custom"

    def __init__(self, who: str) -> None:
        self.who = who

    @classmethod
    def from_node(cls, node: TransportHost) -> Custom:
        return cls(f"{node.name}@{node.context.server}/{node.identity.peer_id}")


class Unbuildable(_Base):
    """Its constructor takes none of the default arguments: skipped with a warning."""

    name = "unbuildable"

    def __init__(self, something: object) -> None:
        self.something = something


def test_transports_are_built_by_from_node(tmp_path: Path) -> None:
    ctx = Context(name="t", server="https://127.0.0.1:1", peer_name="a", mesh_ip="10.42.0.1")
    identity = Identity.generate()
    node = Node(
        PeerConfig(name="a"),
        context=ctx,
        store=ContextStore(tmp_path),
        identity=identity,
        client=SimpleNamespace(),  # type: ignore[arg-type]
    )
    registry = Registry()
    for cls in (Default, Custom, Unbuildable):
        registry.add_transport(cls)

    built = {t.name: t for t in node._build_transports(registry)}

    assert sorted(built) == ["custom", "default"]
    default = built["default"]
    assert isinstance(default, Default)
    assert default.args == (node.x25519_private_key, node.listen_address, node.config.tun.mtu)
    custom = built["custom"]
    assert isinstance(custom, Custom)
    assert custom.who == f"a@https://127.0.0.1:1/{identity.peer_id}"


class Prober(_Base):
    name = "prober"

    async def stun(
        self, host: str, port: int, *, timeout: float = 1.0, attempts: int = 3
    ) -> tuple[str, int] | None:
        return ("192.0.2.1", 4242)


def test_a_transport_with_stun_is_a_stun_prober() -> None:
    """What the node asks after a network change (it used to probe with getattr)."""
    assert isinstance(Prober(), StunProber)
    assert not isinstance(Custom("x"), StunProber)


def _ordered(order: list[str], *classes: type[Transport], tmp_path: Path) -> list[str]:
    ctx = Context(name="t", server="https://127.0.0.1:1", peer_name="a", mesh_ip="10.42.0.1")
    config = PeerConfig(name="a")
    config.transports.order = order
    node = Node(
        config,
        context=ctx,
        store=ContextStore(tmp_path),
        identity=Identity.generate(),
        client=SimpleNamespace(),  # type: ignore[arg-type]
    )
    registry = Registry()
    for cls in classes:
        registry.add_transport(cls)
    return [t.name for t in node._build_transports(registry)]


def _named(name: str, preference: int | None = None) -> type[Transport]:
    body: dict[str, object] = {"name": name}
    if preference is not None:
        body["preference"] = preference
    return type(name.title(), (Default,), body)


def test_the_default_order_is_each_transports_own_preference(tmp_path: Path) -> None:
    """No ``transports.order``: lower preference first, then by name; the base class says 100.
    A configured order comes first and the transports it leaves out follow by preference."""
    classes = (
        _named("zeta"),
        _named("relay", 30),
        _named("alpha"),
        _named("udp", 10),
        _named("ssh", 20),
    )
    assert _ordered([], *classes, tmp_path=tmp_path) == ["udp", "ssh", "relay", "alpha", "zeta"]
    assert _ordered(["zeta", "relay", "quic"], *classes, tmp_path=tmp_path) == [
        "zeta",
        "relay",
        "udp",
        "ssh",
        "alpha",
    ]


def test_the_reflexive_address_is_asked_only_for_a_transport_that_punches_nats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NAT's mapping of the UDP listen port helps a transport that punches NATs (UDP); a
    node with only TCP or relayed transports asks nothing and publishes no such address."""
    asked: list[tuple[str, int, int]] = []

    async def stun_query(host: str, port: int, *, local_port: int, **kw: object) -> tuple[str, int]:
        asked.append((host, port, local_port))
        return ("203.0.113.7", 40000)

    monkeypatch.setattr("tunnelmesh.control.daemon.stun_query", stun_query)
    ctx = Context(
        name="t", server="https://127.0.0.1:1", peer_name="a", mesh_ip="10.42.0.1", stun_port=3478
    )
    config = PeerConfig(name="a")
    config.transports.listen_port = 4711
    node = Node(
        config,
        context=ctx,
        store=ContextStore(tmp_path),
        identity=Identity.generate(),
        client=SimpleNamespace(),  # type: ignore[arg-type]
    )
    punching = type(
        "Punching",
        (Default,),
        {"name": "punching", "capabilities": TransportCapabilities(nat_punch=True)},
    )
    host: TransportHost = node
    node.transports = [Default.from_node(host)]  # nat_punch is False by default
    asyncio.run(node._stun())
    assert asked == [] and node.reflexive == []
    node.transports.append(punching.from_node(host))
    asyncio.run(node._stun())
    assert asked == [("127.0.0.1", 3478, 4711)]
    assert node.reflexive == ["203.0.113.7:40000"]
