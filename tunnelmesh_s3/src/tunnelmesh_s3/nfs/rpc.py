"""ONC RPC v2 (RFC 5531) over TCP record marking, sans-IO.

:class:`RpcConnection` takes the bytes a TCP connection received and returns events:

* :class:`CallReceived` — a well-formed call (program, version, procedure, credential and the
  still-encoded arguments);
* :class:`CallRejected` — a record with a readable transaction id but a call the server must
  refuse (wrong RPC version, an unknown or malformed credential): the event carries the reply
  to send, and the connection goes on;
* :class:`ConnectionBroken` — the stream can no longer be trusted (a record over
  :data:`MAX_RECORD`, an empty non-final fragment run, a record too short for a header): the
  driver closes the connection. Nothing beyond the bound is ever buffered.

Replies are built by :func:`accepted` (SUCCESS with the result's XDR, or an error stat) and
:func:`denied`; each returns the record-marked buffers, the body last so a large READ is never
copied.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from tunnelmesh_s3.nfs.xdr import Packer, Unpacker, XdrError

__all__ = [
    "AUTH_NONE",
    "AUTH_SYS",
    "MAX_RECORD",
    "AuthSys",
    "CallReceived",
    "CallRejected",
    "ConnectionBroken",
    "RpcConnection",
    "accepted",
    "denied",
    "record",
]

MAX_RECORD = 1024 * 1024 + 64 * 1024
"""The largest call record accepted: a 1 MiB WRITE (the FSINFO ``wtmax``) and its headers."""

MAX_AUTH = 400  # RFC 5531: opaque_auth bodies are at most 400 bytes

CALL, REPLY = 0, 1
MSG_ACCEPTED, MSG_DENIED = 0, 1
SUCCESS, PROG_UNAVAIL, PROG_MISMATCH, PROC_UNAVAIL, GARBAGE_ARGS, SYSTEM_ERR = range(6)
RPC_MISMATCH, AUTH_ERROR = 0, 1
AUTH_OK, AUTH_BADCRED, AUTH_REJECTEDCRED, AUTH_BADVERF, AUTH_REJECTEDVERF, AUTH_TOOWEAK = range(6)
AUTH_NONE, AUTH_SYS = 0, 1

_LAST = 0x8000_0000
_HDR = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class AuthSys:
    """An AUTH_SYS credential (RFC 5531 appendix A). Only informative here: the caller is the
    mesh peer the connection comes from, whatever uid it claims."""

    stamp: int
    machine: str
    uid: int
    gid: int
    gids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CallReceived:
    xid: int
    prog: int
    vers: int
    proc: int
    auth: AuthSys | None  # None for AUTH_NONE
    args: memoryview


@dataclass(frozen=True, slots=True)
class CallRejected:
    xid: int
    reason: str
    reply: list[bytes | memoryview]


@dataclass(frozen=True, slots=True)
class ConnectionBroken:
    reason: str


Event = CallReceived | CallRejected | ConnectionBroken


def record(parts: Sequence[bytes | memoryview]) -> list[bytes | memoryview]:
    """One record-marked record (a single last fragment) made of ``parts``."""
    size = sum(len(p) for p in parts)
    return [_HDR.pack(_LAST | size), *parts]


def _reply_head(xid: int) -> Packer:
    return Packer().uint32(xid).uint32(REPLY)


def accepted(
    xid: int,
    stat: int = SUCCESS,
    body: Sequence[bytes | memoryview] = (),
    *,
    mismatch: tuple[int, int] | None = None,
) -> list[bytes | memoryview]:
    """An accepted reply: ``stat`` SUCCESS with ``body`` (the procedure's XDR result, in pieces),
    or an error stat (PROG_MISMATCH carries the supported ``(low, high)`` versions)."""
    p = _reply_head(xid).uint32(MSG_ACCEPTED).uint32(AUTH_NONE).opaque(b"").uint32(stat)
    if stat == PROG_MISMATCH:
        low, high = mismatch or (0, 0)
        p.uint32(low).uint32(high)
    return record([p.getvalue(), *body])


def denied(xid: int, *, auth_stat: int | None = None) -> list[bytes | memoryview]:
    """A denied reply: AUTH_ERROR with ``auth_stat``, else RPC_MISMATCH (we speak version 2)."""
    p = _reply_head(xid).uint32(MSG_DENIED)
    if auth_stat is None:
        p.uint32(RPC_MISMATCH).uint32(2).uint32(2)
    else:
        p.uint32(AUTH_ERROR).uint32(auth_stat)
    return record([p.getvalue()])


def _auth_sys(body: memoryview) -> AuthSys:
    u = Unpacker(body)
    stamp = u.uint32()
    machine = u.string(255)
    uid, gid = u.uint32(), u.uint32()
    n = u.uint32()
    if n > 16:
        raise XdrError(f"{n} supplementary gids (at most 16)")
    gids = tuple(u.uint32() for _ in range(n))
    u.done()
    return AuthSys(stamp, machine, uid, gid, gids)


def parse_call(data: memoryview) -> Event | None:
    """One record to an event; None for a record that is not a call (a reply: ignored)."""
    if len(data) < 8:
        return ConnectionBroken(f"record of {len(data)} bytes has no RPC header")
    u = Unpacker(data)
    xid, mtype = u.uint32(), u.uint32()
    if mtype != CALL:
        return None if mtype == REPLY else ConnectionBroken(f"message type {mtype}")
    try:
        rpcvers = u.uint32()
        if rpcvers != 2:
            return CallRejected(xid, f"RPC version {rpcvers}", denied(xid))
        prog, vers, proc = u.uint32(), u.uint32(), u.uint32()
        flavor, cred = u.uint32(), u.opaque_view(MAX_AUTH)
        u.uint32()  # verifier flavor: AUTH_NONE or anything, we never check it
        u.opaque_view(MAX_AUTH)
    except XdrError as exc:
        return CallRejected(xid, f"malformed call header: {exc}", accepted(xid, GARBAGE_ARGS))
    if flavor == AUTH_NONE:
        auth = None
    elif flavor == AUTH_SYS:
        try:
            auth = _auth_sys(cred)
        except XdrError as exc:
            return CallRejected(
                xid, f"malformed AUTH_SYS: {exc}", denied(xid, auth_stat=AUTH_BADCRED)
            )
    else:
        return CallRejected(xid, f"auth flavor {flavor}", denied(xid, auth_stat=AUTH_REJECTEDCRED))
    return CallReceived(xid, prog, vers, proc, auth, data[u.pos :])


class RpcConnection:
    """The receiving half of one RPC-over-TCP connection: bytes in, events out.

    Args:
        max_record: the largest record accepted; a longer one breaks the connection before its
            bytes are buffered.
    """

    def __init__(self, max_record: int = MAX_RECORD) -> None:
        self.max_record = max_record
        self._buf = bytearray()
        self._fragments: list[bytes] = []
        self._size = 0
        self.broken = False

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed received bytes; return the events of every record they complete."""
        if self.broken:
            return []
        self._buf += data
        events: list[Event] = []
        while len(self._buf) >= 4:
            (header,) = _HDR.unpack_from(self._buf)
            length, last = header & ~_LAST, bool(header & _LAST)
            if self._size + length > self.max_record:
                return self._break(events, f"record over {self.max_record} bytes")
            if not last and length == 0:
                return self._break(events, "empty non-final fragment")
            if len(self._buf) < 4 + length:
                break
            self._fragments.append(bytes(self._buf[4 : 4 + length]))
            self._size += length
            del self._buf[: 4 + length]
            if not last:
                continue
            whole = self._fragments[0] if len(self._fragments) == 1 else b"".join(self._fragments)
            self._fragments, self._size = [], 0
            event = parse_call(memoryview(whole))
            if isinstance(event, ConnectionBroken):
                return self._break(events, event.reason)
            if event is not None:
                events.append(event)
        return events

    def _break(self, events: list[Event], reason: str) -> list[Event]:
        self.broken = True
        self._buf.clear()
        self._fragments.clear()
        events.append(ConnectionBroken(reason))
        return events
