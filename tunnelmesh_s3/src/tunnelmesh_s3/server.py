"""Running the S3 app: the standalone server (``tunnelmesh s3 serve``) and a thread for tests.

Standalone layout of ``--data-dir``::

    DIR/objects/     the storage backend's directory (FilesystemStorage by default)
    DIR/auth.json    issued credentials, bucket grants and shares (mode 0600)

The credential given on the command line is the admin; it is never written to disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from tunnelmesh.abc import Storage
from tunnelmesh.errors import ConfigError
from tunnelmesh.logs import add_secret

from tunnelmesh_s3.app import S3Config, build_app
from tunnelmesh_s3.auth import FileAuthorizer, Principal
from tunnelmesh_s3.filesystem import FilesystemStorage

__all__ = ["Running", "ServerThread", "parse_listen", "serve"]


@dataclass
class Running:
    """A started server: where it listens and what it serves from."""

    host: str
    port: int
    storage: Storage
    authorizer: FileAuthorizer
    tls: bool = False

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) to a pair.

    Raises:
        ConfigError: not of that form.
    """
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--listen must be HOST:PORT, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


@contextlib.asynccontextmanager
async def serve(
    data_dir: str | Path,
    *,
    listen: str = "127.0.0.1:9000",
    access_key: str,
    secret_key: str,
    region: str = "us-east-1",
    domains: Sequence[str] = ("localhost",),
    storage_cls: type[Storage] = FilesystemStorage,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Running]:
    """Serve the S3 API from ``data_dir`` until the context exits.

    Raises:
        ConfigError: missing credentials or a bad ``listen``.
        StorageError: the data directory cannot be opened (or is in use).
    """
    if not access_key or not secret_key:
        raise ConfigError(
            "standalone mode needs a credential: --access-key/--secret-key or "
            "TUNNELMESH_S3_ACCESS_KEY/TUNNELMESH_S3_SECRET_KEY"
        )
    add_secret(secret_key)  # never logged (tunnelmesh.logs)
    host, port = parse_listen(listen)
    root = Path(data_dir).expanduser()
    storage = storage_cls(root / "objects")  # type: ignore[call-arg]
    authorizer = FileAuthorizer(
        root / "auth.json", static={access_key: (secret_key, Principal("admin", admin=True))}
    )
    async with storage:
        app = build_app(storage, authorizer, S3Config(region=region, domains=tuple(domains)))
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=ssl_context)
            await site.start()
            server = site._server
            assert server is not None
            bound = int(getattr(server, "sockets", [])[0].getsockname()[1])
            yield Running(host, bound, storage, authorizer, tls=ssl_context is not None)
        finally:
            await runner.cleanup()


class ServerThread:
    """The standalone server on its own event loop in a thread (for sync clients in tests).

    ``with ServerThread(tmp_path, access_key="AK", secret_key="SK") as running: ...``;
    ``loop_factory`` makes its loop (``uvloop.new_event_loop``: the loop a coordinator's own
    peer serves S3 on).
    """

    def __init__(
        self,
        data_dir: str | Path,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
        **kwargs: object,
    ) -> None:
        self.data_dir = data_dir
        self.kwargs = dict(kwargs)
        self.kwargs.setdefault("listen", "127.0.0.1:0")
        self.loop = loop_factory()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.running: Running | None = None
        self._thread = threading.Thread(target=self._run, name="s3-server", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()
        finally:
            self.loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with serve(self.data_dir, **self.kwargs) as running:  # type: ignore[arg-type]
            self.running = running
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> Running:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        assert self.running is not None
        return self.running

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
