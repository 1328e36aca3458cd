"""A small async S3 client for the CLI: SigV4 with streaming chunk signatures, no botocore.

Uploads stream the file as signed ``aws-chunked`` chunks (``STREAMING-AWS4-HMAC-SHA256-PAYLOAD``):
the body is authenticated chunk by chunk without reading the file twice. Downloads stream to a
temporary file renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec
from tunnelmesh.errors import StorageError
from tunnelmesh.logs import add_secret
from yarl import URL

from tunnelmesh_s3 import sigv4

__all__ = ["S3Client", "S3ClientError"]

CHUNK = 1024 * 1024
Progress = Callable[[int], None]


class S3ClientError(StorageError):
    """The server answered with an S3 error (or could not be reached)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if code else message)
        self.status = status
        self.code = code


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _find(node: ET.Element, name: str) -> str:
    for child in node:
        if _local(child.tag) == name:
            return child.text or ""
    return ""


class S3Client:
    """Talks SigV4 to one S3 endpoint (path-style). Use as ``async with S3Client(...) as c``."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        *,
        region: str = "us-east-1",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise S3ClientError(0, "", f"endpoint must be an http(s) URL, got {endpoint!r}")
        self.endpoint = f"{parts.scheme}://{parts.netloc}"
        self.host = parts.netloc
        self.access_key, self.secret_key, self.region = access_key, secret_key, region
        add_secret(secret_key)  # never logged (tunnelmesh.logs)
        self.ssl_context = ssl_context
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> S3Client:
        connector = aiohttp.TCPConnector(ssl=self.ssl_context if self.ssl_context else True)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @staticmethod
    def path(bucket: str = "", key: str = "") -> str:
        raw = f"/{bucket}" + (f"/{key}" if key else "")
        return sigv4.uri_encode(raw.encode(), keep_slash=True)

    @staticmethod
    def query(params: dict[str, str]) -> str:
        return "&".join(
            f"{sigv4.uri_encode(k.encode(), keep_slash=False)}={sigv4.uri_encode(v.encode(), keep_slash=False)}"
            for k, v in params.items()
        )

    async def _send(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        *,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        stream: Any = None,
        payload: str | None = None,
    ) -> aiohttp.ClientResponse:
        assert self._session is not None, "use the client with async with"
        query = self.query(params or {})
        hdrs = {"host": self.host, **(headers or {})}
        if payload is None:
            payload = hashlib.sha256(body).hexdigest()
        signature = sigv4.sign_headers(
            method,
            path,
            query,
            hdrs,
            access_key=self.access_key,
            secret=self.secret_key,
            region=self.region,
            now=time.time(),
            payload=payload,
        )
        data = stream(hdrs["x-amz-date"], signature) if stream is not None else body
        del hdrs["host"]
        url = self.endpoint + path + (f"?{query}" if query else "")
        try:
            response = await self._session.request(
                method, URL(url, encoded=True), headers=hdrs, data=data
            )
        except aiohttp.ClientError as exc:
            raise S3ClientError(0, "", f"cannot reach {self.endpoint}: {exc}") from exc
        if response.status >= 300:
            text = await response.read()
            response.release()
            code, message = "", text.decode("utf-8", "replace")[:200] or response.reason or ""
            try:
                root = ET.fromstring(text)
                code, message = _find(root, "Code"), _find(root, "Message")
            except ET.ParseError:
                code = response.headers.get("x-amz-error-code", "")
            raise S3ClientError(response.status, code or str(response.status), message)
        return response

    async def call(
        self, method: str, path: str, params: dict[str, str] | None = None, **kw: Any
    ) -> bytes:
        response = await self._send(method, path, params, **kw)
        async with response:
            return await response.read()

    async def xml(
        self, method: str, path: str, params: dict[str, str] | None = None, **kw: Any
    ) -> ET.Element:
        return ET.fromstring(await self.call(method, path, params, **kw))

    # --- buckets and listings ---

    async def list_buckets(self) -> list[tuple[str, str]]:
        root = await self.xml("GET", "/")
        return [
            (_find(b, "Name"), _find(b, "CreationDate"))
            for buckets in root
            if _local(buckets.tag) == "Buckets"
            for b in buckets
        ]

    async def create_bucket(self, bucket: str) -> None:
        await self.call("PUT", self.path(bucket))

    async def delete_bucket(self, bucket: str) -> None:
        await self.call("DELETE", self.path(bucket))

    async def list_objects(
        self, bucket: str, prefix: str = "", delimiter: str = ""
    ) -> AsyncIterator[tuple[str, int, str]]:
        """Yield (key, size, last modified) and, with a delimiter, (prefix, -1, "")."""
        token = None
        while True:
            params = {"list-type": "2", "prefix": prefix}
            if delimiter:
                params["delimiter"] = delimiter
            if token:
                params["continuation-token"] = token
            root = await self.xml("GET", self.path(bucket), params)
            for node in root:
                tag = _local(node.tag)
                if tag == "Contents":
                    yield _find(node, "Key"), int(_find(node, "Size")), _find(node, "LastModified")
                elif tag == "CommonPrefixes":
                    yield _find(node, "Prefix"), -1, ""
            if _find(root, "IsTruncated") != "true":
                return
            token = _find(root, "NextContinuationToken")

    async def delete_objects(self, bucket: str, keys: list[str]) -> None:
        from xml.sax.saxutils import escape

        for i in range(0, len(keys), 1000):
            doc = (
                "<Delete><Quiet>true</Quiet>"
                + "".join(f"<Object><Key>{escape(k)}</Key></Object>" for k in keys[i : i + 1000])
                + "</Delete>"
            )
            await self.call("POST", self.path(bucket), {"delete": ""}, body=doc.encode())

    # --- objects ---

    async def put_file(
        self, bucket: str, key: str, path: Path, progress: Progress | None = None
    ) -> str:
        """Upload a file with streaming chunk signatures; return the ETag."""
        size = path.stat().st_size
        secret, region = self.secret_key, self.region

        async def stream(amz: str, seed: str) -> AsyncIterator[bytes]:
            signer = sigv4.ChunkSigner(secret=secret, region=region, amz=amz, seed=seed)
            with path.open("rb") as f:
                while data := f.read(CHUNK):
                    yield signer.chunk(data)
                    if progress:
                        progress(len(data))
            yield signer.chunk(b"")

        headers = {
            "content-encoding": "aws-chunked",
            "content-length": str(sigv4.ChunkSigner.encoded_length(size, CHUNK)),
            "x-amz-decoded-content-length": str(size),
            "content-type": "application/octet-stream",
        }
        response = await self._send(
            "PUT", self.path(bucket, key), headers=headers, stream=stream, payload=sigv4.STREAMING
        )
        response.release()
        return response.headers.get("ETag", "").strip('"')

    async def get_file(
        self,
        bucket: str,
        key: str,
        path: Path,
        progress: Progress | None = None,
        *,
        total: Callable[[int], None] | None = None,
    ) -> int:
        """Download to ``path`` (written to a temporary name, then renamed); return the size."""
        response = await self._send("GET", self.path(bucket, key))
        tmp = path.with_name(f".{path.name}.part")
        size = 0
        try:
            async with response:
                if total is not None and response.content_length is not None:
                    total(response.content_length)
                with tmp.open("wb") as f:
                    async for data in response.content.iter_chunked(CHUNK):
                        f.write(data)
                        size += len(data)
                        if progress:
                            progress(len(data))
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return size

    # --- admin API ---

    async def admin(self, method: str, path: str, data: Any = None) -> Any:
        body = msgspec.json.encode(data) if data is not None else b""
        raw = await self.call(
            method, "/_tunnelmesh/" + sigv4.uri_encode(path.encode(), keep_slash=True), body=body
        )
        return msgspec.json.decode(raw) if raw else None
