"""AWS Signature Version 4 for S3, both ends, sans-IO: no sockets, no clock, no aiohttp.

Server side, :func:`verify` checks a request signed in its ``Authorization`` header or in a
presigned query string, and :class:`ChunkedDecoder` is an incremental parser of ``aws-chunked``
bodies (``STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`` and
``STREAMING-UNSIGNED-PAYLOAD-TRAILER``) that releases each chunk only once its signature checks.
Client side, :func:`sign_headers`, :func:`presign` and :class:`ChunkSigner` produce the same.

Every comparison of signatures uses :func:`hmac.compare_digest`. Failures raise
:class:`SigV4Error` carrying the S3 error code the service answers with.

References: the "Signature Version 4 signing process" and "Authenticating Requests (AWS
Signature Version 4)" sections of the Amazon S3 API reference, whose worked examples are this
module's unit tests.
"""

from __future__ import annotations

import calendar
import email.utils
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from urllib.parse import quote_from_bytes, unquote_to_bytes

from tunnelmesh.errors import RemoteProtocolError

__all__ = [
    "ALGORITHM",
    "EMPTY_SHA256",
    "STREAMING",
    "STREAMING_TRAILER",
    "STREAMING_UNSIGNED_TRAILER",
    "UNSIGNED",
    "ChunkSigner",
    "ChunkedDecoder",
    "Request",
    "SigV4Error",
    "Verified",
    "amz_date",
    "presign",
    "sign_headers",
    "signing_key",
    "verify",
]

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED = "UNSIGNED-PAYLOAD"
STREAMING = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_SKEW = 15 * 60
MAX_PRESIGN_EXPIRES = 7 * 24 * 3600
MAX_CHUNK = 16 * 1024 * 1024

_STREAMING_MODES = (STREAMING, STREAMING_TRAILER, STREAMING_UNSIGNED_TRAILER)


class SigV4Error(RemoteProtocolError):
    """A request failed authentication; ``code`` is the S3 error code to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --- canonical forms ---------------------------------------------------------------------------


def uri_encode(raw: bytes, *, keep_slash: bool) -> str:
    """Percent-encode every byte but the RFC 3986 unreserved ones (and ``/`` when asked)."""
    # quote keeps exactly the unreserved bytes (letters, digits, "-._~") plus ``safe``, and
    # writes the others as %XX in upper case
    return quote_from_bytes(raw, safe="/" if keep_slash else "")


_PLAIN_PATH = re.compile(r"[A-Za-z0-9\-._~/]*")
"""A path whose canonical form is itself (nothing to decode, nothing to encode)."""


def canonical_uri(raw_path: str) -> str:
    """S3's canonical URI: the path decoded once, then encoded once (no dot-segment removal)."""
    if raw_path and _PLAIN_PATH.fullmatch(raw_path):
        return raw_path
    return uri_encode(unquote_to_bytes(raw_path or "/"), keep_slash=True)


def query_pairs(raw_query: str) -> list[tuple[bytes, bytes]]:
    """The decoded (name, value) pairs of a raw query string, in order. ``+`` stays ``+``."""
    pairs = []
    for part in raw_query.split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((unquote_to_bytes(name), unquote_to_bytes(value)))
    return pairs


def canonical_query(raw_query: str, *, drop: Iterable[str] = ()) -> str:
    """The canonical query string: every pair encoded, sorted by name then value."""
    if not raw_query:
        return ""
    dropped = {d.encode() for d in drop}
    encoded = sorted(
        (uri_encode(k, keep_slash=False), uri_encode(v, keep_slash=False))
        for k, v in query_pairs(raw_query)
        if k not in dropped
    )
    return "&".join(f"{k}={v}" for k, v in encoded)


def canonical_headers(headers: Sequence[tuple[str, str]], signed: Sequence[str]) -> str:
    """``name:value\\n`` per signed header; repeated headers joined by commas, spaces folded."""
    values: dict[str, list[str]] = {}
    for name, value in headers:
        values.setdefault(name.lower(), []).append(value)
    return _canonical_headers(values, signed)


