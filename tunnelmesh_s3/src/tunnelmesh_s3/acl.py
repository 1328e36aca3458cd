"""S3 ACLs mapped onto the mesh's bucket grants, and what cannot map refused.

Access to a bucket here is its grants (:class:`~tunnelmesh_s3.auth.BucketAcl`): an owner (a
principal key: the peer ID on a mesh) and ``read``/``write`` lists of principal keys, ``*``
(every authenticated principal) and ``group:NAME``. S3's ACLs map onto them so:

======================================  =========================================
S3                                       grants
======================================  =========================================
owner, ``FULL_CONTROL``                  the owner (one key; nobody else can get it)
CanonicalUser ``ID``, ``READ``           ``read`` of that principal key
CanonicalUser ``ID``, ``WRITE``          ``write`` (which here implies read)
Group ``AuthenticatedUsers``             ``*``
Group ``urn:tunnelmesh:group:NAME``      ``group:NAME``
canned ``private``                       no grants but the owner
canned ``authenticated-read``            ``read`` of ``*``
======================================  =========================================

Objects have no ACL of their own: an object is read and written by whoever may read and write
its bucket, so an object's ACL is its bucket's, and the only object ACLs accepted are the canned
``private`` and ``bucket-owner-full-control`` (which say just that). Everything else is refused
with 400 ``AccessControlListNotSupported``, as AWS answers for a bucket whose ACLs are disabled:
anonymous access (``public-read``, ``public-read-write``, the ``AllUsers`` group; this server has
none), e-mail grantees, ``READ_ACP``/``WRITE_ACP``, ``FULL_CONTROL`` for another principal, and
per-object grants.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from tunnelmesh_s3.auth import EVERYONE, GROUP_PREFIX, BucketAcl
from tunnelmesh_s3.errors import S3Error
from tunnelmesh_s3.xmlio import document, element, parse_acl

__all__ = [
    "AUTHENTICATED_USERS",
    "Grants",
    "bucket_grants_from_request",
    "check_object_acl",
    "object_grants_refused",
    "to_document",
]

AUTHENTICATED_USERS = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers"
ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"
GROUP_URN = "urn:tunnelmesh:group:"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
OBJECT_CANNED = frozenset({"private", "bucket-owner-full-control"})
GRANT_HEADERS = {
    "x-amz-grant-read": "READ",
    "x-amz-grant-write": "WRITE",
    "x-amz-grant-full-control": "FULL_CONTROL",
    "x-amz-grant-read-acp": "READ_ACP",
    "x-amz-grant-write-acp": "WRITE_ACP",
}
_GRANTEE = re.compile(r'\s*(id|uri|emailAddress)\s*=\s*"([^"]*)"\s*(?:,|$)', re.IGNORECASE)


def _not_supported(message: str) -> S3Error:
    return S3Error(
        "AccessControlListNotSupported",
        f"This ACL cannot be applied: {message} Access here is the bucket's grants (owner, "
        "principals, groups; write implies read); see the tunnelmesh-s3 README.",
    )


@dataclass(frozen=True)
class Grants:
    """What a bucket ACL request asks for, as grant lists (principal keys, ``*``,
    ``group:NAME``), before unknown grantees are checked."""

    read: list[str]
    write: list[str]


def _grantee(kind: str, value: str, owner: str) -> str | None:
    """A grantee as grants name it; None for the owner itself."""
    kind = kind.lower()
    if kind == "id":
        return None if value == owner else value
    if kind == "uri":
        if value == AUTHENTICATED_USERS:
            return EVERYONE
        if value.startswith(GROUP_URN) and len(value) > len(GROUP_URN):
            return GROUP_PREFIX + value[len(GROUP_URN) :]
        if value == ALL_USERS:
            raise _not_supported("anonymous access (AllUsers) does not exist here.")
        raise _not_supported(f"the group {value!r} is unknown.")
    raise S3Error(
        "UnresolvableGrantByEmailAddress",
        "The email address you provided does not match any account on record: principals "
        "here are peers and names, never e-mail addresses.",
    )


def _add(grants: Grants, permission: str, grantee: str | None) -> None:
    if permission == "FULL_CONTROL":
        if grantee is not None:
            raise _not_supported("FULL_CONTROL belongs to the bucket's owner alone.")
        return
    if grantee is None:
        return  # the owner has every permission already
    if permission == "READ":
        target = grants.read
    elif permission == "WRITE":
        target = grants.write
    else:
        raise _not_supported(f"{permission} grants do not exist here (the owner alone may).")
    if grantee not in target:
        target.append(grantee)


def _canned_bucket(acl: str) -> Grants:
    if acl == "private":
        return Grants([], [])
    if acl == "authenticated-read":
        return Grants([EVERYONE], [])
    if acl in ("public-read", "public-read-write"):
        raise _not_supported(f"{acl} asks for anonymous access, which does not exist here.")
    raise S3Error("InvalidArgument", f"unknown canned ACL {acl!r}")


def bucket_grants_from_request(
    headers: Mapping[str, str], body: bytes, owner: str
) -> Grants | None:
    """The grants a CreateBucket or PutBucketAcl asks for: its ``x-amz-acl``, its
    ``x-amz-grant-*`` headers or (PutBucketAcl) its ``AccessControlPolicy`` document; None when
    it asks for nothing.

    Raises:
        S3Error: AccessControlListNotSupported for what cannot map, InvalidArgument or
            MalformedXML for a malformed request.
    """
    canned = headers.get("x-amz-acl")
    granted = {h: headers[h] for h in GRANT_HEADERS if h in headers}
    if canned is not None and (granted or body):
        raise S3Error("InvalidRequest", "Specify an ACL by x-amz-acl, x-amz-grant-* or a body")
    if canned is not None:
        return _canned_bucket(canned.strip())
    grants = Grants([], [])
    if granted:
        if body:
            raise S3Error("UnexpectedContent", "This request does not support content")
        for header, value in granted.items():
            for kind, grantee in _grantee_list(value):
                _add(grants, GRANT_HEADERS[header], _grantee(kind, grantee, owner))
        return grants
    if not body:
        return None
    for permission, kind, value in _parse_policy(body):
        _add(grants, permission, _grantee(kind, value, owner))
    return grants


def _grantee_list(value: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(value):
        m = _GRANTEE.match(value, pos)
        if m is None:
            raise S3Error("InvalidArgument", f"malformed grant header value {value!r}")
        out.append((m.group(1), m.group(2)))
        pos = m.end()
    return out


def _parse_policy(body: bytes) -> list[tuple[str, str, str]]:
    """(permission, grantee kind, grantee) of an AccessControlPolicy document."""
    out = []
    for permission, kind, user_id, uri in parse_acl(body):
        if kind == "CanonicalUser":
            out.append((permission, "id", user_id))
        elif kind == "Group":
            out.append((permission, "uri", uri))
        elif kind == "AmazonCustomerByEmail":
            out.append((permission, "emailAddress", ""))
        else:
            raise S3Error("MalformedACLError", f"unknown grantee type {kind!r}")
    return out


def object_grants_refused() -> S3Error:
    """The error for grants asked for one object (objects have none of their own)."""
    return _not_supported("objects have no grants of their own.")


def check_object_acl(headers: Mapping[str, str]) -> None:
    """Refuse an object write that asks for an ACL objects cannot have here (its ``x-amz-acl``
    may only be ``private`` or ``bucket-owner-full-control``; no ``x-amz-grant-*``)."""
    canned = headers.get("x-amz-acl")
    if canned is not None and canned.strip() not in OBJECT_CANNED:
        raise _not_supported(
            f"objects have no ACL of their own, so the canned ACL {canned.strip()!r} cannot be "
            "given to one."
        )
    for header in GRANT_HEADERS:
        if header in headers:
            raise object_grants_refused()


def to_document(
    acl: BucketAcl, display: Callable[[list[str]], list[str]], *, with_grants: bool = True
) -> bytes:
    """The ``AccessControlPolicy`` of a bucket (or of an object in it): the owner with
    FULL_CONTROL, then its grants (write grantees get READ and WRITE)."""
    owner_name = display([acl.owner])[0] if acl.owner else ""
    grants = [_grant_user(acl.owner, owner_name, "FULL_CONTROL")]
    if with_grants:
        for permission, entries in (("READ", _readers(acl)), ("WRITE", acl.write)):
            for entry, name in zip(entries, display(list(entries)), strict=True):
                grants.append(_grant(entry, name, permission))
    return document(
        "AccessControlPolicy",
        f"<Owner>{element('ID', acl.owner)}{element('DisplayName', owner_name)}</Owner>",
        "<AccessControlList>" + "".join(grants) + "</AccessControlList>",
    )


def _readers(acl: BucketAcl) -> Sequence[str]:
    return list(dict.fromkeys([*acl.read, *acl.write]))


def _grant_user(key: str, name: str, permission: str) -> str:
    return (
        f'<Grant><Grantee xmlns:xsi="{XSI}" xsi:type="CanonicalUser">'
        f"{element('ID', key)}{element('DisplayName', name)}</Grantee>"
        f"{element('Permission', permission)}</Grant>"
    )


def _grant(entry: str, name: str, permission: str) -> str:
    if entry == EVERYONE:
        uri = AUTHENTICATED_USERS
    elif entry.startswith(GROUP_PREFIX):
        uri = GROUP_URN + entry[len(GROUP_PREFIX) :]
    else:
        return _grant_user(entry, name, permission)
    return (
        f'<Grant><Grantee xmlns:xsi="{XSI}" xsi:type="Group">{element("URI", uri)}</Grantee>'
        f"{element('Permission', permission)}</Grant>"
    )
