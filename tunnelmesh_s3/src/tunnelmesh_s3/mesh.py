"""The S3 service on a coordinator: per-peer credentials, its HTTPS listener, its API routes.

When ``s3: {enabled: true}`` is in ``server.yaml``, :func:`install` (called from the
``tunnelmesh_register_coordinator_routes`` hook) adds the routes below to the coordinator's API
and a :class:`MeshS3Service` that lives as long as the coordinator (``app.cleanup_ctx``).

Where it listens: ``s3.listen`` when set (``127.0.0.1:0`` in tests); otherwise the coordinator's
own mesh IP (``join_mesh``) on ``s3.port``. That IP is known once the coordinator's peer has
registered, and the socket is bound with ``IP_FREEBIND`` so the service is ready before the node
daemon has put the address on the TUN device. TLS uses a certificate from the mesh CA naming
the mesh IP, the listen address, ``this.<domain>`` and the coordinator's ``tls_names``.

Credentials: each peer asks for its own with its session token (``tunnelmesh s3 credentials``).
The secret is random (never derived from anything public), kept with the grants in the
coordinator's state store (:mod:`tunnelmesh_s3.authstore`: shared by every coordinator of a
database, the secret sealed with ``state.encryption_key_file``), and bound to the peer's ID: the principal is the peer's
current name with its peer ID, admins are the coordinator's admin peers, and the key stops
working when the peer is deleted. SigV4 signatures are compared in constant time.

Identity is the key: bucket owners and grants are stored as peer IDs (``group:NAME`` for the
coordinator's groups, ``*`` for every peer), so a peer that registers a released name gets
nothing of what the name's old key owned or was granted. The admin API and the CLI take and
show names; they are translated at the moment of the grant. A state file from before (owners
and grants by name) is migrated at start: each name that a registered peer holds becomes its
peer ID; a name nobody holds is dropped from grants (and an owner nobody holds makes the bucket
admin-only).

Routes (JSON; errors as the coordinator's ``{"error", "message", "status"}``)::

    GET    /api/v1/s3                     peer            {endpoint, region, listening}
    POST   /api/v1/s3/credentials         peer            {rotate?} -> the caller's credential
    DELETE /api/v1/s3/credentials/{name}  self-or-admin   revoke a peer's keys
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web
from tunnelmesh import Policy, route_policy
from tunnelmesh.abc import CoordinatorView, Storage
from tunnelmesh.control.urls import join_hostport, split_hostport
from tunnelmesh.coordinator import ApiFailure, PeerRecord
from tunnelmesh.coordinator.api import authenticated_peer
from tunnelmesh.coordinator.meshlisten import (
    freebind_socket,
    load_cert_pem,
    serve_with_app,
    start_tls_site,
    stop_site,
)
from tunnelmesh.errors import ConfigError
from tunnelmesh.logs import add_secret

from tunnelmesh_s3.app import S3Config, build_app
from tunnelmesh_s3.auth import (
    EVERYONE,
    GROUP_PREFIX,
    FileAuthorizer,
    IssuedCredential,
    Principal,
    _State,
)
from tunnelmesh_s3.authstore import StoredState, follow
from tunnelmesh_s3.config import S3Section
from tunnelmesh_s3.dav.mesh import DavListener
from tunnelmesh_s3.filesystem import FilesystemStorage
from tunnelmesh_s3.nfs.mesh import NfsListener
from tunnelmesh_s3.shareaccess import ShareAccess, peer_callers

__all__ = [
    "CoordinatorAuthorizer",
    "CredentialRequest",
    "MeshCredential",
    "MeshS3Info",
    "MeshS3Service",
    "install",
]

log = logging.getLogger(__name__)


class MeshCredential(msgspec.Struct, kw_only=True):
    """A peer's S3 credential, as the coordinator hands it out."""

    access_key: str
    secret_key: str
    principal: str
    admin: bool = False
    created: float = 0.0
    endpoint: str = ""
    region: str = "us-east-1"

    def __post_init__(self) -> None:
        add_secret(self.secret_key)  # never logged (tunnelmesh.logs)


