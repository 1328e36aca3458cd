"""The peer side of the control plane: register, heartbeat, follow the push channel.

:class:`ControlClient` is what ``tunnelmesh join`` runs and what the data plane consumes::

    client = ControlClient(server=url, identity=ident, ca_pem=ca, auth_token=token, name="alpha")
    await client.register()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(client.run())
        async for change in client.changes():      # PeerAdded / PeerChanged / PeerRemoved ...
            ...

``run()`` keeps a heartbeat every ``heartbeat_interval`` seconds and a push WebSocket open,
reconnecting with backoff. While the coordinator is away the peer table keeps what it knew
(nothing is removed for want of a coordinator); when it returns, the new snapshot is diffed in.

Several coordinators on one database: the client learns their URLs (registration answer, push
snapshot, ``coordinators`` messages; kept in ``coordinators.json`` beside the peers cache) and,
when the one it talks to does not answer, moves to the next one at once: the same session,
name and mesh IP (they live in the shared database), a new push snapshot from there. A push
channel that breaks triggers a heartbeat at once, so a coordinator killed on a reachable host is
noticed within a second, one on a host gone silent within the connect timeout (5 s) after the
next heartbeat.

What the client keeps across coordinators and restarts (the coordinators it knows, the move to
the next one, ``coordinators.json``, ``peers.json``, ``filter.json``) is written in
:mod:`tunnelmesh.control.clientcache`, functions bound as :class:`ControlClient`'s methods.

First contact: :func:`fetch_ca` gets the mesh CA and checks the coordinator's HMAC proof before
the token is sent anywhere (see :mod:`tunnelmesh.coordinator.ca`). Every later request verifies
TLS against that CA, with the hostname checked against
:data:`~tunnelmesh.coordinator.ca.COORDINATOR_NAME`.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import hmac
import inspect
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar, get_args

import aiohttp
import msgspec

from tunnelmesh import __version__
from tunnelmesh.control import clientcache
from tunnelmesh.control.messages import (
    ApiError,
    CaResponse,
    ChallengeResponse,
    ConcentratorStatus,
    Coordinators,
    Counters,
    DnsResponse,
    Heartbeat,
    HeartbeatAck,
    Location,
    PeerInfo,
    PeersResponse,
    PushMessage,
    RegisterRequest,
    RegisterResponse,
    RendezvousAck,
    RendezvousRequest,
    Snapshot,
    decode_push,
    encode,
)
from tunnelmesh.control.peertable import FilterRulesChanged, PeerChange, PeerTable, SelfRemoved
from tunnelmesh.control.urls import endpoint_problem
from tunnelmesh.coordinator.auth import registration_message, token_binding
from tunnelmesh.coordinator.ca import COORDINATOR_NAME, ca_proof, client_ssl_context
from tunnelmesh.errors import TunnelmeshError
from tunnelmesh.identity import Identity
from tunnelmesh.logs import add_secret

__all__ = ["ApiRequestError", "ControlClient", "CoordinatorUnreachable", "PeerStatus", "fetch_ca"]

HEARTBEAT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the heartbeat round-trip histogram (metrics)."""

log = logging.getLogger(__name__)
T = TypeVar("T")

_TIMEOUT = aiohttp.ClientTimeout(total=15, connect=5)
FAILOVER_TIMEOUT = 3.5
"""Seconds a heartbeat may take while other coordinators are known. One that does not answer
in that time is taken as gone (its host may have vanished without closing the kept-alive
connection, which would otherwise wait out the 15 s request timeout) and the peer moves on:
within its heartbeat interval (with jitter) plus this, 14.5 s with the default 10 s."""


_push_type_dec = msgspec.json.Decoder(dict[str, Any])
_KNOWN_PUSH = frozenset(t.__struct_config__.tag for t in get_args(PushMessage))


def _push_type(line: str) -> str | None:
    """The ``type`` of a push message this release does not know (a newer coordinator's:
    skipped quietly), or None (malformed)."""
    try:
        kind = _push_type_dec.decode(line).get("type")
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if isinstance(kind, str) and kind.isidentifier() and kind not in _KNOWN_PUSH:
        return kind
    return None


class CoordinatorUnreachable(TunnelmeshError):
    """The coordinator did not answer (network, TLS or timeout)."""


