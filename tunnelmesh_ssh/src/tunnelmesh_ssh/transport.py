"""The SSH transport: IP packets as length-prefixed frames on an SSH session channel.

Every node runs an SSH server (asyncssh) on TCP, by default on the *same port number* as its
UDP transport, so the endpoints a node publishes (``host:port``) reach both. Identities are the
nodes' ed25519 keys, checked both ways against what the coordinator publishes:

* the server's host key is the node's identity key, and the dialling side accepts exactly the
  key the coordinator published for that peer name (``public_key`` of :meth:`dial`, or the one
  learned through :meth:`update_peer`); the original tunnelmesh never verified host keys;
* the client logs in as its peer name with its identity key; the server accepts the login only
  when that name is a known peer and the key is the one published for it. The peer's name on
  the link is that authenticated user name.

The dialler opens one session channel asking for the ``tunnelmesh`` subsystem; anything else
(shells, exec, forwarding, agent, X11, other subsystems) is refused. One connection carries one
link. Frames (:mod:`tunnelmesh_ssh.proto`) carry *plain* IP packets: SSH already encrypts and
authenticates the channel end to end between the two nodes, so the WireGuard engine is not
stacked on top of it (the relay transport, whose carrier is not end to end, does use it).

A batch of packets is one channel write; when the channel's write buffer holds more than
``max_buffer`` bytes (the peer or the network is slower than the sender), further batches are
dropped and counted, as a full queue drops in every other transport: TCP inside the tunnel then
slows down, instead of the whole mesh node waiting on one peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import asyncssh
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from tunnelmesh.abc import Link, Packet, Transport, TransportCapabilities, TransportHost
from tunnelmesh.aio.queuedlink import QueuedLink
from tunnelmesh.errors import TransportError
from tunnelmesh.identity import Identity

from tunnelmesh_ssh.proto import MAX_PACKET, FrameDecoder, encode_frames

__all__ = ["SUBSYSTEM", "SshLink", "SshTransport"]

log = logging.getLogger(__name__)

SUBSYSTEM = "tunnelmesh"
"""The session subsystem that carries the frames."""

_CIPHERS = ["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com"]
_WINDOW = 8 * 1024 * 1024
_MAX_PKTSIZE = 256 * 1024 - 1024
_QUEUE = 256


def _ssh_public_key(raw: bytes) -> asyncssh.SSHKey:
    """An asyncssh key object for a raw 32-byte ed25519 public key."""
    try:
        line = Ed25519PublicKey.from_public_bytes(raw).public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    except ValueError as exc:
        raise TransportError(f"ssh: {exc}") from None
    return asyncssh.import_public_key(line)


def _parse_endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise TransportError(f"ssh: endpoint {text!r} is not host:port")
    return host.strip("[]"), int(port)


class SshLink(QueuedLink):
    """A link over one SSH session channel (either end)."""

    kind = "ssh link"

    def __init__(self, peer: str, mtu: int, max_buffer: int) -> None:
        super().__init__(peer, mtu, queue_size=_QUEUE)
        self.max_buffer = max_buffer
        self.chan: Any = None
        self.conn: Any = None
        self.drops = 0
        """Packets dropped: the channel's write buffer or the receive queue was full."""
        self.rx_bytes = 0
        self.tx_bytes = 0
        self._decoder = FrameDecoder()

    def send_batch(self, datagrams: Sequence[Packet]) -> None:
        if self.closed or self.chan is None:
            raise self._closed_error()
        if not datagrams:
            return
        if self.chan.get_write_buffer_size() > self.max_buffer:
            self.drops += len(datagrams)
            return
        try:
            data = encode_frames(datagrams)
        except ValueError as exc:
            raise TransportError(f"ssh: {exc}") from None
        self.tx_bytes += len(data)
        try:
            self.chan.write(data)
        except (asyncssh.Error, OSError, BrokenPipeError) as exc:
            self._lost(exc)
            raise self._closed_error(str(exc)) from None

    def _data(self, data: bytes) -> None:
        self.rx_bytes += len(data)
        packets = self._decoder.feed(data)
        if packets:
            self._received(packets)

    def _queue_full(self, count: int) -> None:
        self.drops += count

    def _lost(self, exc: BaseException | None = None) -> bool:
        if not super()._lost():
            return False
        if exc is not None:
            log.info("ssh link to %s lost: %s", self.peer, exc)
        return True

    async def aclose(self) -> None:
        await super().aclose()
        chan, self.chan = self.chan, None
        conn, self.conn = self.conn, None
        if chan is not None:
            chan.close()
        if conn is not None:
            conn.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 5.0)