class MeshS3Info(msgspec.Struct, kw_only=True):
    endpoint: str = ""
    region: str = "us-east-1"
    listening: bool = False
    webdav: str = ""  # http://MESH-IP:PORT of the shares over WebDAV, "" when off
    nfs: str = ""  # MESH-IP:PORT of the shares over NFSv3 (MOUNT on the same port), "" when off


class CredentialRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    rotate: bool = False


class CoordinatorAuthorizer(FileAuthorizer):
    """A :class:`FileAuthorizer` whose credentials belong to the coordinator's peers."""

    issues_by_name = False

    def __init__(self, path: str | Path, coordinator: CoordinatorView) -> None:
        super().__init__(path)
        self.coordinator = coordinator
        self._legacy = Path(path)  # an auth.json of an older release, imported by load()
        self._state = _State()
        self._stored = StoredState(coordinator)

    async def load(self) -> None:
        """Read credentials, grants and shares from the coordinator's state store."""
        async with self._lock:
            self._state = await self._stored.load(self._legacy)

    async def _save(self) -> None:
        await self._stored.save(self._state)

    async def apply_change(self, collection: str, key: str) -> None:
        """Take one document another coordinator changed; ("", "") reloads everything."""
        async with self._lock:
            if collection:
                await self._stored.reload_item(self._state, collection, key)
            else:
                self._state = await self._stored.load(self._legacy)

    def lookup(self, access_key: str) -> tuple[str, Principal] | None:
        cred = self._state.credentials.get(access_key)
        if cred is None or not cred.peer_id:
            return None
        rec = self.coordinator.peers.get(cred.peer_id)
        if rec is None or cred.created < rec.created_at:
            return None  # the peer was deleted (and maybe joined again): its key died with it
        return cred.secret_key, Principal(rec.name, admin=rec.is_admin, peer_id=rec.peer_id)

    # --- grants by key ---

    def _group_exists(self, entry: str) -> bool:
        groups = getattr(self.coordinator, "groups", None)
        name = entry[len(GROUP_PREFIX) :]
        return groups is not None and bool(name) and groups.exists(name)

    def _peer_id_of(self, entry: str) -> str | None:
        """The peer ID a grantee names: a registered peer's ID, or a peer name."""
        if entry in self.coordinator.peers:
            return entry
        rec = self.coordinator.peer_by_name(entry)
        return rec.peer_id if rec is not None else None

    def unknown_grantees(self, names: list[str]) -> list[str]:
        return [
            n
            for n in names
            if n != EVERYONE
            and not (n.startswith(GROUP_PREFIX) and self._group_exists(n))
            and self._peer_id_of(n) is None
        ]

    def resolve_grantees(self, names: list[str]) -> list[str]:
        out: list[str] = []
        for n in names:
            key = n if n == EVERYONE or n.startswith(GROUP_PREFIX) else self._peer_id_of(n)
            if key is not None and key not in out:
                out.append(key)
        return out

    def display(self, keys: list[str]) -> list[str]:
        peers = self.coordinator.peers
        return [peers[k].name if k in peers else k for k in keys]

    def groups_of(self, principal: Principal) -> list[str]:
        groups = getattr(self.coordinator, "groups", None)
        if groups is None or not principal.peer_id:
            return []
        return list(groups.of(principal.peer_id))

    async def migrate_to_peer_ids(self) -> int:
        """Turn owners and grants stored by name (before identity was the key) into peer IDs;
        returns how many entries changed. Runs once (the state file records it)."""
        async with self._lock:
            state = self._state
            if state.keyed_by == "peer_id":
                return 0
            changed = 0

            def key_of(entry: str, *, grant: bool) -> str | None:
                nonlocal changed
                if entry == EVERYONE or entry in self.coordinator.peers:
                    return entry
                if grant and entry.startswith(GROUP_PREFIX):
                    return entry
                rec = self.coordinator.peer_by_name(entry)
                changed += 1
                if rec is None:
                    log.warning("s3: %r names no registered peer; dropped from the grants", entry)
                    return None
                return rec.peer_id

            for bucket, acl in state.acls.items():
                owner = key_of(acl.owner, grant=False) if acl.owner else ""
                if owner is None:
                    log.warning(
                        "s3: bucket %s: its owner %r is gone: admin-only", bucket, acl.owner
                    )
                acl.owner = owner or ""
                acl.read = [k for e in acl.read if (k := key_of(e, grant=True)) is not None]
                acl.write = [k for e in acl.write if (k := key_of(e, grant=True)) is not None]
            for share in state.shares.values():
                share.owner = key_of(share.owner, grant=False) or ""
            state.keyed_by = "peer_id"
            await self._save()
        if changed:
            log.info("s3: %d owners and grants migrated from names to peer IDs", changed)
        return changed

    def credentials_of(self, peer_id: str) -> list[IssuedCredential]:
        return [c for c in self._state.credentials.values() if c.peer_id == peer_id]

    async def credential_for(self, rec: PeerRecord, *, rotate: bool = False) -> IssuedCredential:
        """The peer's credential: the one it has, or a new one (``rotate`` replaces it)."""
        if not rotate:
            existing = [c for c in self.credentials_of(rec.peer_id) if c.created >= rec.created_at]
            if existing:
                return max(existing, key=lambda c: c.created)
        await self.revoke_peer(rec.peer_id)
        return await self.issue(rec.name, peer_id=rec.peer_id)

    async def revoke_peer(self, peer_id: str) -> int:
        """Remove every credential of a peer; how many there were."""
        async with self._lock:
            keys = [k for k, c in self._state.credentials.items() if c.peer_id == peer_id]
            for k in keys:
                del self._state.credentials[k]
            if keys:
                await self._save()
        return len(keys)

    async def forget_deleted_peers(self) -> int:
        """Drop the credentials of peers that are no longer registered (and unbound ones)."""
        async with self._lock:
            peers = self.coordinator.peers
            gone = [
                k
                for k, c in self._state.credentials.items()
                if c.peer_id not in peers or c.created < peers[c.peer_id].created_at
            ]
            for k in gone:
                del self._state.credentials[k]
            if gone:
                await self._save()
        return len(gone)