async def _cancel_and_wait(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended, cancelling again any that is still
    running after half a second: on Python 3.11 a cancellation that meets a timeout in the same
    loop turn can be swallowed (the heartbeat loop then waited for its next wake-up with the
    cancellation spent, and `join` ignored SIGTERM: test_control_cli, about 1 run in 5)."""
    pending = {t for t in tasks if not t.done()}
    for t in pending:
        t.cancel()
    while pending:
        _, pending = await asyncio.wait(pending, timeout=0.5)
        for t in pending:
            t.cancel()
    for t in tasks:
        if not t.cancelled():
            t.exception()  # retrieved: an error of a task being stopped is not news


class ApiRequestError(TunnelmeshError):
    """The coordinator refused a request; ``status`` and ``error`` say why."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(f"coordinator refused ({status} {error}): {message}")
        self.status = status
        self.error = error
        self.message = message


class PeerStatus(msgspec.Struct, kw_only=True):
    """What a heartbeat reports besides endpoints (the data plane fills it in)."""

    transports: dict[str, str] = msgspec.field(default_factory=dict)
    rtt_ms: dict[str, float] = msgspec.field(default_factory=dict)
    reasons: dict[str, str] = msgspec.field(default_factory=dict)
    counters: Counters = msgspec.field(default_factory=Counters)
    allow_exit_traffic: bool = False
    aliases: list[str] = msgspec.field(default_factory=list)  # dns.aliases to publish
    transport_order: list[str] = msgspec.field(default_factory=list)  # the order in force
    location: Location | None = None  # peer.yaml's location:
    concentrator: ConcentratorStatus | None = None  # this peer serves clients (tunnelmesh_wg)


async def _maybe_await(value: T | Awaitable[T]) -> T:
    if inspect.isawaitable(value):
        return await value
    return value


def _error_from(status: int, body: bytes) -> ApiRequestError:
    try:
        err = msgspec.json.decode(body, type=ApiError)
        return ApiRequestError(status, err.error, err.message)
    except (msgspec.DecodeError, msgspec.ValidationError):
        text = body.decode("utf-8", "replace").strip()[:200]
        return ApiRequestError(status, "http_error", text or "no details")


async def fetch_ca(server: str, auth_token: str, *, timeout: float = 10.0) -> str:
    """Get the mesh CA from ``server`` and check the coordinator's proof of the token.

    TLS is not verified for this one request (we do not know the CA yet); the proof is what
    makes the answer trustworthy, and the token itself is never sent.

    Raises:
        CoordinatorUnreachable: no answer.
        TunnelmeshError: the proof is wrong (wrong token, or not our coordinator).
    """
    nonce = secrets.token_urlsafe(24)
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
            http.get(f"{server}/api/v1/ca", params={"nonce": nonce}, ssl=False) as resp,
        ):
            body = await resp.read()
            if resp.status != 200:
                raise _error_from(resp.status, body)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise CoordinatorUnreachable(f"cannot reach the coordinator at {server}: {exc}") from None
    try:
        ca = msgspec.json.decode(body, type=CaResponse)
        expected = ca_proof(auth_token, nonce, ca.ca_pem)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise TunnelmeshError(f"the coordinator sent a malformed CA answer: {exc}") from None
    if not hmac.compare_digest(expected, ca.proof):
        raise TunnelmeshError(
            f"the server at {server} could not prove it knows the mesh token: the token is "
            "wrong, or this is not your coordinator (someone in the middle?)"
        )
    return ca.ca_pem


def unreachable_wait(rounds: int, interval: float) -> float:
    """Seconds until the next heartbeat after ``rounds`` in a row that no coordinator
    answered: 2, 4, 8 ... up to the heartbeat interval. A mesh of thousands whose coordinator
    is down must not knock every 2 s (and all at once when it returns); the push channel's
    reconnects still wake the heartbeat loop early."""
    return min(interval, 2.0 * float(1 << min(max(rounds, 1) - 1, 10)))