class _Session(asyncssh.SSHClientSession[bytes], asyncssh.SSHServerSession[bytes]):
    """The channel callbacks of one link, on either side."""

    def __init__(self, link: SshLink, on_ready: Callable[[SshLink], None] | None = None) -> None:
        self.link = link
        self._on_ready = on_ready

    def connection_made(self, chan: Any) -> None:
        self.link.chan = chan

    def subsystem_requested(self, subsystem: str) -> bool:
        return subsystem == SUBSYSTEM

    def session_started(self) -> None:
        if self._on_ready is not None:
            self._on_ready(self.link)

    def data_received(self, data: bytes, datatype: Any) -> None:
        if datatype is None:
            self.link._data(data)

    def eof_received(self) -> bool:
        # The other end stopped sending: the link is over (an OpenSSH client whose stdin ends
        # waits for the exit status and the channel close).
        chan = self.link.chan
        if chan is not None:
            exit_ = getattr(chan, "exit", None)
            if exit_ is not None:
                exit_(0)
            else:
                chan.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.link._lost(exc)


class _Server(asyncssh.SSHServer):
    """One incoming connection: public-key login as a known peer, one subsystem session."""

    def __init__(self, transport: SshTransport) -> None:
        self.transport = transport
        self.conn: Any = None
        self.user = ""
        self.sessions = 0

    def connection_made(self, conn: Any) -> None:
        self.conn = conn

    def begin_auth(self, username: str) -> bool:
        self.user = username
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        raw = self.transport._keys.get(username)
        if raw is None:
            return False
        return bool(key.public_data == _ssh_public_key(raw).public_data)

    def session_requested(self) -> Any:
        if self.sessions:
            return False  # one link per connection
        self.sessions += 1
        link = SshLink(self.user, self.transport.mtu, self.transport.max_buffer)
        link.conn = self.conn
        return _Session(link, self.transport._incoming)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport._server_conns.discard(self)


