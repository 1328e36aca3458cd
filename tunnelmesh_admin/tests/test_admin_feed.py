"""The live feed: a snapshot of the peers, then the rows that changed, within a second."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from tunnelmesh.control.messages import Counters, Heartbeat
from tunnelmesh_admin.feed import PeerFeed
from tunnelmesh_admin.testing import Browser, Mesh, running_mesh


def run(coro: object) -> None:
    asyncio.run(asyncio.wait_for(coro, 120))  # type: ignore[arg-type]


async def _events(b: Browser, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The first ``count`` messages of /events."""
    out: list[dict[str, Any]] = []
    async with b.session.get(
        f"https://127.0.0.1:{b.service.port}/events",
        headers={"Host": f"{b.host}:{b.service.port}"},
        server_hostname=b.sni,
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
        async with asyncio.timeout(timeout):
            async for line in resp.content:
                if line.startswith(b"data: "):
                    out.append(json.loads(line[6:]))
                    if len(out) == count:
                        break
    return out


def _heartbeat(mesh: Mesh, client: Any, rx: int, tx: int, transports: dict[str, str]) -> None:
    coord = mesh.server.coordinator
    rec = coord.peers[client.registration.peer_id]
    coord.heartbeat_pace.forget(rec.peer_id)  # the test's own pace, not the peer's allowance
    coord.heartbeat(
        rec,
        Heartbeat(transports=transports, counters=Counters(bytes_received=rx, bytes_sent=tx)),
        "",
    )


def test_the_feed_sends_a_snapshot_then_changed_rows(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_mesh(tmp_path) as mesh:
            member = mesh.browser(mesh.mesh_ip(mesh.callers.peer))
            admin_name = mesh.callers.admin.registration.name  # type: ignore[union-attr]
            member_id = mesh.callers.peer.registration.peer_id  # type: ignore[union-attr]
            _heartbeat(mesh, mesh.callers.peer, 0, 0, {admin_name: "relay"})
            reader = asyncio.create_task(_events(member, 4))
            await asyncio.sleep(0.3)
            _heartbeat(mesh, mesh.callers.peer, 0, 0, {admin_name: "relay"})
            await asyncio.sleep(1.2)
            _heartbeat(mesh, mesh.callers.peer, 500_000, 100_000, {admin_name: "relay"})
            started = time.monotonic()
            msgs = await reader
            first = msgs[0]
            assert first["type"] == "snapshot"
            assert {r["peer_id"] for r in first["rows"]} == set(mesh.server.coordinator.peers)
            assert first["view"]["transports"] == {admin_name: "relay"}  # the caller's paths
            rates = [
                r["rx_rate"]
                for m in msgs[1:]
                if m["type"] == "update"
                for r in m["rows"]
                if r["peer_id"] == member_id
            ]
            assert rates and rates[-1] > 0, msgs
            assert time.monotonic() - started < 3.0
            row = next(r for r in first["rows"] if r["peer_id"] == member_id)
            assert row["relayed"] == 1 and row["paths"] == 1

    run(main())


def test_a_slow_listener_is_dropped_to_a_snapshot_not_buffered(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_mesh(tmp_path) as mesh:
            feed = PeerFeed(mesh.server.coordinator, interval=0.01)
            sub = feed.subscribe("nobody")
            try:
                for _ in range(8):  # a snapshot, then ticks: the queue is full
                    feed.publish()
                assert sub.queue.full()
                feed.publish()  # one more: the old messages go, nothing is kept
                assert sub.queue.empty() and sub.needs_snapshot
                feed.publish()
                assert b'"type":"snapshot"' in sub.queue.get_nowait()
            finally:
                await feed.aclose()

    run(main())