def _canonical_headers(values: Mapping[str, Sequence[str]], signed: Sequence[str]) -> str:
    """:func:`canonical_headers` of headers given by lower-case name (values as sent)."""
    lines = []
    for name in signed:
        found = values.get(name)
        if found is None:
            raise SigV4Error("AccessDenied", f"signed header {name!r} is missing from the request")
        lines.append(f"{name}:{','.join(' '.join(value.split()) for value in found)}\n")
    return "".join(lines)


def canonical_request(
    method: str,
    uri: str,
    query: str,
    headers: Sequence[tuple[str, str]],
    signed: Sequence[str],
    payload_hash: str,
) -> str:
    return "\n".join(
        [method, uri, query, canonical_headers(headers, signed), ";".join(signed), payload_hash]
    )


def string_to_sign(amz: str, scope: str, creq: str) -> str:
    digest = hashlib.sha256(creq.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{ALGORITHM}\n{amz}\n{scope}\n{digest}"


@lru_cache(maxsize=1024)
def signing_key(secret: str, date: str, region: str, service: str = "s3") -> bytes:
    """The derived key for one day, region and service (cached: it changes once a day)."""
    key = hmac.digest(("AWS4" + secret).encode(), date.encode(), "sha256")
    for part in (region, service, "aws4_request"):
        key = hmac.digest(key, part.encode(), "sha256")
    return key


def _hmac_hex(key: bytes, text: str) -> str:
    return hmac.digest(key, text.encode(), "sha256").hex()


def amz_date(now: float) -> str:
    """``YYYYMMDDTHHMMSSZ`` for a Unix time."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


@lru_cache(maxsize=64)  # requests signed within the same second share it
def _parse_amz_date(value: str) -> float:
    try:
        return float(calendar.timegm(time.strptime(value, "%Y%m%dT%H%M%SZ")))
    except ValueError:
        raise SigV4Error("AccessDenied", f"invalid date {value!r}") from None


# --- server side -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What :func:`verify` needs of an HTTP request.

    Attributes:
        method: the HTTP method.
        raw_path: the path exactly as on the request line (still percent-encoded).
        raw_query: the query string exactly as sent, without ``?``.
        headers: every header line as (name, value), repeated names repeated; bytes that are
            not UTF-8 decoded with ``surrogateescape`` (what is signed is the bytes as sent).
    """

    method: str
    raw_path: str
    raw_query: str
    headers: Sequence[tuple[str, str]]

    @cached_property
    def by_name(self) -> dict[str, list[str]]:
        """Every header's values (as sent, in order) by its name in lower case."""
        out: dict[str, list[str]] = {}
        for key, value in self.headers:
            name = key.lower()
            seen = out.get(name)
            if seen is None:
                out[name] = [value]
            else:
                seen.append(value)
        return out

    def header(self, name: str) -> str | None:
        """The value of the first header of that name (any case), or None."""
        values = self.by_name.get(name.lower())
        return None if values is None else values[0]


@dataclass(frozen=True)
class Verified:
    """A request whose signature checked.

    Attributes:
        access_key: who signed it.
        payload: the declared payload hash: a hex SHA-256, ``UNSIGNED-PAYLOAD`` or one of the
            streaming modes. A hex hash still has to be checked against the body.
        key: the signing key, for chunk signatures.
        amz: the request's ``YYYYMMDDTHHMMSSZ`` timestamp.
        scope: ``date/region/s3/aws4_request``.
        signature: the request signature (the seed of chunk signatures).
        presigned: the signature came in the query string.
    """

    access_key: str
    payload: str
    key: bytes
    amz: str
    scope: str
    signature: str
    presigned: bool = False

    def chunk_decoder(self) -> ChunkedDecoder | None:
        """The body parser for a streaming payload; None when the body is plain."""
        if self.payload not in _STREAMING_MODES:
            return None
        if self.payload == STREAMING_UNSIGNED_TRAILER:
            return ChunkedDecoder()
        return ChunkedDecoder(
            key=self.key,
            amz=self.amz,
            scope=self.scope,
            seed=self.signature,
            trailer=self.payload == STREAMING_TRAILER,
        )


def _parse_credential(value: str, region: str, code: str) -> tuple[str, str, str]:
    parts = value.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise SigV4Error(code, f"malformed credential {value!r}")
    access_key, date, cred_region, service, _ = parts
    if service != "s3":
        raise SigV4Error(code, f"credential is for service {service!r}; this is s3")
    if cred_region != region:
        raise SigV4Error(code, f"the region {cred_region!r} is wrong; expecting {region!r}")
    return access_key, date, "/".join(parts[1:])


def parse_authorization(value: str) -> tuple[str, list[str], str]:
    """Split an ``Authorization`` header into (credential, signed header names, signature)."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise SigV4Error(
            "InvalidArgument" if algorithm == "AWS" else "AuthorizationHeaderMalformed",
            f"unsupported authorization type {algorithm!r}; only {ALGORITHM} is accepted",
        )
    fields: dict[str, str] = {}
    for item in rest.split(","):
        name, sep, val = item.strip().partition("=")
        if sep:
            fields[name] = val
    try:
        return fields["Credential"], fields["SignedHeaders"].split(";"), fields["Signature"]
    except KeyError as exc:
        raise SigV4Error("AuthorizationHeaderMalformed", f"missing {exc.args[0]}") from None


def verify(
    req: Request,
    lookup_secret: Callable[[str], str | None],
    *,
    region: str,
    now: float,
    max_skew: float = MAX_SKEW,
) -> Verified:
    """Check a request's SigV4 signature, in the headers or in the query string.

    Args:
        req: the request.
        lookup_secret: access key to secret, or None for an unknown key.
        region: the only region this service accepts in credential scopes.
        now: the current Unix time.
        max_skew: how far a header-signed request's date may be from ``now``.

    Raises:
        SigV4Error: unsigned, malformed, unknown key, expired, skewed or wrong signature.
    """
    auth = req.header("authorization")
    query = dict(query_pairs(req.raw_query)) if auth is None else {}
    if auth is not None:
        credential, signed, signature = parse_authorization(auth)
        access_key, date, scope = _parse_credential(
            credential, region, "AuthorizationHeaderMalformed"
        )
        amz = req.header("x-amz-date")
        if amz is None:
            http_date = req.header("date")
            parsed = email.utils.parsedate_tz(http_date) if http_date else None
            if parsed is None:
                raise SigV4Error("AccessDenied", "the request has no x-amz-date or Date header")
            amz = amz_date(email.utils.mktime_tz(parsed))
        when = _parse_amz_date(amz)
        if abs(when - now) > max_skew:
            raise SigV4Error(
                "RequestTimeTooSkewed",
                "the difference between the request time and the server's time is too large",
            )
        payload = req.header("x-amz-content-sha256")
        if payload is None:
            raise SigV4Error("InvalidRequest", "missing required header x-amz-content-sha256")
        query_string = canonical_query(req.raw_query)
        presigned = False
    elif b"X-Amz-Signature" in query:
        code = "AuthorizationQueryParametersError"
        try:
            algorithm = query[b"X-Amz-Algorithm"].decode()
            credential = query[b"X-Amz-Credential"].decode()
            amz = query[b"X-Amz-Date"].decode()
            expires = int(query[b"X-Amz-Expires"])
            signed = query[b"X-Amz-SignedHeaders"].decode().split(";")
            signature = query[b"X-Amz-Signature"].decode()
        except (KeyError, ValueError, UnicodeDecodeError):
            raise SigV4Error(
                code, "presigned URL is missing or mangles an X-Amz-* parameter"
            ) from None
        if algorithm != ALGORITHM:
            raise SigV4Error(code, f"X-Amz-Algorithm must be {ALGORITHM}")
        if expires > MAX_PRESIGN_EXPIRES:
            raise SigV4Error(
                code,
                "X-Amz-Expires must be less than a week (in seconds); that is, the given "
                f"X-Amz-Expires must be less than {MAX_PRESIGN_EXPIRES} seconds",
            )
        access_key, date, scope = _parse_credential(credential, region, code)
        when = _parse_amz_date(amz)
        if expires <= 0 or now > when + expires:
            # S3's answer to a presigned URL used too late (a lifetime of 0 or less: at once)
            raise SigV4Error("AccessDenied", "Request has expired")
        if when > now + max_skew:
            raise SigV4Error("AccessDenied", "Request is not valid yet")
        payload = UNSIGNED
        query_string = canonical_query(req.raw_query, drop=["X-Amz-Signature"])
        presigned = True
    else:
        raise SigV4Error("AccessDenied", "Access Denied: the request is not signed")
    if not amz.startswith(date):
        raise SigV4Error(
            "SignatureDoesNotMatch", "the credential date does not match the request date"
        )
    if "host" not in signed:
        raise SigV4Error("AccessDenied", "the host header must be signed")
    headers = req.by_name
    unsigned = sorted(name for name in headers if name.startswith("x-amz-") and name not in signed)
    if unsigned:
        # S3 refuses these: a man-in-the-middle could add metadata or a copy source otherwise
        raise SigV4Error(
            "AccessDenied",
            "There were headers present in the request which were not signed: "
            + ", ".join(unsigned),
        )
    secret = lookup_secret(access_key)
    if secret is None:
        raise SigV4Error(
            "InvalidAccessKeyId",
            "The AWS Access Key Id you provided does not exist in our records.",
        )
    key = signing_key(secret, date, region)
    # The canonical URI is the path decoded and re-encoded; some signers (botocore) use the
    # path exactly as sent instead. Both are signatures over this very request.
    expected = ""
    # canonical_request's lines after the URI and query: the same for both URIs
    rest = f"{_canonical_headers(headers, signed)}\n{';'.join(signed)}\n{payload}"
    for uri in dict.fromkeys([canonical_uri(req.raw_path), req.raw_path or "/"]):
        creq = f"{req.method}\n{uri}\n{query_string}\n{rest}"
        expected = _hmac_hex(key, string_to_sign(amz, scope, creq))
        if hmac.compare_digest(expected, signature.lower()):
            break
    else:
        raise SigV4Error(
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        )
    return Verified(access_key, payload, key, amz, scope, expected, presigned)


def _chunk_string(amz: str, scope: str, previous: str, data_hash: str) -> str:
    return f"{ALGORITHM}-PAYLOAD\n{amz}\n{scope}\n{previous}\n{EMPTY_SHA256}\n{data_hash}"


def _trailer_string(amz: str, scope: str, previous: str, trailers: Mapping[str, str]) -> str:
    text = "".join(f"{name}:{value}\n" for name, value in trailers.items())
    return f"{ALGORITHM}-TRAILER\n{amz}\n{scope}\n{previous}\n{hashlib.sha256(text.encode()).hexdigest()}"


@dataclass
class ChunkedDecoder:
    """Incremental parser of an ``aws-chunked`` body.

    Feed it the raw body in pieces of any size; :meth:`feed` returns the payload bytes that are
    complete and (when signed) verified. Memory is bounded by one chunk (at most
    :data:`MAX_CHUNK`). Without ``key`` the chunks carry no signatures
    (``STREAMING-UNSIGNED-PAYLOAD-TRAILER``).

    Raises:
        SigV4Error: ``SignatureDoesNotMatch`` for a bad chunk or trailer signature,
            ``IncompleteBody`` or ``InvalidRequest`` for a malformed body.
    """

    key: bytes | None = None
    amz: str = ""
    scope: str = ""
    seed: str = ""
    trailer: bool = False
    trailers: dict[str, str] = field(default_factory=dict)
    done: bool = False
    _buf: bytearray = field(default_factory=bytearray)
    _size: int | None = None
    _signature: str = ""
    _final: bool = False
    decoded: int = 0

    def __post_init__(self) -> None:
        self._previous = self.seed

    def feed(self, data: bytes) -> list[bytes]:
        if self.done and data:
            raise SigV4Error("InvalidRequest", "data after the end of an aws-chunked body")
        self._buf += data
        out: list[bytes] = []
        while not self.done:
            if self._final:
                if not self._take_trailer_line():
                    break
            elif self._size is None:
                if not self._take_header():
                    break
            else:
                need = self._size + 2
                if len(self._buf) < need:
                    break
                chunk = bytes(self._buf[: self._size])
                if self._buf[self._size : need] != b"\r\n":
                    raise SigV4Error("IncompleteBody", "aws-chunked chunk is not followed by CRLF")
                del self._buf[:need]
                self._check_chunk(chunk)
                self._size = None
                if chunk:
                    self.decoded += len(chunk)
                    out.append(chunk)
        return out

    def _line(self) -> str | None:
        end = self._buf.find(b"\r\n")
        if end < 0:
            if len(self._buf) > 4096:
                raise SigV4Error("InvalidRequest", "aws-chunked header line is too long")
            return None
        line = bytes(self._buf[:end]).decode("ascii", "replace")
        del self._buf[: end + 2]
        return line

    def _take_header(self) -> bool:
        line = self._line()
        if line is None:
            return False
        size_text, _, ext = line.partition(";")
        try:
            size = int(size_text, 16)
        except ValueError:
            raise SigV4Error("InvalidRequest", f"bad aws-chunked header {line[:64]!r}") from None
        if size > MAX_CHUNK:
            raise SigV4Error("InvalidRequest", f"aws-chunked chunk of {size} bytes is too large")
        if self.key is not None:
            name, _, signature = ext.partition("=")
            if name.strip() != "chunk-signature" or not signature:
                raise SigV4Error(
                    "SignatureDoesNotMatch", "aws-chunked chunk has no chunk-signature"
                )
            self._signature = signature.strip()
        if size == 0:
            if self.key is not None:
                self._check_chunk(b"")
            self._final = True
            return True
        self._size = size
        return True

    def _check_chunk(self, chunk: bytes) -> None:
        if self.key is None:
            return
        expected = _hmac_hex(
            self.key,
            _chunk_string(self.amz, self.scope, self._previous, hashlib.sha256(chunk).hexdigest()),
        )
        if not hmac.compare_digest(expected, self._signature.lower()):
            raise SigV4Error("SignatureDoesNotMatch", "a chunk signature does not match")
        self._previous = expected

    def _take_trailer_line(self) -> bool:
        line = self._line()
        if line is None:
            return False
        if line == "":
            if self.key is not None and self.trailer:
                signature = self.trailers.pop("x-amz-trailer-signature", "")
                expected = _hmac_hex(
                    self.key, _trailer_string(self.amz, self.scope, self._previous, self.trailers)
                )
                if not hmac.compare_digest(expected, signature.lower()):
                    raise SigV4Error(
                        "SignatureDoesNotMatch", "the trailer signature does not match"
                    )
            self.done = True
            return True
        name, sep, value = line.partition(":")
        if not sep:
            raise SigV4Error("InvalidRequest", f"bad aws-chunked trailer {line[:64]!r}")
        self.trailers[name.strip().lower()] = value.strip()
        return True

    def close(self) -> None:
        """Call at the end of the body. Raises SigV4Error("IncompleteBody") if it was cut short."""
        if not self.done:
            raise SigV4Error("IncompleteBody", "the aws-chunked body ended early")


# --- client side -------------------------------------------------------------------------------


def sign_headers(
    method: str,
    url_path: str,
    query: str,
    headers: dict[str, str],
    *,
    access_key: str,
    secret: str,
    region: str,
    now: float,
    payload: str = UNSIGNED,
) -> str:
    """Sign a request: add ``x-amz-date`` and ``x-amz-content-sha256`` to ``headers`` (which
    must hold ``host``) and return the request signature; ``headers["authorization"]`` is set.

    ``url_path`` and ``query`` are sent exactly as given (already percent-encoded).
    """
    amz = amz_date(now)
    headers["x-amz-date"] = amz
    headers["x-amz-content-sha256"] = payload
    signed = sorted(k.lower() for k in headers if k.lower() != "authorization")
    scope = f"{amz[:8]}/{region}/s3/aws4_request"
    creq = canonical_request(
        method,
        canonical_uri(url_path),
        canonical_query(query),
        list(headers.items()),
        signed,
        payload,
    )
    signature = _hmac_hex(signing_key(secret, amz[:8], region), string_to_sign(amz, scope, creq))
    headers["authorization"] = (
        f"{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={';'.join(signed)}, "
        f"Signature={signature}"
    )
    return signature


def presign(
    method: str,
    host: str,
    url_path: str,
    *,
    access_key: str,
    secret: str,
    region: str,
    now: float,
    expires: int,
    query: str = "",
) -> str:
    """Return the query string (without ``?``) that presigns ``method url_path`` for ``expires``."""
    amz = amz_date(now)
    scope = f"{amz[:8]}/{region}/s3/aws4_request"
    params = [
        ("X-Amz-Algorithm", ALGORITHM),
        ("X-Amz-Credential", f"{access_key}/{scope}"),
        ("X-Amz-Date", amz),
        ("X-Amz-Expires", str(expires)),
        ("X-Amz-SignedHeaders", "host"),
    ]
    qs = "&".join(
        [query] * bool(query)
        + [f"{k}={uri_encode(v.encode(), keep_slash=False)}" for k, v in params]
    )
    creq = canonical_request(
        method, canonical_uri(url_path), canonical_query(qs), [("host", host)], ["host"], UNSIGNED
    )
    signature = _hmac_hex(signing_key(secret, amz[:8], region), string_to_sign(amz, scope, creq))
    return f"{qs}&X-Amz-Signature={signature}"


class ChunkSigner:
    """Frames a payload as signed ``aws-chunked`` chunks (``STREAMING-AWS4-HMAC-SHA256-PAYLOAD``).

    Send with ``x-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD``,
    ``content-encoding: aws-chunked``, ``x-amz-decoded-content-length`` and a ``content-length`` of
    :meth:`encoded_length`; the seed is the request signature from :func:`sign_headers`.
    """

    def __init__(self, *, secret: str, region: str, amz: str, seed: str) -> None:
        self._key = signing_key(secret, amz[:8], region)
        self._amz = amz
        self._scope = f"{amz[:8]}/{region}/s3/aws4_request"
        self._previous = seed

    def chunk(self, data: bytes) -> bytes:
        """One framed chunk; ``chunk(b"")`` is the final one."""
        signature = _hmac_hex(
            self._key,
            _chunk_string(self._amz, self._scope, self._previous, hashlib.sha256(data).hexdigest()),
        )
        self._previous = signature
        return b"%x;chunk-signature=%s\r\n%s\r\n" % (len(data), signature.encode(), data)

    @staticmethod
    def encoded_length(payload: int, chunk_size: int) -> int:
        """The framed length of a ``payload``-byte body sent in ``chunk_size`` chunks."""

        def framed(n: int) -> int:
            return len(f"{n:x}") + len(";chunk-signature=") + 64 + 4 + n

        full, rest = divmod(payload, chunk_size)
        return full * framed(chunk_size) + (framed(rest) if rest else 0) + framed(0)
