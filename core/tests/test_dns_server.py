"""The resolver's asyncio driver over loopback, and the system-resolver integration (tmp files)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord
from tunnelmesh.config import DnsConfig
from tunnelmesh.dns import CoordinatorBackend, DnsServer, DnsService, MeshResolver, SystemDns
from tunnelmesh.dns.server import parse_address, read_resolv_conf
from tunnelmesh.errors import DnsError


class Upstream(asyncio.DatagramProtocol):
    """A tiny upstream resolver: answers every A query with 192.0.2.1 (UDP and TCP)."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.queries = 0

    def answer(self, data: bytes) -> bytes:
        self.queries += 1
        q = DNSRecord.parse(data)
        reply = q.reply()
        reply.add_answer(RR(q.q.qname, QTYPE.A, ttl=60, rdata=A("192.0.2.1")))
        return bytes(reply.pack())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(self.answer(data), addr)

    async def tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
        reply = self.answer(await reader.readexactly(n))
        writer.write(struct.pack("!H", len(reply)) + reply)
        await writer.drain()
        writer.close()


async def udp_query(addr: tuple[str, int], data: bytes, timeout: float = 5.0) -> bytes:
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    class P(asyncio.DatagramProtocol):
        def datagram_received(self, d: bytes, a: object) -> None:
            if not got.done():
                got.set_result(d)

    transport, _ = await loop.create_datagram_endpoint(P, remote_addr=addr)
    try:
        transport.sendto(data)
        return await asyncio.wait_for(got, timeout)
    finally:
        transport.close()


async def tcp_query(addr: tuple[str, int], data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*addr)
    writer.write(struct.pack("!H", len(data)) + data)
    (n,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 5))
    reply = await reader.readexactly(n)
    writer.close()
    return reply


def make_server(upstreams: Sequence[str], **kw: object) -> tuple[CoordinatorBackend, DnsServer]:
    backend = CoordinatorBackend({"alpha": ["10.42.0.2"]})
    server = DnsServer(MeshResolver(backend), listen="127.0.0.1:0", upstreams=upstreams, **kw)  # type: ignore[arg-type]
    return backend, server


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_udp_and_tcp_mesh_answers_and_forwarding() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        up = Upstream()
        for _ in range(20):  # the UDP port picked may be taken for TCP: pick again
            transport, _ = await loop.create_datagram_endpoint(
                lambda: up, local_addr=("127.0.0.1", 0)
            )
            uaddr = transport.get_extra_info("sockname")[:2]
            try:
                userver = await asyncio.start_server(up.tcp, "127.0.0.1", uaddr[1])
                break
            except OSError:
                transport.close()
        else:
            raise AssertionError("no free port for the upstream")
        try:
            await check(up, uaddr)
        finally:
            transport.close()
            userver.close()
            await userver.wait_closed()

    async def check(up: Upstream, uaddr: tuple[str, int]) -> None:
        backend, server = make_server([f"{uaddr[0]}:{uaddr[1]}"])
        async with server:
            addr = server.address
            reply = DNSRecord.parse(
                await udp_query(addr, DNSRecord.question("alpha.tunnelmesh").pack())
            )
            assert [str(r.rdata) for r in reply.rr] == ["10.42.0.2"]
            reply = DNSRecord.parse(await tcp_query(addr, DNSRecord.question("alpha.tm").pack()))
            assert [str(r.rdata) for r in reply.rr] == ["10.42.0.2"]
            q = DNSRecord.question("example.com")
            reply = DNSRecord.parse(await udp_query(addr, q.pack()))
            assert reply.header.id == q.header.id and [str(r.rdata) for r in reply.rr] == [
                "192.0.2.1"
            ]
            reply = DNSRecord.parse(await tcp_query(addr, DNSRecord.question("example.org").pack()))
            assert [str(r.rdata) for r in reply.rr] == ["192.0.2.1"]
            assert up.queries == 2 and server.stats["forwarded"] == 2
            backend.set("gamma", ["10.42.0.9"])
            reply = DNSRecord.parse(
                await udp_query(addr, DNSRecord.question("gamma.tunnelmesh").pack())
            )
            assert [str(r.rdata) for r in reply.rr] == ["10.42.0.9"]

    run(main())


def test_dead_upstream_gives_servfail() -> None:
    async def main() -> None:
        # A bound socket that never answers.
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        _, server = make_server([f"127.0.0.1:{port}"], upstream_timeout=0.2)
        async with server:
            reply = DNSRecord.parse(
                await udp_query(server.address, DNSRecord.question("x.example").pack())
            )
            assert reply.header.rcode == RCODE.SERVFAIL
            assert server.stats["servfail"] == 1
        silent.close()

    run(main())


