"""Coordinator: who joins, under which name (functions bound as methods of
:class:`~tunnelmesh.coordinator.core.Coordinator`).

Challenges and the failure allowance, a registration checked completely before anything
changes, approval of waiting keys, the names reserved for a key (at most
:data:`MAX_NAMES_PER_KEY`; ``peers release``), and the join token's rotation.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from typing import TYPE_CHECKING

import msgspec

from tunnelmesh import __version__
from tunnelmesh.control.messages import Counters, RegisterRequest, RegisterResponse
from tunnelmesh.coordinator.alloc import AllocationError, check_name, name_candidates
from tunnelmesh.coordinator.auth import ChallengesExhausted, registration_message, token_binding
from tunnelmesh.coordinator.failures import ApiFailure, _b64, _valid_endpoints, store_unavailable
from tunnelmesh.coordinator.limits import source_key
from tunnelmesh.coordinator.store import NameReserved, PeerRecord, StoreConflict
from tunnelmesh.errors import StateStoreError
from tunnelmesh.identity import parse_public_key, peer_id_of, verify_signature
from tunnelmesh.logs import add_secret

if TYPE_CHECKING:
    from tunnelmesh.coordinator.core import Coordinator

log = logging.getLogger("tunnelmesh.coordinator.core")
"""Coordinator's log: every part of it logs under the name it always had."""

MAX_NAMES_PER_KEY = 4
"""Names reserved for one key: its current name and the last three it renamed away from."""
_FIRST_ADMIN_KEY = "first_admin"
_TOKEN_KEY = "auth_token"
"""Meta keys of the state store: the first admin's peer ID, the rotated join token."""


def session_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def issue_challenge(self: Coordinator, source: str) -> bytes:
    """A registration nonce (refused while ``source`` is over its failure allowance)."""
    now = self.clock()
    wait = self.limiter.retry_after(source, now)
    if wait > 0:
        raise ApiFailure(429, "rate_limited", "too many failed attempts; try later", wait)
    try:
        return self.challenges.issue(now, source_key(source))
    except ChallengesExhausted as exc:
        if not exc.mine:
            raise ApiFailure(503, "busy", str(exc), 5.0) from None
        # More challenges than it redeems: charged like a failed attempt.
        self.limiter.charge(source, now)
        raise ApiFailure(429, "rate_limited", str(exc), max(1.0, exc.retry_after)) from None


def refuse(
    self: Coordinator, source: str, failure: ApiFailure, *, registration: bool = True
) -> ApiFailure:
    """Charge a refused attempt to ``source`` and return the failure to raise.

    ``registration=False``: a request refused for its credential or role (401, 403) on
    another route; counted in ``denied_by``, not as a refused registration.
    """
    self.limiter.charge(source, self.clock())
    if not registration:
        self.denied_by[failure.error] = self.denied_by.get(failure.error, 0) + 1
        return failure
    self.stats["refused"] += 1
    self.refused_by[failure.error] = self.refused_by.get(failure.error, 0) + 1
    if failure.error == "bad_endpoint":
        self.stats["bad_endpoints"] += 1
    return failure


def check_allowance(self: Coordinator, source: str) -> None:
    wait = self.limiter.retry_after(source, self.clock())
    if wait > 0:
        raise ApiFailure(429, "rate_limited", "too many failed attempts; try later", wait)


async def register(
    self: Coordinator, req: RegisterRequest, token: str, source: str
) -> RegisterResponse:
    """Check and apply one registration.

    A key that is registered (a live peer) proves itself with its signature alone; only a
    new key needs the mesh join token (``token``, empty when none was sent).

    Raises:
        ApiFailure: 401 bad token/challenge/signature, 400 malformed, 403 reserved name,
            409 name reserved for another key (when ``rename`` is false), 429 over the
            allowance, when the key registers too often (REGISTER_BURST, then one every
            10 s) or its source joins new keys too often (``joins_burst``, then
            ``joins_per_minute``), 503 store.
    """
    self.check_allowance(source)
    now = self.clock()
    try:
        try:
            pub = parse_public_key(req.public_key)
        except ValueError as exc:
            raise ApiFailure(400, "malformed", str(exc)) from None
        known = await self._knows(peer_id_of(pub.public_bytes_raw()))
        if not known and not self.token_ok(token):
            if not token:
                raise ApiFailure(
                    401,
                    "token_required",
                    "this key has not joined this mesh: its first registration needs the "
                    "mesh join token",
                )
            raise ApiFailure(401, "bad_token", "the mesh auth token is wrong")
        nonce = _b64(req.nonce, "nonce")
        signature = _b64(req.signature, "signature")
        endpoints = _valid_endpoints(req.endpoints)
        if len(req.version) > 64:
            raise ApiFailure(400, "malformed", "version is too long")
        if not self.challenges.redeem(nonce, now):
            raise ApiFailure(
                401,
                "bad_challenge",
                "unknown or expired challenge; ask /api/v1/register/challenge again",
            )
        public_key = " ".join(req.public_key.split()[:2])
        message = registration_message(nonce, req.name, req.public_key, token_binding(token, nonce))
        if not verify_signature(pub, signature, message):
            raise ApiFailure(401, "bad_signature", "the signature does not match the public key")
        reason = check_name(req.name)
        if reason is not None:
            status = 403 if "reserved" in reason else 400
            raise ApiFailure(status, "bad_name", reason)
    except ApiFailure as failure:
        raise self.refuse(source, failure) from None
    wait = self.register_pace.take(peer_id_of(pub.public_bytes_raw()), now)
    if wait == 0 and not known:
        wait = self.join_pace.take(source_key(source), now)
    if wait > 0:
        self.stats["registrations_limited"] += 1
        raise ApiFailure(429, "rate_limited", "too many registrations; try later", wait)

    async with self._lock:
        return await self._apply_registration(req, public_key, endpoints, now)