class SshTransport(Transport):
    """IP packets over SSH, with both ends' keys pinned to the coordinator's records.

    Args:
        identity: this node's ed25519 identity (host key and client key).
        peer_name: this node's peer name (the SSH user name it logs in with).
        listen: ``host:port`` for the SSH server (TCP; port 0 picks one).
        mtu: the largest packet a link carries (the TUN MTU).
        connect_timeout: seconds per endpoint for TCP connect plus SSH handshake.
        keepalive: seconds between SSH keepalives; 4 missed ones close the link.
        max_buffer: bytes a channel may hold unsent before batches are dropped.
    """

    name: ClassVar[str] = "ssh"
    capabilities: ClassVar[TransportCapabilities] = TransportCapabilities(
        incoming=True, nat_punch=False, reliable=True, ordered=True, max_mtu=MAX_PACKET
    )
    preference: ClassVar[int] = 20  # after UDP: direct, where UDP is blocked

    def __init__(
        self,
        identity: Identity,
        peer_name: str,
        *,
        listen: str = "0.0.0.0:2222",
        mtu: int = 1420,
        connect_timeout: float = 10.0,
        keepalive: float = 15.0,
        max_buffer: int = 4 * 1024 * 1024,
    ) -> None:
        if not 1280 <= mtu <= MAX_PACKET:
            raise TransportError(f"ssh: mtu {mtu} is outside 1280..{MAX_PACKET}")
        self.identity = identity
        self.peer_name = peer_name
        self.listen_address = listen
        self.mtu = mtu
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self.max_buffer = max_buffer
        self._key = asyncssh.import_private_key(
            identity.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
        )
        self._keys: dict[str, bytes] = {}
        self._server: Any = None
        self._server_conns: set[_Server] = set()
        self._on_link: Callable[[Link], None] | None = None
        self._links: set[SshLink] = set()
        self._gone: dict[str, tuple[int, int]] = {}  # byte counts of links no longer held
        self._closed = False

    @classmethod
    def from_node(cls, node: TransportHost) -> SshTransport:
        """Build from a running node: its identity and name, TCP on ``transports.listen_port``."""
        return cls(node.identity, node.name, listen=node.listen_address, mtu=node.config.tun.mtu)

    @property
    def local_address(self) -> tuple[str, int]:
        """The bound server address (after :meth:`listen`)."""
        if self._server is None:
            raise TransportError("ssh transport is not listening")
        addr: tuple[str, int] = self._server.sockets[0].getsockname()[:2]
        return addr

    def update_peer(
        self, peer: str, *, public_key: bytes = b"", endpoints: Sequence[str] = ()
    ) -> None:
        old = self._keys.get(peer)
        if public_key:
            self._keys[peer] = bytes(public_key)
        else:
            self._keys.pop(peer, None)
        if old is not None and old != self._keys.get(peer):
            # Links authenticated with the old key (or of a peer that left) must not outlive it.
            for link in [lk for lk in self._links if lk.peer == peer]:
                self._forget(link)
                asyncio.get_running_loop().create_task(link.aclose())

    def _forget(self, link: SshLink) -> None:
        """Drop a link, keeping its byte counts in the totals of :meth:`traffic`."""
        self._links.discard(link)
        rx, tx = self._gone.get(link.peer, (0, 0))
        self._gone[link.peer] = (rx + link.rx_bytes, tx + link.tx_bytes)

    def traffic(self) -> dict[str, tuple[int, int]]:
        """Bytes received and sent per peer (framing included), closed links counted too."""
        out = dict(self._gone)
        for link in self._links:
            rx, tx = out.get(link.peer, (0, 0))
            out[link.peer] = (rx + link.rx_bytes, tx + link.tx_bytes)
        return out

    async def listen(self, on_link: Callable[[Link], None]) -> None:
        if self._closed:
            raise TransportError("ssh transport is closed")
        self._on_link = on_link
        if self._server is not None:
            return
        host, port = _parse_endpoint(self.listen_address)

        def factory() -> _Server:
            server = _Server(self)
            self._server_conns.add(server)
            return server

        try:
            self._server = await asyncssh.create_server(
                factory,
                host,
                port,
                server_host_keys=[self._key],
                encryption_algs=_CIPHERS,
                allow_pty=False,
                agent_forwarding=False,
                x11_forwarding=False,
                window=_WINDOW,
                max_pktsize=_MAX_PKTSIZE,
                keepalive_interval=self.keepalive,
                keepalive_count_max=4,
                login_timeout=self.connect_timeout,
                encoding=None,
                config=None,
                reuse_address=True,
            )
        except OSError as exc:
            raise TransportError(f"ssh: cannot listen on {self.listen_address}: {exc}") from exc

    def _incoming(self, link: SshLink) -> None:
        if self._closed:
            link.chan.close()
            return
        self._links.add(link)
        if self._on_link is not None:
            self._on_link(link)

    async def dial(self, peer: str, endpoints: Sequence[str], *, public_key: bytes = b"") -> Link:
        """Connect to ``peer``, pinning its host key to its identity key.

        Raises:
            TransportError: no key is known for ``peer``, or no endpoint accepted us with the
                right host key.
        """
        if self._closed:
            raise TransportError("ssh transport is closed")
        raw = bytes(public_key) if public_key else self._keys.get(peer)
        if not raw:
            raise TransportError(f"ssh: no public key known for peer {peer!r}")
        host_key = _ssh_public_key(raw)
        errors: list[str] = []
        for endpoint in endpoints:
            host, port = _parse_endpoint(endpoint)
            try:
                return await asyncio.wait_for(
                    self._connect(peer, host, port, host_key), self.connect_timeout
                )
            except TimeoutError:
                errors.append(f"{endpoint}: timed out")
            except asyncssh.HostKeyNotVerifiable:
                errors.append(f"{endpoint}: host key is not {peer}'s identity key")
            except asyncssh.PermissionDenied:
                errors.append(f"{endpoint}: {peer} refused our key")
            except (asyncssh.Error, OSError, asyncssh.ChannelOpenError) as exc:
                errors.append(f"{endpoint}: {exc}")
        raise TransportError(f"ssh: cannot reach {peer}: {'; '.join(errors) or 'no endpoints'}")

    async def _connect(self, peer: str, host: str, port: int, host_key: asyncssh.SSHKey) -> Link:
        conn = await asyncssh.connect(
            host,
            port,
            username=self.peer_name,
            client_keys=[self._key],
            known_hosts=([host_key], [], []),
            server_host_key_algs=["ssh-ed25519"],
            encryption_algs=_CIPHERS,
            preferred_auth=["publickey"],
            agent_path=None,
            agent_forwarding=False,
            config=None,
            keepalive_interval=self.keepalive,
            keepalive_count_max=4,
            request_pty=False,
        )
        link = SshLink(peer, self.mtu, self.max_buffer)
        link.conn = conn
        try:
            await conn.create_session(
                lambda: _Session(link),
                subsystem=SUBSYSTEM,
                encoding=None,
                window=_WINDOW,
                max_pktsize=_MAX_PKTSIZE,
            )
        except BaseException:
            conn.close()
            raise
        if self._closed:
            await link.aclose()
            raise TransportError("ssh transport is closed")
        self._links.add(link)
        return link

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        links = list(self._links)
        for link in links:
            self._forget(link)
        for link in links:
            await link.aclose()
        for server in list(self._server_conns):
            if server.conn is not None:
                server.conn.close()
        self._server_conns.clear()
