"""A sans-IO WireGuard engine: byte for byte the WireGuard protocol, without sockets or clocks.

Theory of operation
-------------------
One :class:`WireGuard` instance is one WireGuard interface: a static X25519 key, a set of
:class:`Peer` objects (found by public key) and a table of local session indices. It never reads
the clock and never touches a socket: every method takes ``now`` (monotonic seconds, e.g.
``loop.time()``) and returns bytes, and the driver moves the bytes. Wall-clock time is needed
once, for the TAI64N timestamp of initiations: it is ``now + wall_offset`` (the driver sets
``wall_offset = time.time() - loop.time()``).

Driver loop (aioquic style)::

    result = engine.receive_datagram(data, addr, now)   # (peer, ip_packet) or None
    datagrams = engine.encrypt(peer, ip_packet, now)    # a transport message, or None (staged)
    for data, addr in engine.datagrams_to_send(): ...   # handshakes, keepalives, flushed stage
    while (event := engine.next_event()) is not None: ...
    deadline = engine.get_timer(); ...; engine.handle_timer(now)

Bad input never raises: a packet that is short, forged, replayed, expired or for an unknown
index is dropped and counted in :attr:`WireGuard.drops` under a reason
(``"short"``, ``"bad_mac1"``, ``"bad_tag"``, ``"replay"``, ...).

Sessions (keypairs) rotate as in wireguard-go: each peer has ``previous``, ``current`` and
``next``. The initiator's new keypair becomes ``current`` at once; the responder's waits in
``next`` until the first data message under it arrives (which proves the initiator has it).

Timers (whitepaper section 6, wireguard-go ``timers.go``); each is one deadline per peer:

==================  ==========================================  ===================================
timer               armed when                                  on expiry
==================  ==========================================  ===================================
retransmit          an initiation is sent (REKEY_TIMEOUT +      resend the initiation; after
                    jitter); cleared when a handshake completes MAX_TIMER_HANDSHAKES attempts give
                                                                up: drop staged packets,
                                                                HandshakeTimedOut
send keepalive      a data packet is received and the timer     send a keepalive (empty message)
                    is idle (KEEPALIVE_TIMEOUT); cleared by any
                    authenticated packet sent
new handshake       a data packet is sent and the timer is      initiate a handshake (the peer
                    idle (KEEPALIVE + REKEY_TIMEOUT + jitter);  went quiet)
                    cleared by any authenticated packet received
zero keys           a session is derived (3 x REJECT_AFTER_TIME) erase every key, KeysZeroed
persistent          any authenticated packet is sent or          send a keepalive
keepalive           received, if the peer has an interval
==================  ==========================================  ===================================

Rekeying: after sending, if ``current`` was made by us as initiator more than REKEY_AFTER_TIME
ago (or after REKEY_AFTER_MESSAGES), initiate; after receiving, if that age passes
REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT, initiate once. A keypair never sends or
receives after REJECT_AFTER_TIME or REJECT_AFTER_MESSAGES. Initiations are sent at most once per
REKEY_TIMEOUT; a responder drops an initiation whose TAI64N timestamp is not newer than the last
one from that peer (replay) or that comes within 20 ms of the previous one (flood).

Under load (more than ``under_load_threshold`` handshake messages a second, and for a second
after) a handshake message needs a valid mac2 (else it gets a cookie reply), and then passes its
source's token bucket (:class:`~tunnelmesh.proto.ratelimit.HandshakeRateLimiter`: 20 a second,
5 at once, per source IP or IPv6 /64) before any Curve25519 work, as in wireguard-go; the rest
is dropped as ``"ratelimited"``.

Where the code lives, by what it does (as wireguard-go splits its ``device`` package):

* :mod:`tunnelmesh.proto.wgpeer` -- :class:`Peer` and :class:`Keypair`, the state;
* :mod:`tunnelmesh.proto.wghandshake` -- handshake messages in and out, sessions and their
  rotation, mac2/cookies and the rate limit under load;
* :mod:`tunnelmesh.proto.wgdata` -- the data path: ``encrypt``/``encrypt_batch``/``seal_into``,
  ``receive_datagram``/``receive_batch``, keepalives and staged packets;
* :mod:`tunnelmesh.proto.wgtimers` -- ``get_timer``/``handle_timer`` and the timer constants;
* this module -- :class:`WireGuard`: its state, the peer table and the driver API.

The methods written in those modules are functions whose ``self`` is the engine; the class body
below binds them, so calling one costs what calling a method written in the class costs (no
wrapper on the per-packet path) and ``engine.receive_datagram`` and the rest are found as
before, on the class.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict, deque
from collections.abc import Callable

from tunnelmesh.proto import wgdata, wghandshake, wgtimers
from tunnelmesh.proto.cookie import CookieChecker
from tunnelmesh.proto.events import Event
from tunnelmesh.proto.noise import Handshake, StaticIdentity
from tunnelmesh.proto.ratelimit import HandshakeRateLimiter
from tunnelmesh.proto.wgcrypto import CryptoError, dh
from tunnelmesh.proto.wgmessages import REKEY_AFTER_TIME
from tunnelmesh.proto.wgpeer import Address, Keypair, Peer

__all__ = ["Keypair", "Peer", "WireGuard"]


class WireGuard:
    """One WireGuard interface as a pure state machine. See the module docstring.

    Args:
        private_key: our static X25519 private key (32 bytes).
        rng: source of random bytes (indices, ephemeral keys, cookie secrets, jitter).
        wall_offset: add to ``now`` to get Unix time (for TAI64N timestamps).
        mtu: the tunnel MTU, which limits padding as wireguard-go does.
        under_load_threshold: handshake messages per second above which mac2 is demanded.
    """

    def __init__(
        self,
        private_key: bytes,
        *,
        rng: Callable[[int], bytes] = os.urandom,
        wall_offset: float = 0.0,
        mtu: int = 1420,
        under_load_threshold: int = 128,
    ) -> None:
        self.identity = StaticIdentity(private_key)
        self.public_key = self.identity.public
        self.rng = rng
        self.wall_offset = wall_offset
        self.mtu = mtu
        self.under_load_threshold = under_load_threshold
        self.force_under_load = False
        self.rekey_after_time = REKEY_AFTER_TIME
        """Seconds after which an initiator rekeys (tests shorten it to watch a rekey)."""
        self.peers: dict[bytes, Peer] = {}
        self.drops: defaultdict[str, int] = defaultdict(int)
        self._by_name: dict[str, Peer] = {}
        self._static_static: dict[bytes, bytes] = {}
        self._keypairs: dict[int, Keypair] = {}
        self._handshakes: dict[int, Peer] = {}
        self._checker = CookieChecker(self.public_key, rng)
        self.handshake_limiter = HandshakeRateLimiter()
        """Per-source pace of handshake messages, applied only under load."""
        self._out: list[tuple[bytes, Address]] = []
        self._events: deque[Event] = deque()
        self._load_window = 0.0
        self._load_count = 0
        self._under_load_until = -1.0
        self._jitter_pool: list[int] = []
        self.timer_floor = math.inf
        """No timer deadline set since the driver last reset this to ``inf`` is earlier than it.
        A driver resets it, then calls :meth:`get_timer` (which visits every peer) and arms its
        timer there; after that it needs no new scan while ``timer_floor`` is not before its
        armed timer: one comparison per batch instead."""

    # --- configuration ------------------------------------------------------------------------

    def add_peer(
        self,
        public_key: bytes,
        *,
        name: str | None = None,
        endpoint: Address | None = None,
        preshared_key: bytes = bytes(32),
        persistent_keepalive: float = 0.0,
    ) -> Peer:
        """Add a peer, or update the endpoint and keepalive of an existing one."""
        peer = self.peers.get(public_key)
        if peer is not None:
            if endpoint is not None:
                peer.endpoint = endpoint
            peer.persistent_keepalive = persistent_keepalive
            return peer
        try:
            ss = dh(self.identity.private, public_key)
        except CryptoError:
            ss = bytes(32)
        hs = Handshake(
            remote_static=public_key, precomputed_static_static=ss, preshared_key=preshared_key
        )
        peer = Peer(name or public_key.hex()[:16], public_key, hs, endpoint, persistent_keepalive)
        self.peers[public_key] = peer
        self._by_name[peer.name] = peer
        self._static_static[public_key] = ss
        return peer

    def remove_peer(self, public_key: bytes) -> None:
        """Forget a peer and every session with it."""
        peer = self.peers.pop(public_key, None)
        if peer is None:
            return
        self._by_name.pop(peer.name, None)
        self._static_static.pop(public_key, None)
        self._zero_keys(peer)

    def peer_by_name(self, name: str) -> Peer | None:
        """The peer called ``name``, or None."""
        return self._by_name.get(name)

    # --- driver API -----------------------------------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        """Take the queued outgoing datagrams (handshakes, keepalives, flushed packets)."""
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        """Take the next event, or None."""
        return self._events.popleft() if self._events else None

    def initiate(self, peer: Peer, now: float) -> None:
        """Start a handshake with ``peer`` now (rate-limited to one per REKEY_TIMEOUT)."""
        self._send_initiation(peer, now, retry=False)

    def send_keepalive(self, peer: Peer, now: float) -> None:
        """Queue a keepalive (or a handshake when there is no session)."""
        self._send_keepalive(peer, now)

    # --- timers (wgtimers.py) -------------------------------------------------------------------

    get_timer = wgtimers.get_timer
    handle_timer = wgtimers.handle_timer
    _expired_retransmit = wgtimers._expired_retransmit
    _jitter = wgtimers._jitter
    _deadline = wgtimers._deadline

    # --- data path (wgdata.py) ------------------------------------------------------------------

    has_session = wgdata.has_session
    encrypt = wgdata.encrypt
    encrypt_batch = wgdata.encrypt_batch
    seal_into = wgdata.seal_into
    _sending_keypair = wgdata._sending_keypair
    _sealed = wgdata._sealed
    receive_datagram = wgdata.receive_datagram
    receive_batch = wgdata.receive_batch
    _receive_data = wgdata._receive_data
    _inner = wgdata._inner
    _data_received = wgdata._data_received
    _end_run = wgdata._end_run
    _send_keepalive = wgdata._send_keepalive
    _send_staged = wgdata._send_staged

    # --- handshake messages and sessions (wghandshake.py) ---------------------------------------

    _under_load = wghandshake._under_load
    _check_macs = wghandshake._check_macs
    _receive_initiation = wghandshake._receive_initiation
    _receive_response = wghandshake._receive_response
    _receive_cookie_reply = wghandshake._receive_cookie_reply
    _send_initiation = wghandshake._send_initiation
    _authenticated_from = wghandshake._authenticated_from
    _begin_session = wghandshake._begin_session
    _rotate_next = wghandshake._rotate_next
    _handshake_complete = wghandshake._handshake_complete
    _drop_keypair = wghandshake._drop_keypair
    _forget_handshake_index = wghandshake._forget_handshake_index
    _zero_keys = wghandshake._zero_keys
    _new_index = wghandshake._new_index