def test_bad_input_never_stops_the_server() -> None:
    async def main() -> None:
        _, server = make_server([])
        async with server:
            addr = server.address
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            for junk in (
                b"",
                b"\x00",
                os.urandom(11),
                os.urandom(40),
                os.urandom(5000),
                b"\xff" * 300,
            ):
                s.sendto(junk, addr)
            s.close()
            # A TCP client that claims a huge message is cut off.
            reader, writer = await asyncio.open_connection(*addr)
            writer.write(struct.pack("!H", 60000) + b"x" * 10)
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            reply = DNSRecord.parse(
                await udp_query(addr, DNSRecord.question("alpha.tunnelmesh").pack())
            )
            assert [str(r.rdata) for r in reply.rr] == ["10.42.0.2"]
            # Without upstreams, a forward fails at once with SERVFAIL.
            reply = DNSRecord.parse(await udp_query(addr, DNSRecord.question("example.com").pack()))
            assert reply.header.rcode == RCODE.SERVFAIL
            assert server.stats["dropped"] >= 3

    run(main())


@pytest.mark.skipif(shutil.which("dig") is None, reason="needs dig (apt-get install dnsutils)")
def test_dig_against_the_server() -> None:
    async def main() -> None:
        _, server = make_server([])
        async with server:
            host, port = server.address
            for extra in ([], ["+tcp"]):
                proc = await asyncio.create_subprocess_exec(
                    "dig",
                    f"@{host}",
                    "-p",
                    str(port),
                    "+short",
                    "+time=2",
                    "+tries=1",
                    *extra,
                    "alpha.tunnelmesh",
                    stdout=subprocess.PIPE,
                )
                out, _ = await asyncio.wait_for(proc.communicate(), 10)
                assert out.decode().split() == ["10.42.0.2"]

    run(main())


def test_busy_address_is_a_dns_error() -> None:
    async def main() -> None:
        _, first = make_server([])
        async with first:
            backend = CoordinatorBackend()
            second = DnsServer(
                MeshResolver(backend), listen="{}:{}".format(*first.address), upstreams=[]
            )
            with pytest.raises(DnsError, match="cannot listen"):
                await second.start()

    run(main())


# --- addresses and resolv.conf ---------------------------------------------------------------


def test_parse_address() -> None:
    assert parse_address("1.2.3.4") == ("1.2.3.4", 53)
    assert parse_address("1.2.3.4:5353") == ("1.2.3.4", 5353)
    assert parse_address("::1") == ("::1", 53)
    assert parse_address("[::1]:54") == ("::1", 54)
    with pytest.raises(ValueError):
        parse_address("example.com")


def test_read_resolv_conf(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# c\nsearch lan\nnameserver 10.0.0.1\nnameserver fe80::1%eth0\nnameserver bogus\n"
    )
    assert read_resolv_conf(conf) == [("10.0.0.1", 53), ("fe80::1%eth0", 53)]
    assert read_resolv_conf(tmp_path / "none") == []


def test_server_never_forwards_to_itself(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.53\nnameserver 10.0.0.1\n")
    server = DnsServer(MeshResolver(CoordinatorBackend()), listen="127.0.0.53:53", resolv_conf=conf)
    assert server.upstreams == [("10.0.0.1", 53)]


# --- system resolver -------------------------------------------------------------------------


class Runner:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, cmd: Sequence[str]) -> None:
        self.calls.append(list(cmd))


def test_systemd_resolved_per_link(tmp_path: Path) -> None:
    (tmp_path / "resolve").mkdir()
    runner = Runner()
    sysdns = SystemDns(
        "127.0.0.53:5353",
        link="tun-mesh0",
        resolvectl="/usr/bin/resolvectl",
        resolved_dir=tmp_path / "resolve",
        resolv_conf=tmp_path / "resolv.conf",
        run=runner,
    )
    assert sysdns.apply() == "resolved"
    assert runner.calls == [
        ["/usr/bin/resolvectl", "dns", "tun-mesh0", "127.0.0.53:5353"],
        ["/usr/bin/resolvectl", "domain", "tun-mesh0", "~tunnelmesh", "~tm", "~mesh"],
    ]
    sysdns.restore()
    sysdns.restore()
    assert runner.calls[2:] == [["/usr/bin/resolvectl", "revert", "tun-mesh0"]]
    assert not (tmp_path / "resolv.conf").exists()


