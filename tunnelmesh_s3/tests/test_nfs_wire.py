"""The sans-IO NFS codec: XDR, ONC RPC record marking and calls, NFSv3/MOUNT argument decoding.

Expected bytes are written out by hand from RFC 4506 / 5531 / 1813 (big-endian 32-bit words),
never produced by the code under test. Malformed input is fuzzed with hypothesis: the codec
raises only XdrError (decoders) or returns events (the connection), never anything else.
"""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tunnelmesh_s3.nfs import nfs3
from tunnelmesh_s3.nfs.nfs3 import Proc
from tunnelmesh_s3.nfs.rpc import (
    MAX_RECORD,
    AuthSys,
    CallReceived,
    CallRejected,
    ConnectionBroken,
    RpcConnection,
    accepted,
    denied,
)
from tunnelmesh_s3.nfs.xdr import Packer, Unpacker, XdrError

FUZZ = settings(max_examples=400, deadline=None)


def w(*words: int) -> bytes:
    """32-bit big-endian words, as RFC 4506 lays out unsigned ints and enums."""
    return b"".join(struct.pack(">I", x) for x in words)


def mark(body: bytes, last: bool = True) -> bytes:
    return struct.pack(">I", (0x8000_0000 if last else 0) | len(body)) + body


# --- XDR ---------------------------------------------------------------------------------------


def test_xdr_encodings_are_rfc4506() -> None:
    p = Packer().uint32(7).int32(-2).uint64(2**40 + 3).boolean(True).opaque(b"abcde").string("hé")
    assert p.getvalue() == (
        w(7)
        + b"\xff\xff\xff\xfe"
        + b"\x00\x00\x01\x00\x00\x00\x00\x03"
        + w(1)
        + w(5)
        + b"abcde\x00\x00\x00"  # padded to 4
        + w(3)
        + b"h\xc3\xa9\x00"
    )
    u = Unpacker(p.getvalue())
    assert (u.uint32(), u.int32(), u.uint64(), u.boolean()) == (7, -2, 2**40 + 3, True)
    assert (u.opaque(8), u.string(8)) == (b"abcde", "hé")
    u.done()


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (w(5) + b"abc", "truncated"),  # length 5, 3 bytes
        (w(9) + b"123456789\x00\x00\x00", "over the limit"),  # 9 > max 8
        (w(1) + b"a\x00\x01\x00", "non-zero padding"),
        (w(0xFFFF_FFFF), "over the limit"),  # a hostile length: refused before any allocation
    ],
)
def test_xdr_refuses_malformed_opaque(data: bytes, why: str) -> None:
    with pytest.raises(XdrError, match=why):
        Unpacker(data).opaque(8)


def test_xdr_refuses_bad_boolean_and_leftovers() -> None:
    with pytest.raises(XdrError, match="boolean"):
        Unpacker(w(2)).boolean()
    u = Unpacker(w(1, 2))
    u.uint32()
    with pytest.raises(XdrError, match="left over"):
        u.done()
    with pytest.raises(XdrError, match="UTF-8"):
        Unpacker(w(1) + b"\xff\x00\x00\x00").string(4)


# --- RPC ---------------------------------------------------------------------------------------

# flavor 1, 32 bytes: stamp, machinename<255> "host", uid 1000, gid 100, gids<16> = [4, 27]
AUTH_SYS_CRED = w(1) + w(32) + w(0x1234) + w(4) + b"host" + w(1000, 100, 2, 4, 27)


def call(
    xid: int, prog: int, vers: int, proc: int, args: bytes = b"", cred: bytes = AUTH_SYS_CRED
) -> bytes:
    """An RFC 5531 call: xid, CALL(0), rpcvers 2, prog, vers, proc, cred, verf AUTH_NONE."""
    return w(xid, 0, 2, prog, vers, proc) + cred + w(0, 0) + args


def test_call_with_auth_sys_is_decoded() -> None:
    conn = RpcConnection()
    (ev,) = conn.receive_data(mark(call(0x11, 100003, 3, 1, b"ARGS")))
    assert isinstance(ev, CallReceived)
    assert (ev.xid, ev.prog, ev.vers, ev.proc) == (0x11, 100003, 3, 1)
    assert ev.auth == AuthSys(0x1234, "host", 1000, 100, (4, 27))
    assert bytes(ev.args) == b"ARGS"


def test_fragments_and_split_reads_reassemble() -> None:
    body = call(7, 100005, 3, 0, cred=w(0, 0))
    raw = mark(body[:10], last=False) + mark(body[10:])
    conn = RpcConnection()
    events = []
    for i in range(len(raw)):  # one byte at a time
        events += conn.receive_data(raw[i : i + 1])
    (ev,) = events
    assert isinstance(ev, CallReceived) and ev.xid == 7 and ev.auth is None
    # two records in one read
    assert len(conn.receive_data(raw + raw)) == 2