class MeshS3Service:
    """The S3 service of one coordinator: storage, authorizer and an HTTPS listener.

    Args:
        coordinator: the (loaded) coordinator.
        section: the ``s3:`` config section.
    """

    def __init__(self, coordinator: CoordinatorView, section: S3Section) -> None:
        self.coordinator = coordinator
        self.section = section
        self.root = Path(section.data_dir or coordinator.data_dir / "s3").expanduser()
        self.storage: Storage | None = None
        self.authorizer = CoordinatorAuthorizer(self.root / "auth.json", coordinator)
        self.host = ""
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._ssl: ssl.SSLContext | None = None
        self._task: asyncio.Task[None] | None = None
        self._nfs_task: asyncio.Task[None] | None = None
        self._dav_task: asyncio.Task[None] | None = None
        self._follow_task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()
        self.shares: ShareAccess | None = None
        """The shares as file systems (WebDAV and NFS serve from it), once started."""
        self.nfs: NfsListener | None = None
        self.dav: DavListener | None = None

    @property
    def endpoint(self) -> str:
        """The URL peers use: the bound address, or the mesh IP behind a wildcard; "" before."""
        if not self.listening.is_set():
            return ""
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = self.coordinator.own_mesh_ip() or ""
            if not host:
                return ""
        return f"https://{join_hostport(host, self.port)}"

    def info(self) -> MeshS3Info:
        return MeshS3Info(
            endpoint=self.endpoint,
            region=self.section.region,
            listening=self.listening.is_set(),
            webdav=self.dav.url if self.dav is not None else "",
            nfs=self.nfs.address if self.nfs is not None else "",
        )

    def _storage_class(self) -> type[Storage]:
        pm = self.coordinator.pm
        if pm is None:
            return FilesystemStorage
        backends = pm.build_registry("storage").storage
        try:
            return backends[self.section.storage]  # type: ignore[no-any-return]
        except KeyError:
            known = ", ".join(sorted(backends)) or "none"
            raise ConfigError(
                f"no storage backend named {self.section.storage!r} (known: {known})",
                key="s3.storage",
            ) from None

    def _issue_cert(self) -> tuple[bytes, bytes]:
        coord = self.coordinator
        assert coord.ca is not None
        domain = coord.domain
        names = ["localhost", socket.gethostname(), *coord.config.tls_names]
        names += [f"this.{domain}", "this.tunnelmesh", "this.tm"]
        ips = ["127.0.0.1"]
        if self.host not in ("0.0.0.0", "::", ""):
            ips.append(self.host)
        own = coord.own_mesh_ip()
        if own:
            ips.append(own)
        cert = coord.ca.issue_server_cert(names, ips)
        return cert.cert_pem, cert.key_pem

    async def start(self) -> None:
        """Open the storage and start listening (at once, or when the mesh IP is known).

        Raises:
            ConfigError: the configured ``s3.listen`` cannot be bound, or no such backend.
            StorageError: the storage cannot be opened.
        """
        storage = self._storage_class()(self.root / "objects")  # type: ignore[call-arg]
        await storage.start()
        self.storage = storage
        await self.authorizer.load()
        self._follow_task = asyncio.get_running_loop().create_task(
            follow(self.coordinator, self.authorizer.apply_change)
        )
        removed = await self.authorizer.forget_deleted_peers()
        if removed:
            log.info("s3: dropped %d credentials of deleted peers", removed)
        await self.authorizer.migrate_to_peer_ids()
        coord = self.coordinator
        self.shares = ShareAccess(
            storage,
            self.authorizer,
            peer_callers(lambda: coord.peers, refuse=coord.own_mesh_ip),
        )
        config = S3Config(region=self.section.region, domains=())
        self._runner = web.AppRunner(
            build_app(storage, self.authorizer, config), access_log=None, handle_signals=False
        )
        await self._runner.setup()
        self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.section.listen:
            host, port = split_hostport(self.section.listen, self.section.port)
            await self._listen(host, port, freebind=False)
            if self.coordinator.config.join_mesh is not None:
                self._task = asyncio.get_running_loop().create_task(self._add_mesh_ip_to_cert())
        else:
            self._task = asyncio.get_running_loop().create_task(self._listen_on_mesh_ip())
        if self.section.nfs_port or self.section.nfs_listen:
            self.nfs = NfsListener(self.shares, self.root / "nfs", freebind_socket)
            if self.section.nfs_listen:
                await self.nfs.start(self.section.nfs_listen, self.section.nfs_port)
            elif self.coordinator.config.join_mesh is not None:
                self._nfs_task = asyncio.get_running_loop().create_task(self._nfs_on_mesh_ip())
        if self.section.webdav_port or self.section.webdav_listen:
            # the mesh's own domain and the fixed suffixes every resolver answers
            # (tunnelmesh.dns.backend.DEFAULT_DOMAINS, not part of the public API)
            domains = (coord.domain, "tunnelmesh", "tm", "mesh")
            self.dav = DavListener(self.shares, freebind_socket, domains)
            if self.section.webdav_listen:
                await self.dav.start(self.section.webdav_listen, self.section.webdav_port)
            elif self.coordinator.config.join_mesh is not None:
                self._dav_task = asyncio.get_running_loop().create_task(self._dav_on_mesh_ip())

    async def _dav_on_mesh_ip(self) -> None:
        assert self.dav is not None
        ip = await self.coordinator.wait_own_mesh_ip()
        try:
            await self.dav.start(ip, self.section.webdav_port)
        except ConfigError as exc:
            log.error("%s", exc)

    async def _nfs_on_mesh_ip(self) -> None:
        assert self.nfs is not None
        ip = await self.coordinator.wait_own_mesh_ip()
        try:
            await self.nfs.start(ip, self.section.nfs_port)
        except ConfigError as exc:
            log.error("%s", exc)

    async def _listen(self, host: str, port: int, *, freebind: bool) -> None:
        assert self._runner is not None and self._ssl is not None
        self.host = host
        load_cert_pem(self._ssl, *self._issue_cert())
        self.port = await start_tls_site(
            self._runner, host, port, self._ssl, freebind=freebind, what="s3", key="s3.listen"
        )
        self.listening.set()
        log.info("s3: serving %s on %s", self.root, self.endpoint or join_hostport(host, self.port))

    async def _listen_on_mesh_ip(self) -> None:
        ip = await self.coordinator.wait_own_mesh_ip()
        try:
            await self._listen(ip, self.section.port, freebind=True)
        except ConfigError as exc:
            log.error("%s", exc)

    async def _add_mesh_ip_to_cert(self) -> None:
        await self.coordinator.wait_own_mesh_ip()
        assert self._ssl is not None
        load_cert_pem(self._ssl, *self._issue_cert())

    async def stop(self) -> None:
        if self._follow_task is not None:
            self._follow_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow_task
            self._follow_task = None
        if self._dav_task is not None:
            self._dav_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dav_task
            self._dav_task = None
        if self.dav is not None:
            await self.dav.stop()
            self.dav = None
        if self._nfs_task is not None:
            self._nfs_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._nfs_task
            self._nfs_task = None
        if self.nfs is not None:
            await self.nfs.stop()
            self.nfs = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._runner is not None:
            await stop_site(self._runner)  # aborts what the graceful shutdown left
            self._runner = None
        if self.storage is not None:
            await self.storage.aclose()
            self.storage = None
        self.shares = None
        self.listening.clear()

    # --- coordinator routes ------------------------------------------------------------------

    @route_policy(Policy.PEER)
    async def handle_info(self, request: web.Request) -> web.Response:
        return _json(self.info())

    @route_policy(Policy.PEER)
    async def handle_credentials(self, request: web.Request) -> web.Response:
        rec = authenticated_peer(request)
        raw = await request.read()
        try:
            req = msgspec.json.decode(raw, type=CredentialRequest) if raw else CredentialRequest()
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ApiFailure(400, "malformed", f"invalid request: {exc}") from None
        before = {c.access_key for c in self.authorizer.credentials_of(rec.peer_id)}
        cred = await self.authorizer.credential_for(rec, rotate=req.rotate)
        if cred.access_key not in before:  # every CLI command asks; log only new keys
            log.info("s3: issued access key %s to %s", cred.access_key, rec.name)
        return _json(
            MeshCredential(
                access_key=cred.access_key,
                secret_key=cred.secret_key,
                principal=rec.name,
                admin=rec.is_admin,
                created=cred.created,
                endpoint=self.endpoint,
                region=self.section.region,
            )
        )

    @route_policy(Policy.SELF_OR_ADMIN, target="name")
    async def handle_revoke(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        rec = self.coordinator.peer_by_name(name)
        if rec is None:
            raise ApiFailure(404, "no_such_peer", f"no peer named {name!r}")
        revoked = await self.authorizer.revoke_peer(rec.peer_id)
        return web.json_response({"status": "ok", "peer": name, "revoked": revoked})


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(obj), status=status, content_type="application/json"
    )


SERVICE_KEY = web.AppKey("s3_service", MeshS3Service)


def install(app: web.Application, coordinator: CoordinatorView) -> MeshS3Service | None:
    """Add the S3 service and its routes to a coordinator's app when ``s3.enabled``.

    Raises:
        ConfigError: S3 is enabled but has nowhere to listen (no ``s3.listen``, no ``join_mesh``).
    """
    section = coordinator.config.sections.get("s3")
    if not isinstance(section, S3Section) or not section.enabled:
        return None
    if not section.listen and coordinator.config.join_mesh is None:
        raise ConfigError(
            "s3 is enabled but has no address: set join_mesh (to serve on the coordinator's "
            "mesh IP) or s3.listen",
            key="s3.listen",
        )
    service = MeshS3Service(coordinator, section)
    app[SERVICE_KEY] = service
    serve_with_app(app, service)
    app.router.add_get("/api/v1/s3", service.handle_info)
    app.router.add_post("/api/v1/s3/credentials", service.handle_credentials)
    app.router.add_delete("/api/v1/s3/credentials/{name}", service.handle_revoke)
    return service