def test_resolv_conf_fallback_restores_and_recovers(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    target = tmp_path / "real-resolv.conf"
    target.write_text("nameserver 10.0.0.1\n")
    conf.symlink_to(target)
    kw = {
        "resolvectl": None,
        "resolved_dir": tmp_path / "none",
        "resolv_conf": conf,
        "run": Runner(),
        "backup_dir": tmp_path / "state",
    }
    sysdns = SystemDns("10.42.0.1:53", **kw)  # type: ignore[arg-type]
    assert sysdns.apply() == "resolv.conf"
    assert "nameserver 10.42.0.1" in conf.read_text() and not conf.is_symlink()
    # the backup is in the state directory, never beside the file (`ip netns exec` mounts
    # every file of /etc/netns/<ns>/, and warned about one it could not)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "real-resolv.conf",
        "resolv.conf",
        "state",
    ]
    assert sysdns.backup.parent == tmp_path / "state" and sysdns.backup.is_symlink()
    assert sysdns.original_upstreams() == [("10.0.0.1", 53)]
    sysdns.restore()
    assert conf.is_symlink() and conf.read_text() == "nameserver 10.0.0.1\n"
    # A crash leaves the backup; the next start puts it back before anything else.
    SystemDns("10.42.0.1:53", **kw).apply()  # type: ignore[arg-type]
    crashed_again = SystemDns("10.42.0.1:53", **kw)  # type: ignore[arg-type]
    assert crashed_again.recover() is True
    assert conf.is_symlink() and target.read_text() == "nameserver 10.0.0.1\n"
    assert list((tmp_path / "state").iterdir()) == []
    # a backup where earlier versions put it (beside the file) is recovered too
    conf.unlink()
    conf.write_text("nameserver 10.42.0.1\n")
    Path(str(conf) + ".tunnelmesh-orig").write_text("nameserver 10.0.0.9\n")
    assert SystemDns("10.42.0.1:53", **kw).recover() is True  # type: ignore[arg-type]
    assert conf.read_text() == "nameserver 10.0.0.9\n"
    assert not Path(str(conf) + ".tunnelmesh-orig").exists()


def test_without_resolved_and_not_port_53_nothing_is_touched(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 10.0.0.1\n")
    sysdns = SystemDns(
        "127.0.0.53:5353",
        resolvectl=None,
        resolved_dir=tmp_path / "x",
        resolv_conf=conf,
        run=Runner(),
    )
    assert sysdns.apply() == "off"
    assert conf.read_text() == "nameserver 10.0.0.1\n"
    with pytest.raises(DnsError, match="port 53"):
        SystemDns("127.0.0.53:5353", mode="resolv.conf", resolv_conf=conf, run=Runner()).apply()
    with pytest.raises(DnsError, match="systemd-resolved"):
        SystemDns(
            "127.0.0.53:5353", mode="resolved", resolvectl=None, resolv_conf=conf, run=Runner()
        ).apply()


def test_dns_service_from_config(tmp_path: Path) -> None:
    async def main() -> None:
        conf = tmp_path / "resolv.conf"
        conf.write_text("nameserver 10.0.0.1\n")
        runner = Runner()
        (tmp_path / "resolve").mkdir()
        system = SystemDns(
            "127.0.0.1:0",
            resolvectl="resolvectl",
            resolved_dir=tmp_path / "resolve",
            resolv_conf=conf,
            run=runner,
        )
        cfg = DnsConfig(listen="127.0.0.1:0", cache_ttl=60)
        service = DnsService.from_config(cfg, system=system, networks=["10.42.0.0/16"])
        assert service.server.upstreams == [("10.0.0.1", 53)]
        async with service:
            service.backend.set("alpha", ["10.42.0.2"])
            reply = DNSRecord.parse(
                await udp_query(
                    service.server.address, DNSRecord.question("alpha.tunnelmesh").pack()
                )
            )
            assert reply.rr[0].ttl == 60
        assert runner.calls[-1] == ["resolvectl", "revert", "tun-mesh0"]

    run(main())


def test_serve_also_answers_with_the_same_resolver_and_closes_with_the_service() -> None:
    """A concentrator's resolver also answers on its mesh IP (here another loopback port)."""

    async def main() -> None:
        config = DnsConfig(listen="127.0.0.1:0", system="off", upstreams=["127.0.0.1:9"])
        service = DnsService.from_config(config)
        service.backend.set("alpha", ["10.42.0.2"])
        await service.start()
        try:
            extra = await service.serve_also("127.0.0.1:0")
            assert extra.address != service.server.address
            assert extra.upstreams == service.server.upstreams
            reply = DNSRecord.parse(
                await udp_query(extra.address, DNSRecord.question("alpha.tunnelmesh").pack())
            )
            assert [str(r.rdata) for r in reply.rr] == ["10.42.0.2"]
            service.backend.set("phone", ["10.42.0.50"])  # a client pushed later: seen there too
            reply = DNSRecord.parse(
                await udp_query(extra.address, DNSRecord.question("phone.tunnelmesh").pack())
            )
            assert [str(r.rdata) for r in reply.rr] == ["10.42.0.50"]
        finally:
            await service.aclose()
        assert service.more == []
        with pytest.raises(TimeoutError):  # closed: nothing answers there any more
            await udp_query(extra.address, DNSRecord.question("alpha.tunnelmesh").pack(), 0.3)

    run(main())
