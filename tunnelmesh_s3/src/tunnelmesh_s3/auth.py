"""Who may do what: access keys to principals, and per-bucket grants.

The S3 app asks an :class:`Authorizer` two things: the secret (and principal) behind an access
key, so that it can check the SigV4 signature; and whether that principal may ``read``, ``write``
or ``own`` a bucket. The coordinator implements its own (per-peer keys it issues); the standalone
server and tests use :class:`FileAuthorizer`, which keeps everything in one JSON file written
atomically.

Rules of :class:`FileAuthorizer` (and the ones the coordinator should keep):

* an admin principal may do anything;
* a bucket's owner may read, write, and change or delete the bucket;
* a ``write`` grant implies ``read``; a grant to ``"*"`` is to every authenticated principal;
  a grant to ``"group:NAME"`` is to the members of that group (on a mesh: the coordinator's
  groups, by peer ID);
* a bucket without an ACL (created behind the service's back) is admin-only.

Owners and grantees are principal *keys* (:attr:`Principal.key`): on a mesh the peer ID (a
name can be released and taken by another key; a key cannot), standalone the principal name.
The admin API takes and shows names; :meth:`Authorizer.resolve_grantees` and
:meth:`Authorizer.display` translate.

Secrets are random (:func:`secrets.token_urlsafe`), never derived from anything public.
"""

from __future__ import annotations

import abc
import asyncio
import os
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import msgspec
from tunnelmesh.logs import add_secret

from tunnelmesh_s3.cors import CorsRule
from tunnelmesh_s3.errors import S3Error

__all__ = [
    "EVERYONE",
    "GROUP_PREFIX",
    "Action",
    "Authorizer",
    "BucketAcl",
    "BucketSettings",
    "FileAuthorizer",
    "IssuedCredential",
    "Principal",
    "SecretLookup",
    "Share",
]

Action = Literal["read", "write", "own"]
EVERYONE = "*"
_KEY_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


GROUP_PREFIX = "group:"


class Principal(msgspec.Struct, frozen=True):
    """An authenticated caller: a peer (its current name and its peer ID) on a mesh, or a
    principal name (``admin``, ...) in standalone mode."""

    name: str
    admin: bool = False
    peer_id: str = ""

    @property
    def key(self) -> str:
        """What owners and grants name: the peer ID on a mesh, else the name."""
        return self.peer_id or self.name


class BucketAcl(msgspec.Struct, kw_only=True):
    """Who may use a bucket besides admins: its owner, and peers granted read or write."""

    owner: str
    read: list[str] = msgspec.field(default_factory=list)
    write: list[str] = msgspec.field(default_factory=list)

    def allows(self, principal: Principal, action: Action, groups: Iterable[str] = ()) -> bool:
        """Whether ``principal`` (a member of ``groups``) may ``action`` the bucket."""
        if principal.admin or principal.key == self.owner:
            return True
        if action == "own":
            return False
        names = {principal.key, EVERYONE, *(GROUP_PREFIX + g for g in groups)}
        if action == "write":
            return bool(names & set(self.write))
        return bool(names & (set(self.read) | set(self.write)))


class Share(msgspec.Struct, kw_only=True):
    """A file share: a bucket of the same name, shared with chosen peers through its ACL."""

    name: str
    owner: str
    created: float
    description: str = ""


class IssuedCredential(msgspec.Struct, kw_only=True):
    """An access key and its secret. On a mesh, ``peer_id`` binds it to one peer's key pair:
    the principal is that peer's current name, and the key dies with the peer."""

    access_key: str
    secret_key: str
    principal: str
    admin: bool = False
    created: float = 0.0
    peer_id: str = ""

    def __post_init__(self) -> None:
        add_secret(self.secret_key)  # never logged (tunnelmesh.logs), issued or loaded


class BucketSettings(msgspec.Struct, kw_only=True):
    """A bucket's S3 configuration kept beside its grants: its tag set (``?tagging``), as
    (key, value) pairs sorted by key, and its CORS rules (``?cors``)."""

    tags: list[tuple[str, str]] = msgspec.field(default_factory=list)
    cors: list[CorsRule] = msgspec.field(default_factory=list)


class _State(msgspec.Struct, kw_only=True):
    keyed_by: str = ""  # "peer_id" once a mesh's owners and grants are peer IDs (migrated)
    credentials: dict[str, IssuedCredential] = msgspec.field(default_factory=dict)
    acls: dict[str, BucketAcl] = msgspec.field(default_factory=dict)
    shares: dict[str, Share] = msgspec.field(default_factory=dict)
    buckets: dict[str, BucketSettings] = msgspec.field(default_factory=dict)


class Authorizer(abc.ABC):
    """What the S3 app asks about callers. Methods that change state are async."""

    @abc.abstractmethod
    def lookup(self, access_key: str) -> tuple[str, Principal] | None:
        """The secret and principal behind an access key, or None when unknown."""

    @abc.abstractmethod
    def allowed(self, principal: Principal, bucket: str, action: Action) -> bool:
        """Whether ``principal`` may ``action`` the bucket (listing, objects, deletion)."""

    def can_create_bucket(self, principal: Principal) -> bool:
        """Whether ``principal`` may create buckets (it then owns them). Default: everyone."""
        return True

    def unknown_grantees(self, names: list[str]) -> list[str]:
        """The names in a grant that name nobody (``*`` always names everyone). Default: none."""
        return []

    def resolve_grantees(self, names: list[str]) -> list[str]:
        """Grantees as given (names, ``*``, ``group:NAME``) to what ACLs store. Default: as is."""
        return list(dict.fromkeys(names))

    def display(self, keys: list[str]) -> list[str]:
        """What ACLs store back to what people read (names). Default: as is."""
        return list(keys)

    def groups_of(self, principal: Principal) -> list[str]:
        """The groups ``principal`` is in (for ``group:NAME`` grants). Default: none."""
        return []

    def bucket_settings(self, bucket: str) -> BucketSettings:
        """The bucket's S3 configuration (tags, CORS); empty when none was set. Default: empty."""
        return BucketSettings()

    async def set_bucket_settings(self, bucket: str, settings: BucketSettings) -> None:
        """Replace the bucket's S3 configuration. Default: this authorizer keeps none."""
        raise S3Error(
            "NotImplemented",
            "This server keeps no bucket configuration (tags, CORS) for its buckets.",
        )

    @abc.abstractmethod
    async def bucket_created(self, principal: Principal, bucket: str) -> None:
        """Record that ``principal`` created (and owns) ``bucket``."""

    @abc.abstractmethod
    async def bucket_deleted(self, bucket: str) -> None:
        """Forget the bucket's grants (and share)."""


