"""The transport conformance suite: what every :class:`~tunnelmesh.abc.Transport` must do.

Every transport shipped with tunnelmesh passes it, and third-party transports should too (trio's
``check_two_way_stream`` is the model). The suite drives two transports through the public
interface only: a *listener* that accepts links and a *dialer* that opens them.

You give it a factory, ``make_pair()``, returning an async context manager that yields a
:class:`TransportPair`: the listener (not yet listening), how to reach it, and a way to build
dialers (more than one: the reconnect check replaces the dialer, as a restarted node would)::

    from contextlib import asynccontextmanager
    from tunnelmesh.testing.conformance import TransportConformance, TransportPair

    class TestMyTransport(TransportConformance):
        @asynccontextmanager
        async def make_pair(self):
            listener = MyTransport(key_b, listen="127.0.0.1:0")
            listener.update_peer("a", public_key=pub_a)
            async def new_dialer():
                return MyTransport(key_a, listen="127.0.0.1:0")
            async def new_stranger():
                return MyTransport(key_c, listen="127.0.0.1:0")  # "c" unknown to b
            yield TransportPair(
                listener=listener, listener_name="b", listener_key=pub_b,
                endpoints=lambda: [f"127.0.0.1:{listener.port}"],
                dialer_name="a", new_dialer=new_dialer, new_stranger=new_stranger,
            )
            await listener.aclose()

pytest collects the ``test_*`` methods of the subclass (one per check, run with
``asyncio.run``-style runners on each loop in :attr:`TransportConformance.loops`). Without
pytest, ``await check_transport(make_pair)`` runs every check and raises
:class:`ConformanceError` on the first failure.

The checks
    ``handshake``  dial returns a link named after the listener; the listener's ``on_link``
                   sees one named after the dialer; dialling with the wrong public key fails.
    ``strangers``  a dialer whose identity the listener was never told about gets no link.
    ``both_directions``  packets of mixed sizes from dialer to listener and back, exact bytes
                   (and order, when the transport says ``capabilities.ordered``).
    ``sizes``      the smallest IPv4 packet (a 20-byte header), odd sizes, 1280, and ``mtu``.
    ``batches``    2,000 packets in batches of 100, pull (``recv_batch``) on one side and push
                   (``set_receiver``) on the other.
    ``close``      ``aclose`` wakes a pending ``recv_batch`` with TransportError, later
                   ``send_batch``/``recv_batch`` raise TransportError, ``aclose`` is idempotent.
    ``reconnect``  after the dialer closes its link it dials again; after the dialer transport
                   is closed, a new one with the same identity reaches the listener again.

Packets are real IPv4 headers (protocol 253, "for experimentation") with the sequence number in
the source address, so transports that parse the IP length (WireGuard trims padding with it)
carry them unchanged. Waits are bounded polls (``timeout`` seconds, 10 by default); nothing
measures speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tunnelmesh.abc import Link, Transport
from tunnelmesh.errors import TransportError

__all__ = [
    "CHECKS",
    "ConformanceError",
    "TransportConformance",
    "TransportPair",
    "check_batches",
    "check_both_directions",
    "check_close",
    "check_handshake",
    "check_reconnect",
    "check_sizes",
    "check_strangers",
    "check_transport",
    "make_packet",
    "packet_seq",
]

MakePair = Callable[[], AbstractAsyncContextManager["TransportPair"]]


class ConformanceError(AssertionError):
    """A transport broke the contract; the message says which check and how."""


@dataclass
class TransportPair:
    """Two ends of a transport under test.

    Attributes:
        listener: the accepting transport; the suite calls its ``listen``.
        listener_name: the listener's peer name (what the dialer passes to ``dial``).
        listener_key: the listener's raw 32-byte ed25519 identity key (``dial(public_key=)``).
        endpoints: where the listener can be reached, asked after ``listen`` (port 0 binds).
        dialer_name: the dialer's peer name, as the listener knows it (``link.peer`` there).
        new_dialer: builds a dialing transport with the dialer's identity; the suite calls its
            ``listen`` and closes it. Called again after closing the previous one.
        new_stranger: builds a dialing transport with an identity the listener does not know
            (never given to its ``update_peer``): its dial must fail.
        wrong_key: an ed25519 key that is not the listener's, for the negative handshake check
            (a fresh random one by default).
    """

    listener: Transport
    listener_name: str
    listener_key: bytes
    endpoints: Callable[[], Sequence[str]]
    dialer_name: str
    new_dialer: Callable[[], Awaitable[Transport]]
    new_stranger: Callable[[], Awaitable[Transport]]
    wrong_key: bytes = field(default_factory=lambda: _random_ed25519_key())


def _random_ed25519_key() -> bytes:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate().public_key().public_bytes_raw()


# --- packets -----------------------------------------------------------------------------------

_PATTERN = bytes(range(256)) * 257


def make_packet(seq: int, size: int, direction: int = 0) -> bytes:
    """An IPv4 packet of ``size`` bytes (20 to 65535) that carries ``seq`` (< 2**24).

    The sequence number is the source address ``10.<seq>`` (three bytes) and ``direction`` the
    TTL, so even a bare 20-byte header is recognisable; the rest is a pattern from ``seq``.
    """
    if not 20 <= size <= 65535:
        raise ValueError(f"an IPv4 packet is 20 to 65535 bytes, not {size}")
    header = bytes(
        (
            0x45,
            0,
            size >> 8,
            size & 0xFF,
            (seq >> 8) & 0xFF,
            seq & 0xFF,
            0,
            0,
            direction + 1,
            253,
            0,
            0,
            10,
            (seq >> 16) & 0xFF,
            (seq >> 8) & 0xFF,
            seq & 0xFF,
            10,
            255,
            255,
            254,
        )
    )
    start = seq & 0xFF
    return header + _PATTERN[start : start + size - 20]


def packet_seq(packet: bytes) -> int:
    """The sequence number :func:`make_packet` put in ``packet``."""
    return int.from_bytes(packet[13:16], "big")


# --- helpers -----------------------------------------------------------------------------------


class _Inbox:
    """Collects the packets received on links, in push or pull mode."""

    def __init__(self) -> None:
        self.packets: list[bytes] = []
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def push(self, link: Link) -> None:
        link.set_receiver(self._deliver)

    def pull(self, link: Link) -> None:
        async def loop() -> None:
            with contextlib.suppress(TransportError):
                while True:
                    self._deliver(link, await link.recv_batch())

        self._tasks.append(asyncio.get_running_loop().create_task(loop()))

    def _deliver(self, link: Link, packets: list[bytes]) -> None:
        self.packets.extend(bytes(p) for p in packets)
        self._changed.set()

    async def wait_count(self, n: int, timeout: float, what: str) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.packets) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConformanceError(
                    f"{what}: received {len(self.packets)} of {n} packets within {timeout} s"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
        return self.packets

    def take(self) -> list[bytes]:
        out, self.packets = self.packets, []
        return out

    async def aclose(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, TransportError):
                await t
        self._tasks.clear()


class _Session:
    """A listening pair with one dialled link, torn down in order."""

    def __init__(self, pair: TransportPair, timeout: float) -> None:
        self.pair = pair
        self.timeout = timeout
        self.incoming: list[Link] = []
        self.dialer_incoming: list[Link] = []
        self._new_incoming = asyncio.Event()
        self.dialer: Transport | None = None
        self.link: Link | None = None

    async def start(self, *, dial: bool = True) -> None:
        def on_incoming(link: Link) -> None:
            self.incoming.append(link)
            self._new_incoming.set()

        await self.pair.listener.listen(on_incoming)
        await self.new_dialer()
        if dial:
            await self.dial()

    async def new_dialer(self) -> Transport:
        self.dialer = await self.pair.new_dialer()
        await self.dialer.listen(self.dialer_incoming.append)
        return self.dialer

    async def dial(self, *, key: bytes | None = None) -> Link:
        assert self.dialer is not None
        pair = self.pair
        self.link = await asyncio.wait_for(
            self.dialer.dial(
                pair.listener_name,
                list(pair.endpoints()),
                public_key=pair.listener_key if key is None else key,
            ),
            self.timeout * 3,
        )
        return self.link

    async def listener_link(self, after: int = 0) -> Link:
        """The newest open incoming link on the listener (waiting for one past ``after``)."""
        deadline = time.monotonic() + self.timeout
        while True:
            live = [lk for lk in self.incoming[after:] if lk.peer == self.pair.dialer_name]
            if live:
                return live[-1]
            if time.monotonic() > deadline:
                raise ConformanceError(
                    f"the listener's on_link saw no link from {self.pair.dialer_name!r} within "
                    f"{self.timeout} s (saw {[lk.peer for lk in self.incoming]})"
                )
            self._new_incoming.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_incoming.wait(), 0.2)

    async def aclose(self) -> None:
        if self.dialer is not None:
            await self.dialer.aclose()
            self.dialer = None


@contextlib.asynccontextmanager
async def _session(make_pair: MakePair, timeout: float, *, dial: bool = True) -> Any:
    async with make_pair() as pair:
        s = _Session(pair, timeout)
        try:
            await s.start(dial=dial)
            yield s
        finally:
            await s.aclose()
            await pair.listener.aclose()


def _expect(cond: bool, message: str) -> None:
    if not cond:
        raise ConformanceError(message)


async def _exchange(
    sender: Link,
    receiver: Link | _Inbox,
    packets: Sequence[bytes],
    *,
    what: str,
    timeout: float,
    ordered: bool,
    batch: int = 0,
) -> None:
    """Send ``packets`` (in batches, each waited for) and check exactly they arrive."""
    inbox = receiver if isinstance(receiver, _Inbox) else _Inbox()
    if not isinstance(receiver, _Inbox):
        inbox.push(receiver)
    try:
        step = batch or len(packets)
        for i in range(0, len(packets), step):
            chunk = packets[i : i + step]
            sender.send_batch(chunk)
            await inbox.wait_count(i + len(chunk), timeout, what)
        got = inbox.packets
        if len(got) != len(packets):
            raise ConformanceError(f"{what}: {len(got)} packets arrived, {len(packets)} were sent")
        if ordered:
            for n, (a, b) in enumerate(zip(got, packets, strict=True)):
                if a != b:
                    raise ConformanceError(
                        f"{what}: packet {n} differs (seq {packet_seq(a)} len {len(a)} arrived, "
                        f"seq {packet_seq(b)} len {len(b)} sent); the transport says ordered"
                    )
        elif sorted(got) != sorted(packets):
            raise ConformanceError(f"{what}: the packets that arrived are not the ones sent")
    finally:
        if not isinstance(receiver, _Inbox):
            receiver.set_receiver(None)
            await inbox.aclose()


# --- the checks --------------------------------------------------------------------------------


async def check_handshake(make_pair: MakePair, *, timeout: float = 10.0) -> None:
    """Dial, see both ends named correctly; a wrong key must not give a link."""
    async with _session(make_pair, timeout, dial=False) as s:
        pair = s.pair
        try:
            bad = await s.dial(key=pair.wrong_key)
        except TransportError:
            pass
        except TimeoutError:
            raise ConformanceError(
                f"dial with a wrong public key neither failed nor returned in {timeout * 3} s"
            ) from None
        else:
            await bad.aclose()
            raise ConformanceError("dial with a wrong public key returned a link")
        link = await s.dial()
        _expect(isinstance(link, Link), f"dial returned {link!r}, not a Link")
        _expect(
            link.peer == pair.listener_name,
            f"the dialled link's peer is {link.peer!r}, not {pair.listener_name!r}",
        )
        _expect(isinstance(link.mtu, int) and link.mtu >= 1280, f"link.mtu is {link.mtu!r}")
        cap = type(s.dialer).capabilities
        _expect(link.mtu <= cap.max_mtu, f"link.mtu {link.mtu} > capabilities {cap.max_mtu}")
        # A datagram transport only learns of the peer on its first authenticated message:
        # one packet makes sure the listener has something to report.
        link.send_batch([make_packet(1, 40)])
        incoming = await s.listener_link()
        _expect(
            incoming.peer == pair.dialer_name,
            f"the incoming link's peer is {incoming.peer!r}, not {pair.dialer_name!r}",
        )


async def check_strangers(make_pair: MakePair, *, timeout: float = 10.0) -> None:
    """A dialer whose identity the listener does not know gets no link, on either side."""
    async with _session(make_pair, timeout, dial=False) as s:
        pair = s.pair
        stranger = await pair.new_stranger()
        try:
            await stranger.listen(lambda link: None)
            try:
                link = await asyncio.wait_for(
                    stranger.dial(
                        pair.listener_name, list(pair.endpoints()), public_key=pair.listener_key
                    ),
                    timeout * 3,
                )
            except TransportError:
                pass
            except TimeoutError:
                raise ConformanceError(
                    f"dial from an unknown identity neither failed nor returned in {timeout * 3} s"
                ) from None
            else:
                await link.aclose()
                raise ConformanceError("dial from an identity the listener does not know succeeded")
            _expect(
                not s.incoming,
                f"the listener's on_link saw {[lk.peer for lk in s.incoming]} from a stranger",
            )
        finally:
            await stranger.aclose()


async def check_both_directions(make_pair: MakePair, *, timeout: float = 10.0) -> None:
    """Mixed sizes from dialer to listener, then from listener to dialer."""
    async with _session(make_pair, timeout) as s:
        assert s.link is not None
        ordered = type(s.pair.listener).capabilities.ordered
        mtu = min(s.link.mtu, 1400)
        sizes = [20, 64, 576, mtu, 100, 1280, 33]
        forward = [make_packet(i, sizes[i % len(sizes)], 0) for i in range(100)]
        back = [make_packet(i, sizes[(i + 3) % len(sizes)], 1) for i in range(100)]
        s.link.send_batch(forward[:1])
        incoming = await s.listener_link()
        inbox = _Inbox()
        inbox.push(incoming)
        await inbox.wait_count(1, timeout, "dialer -> listener (first packet)")
        _expect(inbox.take() == forward[:1], "dialer -> listener: the first packet differs")
        incoming.set_receiver(None)
        await _exchange(
            s.link,
            incoming,
            forward[1:],
            what="dialer -> listener",
            timeout=timeout,
            ordered=ordered,
        )
        await _exchange(
            incoming, s.link, back, what="listener -> dialer", timeout=timeout, ordered=ordered
        )


async def check_sizes(make_pair: MakePair, *, timeout: float = 10.0) -> None:
    """The smallest packet, odd sizes, 1280 and ``mtu``, one per batch, both ways."""
    async with _session(make_pair, timeout) as s:
        assert s.link is not None
        ordered = type(s.pair.listener).capabilities.ordered
        s.link.send_batch([make_packet(0, 20)])
        incoming = await s.listener_link()
        inbox = _Inbox()
        inbox.push(incoming)
        await inbox.wait_count(1, timeout, "first packet")
        incoming.set_receiver(None)
        for a, b, direction in ((s.link, incoming, 0), (incoming, s.link, 1)):
            mtu = a.mtu
            sizes = sorted({20, 21, 22, 23, 36, 255, 256, 257, 1279, 1280, mtu - 1, mtu})
            for n, size in enumerate(sizes):
                pkt = make_packet(n + 1, size, direction)
                await _exchange(
                    a,
                    b,
                    [pkt],
                    what=f"{'dialer -> listener' if direction == 0 else 'listener -> dialer'} "
                    f"{size}-byte packet",
                    timeout=timeout,
                    ordered=ordered,
                )


async def check_batches(make_pair: MakePair, *, timeout: float = 10.0) -> None:
    """2,000 packets in batches of 100 each way; pull mode at one end, push at the other."""
    async with _session(make_pair, timeout) as s:
        assert s.link is not None
        ordered = type(s.pair.listener).capabilities.ordered
        s.link.send_batch([make_packet(0, 20)])
        incoming = await s.listener_link()
        first = _Inbox()
        first.push(incoming)
        await first.wait_count(1, timeout, "first packet")
        incoming.set_receiver(None)
        sizes = (1200, 40, 1400, 300)
        forward = [make_packet(i, min(sizes[i % 4], s.link.mtu), 0) for i in range(2000)]
        back = [make_packet(i, min(sizes[(i + 1) % 4], incoming.mtu), 1) for i in range(2000)]
        pull = _Inbox()
        pull.pull(incoming)
        try:
            await _exchange(
                s.link,
                pull,
                forward,
                what="dialer -> listener (pull)",
                timeout=timeout,
                ordered=ordered,
                batch=100,
            )
        finally:
            await pull.aclose()
        await _exchange(
            incoming,
            s.link,
            back,
            what="listener -> dialer (push)",
            timeout=timeout,
            ordered=ordered,
            batch=100,
        )


async def check_close(make_pair: MakePair, *, timeout: float = 10.0) -> None:
    """``aclose`` wakes a pending receive; everything after it raises TransportError."""
    async with _session(make_pair, timeout) as s:
        link = s.link
        assert link is not None
        pending = asyncio.get_running_loop().create_task(link.recv_batch())
        await asyncio.sleep(0)
        await link.aclose()
        try:
            await asyncio.wait_for(pending, timeout)
        except TransportError:
            pass
        except TimeoutError:
            raise ConformanceError("a recv_batch pending at aclose did not return") from None
        else:
            raise ConformanceError("a recv_batch pending at aclose returned instead of raising")
        await link.aclose()  # idempotent
        try:
            link.send_batch([make_packet(1, 40)])
        except TransportError:
            pass
        else:
            raise ConformanceError("send_batch after aclose did not raise TransportError")
        try:
            await asyncio.wait_for(link.recv_batch(), timeout)
        except TransportError:
            pass
        except TimeoutError:
            raise ConformanceError("recv_batch after aclose blocked") from None
        else:
            raise ConformanceError("recv_batch after aclose did not raise TransportError")
        assert s.dialer is not None
        await s.dialer.aclose()
        await s.dialer.aclose()  # idempotent
        s.dialer = None


async def check_reconnect(make_pair: MakePair, *, timeout: float = 10.0) -> None:
    """Dial again after closing the link, and from a new transport after closing the old."""
    async with _session(make_pair, timeout) as s:
        ordered = type(s.pair.listener).capabilities.ordered
        for round_ in range(3):
            assert s.link is not None
            seen = len(s.incoming)
            if round_ == 0:
                what = "first link"
            elif round_ == 1:
                what = "after the dialer closed its link and dialled again"
            else:
                what = "after the dialer transport was replaced"
            base = 1000 * (round_ + 1)
            await _exchange(
                s.link,
                await _listener_inbox(s, seen if round_ else 0, base),
                [make_packet(base + i, 200 + i, 0) for i in range(1, 20)],
                what=f"dialer -> listener {what}",
                timeout=timeout,
                ordered=ordered,
            )
            incoming = await s.listener_link(0)
            await _exchange(
                incoming,
                s.link,
                [make_packet(base + i, 300 + i, 1) for i in range(20)],
                what=f"listener -> dialer {what}",
                timeout=timeout,
                ordered=ordered,
            )
            if round_ == 0:
                await s.link.aclose()
                await s.dial()
            elif round_ == 1:
                await s.aclose()  # the whole dialer transport
                # A restart takes time. WireGuard-style transports refuse an initiation whose
                # timestamp (whitened to ~16.8 ms, as wireguard-go does) is not newer than the
                # last one they accepted, so a new dialer within the same 16.8 ms is a replay.
                await asyncio.sleep(0.05)
                await s.new_dialer()
                await s.dial()


async def _listener_inbox(s: _Session, seen: int, base: int) -> _Inbox:
    """Send one packet so the listener knows the link, and return an inbox on its link."""
    assert s.link is not None
    s.link.send_batch([make_packet(base, 20)])
    deadline = time.monotonic() + s.timeout
    while True:
        # The packet lands on the listener's newest link to the dialer: a new one (stream
        # transports) or the one it had (datagram transports keep one link per peer).
        incoming = await s.listener_link(0)
        inbox = _Inbox()
        inbox.push(incoming)
        try:
            await inbox.wait_count(1, 0.5, "probe")
        except ConformanceError:
            incoming.set_receiver(None)
            if time.monotonic() > deadline:
                raise ConformanceError(
                    f"after reconnecting, the listener got no packet within {s.timeout} s"
                ) from None
            continue
        inbox.take()
        return inbox


CHECKS: dict[str, Callable[..., Awaitable[None]]] = {
    "handshake": check_handshake,
    "strangers": check_strangers,
    "both_directions": check_both_directions,
    "sizes": check_sizes,
    "batches": check_batches,
    "close": check_close,
    "reconnect": check_reconnect,
}
"""Every check by name, in the order :func:`check_transport` runs them."""


async def check_transport(make_pair: MakePair, *, timeout: float = 10.0) -> None:
    """Run every check in :data:`CHECKS`; raise :class:`ConformanceError` on the first failure."""
    for name, check in CHECKS.items():
        try:
            await check(make_pair, timeout=timeout)
        except ConformanceError as exc:
            raise ConformanceError(f"{name}: {exc}") from exc


# --- pytest ------------------------------------------------------------------------------------


class TransportConformance:
    """Base class for a pytest test class: define :meth:`make_pair`, inherit the tests.

    Every ``test_<check>`` runs its check once per event loop named in :attr:`loops`
    (``"asyncio"``, ``"uvloop"``), each in a fresh loop and bounded by :attr:`check_timeout`.
    """

    loops: ClassVar[Sequence[str]] = ("asyncio",)
    timeout: ClassVar[float] = 10.0
    """The bound on each wait inside a check, in seconds."""
    check_timeout: ClassVar[float] = 120.0

    def make_pair(self) -> AbstractAsyncContextManager[TransportPair]:
        raise NotImplementedError("define make_pair() in the subclass")

    def run_check(self, name: str) -> None:
        check = CHECKS[name]
        for loop in self.loops:
            factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
            if loop == "uvloop":
                import uvloop

                factory = uvloop.new_event_loop
            with asyncio.Runner(loop_factory=factory) as runner:
                runner.run(
                    asyncio.wait_for(
                        check(self.make_pair, timeout=self.timeout), self.check_timeout
                    )
                )

    def test_handshake(self) -> None:
        self.run_check("handshake")

    def test_strangers(self) -> None:
        self.run_check("strangers")

    def test_both_directions(self) -> None:
        self.run_check("both_directions")

    def test_sizes(self) -> None:
        self.run_check("sizes")

    def test_batches(self) -> None:
        self.run_check("batches")

    def test_close(self) -> None:
        self.run_check("close")

    def test_reconnect(self) -> None:
        self.run_check("reconnect")