async def _apply_registration(
    self: Coordinator, req: RegisterRequest, public_key: str, endpoints: list[str], now: float
) -> RegisterResponse:
    raw = parse_public_key(public_key).public_bytes_raw()
    peer_id = peer_id_of(raw)
    old = self.peers.get(peer_id)

    # Candidates in order; the store takes the first one nobody else holds, in the same
    # transaction that writes the peer, so coordinators sharing a database never hand out
    # one name or address twice (memory can be stale; the database is not).
    names = name_candidates(req.name, rename=req.rename)
    keep_ip = old.mesh_ip if old is not None and self.alloc.contains(old.mesh_ip) else ""
    first_admin = self._first_admin
    if first_admin is None and not self.peers and not self._admin_entries:
        first_admin = peer_id  # the first key is admin only when admin_peers names none
    is_admin = self._admin_key(peer_id, public_key, first_admin)
    # approve_new_peers: a new key waits for an admin (an admin key never waits: someone
    # must be able to approve; nor does this coordinator's own join_mesh key, which the
    # operator configured); a known key keeps its state.
    pending = (
        old.pending if old else self.config.approve_new_peers and not is_admin
    ) and public_key not in self.coordinator_keys
    session = secrets.token_urlsafe(32)
    rec = PeerRecord(
        peer_id=peer_id,
        public_key=public_key,
        name=req.name,
        mesh_ip=keep_ip,
        is_admin=is_admin,
        is_coordinator=public_key in self.coordinator_keys,
        session_hash=session_hash(session),
        created_at=old.created_at if old else now,
        last_seen=now,
        endpoints=endpoints,
        transports=old.transports if old else {},
        rtt_ms=old.rtt_ms if old else {},
        reasons=old.reasons if old else {},
        counters=old.counters if old else Counters(),
        version=req.version,
        pending=pending,
    )
    try:
        if first_admin is not None and first_admin != self._first_admin:
            await self.store.put_meta_if_absent(_FIRST_ADMIN_KEY, first_admin.encode("ascii"))
        rec = await self.store.claim_peer(rec, names=names, ips=self.alloc.candidates(raw))
    except NameReserved as exc:
        gone = "" if exc.owner in self.peers else " (that peer left; the name stays its own)"
        raise ApiFailure(
            409,
            "name_taken",
            f"name {req.name!r} is reserved for another key, peer {exc.owner}{gone}; choose "
            f"another name, or an admin frees it with: tunnelmesh peers release {req.name}",
        ) from None
    except AllocationError as exc:
        raise ApiFailure(507, "mesh_full", f"mesh range {self.alloc.network} is full") from exc
    except StoreConflict as exc:
        raise ApiFailure(409, "conflict", str(exc)) from None
    except StateStoreError as exc:
        log.error("registration of %s not saved: %s", req.name, exc)
        raise store_unavailable(exc) from None
    name, mesh_ip = rec.name, rec.mesh_ip
    if old is not None and old.mesh_ip != mesh_ip and self.alloc.contains(old.mesh_ip):
        self.alloc.release(old.mesh_ip)
    self.alloc.mark_used(mesh_ip)
    self._first_admin = first_admin
    self._names[name] = peer_id
    await self._forget_old_names(peer_id, name)
    if old is not None:
        self._unindex(old)
    self._index(rec)
    self._dirty.discard(peer_id)
    self.liveness.seen(peer_id, now)
    self.stats["registrations"] += 1
    log.info(
        "%s %s (%s) at %s%s%s",
        "re-registered" if old else "registered",
        name,
        peer_id,
        mesh_ip,
        " [admin]" if is_admin else "",
        " [waits for approval: tunnelmesh peers approve]" if pending else "",
    )
    self._announce(rec)
    return RegisterResponse(
        peer_id=peer_id,
        name=name,
        mesh_ip=mesh_ip,
        mesh_cidr=str(self.alloc.network),
        domain=self.domain,
        is_admin=is_admin,
        session_token=session,
        heartbeat_interval=float(self.config.heartbeat_interval),
        server_version=__version__,
        renamed=name != req.name,
        coordinator_ips=self.coordinator_ips(),
        coordinators=self.coordinator_urls(),
        stun_port=self.stun_port,
        pending=pending,
    )