class ControlClient:
    """One node's connection to its coordinator.

    Args:
        server: the coordinator URL (``https://host:port``).
        identity: this node's key.
        ca_pem: the mesh CA (from :func:`fetch_ca` or the stored context).
        auth_token: the mesh join token; needed only for a key the coordinator does not know
            (forgotten after the first successful registration).
        name: the name to register with.
        session_token: a session from an earlier registration (skips registering).
        endpoints: a callable returning this node's endpoints (``host:port``), sync or async.
        status: a callable returning a :class:`PeerStatus`, sync or async.
        rename: take ``name-2`` when the name belongs to another key (False: fail instead).
        peers_cache: a file where the peer table is kept, so a restart while the coordinator
            is down still knows the peers.
    """

    def __init__(
        self,
        *,
        server: str,
        identity: Identity,
        ca_pem: str,
        auth_token: str = "",
        name: str = "",
        session_token: str = "",
        endpoints: Callable[[], list[str] | Awaitable[list[str]]] | None = None,
        status: Callable[[], PeerStatus | Awaitable[PeerStatus]] | None = None,
        rename: bool = True,
        heartbeat_interval: float = 10.0,
        peers_cache: str | Path | None = None,
        connections: int = 4,
    ) -> None:
        self.server = server.rstrip("/")
        self.coordinators: list[str] = [self.server]
        """Every coordinator URL known: the one joined with first, then those announced."""
        self.announced: list[str] = []
        """The live coordinators as the mesh last announced them (sorted; empty: none were)."""
        self.failovers = 0  # moves to another coordinator
        self.identity = identity
        self.ca_pem = ca_pem
        self.auth_token = auth_token
        self.name = name
        self.session_token = session_token
        add_secret(auth_token, session_token)  # never logged (tunnelmesh.logs)
        self.rename = rename
        self.heartbeat_interval = heartbeat_interval
        self._endpoints = endpoints
        self._status = status
        self.peers_cache = Path(peers_cache) if peers_cache else None
        self.table = PeerTable(identity.peer_id, self._load_cache(), self._load_filter_cache())
        self.registration: RegisterResponse | None = None
        self.heartbeat_seconds: tuple[int, float] = (0, 0.0)
        self.heartbeat_buckets = [0] * len(HEARTBEAT_BUCKETS)
        """Acknowledged heartbeats per duration bucket (not cumulative; metrics)."""
        """Acknowledged heartbeats and the seconds they took in all (metrics)."""
        self.heartbeat_last_seconds: float | None = None
        self.reachable = False
        self.last_contact = 0.0
        self.last_ack: HeartbeatAck | None = None
        self.on_register: list[Callable[[RegisterResponse], None]] = []
        self._connections = connections
        self._http: aiohttp.ClientSession | None = None
        self._queues: list[asyncio.Queue[PeerChange]] = []
        self._callbacks: list[Callable[[PeerChange], None]] = []
        self._stopped = asyncio.Event()
        self._loops_done = asyncio.Event()  # run()'s loops are stopped (set while none run)
        self._loops_done.set()
        self._wake = asyncio.Event()
        self._removed = False
        self.resyncs = 0  # push channels reconnected because deltas were missed
        self._cache_dirty = False
        self._server_moved = asyncio.Event()
        self._unanswered = 0  # coordinators tried in a row without an answer
        self.learn_coordinators(self._load_coordinators_cache())

    # --- HTTP plumbing ---------------------------------------------------------------------

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            connector = aiohttp.TCPConnector(
                ssl=client_ssl_context(self.ca_pem), limit=self._connections
            )
            self._http = aiohttp.ClientSession(connector=connector, timeout=_TIMEOUT)
        return self._http

    def _headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    async def _call(
        self,
        method: str,
        path: str,
        rtype: type[T] | None,
        *,
        token: str | None = None,
        body: Any = None,
        timeout: float | None = None,
    ) -> T:
        token = self.session_token if token is None else token
        data = encode(body) if body is not None else None
        try:
            async with self.http.request(
                method,
                self.server + path,
                data=data,
                headers=self._headers(token),
                server_hostname=COORDINATOR_NAME,
                timeout=_TIMEOUT if timeout is None else aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.reachable = False
            raise CoordinatorUnreachable(
                f"cannot reach the coordinator at {self.server}: {exc or type(exc).__name__}"
            ) from None
        self.reachable = True
        self.last_contact = time.time()
        if status >= 400:
            raise _error_from(status, raw)
        if rtype is None:
            return None  # type: ignore[return-value]
        try:
            return msgspec.json.decode(raw, type=rtype)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise TunnelmeshError(f"the coordinator sent a malformed answer: {exc}") from None

    def network_changed(self) -> None:
        """The host's addresses changed: drop the pooled connections (bound to the old source
        address, they would hang until the request timeout) and heartbeat now, so the
        coordinator learns the new endpoints at once. The push channel reconnects."""
        http, self._http = self._http, None
        if http is not None:
            asyncio.get_running_loop().create_task(http.close())
        self._wake.set()

    def heartbeat_now(self) -> None:
        """Send the next heartbeat now (e.g. the endpoints changed)."""
        self._wake.set()

    async def aclose(self) -> None:
        self._stopped.set()
        # run()'s loops stop first: a heartbeat in flight would otherwise call through the
        # closed session, or open a new one that nothing closes.
        await self._loops_done.wait()
        self._write_cache(force=True)
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def __aenter__(self) -> ControlClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- API calls -------------------------------------------------------------------------

    async def _current_endpoints(self) -> list[str]:
        if self._endpoints is None:
            return []
        # What the coordinator would refuse (a loopback address that STUN reflects when the
        # coordinator runs on this host, say) is left out rather than losing the heartbeat.
        eps = list(await _maybe_await(self._endpoints()))
        return [e for e in eps if endpoint_problem(e) is None]

    async def register(self) -> RegisterResponse:
        """Prove the key (and, for a new key, the token) to the coordinator.

        A key the coordinator knows registers with its signature alone, so ``auth_token`` may
        be empty then; after a successful registration the client forgets the token (a known
        key never needs it again).

        Returns:
            The mesh IP, name and session.

        Raises:
            ApiRequestError: refused (401 ``token_required`` for a new key without the token,
                wrong token 401, name reserved for another key 409, ...).
            CoordinatorUnreachable: no answer.
        """
        ch = await self._call("POST", "/api/v1/register/challenge", ChallengeResponse, token="")
        nonce = base64.b64decode(ch.nonce)
        public_key = self.identity.public_openssh
        message = registration_message(
            nonce, self.name, public_key, token_binding(self.auth_token, nonce)
        )
        req = RegisterRequest(
            name=self.name,
            public_key=public_key,
            nonce=ch.nonce,
            signature=base64.b64encode(self.identity.sign(message)).decode("ascii"),
            endpoints=await self._current_endpoints(),
            rename=self.rename,
            version=__version__,
        )
        resp = await self._call(
            "POST", "/api/v1/register", RegisterResponse, token=self.auth_token, body=req
        )
        self.auth_token = ""
        self.registration = resp
        self.learn_coordinators(resp.coordinators)
        self.session_token = resp.session_token
        add_secret(resp.session_token)
        self.name = resp.name
        self.heartbeat_interval = resp.heartbeat_interval
        for cb in self.on_register:
            cb(resp)
        return resp

    async def heartbeat(self) -> HeartbeatAck:
        status = await _maybe_await(self._status()) if self._status else PeerStatus()
        hb = Heartbeat(
            endpoints=await self._current_endpoints(),
            transports=status.transports,
            rtt_ms=status.rtt_ms,
            reasons=status.reasons,
            counters=status.counters,
            allow_exit_traffic=status.allow_exit_traffic,
            aliases=status.aliases,
            transport_order=status.transport_order,
            location=status.location,
            concentrator=status.concentrator,
        )
        started = time.monotonic()
        # with somewhere else to go, a coordinator that does not answer soon counts as gone
        timeout = FAILOVER_TIMEOUT if len(self.coordinators) > 1 else None
        ack = await self._call("POST", "/api/v1/heartbeat", HeartbeatAck, body=hb, timeout=timeout)
        took = time.monotonic() - started
        self.heartbeat_seconds = (self.heartbeat_seconds[0] + 1, self.heartbeat_seconds[1] + took)
        i = bisect.bisect_left(HEARTBEAT_BUCKETS, took)
        if i < len(HEARTBEAT_BUCKETS):
            self.heartbeat_buckets[i] += 1
        self.heartbeat_last_seconds = took
        self.last_ack = ack
        if ack.interval > 0:
            self.heartbeat_interval = ack.interval  # the coordinator decides the pace
        return ack

    async def list_peers(self) -> PeersResponse:
        return await self._call("GET", "/api/v1/peers", PeersResponse)

    async def get_peer(self, name: str) -> PeerInfo:
        return await self._call("GET", f"/api/v1/peers/{name}", PeerInfo)

    async def dns(self) -> DnsResponse:
        return await self._call("GET", "/api/v1/dns", DnsResponse)

    async def rendezvous(self, to: str, endpoints: list[str] | None = None) -> RendezvousAck:
        """Ask the coordinator to tell ``to`` to punch towards us (our endpoints by default)."""
        eps = [e for e in endpoints or [] if endpoint_problem(e) is None]
        req = RendezvousRequest(to=to, endpoints=eps)
        return await self._call("POST", "/api/v1/rendezvous", RendezvousAck, body=req)

    async def leave(self) -> None:
        """Delete this node from the mesh (frees its IP; the name stays reserved for its key)."""
        await self._call("DELETE", f"/api/v1/peers/{self.name}", None)

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """Call any coordinator route with this peer's session; the decoded JSON answer.

        Raises:
            ApiRequestError: refused (403 when the route is for admins, ...).
            CoordinatorUnreachable: no answer.
        """
        return await self._call(method, path, Any, body=body)

    # --- change events ---------------------------------------------------------------------

    def add_callback(self, cb: Callable[[PeerChange], None]) -> None:
        """Call ``cb`` with every change, synchronously, as it is applied."""
        self._callbacks.append(cb)

    async def changes(self) -> AsyncIterator[PeerChange]:
        """Every change from now on; starts with a PeerAdded for each peer already known."""
        q: asyncio.Queue[PeerChange] = asyncio.Queue()
        from tunnelmesh.control.peertable import PeerAdded

        for p in list(self.table.peers.values()):
            q.put_nowait(PeerAdded(p))
        self._queues.append(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._queues.remove(q)

    def _emit(self, changes: list[PeerChange]) -> None:
        for ch in changes:
            if isinstance(ch, SelfRemoved):
                self._removed = True
            elif isinstance(ch, FilterRulesChanged):
                self._write_filter_cache()
            for cb in self._callbacks:
                cb(ch)
            for q in self._queues:
                q.put_nowait(ch)
        if changes:
            self._cache_dirty = True

    # --- the daemon loops ------------------------------------------------------------------

    async def run(self) -> None:
        """Heartbeat and follow the push channel until :meth:`aclose` or removal.

        Raises:
            ApiRequestError: the coordinator refuses to take us back (e.g. wrong token).
            TunnelmeshError: this node was removed from the mesh.
        """
        if not self.session_token:
            await self.register_with_retry()
        self._loops_done.clear()
        tasks = [
            asyncio.create_task(self._heartbeat_loop(), name="tm-heartbeat"),
            asyncio.create_task(self._push_loop(), name="tm-push"),
            asyncio.create_task(self._stopped.wait(), name="tm-stop"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t.exception() is not None and not self._stopped.is_set():
                    raise t.exception()  # type: ignore[misc]
        finally:
            await _cancel_and_wait(tasks)
            self._loops_done.set()
            self._write_cache(force=True)

    async def register_with_retry(self, attempts: int = 0) -> RegisterResponse:
        """Register, retrying while the coordinator is unreachable (``attempts`` 0 = forever)."""
        delay = 1.0
        n = 0
        while True:
            n += 1
            try:
                return await self.register()
            except CoordinatorUnreachable as exc:
                if attempts and n >= attempts:
                    raise
                if self.move_to_next_coordinator():
                    continue
                log.warning("%s; retrying in %.0fs", exc, delay)
            except ApiRequestError as exc:
                if exc.status not in (429, 503):
                    raise
                log.warning("%s; retrying in %.0fs", exc, delay)
            await asyncio.sleep(delay * (0.8 + 0.4 * random.random()))
            delay = min(delay * 2, 30.0)

    async def _heartbeat_loop(self) -> None:
        silent = 0  # rounds in a row no coordinator answered
        while True:
            try:
                await self.heartbeat()
                wait = self.heartbeat_interval
            except ApiRequestError as exc:
                if exc.status != 401:
                    log.warning("heartbeat refused: %s", exc)
                    wait = self.heartbeat_interval
                elif self._removed:
                    raise TunnelmeshError(f"{self.name} was removed from the mesh") from None
                else:
                    log.info("session unknown to the coordinator; registering again")
                    await self.register_with_retry()
                    continue
            except CoordinatorUnreachable as exc:
                if self.move_to_next_coordinator():
                    wait = 0.2  # another coordinator: try it at once
                else:
                    silent += 1
                    wait = unreachable_wait(silent, self.heartbeat_interval)
                    log.log(
                        logging.WARNING if silent == 1 else logging.DEBUG,
                        "%s (keeping the %d known peers; trying again in %.0fs)",
                        exc,
                        len(self.table.peers),
                        wait,
                    )
            else:
                self._unanswered = 0
                if silent:
                    log.info("coordinator %s answers again", self.server)
                    silent = 0
            self._write_cache()
            # asyncio.timeout, not wait_for: on Python 3.11 a wake-up in the same loop turn as
            # the stop's cancellation made wait_for swallow the cancellation (see netmon).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait * (0.9 + 0.2 * random.random())):
                    await self._wake.wait()
            self._wake.clear()

    async def _push_loop(self) -> None:
        delay = 0.5
        while True:
            self._server_moved.clear()
            try:
                async with self.http.ws_connect(
                    self.server + "/api/v1/push",
                    headers=self._headers(self.session_token),
                    server_hostname=COORDINATOR_NAME,
                    heartbeat=30.0,
                    max_msg_size=0,
                ) as ws:
                    self.reachable = True
                    delay = 0.5
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        self._handle_frame(msg.data)
                        if self._removed:
                            raise TunnelmeshError(f"{self.name} was removed from the mesh")
                        if self.table.needs_resync:
                            # Deltas were lost: a new connection starts with a new snapshot.
                            log.info("push channel missed changes; reconnecting for a snapshot")
                            self.resyncs += 1
                            break
                    if self.table.needs_resync:
                        continue
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status == 401 and self._removed:
                    raise TunnelmeshError(f"{self.name} was removed from the mesh") from None
                log.debug("push channel refused: %s", exc)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.debug("push channel lost: %s", exc)
            except AssertionError:
                # aiohttp's ws_connect asserts the connection still has a transport after the
                # 101 answer; a coordinator that closes the channel at once (it is stopping)
                # breaks that. The channel is lost like any other: reconnect.
                log.debug("push channel closed during its handshake")
            if self._stopped.is_set():
                return
            # Is the coordinator gone? The heartbeat finds out now and moves to another one.
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay * (0.8 + 0.4 * random.random())):
                    await self._server_moved.wait()  # moved: connect there at once
            delay = 0.5 if self._server_moved.is_set() else min(delay * 2, 10.0)

    def _handle_frame(self, data: str) -> None:
        for line in data.split("\n"):
            if not line:
                continue
            try:
                msg = decode_push(line)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                kind = _push_type(line)
                if kind is not None:
                    log.debug("ignoring a push message of a newer coordinator: %s", kind)
                else:
                    log.warning("ignoring a malformed push message: %s", exc)
                continue
            if isinstance(msg, Snapshot):
                self.learn_coordinators(msg.coordinators)
            elif isinstance(msg, Coordinators):
                self.learn_coordinators(msg.urls)
            self._emit(self.table.apply(msg))

    # --- the parts written in other modules (functions bound here as methods: found on the
    # class as before, at the cost of a method written here) ---------------------------------

    # the coordinators it knows, the caches beside its context (clientcache.py)
    learn_coordinators = clientcache.learn_coordinators
    move_to_next_coordinator = clientcache.move_to_next_coordinator
    _coordinators_cache = property(clientcache._coordinators_cache)
    _load_coordinators_cache = clientcache._load_coordinators_cache
    _write_coordinators_cache = clientcache._write_coordinators_cache
    _load_cache = clientcache._load_cache
    _filter_cache = property(clientcache._filter_cache)
    _load_filter_cache = clientcache._load_filter_cache
    _write_filter_cache = clientcache._write_filter_cache
    _write_cache = clientcache._write_cache
