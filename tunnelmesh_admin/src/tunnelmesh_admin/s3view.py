"""Buckets, objects and shares in the dashboard, through the S3 plugin's own API, as the caller.

The dashboard never imports the S3 plugin and never reads its files. For each request it:

1. asks the coordinator route the S3 plugin added, ``POST /api/v1/s3/credentials``, for the
   *caller's* credential (the handler is called in-process with the caller vouched for, exactly
   as a ``tunnelmesh s3 credentials`` of that peer would be answered); ``GET /api/v1/s3`` gives
   the endpoint. The secret stays on the server: no page, header or script ever carries it;
2. calls the S3 service over HTTPS (mesh CA) with that credential, SigV4-signed
   (:func:`sign`): ListBuckets, ListObjectsV2, GetObject (streamed to the browser), PutObject,
   DeleteObject, and the plugin's JSON admin API ``/_tunnelmesh/shares``.

So S3 decides every permission with the caller's own grants: what a peer cannot read with
``tunnelmesh buckets`` it cannot read here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit
from xml.etree import ElementTree

import aiohttp
from aiohttp import web
from tunnelmesh.coordinator import ApiFailure
from tunnelmesh.coordinator.api import vouch_caller
from tunnelmesh.policy import Policy, policy_of

from tunnelmesh_admin.security import caller_of
from tunnelmesh_admin.state import SERVICE_KEY

__all__ = ["S3Credential", "S3View", "sign"]

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
CREDENTIALS_ROUTE = ("POST", "/api/v1/s3/credentials")
INFO_ROUTE = ("GET", "/api/v1/s3")


@dataclass(frozen=True)
class S3Credential:
    access_key: str
    secret_key: str
    endpoint: str
    region: str


def _enc(text: str, *, keep_slash: bool) -> str:
    return quote(text, safe="/~" if keep_slash else "~")


def sign(
    cred: S3Credential,
    method: str,
    url: str,
    *,
    payload_sha256: str,
    now: float | None = None,
) -> dict[str, str]:
    """SigV4 headers (``Authorization``, ``x-amz-date``, ``x-amz-content-sha256``) for one
    request of ``url`` (path and query already percent-encoded as they will be sent)."""
    parts = urlsplit(url)
    amz = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    date = amz[:8]
    host = parts.netloc
    query = "&".join(sorted(p if "=" in p else p + "=" for p in parts.query.split("&") if p))
    headers = {"host": host, "x-amz-content-sha256": payload_sha256, "x-amz-date": amz}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        [
            method,
            parts.path or "/",
            query,
            "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)),
            signed,
            payload_sha256,
        ]
    )
    scope = f"{date}/{cred.region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = hmac.digest(("AWS4" + cred.secret_key).encode(), date.encode(), "sha256")
    for part in (cred.region, "s3", "aws4_request"):
        key = hmac.digest(key, part.encode(), "sha256")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return {
        "Authorization": f"AWS4-HMAC-SHA256 Credential={cred.access_key}/{scope}, "
        f"SignedHeaders={signed}, Signature={signature}",
        "x-amz-date": amz,
        "x-amz-content-sha256": payload_sha256,
    }


async def _call_route(request: web.Request, method: str, path: str) -> Any:
    """Call a route of the coordinator's API in-process, as the request's caller.

    Only routes whose policy is ``peer`` (any registered peer: the caller is one) are called
    this way, with an empty body. The credentials route is one the dashboard does not serve
    to browsers: its answer (a secret) stays here.
    """
    for route in request.app[SERVICE_KEY].api.router.routes():
        if (
            route.method == method
            and route.resource is not None
            and route.resource.canonical == path
        ):
            declared = policy_of(route.handler)
            if declared is None or declared.policy is not Policy.PEER:
                raise ApiFailure(500, "s3_unavailable", f"{method} {path} is not a peer route")
            sub = request.clone(method=method, rel_url=path)
            vouch_caller(sub, caller_of(request))
            resp = await route.handler(sub)
            body = resp.body if isinstance(resp, web.Response) else None
            if resp.status != 200 or not isinstance(body, bytes):
                raise ApiFailure(502, "s3_unavailable", f"{method} {path} failed")
            return json.loads(body)
    raise ApiFailure(404, "no_s3", "this coordinator serves no S3 (s3: {enabled: true})")


class S3View:
    """The S3 service as one caller sees it (see the module docstring)."""

    def __init__(self, request: web.Request, ca_pem: str) -> None:
        self.request = request
        self.ca_pem = ca_pem
        self._cred: S3Credential | None = None

    @staticmethod
    def available(api: web.Application) -> bool:
        """Whether the coordinator's API (``api``) has the S3 plugin's credentials route."""
        return any(
            r.resource is not None and r.resource.canonical == CREDENTIALS_ROUTE[1]
            for r in api.router.routes()
        )

    async def credential(self) -> S3Credential:
        if self._cred is None:
            info = await _call_route(self.request, *INFO_ROUTE)
            if not info.get("listening"):
                raise ApiFailure(503, "s3_unavailable", "the S3 service is not listening yet")
            raw = await _call_route(self.request, *CREDENTIALS_ROUTE)
            self._cred = S3Credential(
                access_key=raw["access_key"],
                secret_key=raw["secret_key"],
                endpoint=raw.get("endpoint") or info["endpoint"],
                region=raw.get("region") or "us-east-1",
            )
        return self._cred

    def _session(self) -> aiohttp.ClientSession:
        import ssl

        ctx = ssl.create_default_context(cadata=self.ca_pem)
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))

    async def _request(
        self, method: str, path: str, query: str = "", body: bytes = b""
    ) -> tuple[int, bytes]:
        cred = await self.credential()
        url = cred.endpoint.rstrip("/") + path + (f"?{query}" if query else "")
        headers = sign(cred, method, url, payload_sha256=hashlib.sha256(body).hexdigest())
        async with (
            self._session() as http,
            http.request(method, url, data=body or None, headers=headers) as resp,
        ):
            return resp.status, await resp.read()

    @staticmethod
    def _error(status: int, raw: bytes) -> ApiFailure:
        code = "S3Error"
        message = raw[:200].decode("utf-8", "replace")
        try:
            root = ElementTree.fromstring(raw)
            code = root.findtext("Code") or code
            message = root.findtext("Message") or message
        except ElementTree.ParseError:
            pass
        return ApiFailure(status if status >= 400 else 502, code, message)

    async def buckets(self) -> list[dict[str, str]]:
        status, raw = await self._request("GET", "/")
        if status != 200:
            raise self._error(status, raw)
        root = ElementTree.fromstring(raw)
        return [
            {
                "name": b.findtext(f"{_NS}Name") or "",
                "created": b.findtext(f"{_NS}CreationDate") or "",
            }
            for b in root.iter(f"{_NS}Bucket")
        ]

    async def objects(
        self, bucket: str, prefix: str = ""
    ) -> tuple[list[dict[str, Any]], list[str]]:
        query = "delimiter=%2F&list-type=2" + (
            f"&prefix={_enc(prefix, keep_slash=False)}" if prefix else ""
        )
        status, raw = await self._request("GET", "/" + _enc(bucket, keep_slash=False), query)
        if status != 200:
            raise self._error(status, raw)
        root = ElementTree.fromstring(raw)
        objects = [
            {
                "key": c.findtext(f"{_NS}Key") or "",
                "size": int(c.findtext(f"{_NS}Size") or 0),
                "modified": c.findtext(f"{_NS}LastModified") or "",
            }
            for c in root.iter(f"{_NS}Contents")
        ]
        prefixes = [p.findtext(f"{_NS}Prefix") or "" for p in root.iter(f"{_NS}CommonPrefixes")]
        return objects, prefixes

    def _object_path(self, bucket: str, key: str) -> str:
        return "/" + _enc(bucket, keep_slash=False) + "/" + _enc(key, keep_slash=True)

    async def get(self, bucket: str, key: str) -> tuple[int, bytes]:
        return await self._request("GET", self._object_path(bucket, key))

    async def put(self, bucket: str, key: str, body: bytes) -> None:
        status, raw = await self._request("PUT", self._object_path(bucket, key), body=body)
        if status != 200:
            raise self._error(status, raw)

    async def delete(self, bucket: str, key: str) -> None:
        status, raw = await self._request("DELETE", self._object_path(bucket, key))
        if status not in (200, 204):
            raise self._error(status, raw)

    async def shares(self) -> list[dict[str, Any]]:
        status, raw = await self._request("GET", "/_tunnelmesh/shares")
        if status != 200:
            raise self._error(status, raw)
        data = json.loads(raw)
        return list(data) if isinstance(data, list) else []
