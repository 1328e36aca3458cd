"""Length-prefixed packet frames for stream transports (sans-IO: bytes in, packets out).

Each IP packet on the stream is ``[length: u16 big-endian][packet]``; a batch of packets is one
write of the concatenated frames, so a whole batch costs one SSH message (or one TCP send).
Lengths run from 1 to 65535; a zero length is a keepalive-sized no-op and is skipped.
"""

from __future__ import annotations

from collections.abc import Iterable

from tunnelmesh.abc import Packet

__all__ = ["MAX_PACKET", "FrameDecoder", "encode_frames"]

MAX_PACKET = 65535


def encode_frames(packets: Iterable[Packet]) -> bytes:
    """Concatenate ``packets`` as frames.

    Raises:
        ValueError: a packet is longer than 65535 bytes.
    """
    parts: list[bytes | bytearray | memoryview] = []
    append = parts.append
    for p in packets:
        n = len(p)
        if n > MAX_PACKET:
            raise ValueError(f"a {n}-byte packet does not fit a frame (at most {MAX_PACKET})")
        append(n.to_bytes(2, "big"))
        append(p)
    return b"".join(parts)


class FrameDecoder:
    """Cuts a byte stream into packets; partial frames wait for the next :meth:`feed`."""

    __slots__ = ("_buf", "frames")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.frames = 0
        """Frames decoded so far."""

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add received bytes; return the packets completed by them, in order."""
        buf = self._buf
        if buf:
            buf += data
            view = memoryview(buf)
        else:
            view = memoryview(data)
        out: list[bytes] = []
        off, end = 0, len(view)
        while end - off >= 2:
            n = (view[off] << 8) | view[off + 1]
            if end - off - 2 < n:
                break
            if n:
                out.append(bytes(view[off + 2 : off + 2 + n]))
            off += 2 + n
        rest = bytes(view[off:])
        view.release()
        if buf:
            buf.clear()
        buf += rest
        self.frames += len(out)
        return out
