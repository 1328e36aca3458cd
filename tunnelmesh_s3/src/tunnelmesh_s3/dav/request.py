"""WebDAV: one request as the method handlers see it (:class:`_Req`), the error that answers it
(:class:`DavError`) and what every handler shares: the request target, ``Host`` check, dates, the
body bound, dead properties kept as metadata, ETags, the ``If`` header and lock checks.
"""

from __future__ import annotations

import base64
import email.utils
import ipaddress
import time
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes, urlsplit

import msgspec
from aiohttp import web
from tunnelmesh.errors import TunnelmeshError

from tunnelmesh_s3.dav import locks as lk
from tunnelmesh_s3.dav.xmlbody import MAX_BODY
from tunnelmesh_s3.shareaccess import Entry, ShareAccess, ShareView

PROPS_KEY = "davprops"  # user metadata holding the dead properties


MAX_PROPS_BYTES = 16 * 1024


MULTISTATUS = (
    '<?xml version="1.0" encoding="utf-8"?>\n<D:multistatus xmlns:D="DAV:">{}</D:multistatus>'
)


STATUS_TEXT = {
    200: "OK", 403: "Forbidden", 404: "Not Found", 409: "Conflict", 423: "Locked",
    424: "Failed Dependency",
}  # fmt: skip


SHARE_STATUS = {
    "denied": 403,
    "not_found": 404,
    "exists": 405,
    "not_dir": 409,
    "is_dir": 405,
    "not_empty": 409,
    "bad_path": 400,
}


class DavError(TunnelmeshError):
    """A WebDAV error response: an HTTP status, a sentence, and maybe a precondition element."""

    def __init__(self, status: int, message: str, condition: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.condition = condition


@dataclass
class _Req:
    """One request as handlers see it."""

    request: web.Request
    access: ShareAccess
    locks: lk.LockTable
    now: float
    share: str  # "" for the root
    path: str  # in the share, without leading or trailing "/"
    view: ShareView | None

    @property
    def lock_path(self) -> str:
        return f"{self.share}/{self.path}" if self.path else self.share

    def need_view(self) -> ShareView:
        if self.view is None:
            raise DavError(405, "the root lists the shares; it holds no files")
        return self.view


def _split_url(raw_path: str) -> tuple[str, str]:
    """(share, path) of a request target or Destination path."""
    try:
        text = unquote_to_bytes(raw_path.partition("?")[0]).decode("utf-8")
    except UnicodeDecodeError:
        raise DavError(400, "the path is not valid percent-encoded UTF-8") from None
    if not text.startswith("/"):
        raise DavError(400, "the path must start with /")
    share, _, rest = text[1:].partition("/")
    return share, rest


def _check_host(host: str, domains: tuple[str, ...]) -> None:
    """403 unless ``Host`` is an IP address or a name under one of the mesh's ``domains``."""
    name = host.strip()
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    try:
        ipaddress.ip_address(name)
        return
    except ValueError:
        pass
    name = name.lower().rstrip(".")
    if name and any(name == d or name.endswith("." + d) for d in domains):
        return
    raise DavError(403, f"Host {host[:64]!r} is not a name of this mesh (DNS rebinding guard)")


def _href(share: str, path: str, is_dir: bool) -> str:
    if not share:
        return "/"
    url = "/" + quote(share) + ("/" + quote(path) if path else "")
    return url + "/" if is_dir else url


def _http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


async def _read_body(request: web.Request) -> bytes:
    """The request body, at most :data:`MAX_BODY` bytes (413 beyond)."""
    data = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > MAX_BODY:
            raise DavError(413, f"request body over {MAX_BODY} bytes")
    return bytes(data)


def _dead_props(metadata: object) -> dict[tuple[str, str], str]:
    """The dead properties kept in an object's metadata: (ns, name) to serialized XML."""
    raw = getattr(metadata, "get", lambda _k: None)(PROPS_KEY)
    if not raw:
        return {}
    try:
        items = msgspec.json.decode(base64.b64decode(raw), type=list[tuple[str, str, str]])
    except (ValueError, msgspec.DecodeError, msgspec.ValidationError):
        return {}
    return {(ns, name): value for ns, name, value in items}


def _encode_props(props: dict[tuple[str, str], str]) -> str:
    raw = msgspec.json.encode([[ns, name, v] for (ns, name), v in sorted(props.items())])
    if len(raw) > MAX_PROPS_BYTES:
        raise DavError(507, f"dead properties over {MAX_PROPS_BYTES} bytes", "")
    return base64.b64encode(raw).decode()


def _etag(entry: Entry) -> str | None:
    return f'"{entry.etag}"' if entry.etag and not entry.is_dir else None


async def _if_header(req: _Req) -> set[str]:
    """Check the ``If`` header (412 when it fails); return the lock tokens it submits."""
    header = req.request.headers.get("If")
    if header is None:
        return set()
    lists = lk.parse_if(header)
    paths: dict[str, Entry | None] = {}
    tagged: dict[str, str | None] = {}
    view = req.view
    if view is not None:
        paths[req.lock_path] = await view.stat(req.path)
    for lst in lists:
        if lst.resource is None or lst.resource in tagged:
            continue
        share, rest = _split_url(urlsplit(lst.resource).path or "/")
        tagged[lst.resource] = None
        if view is not None and share == view.name:
            key = view.key(rest)
            lp = f"{share}/{key}" if key else share
            tagged[lst.resource] = lp
            if lp not in paths:
                paths[lp] = await view.stat(key)

    def etag_of(lp: str) -> str | None:
        entry = paths.get(lp)
        return _etag(entry) if entry is not None else None

    def tokens_of(lp: str) -> set[str]:
        return {lock.token for lock in req.locks.covering(lp, req.now)}

    if not lk.evaluate_if(lists, req.lock_path, tagged.get, tokens_of, etag_of):
        raise DavError(412, "the If header's conditions do not hold")
    return lk.submitted_tokens(lists)


def _check_locks(req: _Req, tokens: set[str], path: str, *, subtree: bool, parent: bool) -> None:
    """423 when a lock forbids writing ``path`` (or its subtree, or its parent's membership)."""
    owner = req.need_view().principal.key
    blocked = req.locks.blocking(path, tokens, owner, req.now, subtree=subtree)
    if blocked is None and parent and "/" in path:
        blocked = req.locks.blocking(path.rpartition("/")[0], tokens, owner, req.now, subtree=False)
    if blocked is not None:
        raise DavError(
            423, f"{blocked.root} is locked; submit its lock token", "lock-token-submitted"
        )
