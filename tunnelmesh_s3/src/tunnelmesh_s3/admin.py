"""The JSON admin API under ``/_tunnelmesh/``: shares, bucket grants and credentials.

Requests are SigV4-signed like any S3 request (``_`` cannot start a bucket name, so the path
never collides with a bucket). Errors are S3 XML errors.

=======  ==========================  ============================================  ==========
method   path                        what                                          who
=======  ==========================  ============================================  ==========
GET      whoami                      the caller's principal                        anyone
GET      shares                      every share the caller can read               anyone
GET      shares/NAME                 one share with its grants                     readers
PUT      shares/NAME                 create or update (``description``, ``read``,  owner
                                     ``write``); creates the bucket when missing
DELETE   shares/NAME                 unshare; the bucket and its objects stay      owner
GET      acl/BUCKET                  the bucket's owner and grants                 owner
PUT      acl/BUCKET                  replace the grants (``read``, ``write``)      owner
GET      credentials                 issued access keys (no secrets)               admin
POST     credentials                 issue a key for ``principal``                 admin
=======  ==========================  ============================================  ==========
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from aiohttp import web
from tunnelmesh.errors import BucketAlreadyExists, InvalidName
from tunnelmesh.storage import check_bucket_name

from tunnelmesh_s3.auth import GROUP_PREFIX, BucketAcl, FileAuthorizer, Share
from tunnelmesh_s3.call import Call
from tunnelmesh_s3.errors import S3Error

__all__ = ["ShareRequest", "handle"]


class ShareRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    description: str = ""
    read: list[str] = msgspec.field(default_factory=list)
    write: list[str] = msgspec.field(default_factory=list)


class CredentialRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    principal: str
    admin: bool = False


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=msgspec.json.encode(data), content_type="application/json"
    )


async def _decode(call: Call, type_: type[Any]) -> Any:
    try:
        return msgspec.json.decode(await call.request.read(), type=type_)
    except msgspec.DecodeError as exc:
        raise S3Error("InvalidArgument", f"bad JSON body: {exc}") from None


def _share_view(auth: FileAuthorizer, share: Share, acl: BucketAcl | None) -> dict[str, Any]:
    return {
        "name": share.name,
        "description": share.description,
        "owner": auth.display([share.owner])[0],
        "created": share.created,
        "read": auth.display(acl.read) if acl else [],
        "write": auth.display(acl.write) if acl else [],
    }


def _acl_view(auth: FileAuthorizer, acl: BucketAcl | None) -> dict[str, Any]:
    acl = acl or BucketAcl(owner="")
    return {
        "owner": auth.display([acl.owner])[0] if acl.owner else "",
        "read": auth.display(acl.read),
        "write": auth.display(acl.write),
    }


def _grants(auth: FileAuthorizer, req: ShareRequest) -> tuple[list[str], list[str]]:
    """The request's grantees checked and resolved to what the ACL stores (peer IDs on a mesh).

    Raises:
        S3Error: a grantee names no peer (or no group).
    """
    unknown = sorted(set(auth.unknown_grantees([*req.read, *req.write])))
    peers = [n for n in unknown if not n.startswith(GROUP_PREFIX)]
    groups = [n[len(GROUP_PREFIX) :] for n in unknown if n.startswith(GROUP_PREFIX)]
    why = [f"no peer named {', '.join(peers)}"] if peers else []
    why += [f"no group named {', '.join(groups)}"] if groups else []
    if why:
        raise S3Error("InvalidArgument", "; ".join(why))
    return auth.resolve_grantees(req.read), auth.resolve_grantees(req.write)


async def handle(call: Call, path: str) -> web.Response:
    auth = call.auth
    if not isinstance(auth, FileAuthorizer):
        raise S3Error("NotImplemented", "this server's authorizer has no admin API")
    method = call.request.method
    kind, _, name = path.partition("/")
    if (kind, name, method) == ("whoami", "", "GET"):
        who: dict[str, Any] = {"principal": call.principal.name, "admin": call.principal.admin}
        if call.principal.peer_id:
            who["peer_id"] = call.principal.peer_id
        return _json(who)
    if kind == "shares" and not name and method == "GET":
        return _json(
            [
                _share_view(auth, s, auth.acl(s.name))
                for s in auth.shares()
                if auth.allowed(call.principal, s.name, "read")
            ]
        )
    if kind == "shares" and name:
        return await _share(call, auth, name, method)
    if kind == "acl" and name:
        await call.need("own", name)
        if method == "GET":
            return _json(_acl_view(auth, auth.acl(name)))
        if method == "PUT":
            read, write = _grants(auth, await _decode(call, ShareRequest))
            acl = auth.acl(name)
            await auth.set_acl(
                name,
                BucketAcl(owner=acl.owner if acl else call.principal.key, read=read, write=write),
            )
            return _json(_acl_view(auth, auth.acl(name)))
    if kind == "credentials" and not name:
        if not call.principal.admin:
            raise S3Error("AccessDenied", "only admins manage credentials")
        if method == "GET":
            return _json(
                [
                    {
                        "access_key": c.access_key,
                        "principal": c.principal,
                        "admin": c.admin,
                        "created": c.created,
                    }
                    for c in auth.credentials()
                ]
            )
        if method == "POST":
            if not auth.issues_by_name:
                raise S3Error(
                    "InvalidRequest",
                    "on a mesh each peer gets its own key from the coordinator: "
                    "run `tunnelmesh s3 credentials` on that peer",
                )
            req = await _decode(call, CredentialRequest)
            return _json(await auth.issue(req.principal, admin=req.admin), status=201)
    raise S3Error(
        "MethodNotAllowed", "no such admin operation", Method=method, ResourceType="ADMIN"
    )


async def _share(call: Call, auth: FileAuthorizer, name: str, method: str) -> web.Response:
    try:
        check_bucket_name(name)
    except InvalidName as exc:
        raise S3Error("InvalidBucketName", str(exc), BucketName=name) from None
    share = auth.share(name)
    if method == "GET":
        if share is None:
            raise S3Error("NoSuchBucket", f"no share named {name}", BucketName=name)
        await call.need("read", name)
        return _json(_share_view(auth, share, auth.acl(name)))
    if method == "PUT":
        req = await _decode(call, ShareRequest)
        read, write = _grants(auth, req)
        try:
            await call.storage.create_bucket(name)
            await auth.bucket_created(call.principal, name)
            created = True
        except BucketAlreadyExists:
            await call.need("own", name)
            created = False
        acl = auth.acl(name)
        owner = acl.owner if acl else call.principal.key
        new = Share(
            name=name,
            owner=owner,
            created=share.created if share else time.time(),
            description=req.description or (share.description if share else ""),
        )
        await auth.put_share(new, BucketAcl(owner=owner, read=read, write=write))
        return _json(_share_view(auth, new, auth.acl(name)), status=201 if created else 200)
    if method == "DELETE":
        if share is None:
            raise S3Error("NoSuchBucket", f"no share named {name}", BucketName=name)
        await call.need("own", name)
        await auth.delete_share(name)
        return web.Response(status=204)
    raise S3Error(
        "MethodNotAllowed", "no such admin operation", Method=method, ResourceType="SHARE"
    )
