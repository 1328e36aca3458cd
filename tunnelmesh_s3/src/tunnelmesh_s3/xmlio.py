"""S3's XML: response documents built as text, request documents parsed defensively.

Request bodies (DeleteObjects, CompleteMultipartUpload, Tagging, CORS) come from authenticated clients but are
still untrusted: they are size-limited by the caller, and any DOCTYPE is refused before parsing
so that no entity can expand.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from urllib.parse import quote
from xml.sax.saxutils import escape

from tunnelmesh_s3.errors import S3Error

__all__ = [
    "NS",
    "document",
    "element",
    "iso8601",
    "parse_acl",
    "parse_complete",
    "parse_cors",
    "parse_delete",
    "parse_tagging",
]

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
HEADER = '<?xml version="1.0" encoding="UTF-8"?>\n'


def iso8601(ts: float) -> str:
    """``2024-01-31T12:00:00.000Z``, the timestamp format of S3's XML."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def element(name: str, value: object) -> str:
    return f"<{name}>{escape(str(value))}</{name}>"


def document(root: str, *children: str) -> bytes:
    return f'{HEADER}<{root} xmlns="{NS}">{"".join(children)}</{root}>'.encode()


def encode_key(key: str, url: bool) -> str:
    """A key or prefix as a listing shows it (``encoding-type=url`` percent-encodes it)."""
    return quote(key, safe="/") if url else key


def _parse(body: bytes) -> ET.Element:
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        raise S3Error("MalformedXML", "DTDs are not allowed")
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise S3Error(
            "MalformedXML", "The XML you provided was not well-formed or did not validate"
        ) from None
    return root


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _children(node: ET.Element, name: str) -> Iterable[ET.Element]:
    return (child for child in node if _local(child.tag) == name)


def _text(node: ET.Element, name: str) -> str | None:
    for child in _children(node, name):
        return child.text or ""
    return None


def parse_delete(body: bytes) -> tuple[list[str], bool]:
    """A DeleteObjects request: (keys, quiet)."""
    root = _parse(body)
    if _local(root.tag) != "Delete":
        raise S3Error("MalformedXML", "expected a <Delete> document")
    keys = []
    for obj in _children(root, "Object"):
        key = _text(obj, "Key")
        if key is None:
            raise S3Error("MalformedXML", "every <Object> needs a <Key>")
        keys.append(key)
    if not 1 <= len(keys) <= 1000:
        raise S3Error("MalformedXML", "DeleteObjects takes 1 to 1000 keys")
    return keys, (_text(root, "Quiet") or "").strip().lower() == "true"


def parse_complete(body: bytes) -> list[tuple[int, str, dict[str, str]]]:
    """A CompleteMultipartUpload request: [(part number, etag, checksums)] in document order;
    checksums map an algorithm (``sha256``) to the part's ``Checksum<ALG>`` value."""
    root = _parse(body)
    if _local(root.tag) != "CompleteMultipartUpload":
        raise S3Error("MalformedXML", "expected a <CompleteMultipartUpload> document")
    parts = []
    for part in _children(root, "Part"):
        number, etag = _text(part, "PartNumber"), _text(part, "ETag")
        if number is None or etag is None:
            raise S3Error("MalformedXML", "every <Part> needs <PartNumber> and <ETag>")
        checksums = {
            _local(child.tag)[len("Checksum") :].lower(): (child.text or "").strip()
            for child in part
            if _local(child.tag).startswith("Checksum")
        }
        try:
            parts.append((int(number), etag.strip().strip('"'), checksums))
        except ValueError:
            raise S3Error("MalformedXML", f"bad PartNumber {number!r}") from None
    return parts


def parse_tagging(body: bytes) -> list[tuple[str, str]]:
    """A Put(Object|Bucket)Tagging request: [(key, value)] in document order."""
    root = _parse(body)
    if _local(root.tag) != "Tagging":
        raise S3Error("MalformedXML", "expected a <Tagging> document")
    tag_sets = list(_children(root, "TagSet"))
    if len(tag_sets) != 1:
        raise S3Error("MalformedXML", "a <Tagging> document has one <TagSet>")
    tags = []
    for tag in _children(tag_sets[0], "Tag"):
        key, value = _text(tag, "Key"), _text(tag, "Value")
        if key is None or value is None:
            raise S3Error("MalformedXML", "every <Tag> needs a <Key> and a <Value>")
        tags.append((key, value))
    return tags


def parse_cors(body: bytes) -> list[dict[str, list[str]]]:
    """A PutBucketCors request: each ``CORSRule`` as element name to its texts, in order."""
    root = _parse(body)
    if _local(root.tag) != "CORSConfiguration":
        raise S3Error("MalformedXML", "expected a <CORSConfiguration> document")
    rules = []
    for node in _children(root, "CORSRule"):
        rule: dict[str, list[str]] = {}
        for child in node:
            rule.setdefault(_local(child.tag), []).append((child.text or "").strip())
        rules.append(rule)
    return rules


_XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"


def parse_acl(body: bytes) -> list[tuple[str, str, str, str]]:
    """A PutBucketAcl/PutObjectAcl ``AccessControlPolicy``: its grants as (permission, grantee
    type, ID, URI), in document order."""
    root = _parse(body)
    if _local(root.tag) != "AccessControlPolicy":
        raise S3Error("MalformedACLError", "expected an <AccessControlPolicy> document")
    grants = []
    for acl in _children(root, "AccessControlList"):
        for grant in _children(acl, "Grant"):
            grantee = next(iter(_children(grant, "Grantee")), None)
            permission = (_text(grant, "Permission") or "").strip()
            if grantee is None or not permission:
                raise S3Error("MalformedACLError", "every Grant needs a Grantee and a Permission")
            grants.append(
                (
                    permission,
                    grantee.get(_XSI_TYPE, ""),
                    (_text(grantee, "ID") or "").strip(),
                    (_text(grantee, "URI") or "").strip(),
                )
            )
    return grants


def error_document(err: S3Error, resource: str, request_id: str) -> bytes:
    extra = "".join(element(k, v) for k, v in err.extra.items() if v)
    return (
        f"{HEADER}<Error>{element('Code', err.code)}{element('Message', err.message)}{extra}"
        f"{element('Resource', resource)}{element('RequestId', request_id)}</Error>"
    ).encode()
