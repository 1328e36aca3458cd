"""A WebDAV server over loopback for tests: one store, three peers told apart by source address.

Callers are identified by the address a connection comes from, as on a mesh; here alice is
127.0.0.1, bob 127.0.0.2 and carol 127.0.0.3 (a client binds its source address), and 127.0.0.9
is nobody. Share ``team`` belongs to alice, bob may only read it; ``priv`` is carol's alone.
"""

from __future__ import annotations

import asyncio
import http.client
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from tunnelmesh_s3.auth import BucketAcl, FileAuthorizer, Principal, Share
from tunnelmesh_s3.dav import build_dav_app
from tunnelmesh_s3.filesystem import FilesystemStorage
from tunnelmesh_s3.shareaccess import ShareAccess

ALICE = Principal("alice", peer_id="A" * 43)
BOB = Principal("bob", peer_id="B" * 43)
CAROL = Principal("carol", peer_id="C" * 43)
PEERS = {"127.0.0.1": ALICE, "127.0.0.2": BOB, "127.0.0.3": CAROL}
SOURCE = {"alice": "127.0.0.1", "bob": "127.0.0.2", "carol": "127.0.0.3", "nobody": "127.0.0.9"}


@dataclass
class Dav:
    """A running server, and a client per peer."""

    port: int
    storage: FilesystemStorage
    authorizer: FileAuthorizer
    loop: asyncio.AbstractEventLoop
    app: web.Application

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        *,
        who: str = "alice",
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=30, source_address=(SOURCE[who], 0)
        )
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)


async def make_shares(storage: FilesystemStorage, auth: FileAuthorizer) -> None:
    if await storage.list_buckets():
        return  # a store made before (a restart)
    for name, owner, read in (("team", ALICE, [BOB.key]), ("priv", CAROL, [])):
        await storage.create_bucket(name)
        await auth.put_share(
            Share(name=name, owner=owner.key, created=0.0), BucketAcl(owner=owner.key, read=read)
        )
    await storage.create_bucket("plainbucket")  # a bucket that is no share
    await auth.bucket_created(ALICE, "plainbucket")


@dataclass
class _Thread:
    root: Path

    def __enter__(self) -> Dav:
        ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.stop: asyncio.Event | None = None
        box: dict[str, Any] = {}

        async def main() -> None:
            self.stop = asyncio.Event()
            storage = FilesystemStorage(self.root / "objects")
            auth = FileAuthorizer(self.root / "auth.json")
            async with storage:
                await make_shares(storage, auth)
                app = build_dav_app(
                    ShareAccess(storage, auth, PEERS.get), domains=("tunnelmesh", "tm")
                )
                runner = web.AppRunner(app, access_log=None, handle_signals=False)
                await runner.setup()
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
                box["dav"] = Dav(port, storage, auth, self.loop, app)
                ready.set()
                await self.stop.wait()
                await runner.cleanup()

        def run() -> None:
            try:
                self.loop.run_until_complete(main())
            except BaseException as exc:
                box["error"] = exc
                ready.set()

        self.thread = threading.Thread(target=run, name="dav", daemon=True)
        self.thread.start()
        ready.wait(30)
        if "error" in box:
            raise box["error"]
        dav: Dav = box["dav"]
        return dav

    def __exit__(self, *exc: object) -> None:
        if self.stop is not None:
            self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)
        self.loop.close()


def dav_server(root: Path) -> Iterator[Dav]:
    with _Thread(root) as dav:
        yield dav


if __name__ == "__main__":  # a server in its own process (the crash test kills it)
    import sys

    for running in dav_server(Path(sys.argv[1])):
        print(f"listening {running.port}", flush=True)
        threading.Event().wait()
