"""The benchmark listener and client over loopback, sizes and rates, the impairment commands."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from tunnelmesh import benchmark as bm
from tunnelmesh.impair import Impairment, ImpairmentError, parse_rate


@pytest.mark.parametrize(
    "text,n",
    [("10MB", 10_000_000), ("512KiB", 512 * 1024), ("4096", 4096), ("1.5mb", 1_500_000)],
)
def test_parse_size(text: str, n: int) -> None:
    assert bm.parse_size(text) == n


@pytest.mark.parametrize("text", ["", "ten", "2GB", "0", "-1MB"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        bm.parse_size(text)


def test_parse_rate() -> None:
    assert parse_rate("20mbit") == 20_000_000
    assert parse_rate("500kbit") == 500_000
    for bad in ("20mbps", "fast", "0mbit"):
        with pytest.raises(ValueError):
            parse_rate(bad)


def run(coro: object) -> object:
    return asyncio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


def test_upload_download_and_probes_over_loopback() -> None:
    async def main() -> None:
        server = bm.BenchmarkServer("127.0.0.1", 0)
        await server.start()
        try:
            seen: list[int] = []
            up = await bm.transfer("127.0.0.1", server.port, "upload", 3_000_000)
            down = await bm.transfer(
                "127.0.0.1",
                server.port,
                "download",
                2_000_000,
                progress=lambda done, total: seen.append(done),
            )
            probes = await bm.probe("127.0.0.1", server.port, count=50, interval=0.001)
        finally:
            await server.aclose()
        assert up.bytes == 3_000_000 and up.seconds > 0 and up.mbps > 0
        assert down.bytes == 2_000_000 and seen[-1] == 2_000_000
        assert probes.sent == 50 and probes.received == 50 and probes.loss_pct == 0
        d = probes.as_dict()
        assert d["rtt_ms"]["min"] <= d["rtt_ms"]["avg"] <= d["rtt_ms"]["max"]
        assert server.stats["uploads"] == server.stats["downloads"] == 1
        assert server.stats["probes"] == 50

    run(main())


def test_bad_input_is_counted_and_changes_nothing() -> None:
    async def main() -> dict[str, int]:
        server = bm.BenchmarkServer("127.0.0.1", 0)
        await server.start()
        try:
            for line in (
                b"not json\n",
                b'{"op": "upload", "size": 99999999999}\n',
                b'{"op": "rm"}\n',
            ):
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(line)
                assert await reader.read() == b""  # closed without an answer
                writer.close()
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, remote_addr=("127.0.0.1", server.port)
            )
            transport.sendto(b"x" * 64)
            transport.sendto(b"TMBP" + b"\0" * 2000)  # no echo larger than... anything else
            await asyncio.sleep(0.2)
            transport.close()
            # the listener still serves
            ok = await bm.transfer("127.0.0.1", server.port, "upload", 1000)
            assert ok.bytes == 1000
        finally:
            await server.aclose()
        return server.stats

    stats = run(main())
    assert isinstance(stats, dict)
    assert stats["bad_requests"] == 3 and stats["bad_probes"] == 2 and stats["probes"] == 0


class Recorder:
    def __init__(self, answers: dict[str, str] | None = None) -> None:
        self.calls: list[tuple[list[str], str | None]] = []
        self.answers = answers or {}

    def __call__(self, cmd: Sequence[str], stdin: str | None) -> str:
        self.calls.append((list(cmd), stdin))
        return self.answers.get(" ".join(cmd[:3]), "")


def test_impairment_commands_and_restore() -> None:
    rec = Recorder({"tc qdisc show": "qdisc fq_codel 0: root refcnt 2\n"})
    with Impairment("tm0", "10.99.0.3", loss_pct=10, bandwidth="20mbit", run=rec) as imp:
        nft, stdin = rec.calls[0]
        assert nft == ["nft", "-f", "-"] and stdin is not None
        assert 'oifname "tm0" ip daddr 10.99.0.3 numgen random mod 10000 < 1000' in stdin
        assert rec.calls[2][0][:6] == ["tc", "qdisc", "replace", "dev", "tm0", "root"]
        assert "rate" in rec.calls[2][0] and "20000000" in rec.calls[2][0]
        assert imp.describe() == {"loss_pct": 10, "bandwidth_bps": 20_000_000}
    restore = [c for c, _ in rec.calls[3:]]
    assert restore == [["nft", "-f", "-"], ["tc", "qdisc", "del", "dev", "tm0", "root"]]


def test_someone_elses_shaping_is_not_replaced() -> None:
    rec = Recorder({"tc qdisc show": "qdisc htb 1: root refcnt 2 r2q 10\n"})
    with pytest.raises(ImpairmentError, match="already has a shaping qdisc"):
        Impairment("tm0", "10.99.0.3", bandwidth="1mbit", run=rec).apply()
    assert not any(c[:3] == ["tc", "qdisc", "replace"] for c, _ in rec.calls)


def test_json_output_is_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "benchmark.md").read_text()
    for key in ("peer", "address", "port", "device", "size", "probes", "upload", "download"):
        assert f"`{key}`" in doc, key
    for key in ("sent", "received", "loss_pct", "rtt_ms", "bytes", "seconds", "mbps"):
        assert f"`{key}`" in doc, key