async def approve(self: Coordinator, rec: PeerRecord) -> bool:
    """Admit a key that waits for approval; False when it was not waiting.

    Raises:
        ApiFailure: 503 the store cannot save it.
    """
    async with self._lock:
        if not rec.pending or self.peers.get(rec.peer_id) is not rec:
            return False
        approved = msgspec.structs.replace(rec, pending=False)
        try:
            await self.store.put_peer(approved)
        except StateStoreError as exc:
            raise store_unavailable(exc) from None
        self._unindex(rec)
        self._index(approved)
        log.info("approved %s (%s)", rec.name, rec.peer_id)
        self._announce(approved)
        return True


async def _forget_old_names(self: Coordinator, peer_id: str, current: str) -> None:
    """Keep at most MAX_NAMES_PER_KEY names reserved for ``peer_id``: a key that renames
    itself again and again must not grow the names table without bound. The oldest of its
    former names go (its own choice to leave them; another key's names are never touched)."""
    held = [n for n, pid in self._names.items() if pid == peer_id and n != current]
    for n in held[: max(0, len(held) - (MAX_NAMES_PER_KEY - 1))]:
        try:
            await self.store.release_name(n)
        except StateStoreError as exc:
            log.warning("cannot release the former name %s of %s: %s", n, peer_id, exc)
            return
        del self._names[n]


def resolve_peer(self: Coordinator, who: str, *, known_only: bool = True) -> str:
    """The peer ID for ``who``: a peer ID, or the name of a registered peer.

    With ``known_only`` a peer ID must belong to a registered peer or hold a reserved name.

    Raises:
        ApiFailure: 404 no such peer.
    """
    rec = self.peer_by_name(who)
    if rec is not None:
        return rec.peer_id
    is_id = len(who) == 16 and all(c in "0123456789abcdef" for c in who)
    if is_id and (not known_only or who in self.peers or who in self._names.values()):
        return who
    raise ApiFailure(404, "no_such_peer", f"no peer named or with the ID {who!r}")


async def release_name(self: Coordinator, name: str) -> str:
    """Free a name reserved for a key that left (``tunnelmesh peers release``).

    Returns:
        The peer ID the name was reserved for.

    Raises:
        ApiFailure: 404 not reserved, 409 a live peer holds it (delete the peer first).
    """
    async with self._lock:
        owner = self._names.get(name)
        if owner is None:
            raise ApiFailure(404, "not_reserved", f"no key holds the name {name!r}")
        if self.clients.by_name(name) is not None:
            raise ApiFailure(
                409,
                "name_in_use",
                f"client {name!r} holds that name; remove it first (tunnelmesh wg remove)",
            )
        if self._by_name.get(name) is not None:
            raise ApiFailure(
                409,
                "name_in_use",
                f"peer {name!r} is registered; delete it first (tunnelmesh peers delete)",
            )
        try:
            await self.store.release_name(name)
        except StateStoreError as exc:
            raise store_unavailable(exc) from None
        del self._names[name]
        log.info("released the name %s (was reserved for %s)", name, owner)
        return owner


async def rotate_token(self: Coordinator, new: str | None = None) -> str:
    """Replace the mesh join token (kept in the state store); joined peers are untouched.

    Returns:
        The new token.
    """
    token = new or secrets.token_hex(32)
    if len(token) < 16:
        raise ApiFailure(400, "malformed", "a token has at least 16 characters")
    try:
        await self.store.put_meta(_TOKEN_KEY, self.sealer.seal(token.encode(), _TOKEN_KEY))
    except StateStoreError as exc:
        raise store_unavailable(exc) from None
    add_secret(token)  # never in a log line
    self._token = token
    log.info("the mesh join token was rotated")
    return token
