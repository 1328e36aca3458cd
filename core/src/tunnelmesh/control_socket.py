"""The local control socket: how CLI commands talk to the running daemon.

A Unix stream socket (default ``/run/tunnelmesh.sock``, the peer config's ``control_socket``)
that only root can use: the file is created with mode 0600, and the server also checks each
client's credentials (``SO_PEERCRED``) and accepts only root or the daemon's own user.

Protocol: JSON lines. A client sends ``{"command": "filter.add", "payload": {...}}`` and reads
one line back, ``{"ok": true, "data": ...}`` or ``{"ok": false, "error": "..."}``. A connection
may carry several requests, one after the other. Lines are limited to 1 MiB.

Daemon side::

    server = ControlServer("/run/tunnelmesh.sock")
    server.add_handler("filter.list", lambda payload: {...})   # plain or async functions
    await server.start()
    ...
    await server.aclose()                                      # also removes the file

Client side: :func:`request` (blocking, for the CLI) or :func:`arequest`. Both raise
:class:`ControlError` with a one-line reason: daemon not running, not root, or the error the
daemon returned. A handler reports a user error by raising ``ValueError`` or a
:class:`~tunnelmesh.errors.TunnelmeshError`; anything else is logged and answered as an internal
error.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from tunnelmesh.errors import TunnelmeshError

__all__ = [
    "DEFAULT_SOCKET",
    "ENV_SOCKET",
    "ControlError",
    "ControlServer",
    "arequest",
    "request",
]

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/run/tunnelmesh.sock"
ENV_SOCKET = "TUNNELMESH_CONTROL_SOCKET"
MAX_LINE = 1 << 20
TIMEOUT = 5.0

Handler = Callable[[dict[str, Any]], Any | Awaitable[Any]]


class ControlError(TunnelmeshError):
    """A control-socket request failed: no daemon, no permission, or the daemon said no."""


def _peer_uid(sock: socket.socket) -> int | None:
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class ControlServer:
    """The daemon's end of the control socket; see the module docstring.

    Args:
        path: where to create the socket.
        handlers: command name to handler (``payload -> data``), more with :meth:`add_handler`.
        allowed_uids: client users accepted; default root and the daemon's own user.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        handlers: Mapping[str, Handler] | None = None,
        *,
        allowed_uids: frozenset[int] | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.handlers: dict[str, Handler] = dict(handlers or {})
        self.allowed_uids = (
            allowed_uids if allowed_uids is not None else frozenset({0, os.geteuid()})
        )
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    def add_handler(self, command: str, handler: Handler) -> None:
        if command in self.handlers:
            raise ValueError(f"control command {command!r} already has a handler")
        self.handlers[command] = handler

    async def start(self) -> None:
        """Create the socket and start serving.

        Raises:
            ControlError: another daemon is already serving on this path.
        """
        if os.path.exists(self.path) or os.path.islink(self.path):
            if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                raise ControlError(f"{self.path} exists and is not a socket; not touching it")
            if await _is_alive(self.path):
                raise ControlError(f"another tunnelmesh daemon is listening on {self.path}")
            os.unlink(self.path)  # left by a daemon that died
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        old_umask = os.umask(0o177)  # created 0600 at once, no window with wider permissions
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=self.path, limit=MAX_LINE
            )
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        log.debug("control socket listening on %s", self.path)

    async def aclose(self) -> None:
        """Stop serving and remove the socket file. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            uid = _peer_uid(writer.get_extra_info("socket"))
            if uid is not None and uid not in self.allowed_uids:
                await _send(writer, {"ok": False, "error": "permission denied: run as root"})
                return
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError:
                    return
                except asyncio.LimitOverrunError:
                    await _send(writer, {"ok": False, "error": "request too long"})
                    return
                await _send(writer, await self._handle(line))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle(self, line: bytes) -> dict[str, Any]:
        try:
            msg = json.loads(line)
            command = msg["command"]
            payload = msg.get("payload") or {}
            if not isinstance(command, str) or not isinstance(payload, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": "malformed request"}
        handler = self.handlers.get(command)
        if handler is None:
            return {"ok": False, "error": f"unknown command {command!r}"}
        try:
            data = handler(payload)
            if inspect.isawaitable(data):
                data = await data
        except (ValueError, TypeError, TunnelmeshError) as exc:
            return {"ok": False, "error": str(exc)}
        except Exception:
            log.exception("control command %s failed", command)
            return {"ok": False, "error": f"internal error in {command} (see the daemon's log)"}
        return {"ok": True, "data": data}


async def _send(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
    writer.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
    await writer.drain()


async def _is_alive(path: str) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True


def _connect_error(path: str, exc: OSError) -> ControlError:
    if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
        return ControlError(f"the tunnelmesh daemon is not running (no socket at {path})")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ControlError(f"permission denied on {path}: run as root")
    return ControlError(f"cannot connect to {path}: {exc.strerror or exc}")


def _reply(path: str, raw: bytes) -> Any:
    if not raw.endswith(b"\n"):
        raise ControlError(f"the daemon at {path} closed the connection without answering")
    try:
        reply = json.loads(raw)
    except ValueError:
        raise ControlError(f"the daemon at {path} sent a malformed answer") from None
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error") or "request failed"))
    return reply.get("data")


def _encode(command: str, payload: Mapping[str, Any] | None) -> bytes:
    return json.dumps({"command": command, "payload": dict(payload or {})}).encode() + b"\n"


def request(
    path: str | os.PathLike[str],
    command: str,
    payload: Mapping[str, Any] | None = None,
    *,
    timeout: float = TIMEOUT,
) -> Any:
    """Send one request and return the daemon's ``data`` (blocking; for the CLI).

    Raises:
        ControlError: the daemon is not running, permission was denied, it timed out, or the
            daemon answered with an error.
    """
    path = os.fspath(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            raise _connect_error(path, exc) from None
        try:
            sock.sendall(_encode(command, payload))
            buf = bytearray()
            while not buf.endswith(b"\n") and len(buf) <= MAX_LINE:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except TimeoutError:
            raise ControlError(
                f"the daemon at {path} did not answer within {timeout:g} s"
            ) from None
        except OSError as exc:
            raise ControlError(f"control socket {path}: {exc.strerror or exc}") from None
    return _reply(path, bytes(buf))


async def arequest(
    path: str | os.PathLike[str],
    command: str,
    payload: Mapping[str, Any] | None = None,
    *,
    timeout: float = TIMEOUT,
) -> Any:
    """Async :func:`request`."""
    path = os.fspath(path)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(path, limit=MAX_LINE), timeout
        )
    except TimeoutError:
        raise ControlError(f"the daemon at {path} did not answer within {timeout:g} s") from None
    except OSError as exc:
        raise _connect_error(path, exc) from None
    try:
        writer.write(_encode(command, payload))
        raw = await asyncio.wait_for(reader.readline(), timeout)
    except TimeoutError:
        raise ControlError(f"the daemon at {path} did not answer within {timeout:g} s") from None
    except (OSError, ValueError) as exc:
        raise ControlError(f"control socket {path}: {exc}") from None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return _reply(path, raw)