def test_record_over_the_bound_breaks_without_buffering() -> None:
    conn = RpcConnection(max_record=1000)
    (ev,) = conn.receive_data(struct.pack(">I", 0x8000_0000 | 1001))
    assert isinstance(ev, ConnectionBroken) and "over 1000" in ev.reason
    assert conn.receive_data(b"x" * 100) == []  # broken: nothing more is read
    # fragments that add up past the bound, too
    conn = RpcConnection(max_record=1000)
    (ev,) = conn.receive_data(mark(b"a" * 600, last=False) + struct.pack(">I", 0x8000_0000 | 600))
    assert isinstance(ev, ConnectionBroken)
    assert RpcConnection().max_record == MAX_RECORD


def test_rpc_version_mismatch_is_denied() -> None:
    (ev,) = RpcConnection().receive_data(mark(w(9, 0, 3, 100003, 3, 0) + w(0, 0, 0, 0)))
    assert isinstance(ev, CallRejected)
    # xid, REPLY, MSG_DENIED, RPC_MISMATCH, low 2, high 2
    assert b"".join(ev.reply) == mark(w(9, 1, 1, 0, 2, 2))


def test_unknown_auth_flavor_is_rejected_cred() -> None:
    (ev,) = RpcConnection().receive_data(mark(call(5, 100003, 3, 0, cred=w(6, 0))))
    assert isinstance(ev, CallRejected)
    # xid, REPLY, MSG_DENIED, AUTH_ERROR, AUTH_REJECTEDCRED
    assert b"".join(ev.reply) == mark(w(5, 1, 1, 1, 2))


def test_malformed_auth_sys_is_badcred() -> None:
    bad = w(1) + w(8) + w(1) + w(300)  # machinename of 300 bytes in an 8-byte body
    (ev,) = RpcConnection().receive_data(mark(call(5, 100003, 3, 0, cred=bad)))
    assert isinstance(ev, CallRejected)
    assert b"".join(ev.reply) == mark(w(5, 1, 1, 1, 1))


def test_reply_encodings() -> None:
    # xid, REPLY, MSG_ACCEPTED, verf AUTH_NONE (flavor 0, length 0), SUCCESS, body
    assert b"".join(accepted(3, body=[b"BODY"])) == mark(w(3, 1, 0, 0, 0, 0) + b"BODY")
    # PROG_MISMATCH carries low and high
    assert b"".join(accepted(3, 2, mismatch=(3, 3))) == mark(w(3, 1, 0, 0, 0, 2, 3, 3))
    assert b"".join(accepted(3, 4)) == mark(w(3, 1, 0, 0, 0, 4))  # GARBAGE_ARGS
    assert b"".join(denied(3, auth_stat=5)) == mark(w(3, 1, 1, 1, 5))


def test_a_reply_record_is_ignored_and_a_bad_type_breaks() -> None:
    assert RpcConnection().receive_data(mark(w(1, 1, 0))) == []
    (ev,) = RpcConnection().receive_data(mark(w(1, 7)))
    assert isinstance(ev, ConnectionBroken)


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_fuzz_connection_never_raises(chunks: list[bytes]) -> None:
    conn = RpcConnection(max_record=4096)
    for chunk in chunks:
        for ev in conn.receive_data(chunk):
            assert isinstance(ev, CallReceived | CallRejected | ConnectionBroken)


@FUZZ
@given(st.binary(min_size=8, max_size=600))
def test_fuzz_records_never_raise(body: bytes) -> None:
    for ev in RpcConnection().receive_data(mark(body)):
        assert isinstance(ev, CallReceived | CallRejected | ConnectionBroken)


# --- NFSv3 / MOUNT arguments -------------------------------------------------------------------

FH = b"\x01" + bytes(range(24))  # 25 bytes: opaque<64> pads to 28
FH_XDR = w(25) + FH + b"\x00\x00\x00"
NAME_XDR = w(5) + b"a.txt\x00\x00\x00"