class SecretLookup:
    """Access key to secret for a signature check (None: unknown key), remembering the
    principal behind each key it found, for the caller to take once the signature checked."""

    def __init__(self, authorizer: Authorizer) -> None:
        self.authorizer = authorizer
        self.principals: dict[str, Principal] = {}

    def __call__(self, access_key: str) -> str | None:
        found = self.authorizer.lookup(access_key)
        if found is None:
            return None
        self.principals[access_key] = found[1]
        return found[0]


def _random_access_key() -> str:
    return "TM" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(18))


class FileAuthorizer(Authorizer):
    """Credentials, ACLs and shares in ``path`` (JSON, mode 0600, replaced atomically).

    Admins may issue credentials for any principal name through the admin API
    (:attr:`issues_by_name`); the coordinator's subclass ties each credential to a peer instead.

    Args:
        path: the state file (created on first change).
        static: credentials given on the command line: access key to (secret, principal); they
            are never written to the file.
    """

    issues_by_name: bool = True
    """Whether the admin API may issue a credential for any principal name."""

    def __init__(
        self, path: str | os.PathLike[str], static: dict[str, tuple[str, Principal]] | None = None
    ) -> None:
        self.path = Path(path)
        self.static = dict(static or {})
        self._lock = asyncio.Lock()
        try:
            self._state = msgspec.json.decode(self.path.read_bytes(), type=_State)
        except FileNotFoundError:
            self._state = _State()

    # --- queries ---

    def lookup(self, access_key: str) -> tuple[str, Principal] | None:
        if access_key in self.static:
            return self.static[access_key]
        cred = self._state.credentials.get(access_key)
        if cred is None:
            return None
        return cred.secret_key, Principal(cred.principal, cred.admin)

    def acl(self, bucket: str) -> BucketAcl | None:
        return self._state.acls.get(bucket)

    def allowed(self, principal: Principal, bucket: str, action: Action) -> bool:
        if principal.admin:
            return True
        acl = self._state.acls.get(bucket)
        return acl is not None and acl.allows(principal, action, self.groups_of(principal))

    def shares(self) -> list[Share]:
        return sorted(self._state.shares.values(), key=lambda s: s.name)

    def share(self, name: str) -> Share | None:
        return self._state.shares.get(name)

    def credentials(self) -> list[IssuedCredential]:
        return sorted(self._state.credentials.values(), key=lambda c: (c.principal, c.created))

    # --- changes ---

    async def _save(self) -> None:
        data = msgspec.json.format(msgspec.json.encode(self._state), indent=2)
        await asyncio.to_thread(_atomic_write, self.path, data)

    async def bucket_created(self, principal: Principal, bucket: str) -> None:
        async with self._lock:
            self._state.acls[bucket] = BucketAcl(owner=principal.key)
            await self._save()

    async def bucket_deleted(self, bucket: str) -> None:
        async with self._lock:
            self._state.acls.pop(bucket, None)
            self._state.shares.pop(bucket, None)
            self._state.buckets.pop(bucket, None)
            await self._save()

    def bucket_settings(self, bucket: str) -> BucketSettings:
        return self._state.buckets.get(bucket) or BucketSettings()

    async def set_bucket_settings(self, bucket: str, settings: BucketSettings) -> None:
        async with self._lock:
            if settings == BucketSettings():
                self._state.buckets.pop(bucket, None)
            else:
                self._state.buckets[bucket] = settings
            await self._save()

    async def set_acl(self, bucket: str, acl: BucketAcl) -> None:
        async with self._lock:
            self._state.acls[bucket] = acl
            await self._save()

    async def put_share(self, share: Share, acl: BucketAcl) -> None:
        async with self._lock:
            self._state.shares[share.name] = share
            self._state.acls[share.name] = acl
            await self._save()

    async def delete_share(self, name: str) -> None:
        """Unshare: the share record and every grant go; the bucket and its owner stay."""
        async with self._lock:
            self._state.shares.pop(name, None)
            acl = self._state.acls.get(name)
            if acl is not None:
                self._state.acls[name] = BucketAcl(owner=acl.owner)
            await self._save()

    async def issue(
        self, principal: str, *, admin: bool = False, peer_id: str = ""
    ) -> IssuedCredential:
        """Create a fresh random credential for ``principal`` (bound to ``peer_id`` if given)."""
        cred = IssuedCredential(
            access_key=_random_access_key(),
            secret_key=secrets.token_urlsafe(30),
            principal=principal,
            admin=admin,
            created=time.time(),
            peer_id=peer_id,
        )
        async with self._lock:
            self._state.credentials[cred.access_key] = cred
            await self._save()
        return cred

    async def revoke(self, access_key: str) -> bool:
        async with self._lock:
            found = self._state.credentials.pop(access_key, None) is not None
            await self._save()
        return found


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
