"""Frame encoding and decoding (sans-IO)."""

from __future__ import annotations

import pytest
from tunnelmesh_ssh.proto import FrameDecoder, encode_frames


def test_roundtrip_whole_and_byte_by_byte() -> None:
    packets = [b"\x45" * n for n in (1, 2, 20, 1420, 65535)]
    data = encode_frames(packets)
    assert len(data) == sum(len(p) + 2 for p in packets)
    assert FrameDecoder().feed(data) == packets
    dec = FrameDecoder()
    out: list[bytes] = []
    for i in range(len(data)):
        out += dec.feed(data[i : i + 1])
    assert out == packets
    assert dec.pending == 0
    assert dec.frames == len(packets)


def test_split_at_every_offset() -> None:
    packets = [bytes([i]) * (i * 7 + 1) for i in range(12)]
    data = encode_frames(packets)
    for cut in range(len(data) + 1):
        dec = FrameDecoder()
        got = dec.feed(data[:cut]) + dec.feed(memoryview(data)[cut:])
        assert got == packets, cut


def test_empty_frames_are_skipped_and_partial_frames_wait() -> None:
    dec = FrameDecoder()
    assert dec.feed(b"\x00\x00\x00\x03ab") == []
    assert dec.pending == 4  # the length and the two bytes so far
    assert dec.feed(b"c\x00") == [b"abc"]
    assert dec.pending == 1


def test_oversized_packet_is_refused() -> None:
    with pytest.raises(ValueError, match="65536-byte"):
        encode_frames([bytes(65536)])
