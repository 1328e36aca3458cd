"""The node's traffic counters (heartbeats, `tunnelmesh peers`) are every transport's
`Transport.traffic()`: from the WireGuard engine (udp, relay) or the links' own counts (SSH)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace

from tunnelmesh.abc import Link, Transport
from tunnelmesh.aio.wgsession import traffic_of
from tunnelmesh.config import PeerConfig
from tunnelmesh.control.contexts import Context, ContextStore
from tunnelmesh.identity import Identity
from tunnelmesh.node import Node


class Counted(Transport):
    """A transport whose links are not sealed by an engine, as the SSH transport's."""

    name = "counted"

    def __init__(self, traffic: dict[str, tuple[int, int]]) -> None:
        self._traffic = traffic

    async def listen(self, on_link: Callable[[Link], None]) -> None:
        pass

    async def dial(self, peer: str, endpoints: Sequence[str], *, public_key: bytes = b"") -> Link:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass

    def traffic(self) -> dict[str, tuple[int, int]]:
        return dict(self._traffic)


def test_status_counts_transports_without_an_engine(tmp_path: Path) -> None:
    ctx = Context(name="t", server="https://127.0.0.1:1", peer_name="a", mesh_ip="10.42.0.1")
    node = Node(
        PeerConfig(name="a"),
        context=ctx,
        store=ContextStore(tmp_path),
        identity=Identity.generate(),
        client=SimpleNamespace(),  # type: ignore[arg-type]
    )
    engine_peer = SimpleNamespace(name="b", rx_bytes=100, tx_bytes=10)
    engine = SimpleNamespace(peers={"k": engine_peer})
    # a transport on a WireGuard engine answers traffic() from it (udp, relay)
    udp = SimpleNamespace(traffic=lambda: traffic_of(engine))
    node.transports = [udp, Counted({"b": (4000, 3000), "c": (5, 7)})]  # type: ignore[list-item]
    counters = node.status().counters
    assert (counters.bytes_received, counters.bytes_sent) == (4105, 3017)
