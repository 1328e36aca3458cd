"""XDR (RFC 4506) encoding and decoding, sans-IO.

Only what ONC RPC, MOUNT v3 and NFSv3 use: unsigned and signed 32/64-bit integers, booleans,
fixed and variable-length opaque data and strings, each padded to a multiple of four bytes.
Every variable-length item is read with a maximum (the protocol's own bound), so a hostile
length prefix is refused before anything is allocated; reading past the end, or padding that is
not zero, raises :class:`XdrError`.
"""

from __future__ import annotations

import struct

from tunnelmesh.errors import RemoteProtocolError

__all__ = ["Packer", "Unpacker", "XdrError"]

_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")


class XdrError(RemoteProtocolError, ValueError):
    """Malformed XDR: truncated, a length over its bound, non-zero padding, a bad boolean."""


class Unpacker:
    """Reads XDR items from ``data`` in order; :meth:`done` checks nothing is left over."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes | bytearray | memoryview, pos: int = 0) -> None:
        self._data = memoryview(data)
        self._pos = pos

    @property
    def pos(self) -> int:
        return self._pos

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def _take(self, n: int) -> memoryview:
        end = self._pos + n
        if n < 0 or end > len(self._data):
            raise XdrError(f"truncated: {n} bytes wanted at {self._pos}, {self.remaining()} left")
        view = self._data[self._pos : end]
        self._pos = end
        return view

    def uint32(self) -> int:
        return int(_U32.unpack(self._take(4))[0])

    def int32(self) -> int:
        return int(_I32.unpack(self._take(4))[0])

    def uint64(self) -> int:
        return int(_U64.unpack(self._take(8))[0])

    def int64(self) -> int:
        return int(_I64.unpack(self._take(8))[0])

    def boolean(self) -> bool:
        value = self.uint32()
        if value > 1:
            raise XdrError(f"boolean is {value}")
        return value == 1

    def fixed(self, n: int) -> bytes:
        """Fixed-length opaque data of ``n`` bytes (plus its padding)."""
        return bytes(self.fixed_view(n))

    def fixed_view(self, n: int) -> memoryview:
        view = self._take(n)
        pad = -n % 4
        if pad and any(self._take(pad)):
            raise XdrError("non-zero padding")
        return view

    def opaque(self, maximum: int) -> bytes:
        """Variable-length opaque data of at most ``maximum`` bytes."""
        return bytes(self.opaque_view(maximum))

    def opaque_view(self, maximum: int) -> memoryview:
        n = self.uint32()
        if n > maximum:
            raise XdrError(f"length {n} over the limit {maximum}")
        return self.fixed_view(n)

    def string(self, maximum: int) -> str:
        """A UTF-8 string of at most ``maximum`` bytes (invalid UTF-8 is malformed)."""
        raw = self.opaque_view(maximum)
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError:
            raise XdrError("string is not UTF-8") from None

    def done(self) -> None:
        if self._pos != len(self._data):
            raise XdrError(f"{self.remaining()} bytes left over")


class Packer:
    """Appends XDR items to a buffer; :meth:`getvalue` returns the bytes."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def uint32(self, value: int) -> Packer:
        self.buf += _U32.pack(value)
        return self

    def int32(self, value: int) -> Packer:
        self.buf += _I32.pack(value)
        return self

    def uint64(self, value: int) -> Packer:
        self.buf += _U64.pack(value)
        return self

    def int64(self, value: int) -> Packer:
        self.buf += _I64.pack(value)
        return self

    def boolean(self, value: bool) -> Packer:
        return self.uint32(1 if value else 0)

    def fixed(self, data: bytes | bytearray | memoryview) -> Packer:
        self.buf += data
        self.buf += b"\0" * (-len(data) % 4)
        return self

    def opaque(self, data: bytes | bytearray | memoryview) -> Packer:
        self.uint32(len(data))
        return self.fixed(data)

    def string(self, value: str) -> Packer:
        return self.opaque(value.encode("utf-8"))

    def getvalue(self) -> bytes:
        return bytes(self.buf)