@pytest.mark.parametrize(
    ("proc", "raw", "expected"),
    [
        (Proc.GETATTR, FH_XDR, nfs3.FhArgs(FH)),
        (Proc.FSINFO, FH_XDR, nfs3.FhArgs(FH)),
        (Proc.FSSTAT, FH_XDR, nfs3.FhArgs(FH)),
        (Proc.PATHCONF, FH_XDR, nfs3.FhArgs(FH)),
        (Proc.LOOKUP, FH_XDR + NAME_XDR, nfs3.DiropArgs(FH, "a.txt")),
        (Proc.REMOVE, FH_XDR + NAME_XDR, nfs3.DiropArgs(FH, "a.txt")),
        (Proc.RMDIR, FH_XDR + NAME_XDR, nfs3.DiropArgs(FH, "a.txt")),
        (Proc.ACCESS, FH_XDR + w(0x3F), nfs3.AccessArgs(FH, 0x3F)),
        # offset3 is a 64-bit word pair
        (Proc.READ, FH_XDR + w(1, 0) + w(4096), nfs3.ReadArgs(FH, 2**32, 4096)),
        (Proc.COMMIT, FH_XDR + w(0, 5) + w(0), nfs3.CommitArgs(FH, 5, 0)),
        (
            Proc.SETATTR,
            # set mode 0644, uid no, gid no, size 10, atime SET_TO_SERVER, mtime client (1, 2); guard off
            FH_XDR + w(1, 0o644, 0, 0, 1, 0, 10, 1, 2, 1, 2) + w(0),
            nfs3.SetattrArgs(FH, nfs3.Sattr(0o644, None, None, 10, "server", (1, 2)), None),
        ),
        (
            Proc.CREATE,
            FH_XDR + NAME_XDR + w(1) + w(1, 0o660, 0, 0, 0, 0, 0),  # GUARDED, mode 0660
            nfs3.CreateArgs(FH, "a.txt", nfs3.CreateMode.GUARDED, nfs3.Sattr(0o660), b""),
        ),
        (
            Proc.CREATE,
            FH_XDR + NAME_XDR + w(2) + b"VERIFIER",  # EXCLUSIVE: createverf3, 8 bytes
            nfs3.CreateArgs(FH, "a.txt", nfs3.CreateMode.EXCLUSIVE, nfs3.Sattr(), b"VERIFIER"),
        ),
        (
            Proc.MKDIR,
            FH_XDR + NAME_XDR + w(1, 0o755, 0, 0, 0, 0, 0),
            nfs3.MkdirArgs(FH, "a.txt", nfs3.Sattr(0o755)),
        ),
        (
            Proc.RENAME,
            FH_XDR + NAME_XDR + FH_XDR + w(1) + b"b\x00\x00\x00",
            nfs3.RenameArgs(FH, "a.txt", FH, "b"),
        ),
        (
            Proc.READDIR,
            FH_XDR + w(0, 3) + b"COOKIEVF" + w(4096),
            nfs3.ReaddirArgs(FH, 3, b"COOKIEVF", 4096),
        ),
        (
            Proc.READDIRPLUS,
            FH_XDR + w(0, 0) + bytes(8) + w(1024, 8192),
            nfs3.ReaddirArgs(FH, 0, bytes(8), 8192, 1024, plus=True),
        ),
    ],
)
def test_arguments_decode(proc: Proc, raw: bytes, expected: object) -> None:
    assert nfs3.decode_args(proc, memoryview(raw)) == expected


def test_write_arguments() -> None:
    raw = FH_XDR + w(0, 8) + w(3) + w(2) + w(3) + b"xyz\x00"  # offset 8, count 3, FILE_SYNC
    a = nfs3.decode_args(Proc.WRITE, memoryview(raw))
    assert isinstance(a, nfs3.WriteArgs)
    assert (a.fh, a.offset, a.count, a.stable, bytes(a.data)) == (FH, 8, 3, 2, b"xyz")
    with pytest.raises(XdrError, match="count"):  # count past the data
        nfs3.decode_args(Proc.WRITE, memoryview(FH_XDR + w(0, 0) + w(9) + w(0) + w(3) + b"xyz\x00"))
    with pytest.raises(XdrError, match="Stable"):
        nfs3.decode_args(Proc.WRITE, memoryview(FH_XDR + w(0, 0) + w(0) + w(7) + w(0)))


def test_handles_and_names_are_bounded() -> None:
    with pytest.raises(XdrError, match="over the limit 64"):
        nfs3.decode_args(Proc.GETATTR, memoryview(w(65) + bytes(68)))
    with pytest.raises(XdrError, match="over the limit 255"):
        nfs3.decode_args(Proc.LOOKUP, memoryview(FH_XDR + w(256) + bytes(256)))
    with pytest.raises(XdrError, match="left over"):
        nfs3.decode_args(Proc.GETATTR, memoryview(FH_XDR + w(0)))


def test_mount_and_portmap_encodings() -> None:
    assert nfs3.decode_dirpath(memoryview(w(5) + b"/docs\x00\x00\x00")) == "/docs"
    # MNT3_OK, fhandle3 opaque<64>, auth_flavors<> = [AUTH_NONE, AUTH_SYS]
    assert nfs3.mnt_ok(b"\x01\x02") == w(0, 2) + b"\x01\x02\x00\x00" + w(2, 0, 1)
    # exports: entry follows, ex_dir, groups (none), no more entries
    assert nfs3.exports(["/a"]) == w(1, 2) + b"/a\x00\x00" + w(0) + w(0)
    assert nfs3.exports([]) == w(0)
    assert nfs3.decode_getport(memoryview(w(100003, 3, 6, 0))) == (100003, 3, 6)


@FUZZ
@given(st.sampled_from(list(Proc)), st.binary(max_size=200))
def test_fuzz_arguments_raise_only_xdr_error(proc: Proc, raw: bytes) -> None:
    with contextlib.suppress(XdrError):
        nfs3.decode_args(proc, memoryview(raw))
