"""CORS for browsers, as S3 does it: a bucket's rules, preflight answers and response headers.

Pure functions over a bucket's rules (:class:`CorsRule`, kept in its
:class:`~tunnelmesh_s3.auth.BucketSettings`):

* :func:`parse` reads a PutBucketCors document and checks it as S3 does (at most 100 rules, each
  with methods among GET, PUT, POST, DELETE, HEAD and at least one origin; an origin or allowed
  header holds at most one ``*``);
* :func:`preflight` answers an ``OPTIONS`` request: 400 without ``Origin`` and
  ``Access-Control-Request-Method``, 403 when no rule allows the origin, the method and every
  requested header, else the ``Access-Control-Allow-*`` headers of the first rule that does;
* :func:`response_headers` gives the headers an actual request with an ``Origin`` gets.

A preflight carries no credentials (browsers never sign one), so it is answered for anyone, from
the rules alone: it reveals only whether the bucket's owner allows that origin (a bucket that
does not exist answers as one without rules), and changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import msgspec

from tunnelmesh_s3.errors import S3Error
from tunnelmesh_s3.xmlio import document, element, parse_cors

__all__ = [
    "MAX_DOCUMENT",
    "MAX_RULES",
    "CorsRule",
    "parse",
    "preflight",
    "response_headers",
    "to_document",
]

MAX_RULES = 100
MAX_DOCUMENT = 64 * 1024
"""The largest CORSConfiguration document, as S3 (64 KB)."""
METHODS = ("GET", "PUT", "POST", "DELETE", "HEAD")
VARY = "Origin, Access-Control-Request-Headers, Access-Control-Request-Method"


class CorsRule(msgspec.Struct, frozen=True, kw_only=True):
    """One ``CORSRule`` of a bucket."""

    methods: list[str]
    origins: list[str]
    headers: list[str] = msgspec.field(default_factory=list)
    expose: list[str] = msgspec.field(default_factory=list)
    max_age: int | None = None
    id: str = ""


def _one_wildcard(values: Sequence[str], what: str) -> None:
    for value in values:
        if value.count("*") > 1:
            raise S3Error(
                "InvalidRequest", f'{what} "{value}" can not have more than one wildcard.'
            )


def parse(body: bytes) -> list[CorsRule]:
    """The rules of a ``CORSConfiguration`` document.

    Raises:
        S3Error: MalformedXML, or InvalidRequest for a method or pattern S3 refuses.
    """
    rules = []
    for node in parse_cors(body):
        methods, origins = node.get("AllowedMethod", []), node.get("AllowedOrigin", [])
        if not methods or not origins:
            raise S3Error(
                "MalformedXML", "every CORSRule needs an AllowedMethod and an AllowedOrigin"
            )
        for method in methods:
            if method not in METHODS:
                raise S3Error(
                    "InvalidRequest",
                    f"Found unsupported HTTP method in CORS config. Unsupported method is {method}",
                )
        headers = node.get("AllowedHeader", [])
        _one_wildcard(origins, "AllowedOrigin")
        _one_wildcard(headers, "AllowedHeader")
        max_age = None
        if ages := node.get("MaxAgeSeconds"):
            try:
                max_age = int(ages[0])
            except ValueError:
                raise S3Error("MalformedXML", "MaxAgeSeconds must be an integer") from None
        ids = node.get("ID", [])
        rules.append(
            CorsRule(
                methods=methods,
                origins=origins,
                headers=headers,
                expose=node.get("ExposeHeader", []),
                max_age=max_age,
                id=ids[0] if ids else "",
            )
        )
    if not rules:
        raise S3Error("MalformedXML", "a CORSConfiguration needs at least one CORSRule")
    if len(rules) > MAX_RULES:
        raise S3Error("MalformedXML", f"a CORSConfiguration has at most {MAX_RULES} rules")
    return rules


def to_document(rules: Sequence[CorsRule]) -> bytes:
    """The ``CORSConfiguration`` document of GetBucketCors."""
    out = []
    for rule in rules:
        parts = [element("ID", rule.id)] if rule.id else []
        parts += [element("AllowedHeader", h) for h in rule.headers]
        parts += [element("AllowedMethod", m) for m in rule.methods]
        parts += [element("AllowedOrigin", o) for o in rule.origins]
        parts += [element("ExposeHeader", h) for h in rule.expose]
        if rule.max_age is not None:
            parts.append(element("MaxAgeSeconds", rule.max_age))
        out.append("<CORSRule>" + "".join(parts) + "</CORSRule>")
    return document("CORSConfiguration", *out)


def _matches(pattern: str, value: str, *, fold: bool = False) -> bool:
    if fold:
        pattern, value = pattern.lower(), value.lower()
    if "*" not in pattern:
        return pattern == value
    return re.fullmatch(".*".join(map(re.escape, pattern.split("*"))), value, re.DOTALL) is not None


def _find(
    rules: Sequence[CorsRule], origin: str, method: str, requested: Sequence[str]
) -> CorsRule | None:
    for rule in rules:
        if method not in rule.methods:
            continue
        if not any(_matches(o, origin) for o in rule.origins):
            continue
        if all(any(_matches(h, r, fold=True) for h in rule.headers) for r in requested):
            return rule
    return None


def _allow(rule: CorsRule, origin: str, requested: Sequence[str]) -> dict[str, str]:
    wildcard = "*" in rule.origins
    headers = {
        "Access-Control-Allow-Origin": "*" if wildcard else origin,
        "Access-Control-Allow-Methods": ", ".join(rule.methods),
        "Vary": VARY,
    }
    if not wildcard:
        headers["Access-Control-Allow-Credentials"] = "true"
    if requested:
        headers["Access-Control-Allow-Headers"] = ", ".join(requested)
    if rule.expose:
        headers["Access-Control-Expose-Headers"] = ", ".join(rule.expose)
    if rule.max_age is not None:
        headers["Access-Control-Max-Age"] = str(rule.max_age)
    return headers


def _requested(value: str | None) -> list[str]:
    return [h.strip() for h in (value or "").split(",") if h.strip()]


def preflight(rules: Sequence[CorsRule], headers: Mapping[str, str]) -> dict[str, str]:
    """The headers of a successful preflight (``OPTIONS``) answer.

    Raises:
        S3Error: 400 without ``Origin`` or ``Access-Control-Request-Method``, 403 (AccessForbidden)
            when no rule allows the request.
    """
    origin = headers.get("Origin")
    method = headers.get("Access-Control-Request-Method")
    if not origin or not method:
        raise S3Error(
            "BadRequest",
            "Insufficient information. Origin request header needed."
            if not origin
            else "Insufficient information. Access-Control-Request-Method header needed.",
            status=400,
        )
    requested = _requested(headers.get("Access-Control-Request-Headers"))
    rule = _find(rules, origin, method, requested)
    if rule is None:
        raise S3Error(
            "AccessForbidden",
            "CORSResponse: This CORS request is not allowed. This is usually because the "
            "evaluation of Origin, request method / Access-Control-Request-Method or "
            "Access-Control-Request-Headers are not whitelisted by the resource's CORS spec.",
            status=403,
            Method=method,
            ResourceType="OBJECT",
        )
    return _allow(rule, origin, requested)


def response_headers(rules: Sequence[CorsRule], origin: str, method: str) -> dict[str, str]:
    """The CORS headers of an actual request from ``origin`` ({} when no rule allows it)."""
    rule = _find(rules, origin, method, ())
    return {} if rule is None else _allow(rule, origin, ())
