"""SigV4 without sockets: AWS's published S3 examples, botocore's signer, and tampering."""

from __future__ import annotations

import calendar
import time
from urllib.parse import urlsplit

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from tunnelmesh_s3.sigv4 import ChunkedDecoder, ChunkSigner, Request, SigV4Error

from tunnelmesh_s3 import sigv4

# The examples of "Authenticating Requests: Using the Authorization Header (AWS Signature
# Version 4)" and "Signature Calculations for the Authorization Header: Transferring Payload in
# Multiple Chunks" in the Amazon S3 API reference.
AK = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
HOST = "examplebucket.s3.amazonaws.com"
AMZ = "20130524T000000Z"
NOW = float(calendar.timegm(time.strptime(AMZ, "%Y%m%dT%H%M%SZ")))
SCOPE = "20130524/us-east-1/s3/aws4_request"


def lookup(access_key: str) -> str | None:
    return SECRET if access_key == AK else None


def header_request(
    method: str, target: str, headers: list[tuple[str, str]], signature: str
) -> Request:
    path, _, query = target.partition("?")
    signed = ";".join(sorted(name for name, _ in headers))
    auth = f"AWS4-HMAC-SHA256 Credential={AK}/{SCOPE},SignedHeaders={signed},Signature={signature}"
    return Request(method, path, query, [*headers, ("Authorization", auth)])


EMPTY = sigv4.EMPTY_SHA256
AWS_EXAMPLES = [
    (
        "GET",
        "/test.txt",
        [
            ("host", HOST),
            ("range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY),
            ("x-amz-date", AMZ),
        ],
        "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
    ),
    (
        "PUT",
        "/test%24file.text",
        [
            ("date", "Fri, 24 May 2013 00:00:00 GMT"),
            ("host", HOST),
            (
                "x-amz-content-sha256",
                "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072",
            ),
            ("x-amz-date", AMZ),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        ],
        "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
    ),
    (
        "GET",
        "/?lifecycle",
        [("host", HOST), ("x-amz-content-sha256", EMPTY), ("x-amz-date", AMZ)],
        "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543",
    ),
    (
        "GET",
        "/?max-keys=2&prefix=J",
        [("host", HOST), ("x-amz-content-sha256", EMPTY), ("x-amz-date", AMZ)],
        "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
    ),
]


@pytest.mark.parametrize(("method", "target", "headers", "signature"), AWS_EXAMPLES)
def test_aws_header_examples(method, target, headers, signature) -> None:
    ok = sigv4.verify(
        header_request(method, target, headers, signature), lookup, region="us-east-1", now=NOW
    )
    assert (ok.access_key, ok.signature, ok.presigned) == (AK, signature, False)


@pytest.mark.parametrize(("method", "target", "headers", "signature"), AWS_EXAMPLES)
def test_aws_examples_tampered(method, target, headers, signature) -> None:
    bad = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    with pytest.raises(SigV4Error) as err:
        sigv4.verify(
            header_request(method, target, headers, bad), lookup, region="us-east-1", now=NOW
        )
    assert err.value.code == "SignatureDoesNotMatch"
    changed = [(n, v + "x" if n == "host" else v) for n, v in headers]
    with pytest.raises(SigV4Error, match="does not match"):
        sigv4.verify(
            header_request(method, target, changed, signature), lookup, region="us-east-1", now=NOW
        )


def test_aws_presigned_example() -> None:
    query = (
        "X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Credential={AK}%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
        f"&X-Amz-Date={AMZ}&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
        "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
    )
    req = Request("GET", "/test.txt", query, [("Host", HOST)])
    assert sigv4.verify(req, lookup, region="us-east-1", now=NOW + 3600).presigned
    with pytest.raises(SigV4Error, match="expired") as err:
        sigv4.verify(req, lookup, region="us-east-1", now=NOW + 86401)
    assert err.value.code == "AccessDenied"
    # our own presigner produces the same signature
    ours = sigv4.presign(
        "GET",
        HOST,
        "/test.txt",
        access_key=AK,
        secret=SECRET,
        region="us-east-1",
        now=NOW,
        expires=86400,
    )
    assert ours.endswith("aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404")


CHUNK_HEADERS = [
    ("content-encoding", "aws-chunked"),
    ("content-length", "66824"),
    ("host", "s3.amazonaws.com"),
    ("x-amz-content-sha256", sigv4.STREAMING),
    ("x-amz-date", AMZ),
    ("x-amz-decoded-content-length", "66560"),
    ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
]
SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
CHUNK_SIGS = [
    "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
    "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
    "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
]


def aws_chunked_body() -> bytes:
    payload = b"a" * 66560
    sizes = [65536, 1024, 0]
    out, pos = b"", 0
    for size, sig in zip(sizes, CHUNK_SIGS, strict=True):
        out += b"%x;chunk-signature=%s\r\n%s\r\n" % (size, sig.encode(), payload[pos : pos + size])
        pos += size
    return out


def test_aws_chunked_example() -> None:
    req = header_request("PUT", "/examplebucket/chunkObject.txt", CHUNK_HEADERS, SEED)
    ok = sigv4.verify(req, lookup, region="us-east-1", now=NOW)
    decoder = ok.chunk_decoder()
    assert decoder is not None
    body = aws_chunked_body()
    assert len(body) == 66824 == ChunkSigner.encoded_length(66560, 65536)
    # any split of the body gives the same payload
    for step in (1, 7, 1000, len(body)):
        decoder = ok.chunk_decoder()
        assert decoder is not None
        out = b"".join(
            b"".join(decoder.feed(body[i : i + step])) for i in range(0, len(body), step)
        )
        decoder.close()
        assert out == b"a" * 66560
    # and our signer frames it identically
    signer = ChunkSigner(secret=SECRET, region="us-east-1", amz=AMZ, seed=SEED)
    assert signer.chunk(b"a" * 65536) + signer.chunk(b"a" * 1024) + signer.chunk(b"") == body


def test_chunked_tampering_is_caught() -> None:
    ok = sigv4.verify(
        header_request("PUT", "/examplebucket/chunkObject.txt", CHUNK_HEADERS, SEED),
        lookup,
        region="us-east-1",
        now=NOW,
    )
    body = aws_chunked_body()
    flipped = body.replace(b"a" * 10, b"a" * 9 + b"b", 1)
    decoder = ok.chunk_decoder()
    assert decoder is not None
    with pytest.raises(SigV4Error, match="chunk signature") as err:
        decoder.feed(flipped)
    assert err.value.code == "SignatureDoesNotMatch"
    # dropping the second chunk breaks the chain of signatures
    first_end = body.index(b"400;")
    decoder = ok.chunk_decoder()
    assert decoder is not None
    assert decoder.feed(body[:first_end]) == [b"a" * 65536]
    with pytest.raises(SigV4Error):
        decoder.feed(body[body.index(b"0;chunk") :])
    # a body cut short
    decoder = ok.chunk_decoder()
    assert decoder is not None
    decoder.feed(body[:100])
    with pytest.raises(SigV4Error) as err:
        decoder.close()
    assert err.value.code == "IncompleteBody"


def test_unsigned_trailer_body_as_botocore_frames_it() -> None:
    decoder = ChunkedDecoder()
    body = b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n"
    assert b"".join(decoder.feed(body)) == b"hello world"
    decoder.close()
    assert decoder.trailers == {"x-amz-checksum-crc32": "DUoRhQ=="}


def test_signed_trailer() -> None:
    key = sigv4.signing_key(SECRET, "20130524", "us-east-1")
    signer = ChunkSigner(secret=SECRET, region="us-east-1", amz=AMZ, seed=SEED)
    body = signer.chunk(b"data") + signer.chunk(b"")[:-2]
    trailers = {"x-amz-checksum-crc32": "rfPzYw=="}
    signature = sigv4._hmac_hex(key, sigv4._trailer_string(AMZ, SCOPE, signer._previous, trailers))
    tail = (
        b"x-amz-checksum-crc32:rfPzYw==\r\nx-amz-trailer-signature:%s\r\n\r\n" % signature.encode()
    )
    decoder = ChunkedDecoder(key=key, amz=AMZ, scope=SCOPE, seed=SEED, trailer=True)
    assert decoder.feed(body + tail) == [b"data"]
    decoder.close()
    decoder = ChunkedDecoder(key=key, amz=AMZ, scope=SCOPE, seed=SEED, trailer=True)
    with pytest.raises(SigV4Error, match="trailer"):
        decoder.feed(body + tail.replace(b"rfPzYw", b"rfPzYx"))


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000/bucket/plain.txt",
        "http://127.0.0.1:9000/bucket/sp%20ace/%C3%BCn%C3%AFc%C3%B6de/%2B%21%40%23%24",
        "http://127.0.0.1:9000/bucket?list-type=2&prefix=a%2Fb&delimiter=%2F&max-keys=5",
        "http://127.0.0.1:9000/bucket/key?uploadId=abc-_~.DEF&partNumber=3",
        "http://127.0.0.1:9000/bucket?delete",
        "http://bkt.localhost:9000/key%20with%20spaces?tagging",
    ],
)
def test_botocore_signatures_verify(url: str) -> None:
    creds = Credentials("AKTEST", "s3cr3t/with+chars")
    now = time.time()
    for payload in (sigv4.UNSIGNED, EMPTY):
        aws = AWSRequest(method="PUT", url=url, headers={"X-Amz-Meta-Colour": " blue  sky "})
        aws.context["payload_signing_enabled"] = False
        aws.headers["X-Amz-Content-SHA256"] = payload
        S3SigV4Auth(creds, "s3", "eu-west-3").add_auth(aws)
        prepared = aws.prepare()
        parts = urlsplit(prepared.url)
        headers = [("Host", parts.netloc), *prepared.headers.items()]
        req = Request("PUT", parts.path, parts.query, headers)
        lookup_one = {"AKTEST": "s3cr3t/with+chars"}.get
        assert sigv4.verify(req, lookup_one, region="eu-west-3", now=now).access_key == "AKTEST"
        with pytest.raises(SigV4Error) as err:
            sigv4.verify(req, {"AKTEST": "wrong"}.get, region="eu-west-3", now=now)
        assert err.value.code == "SignatureDoesNotMatch"
        with pytest.raises(SigV4Error) as err:
            sigv4.verify(req, lookup_one, region="eu-west-3", now=now + 3600)
        assert err.value.code == "RequestTimeTooSkewed"
        with pytest.raises(SigV4Error) as err:
            sigv4.verify(req, lookup_one, region="us-east-1", now=now)
        assert err.value.code == "AuthorizationHeaderMalformed"
        with pytest.raises(SigV4Error) as err:
            sigv4.verify(req, {}.get, region="eu-west-3", now=now)
        assert err.value.code == "InvalidAccessKeyId"


def test_botocore_presigned_verify() -> None:
    creds = Credentials("AKTEST", "s3cr3t")
    aws = AWSRequest(method="GET", url="http://127.0.0.1:9000/bucket/a%20b/c?versionId=1")
    S3SigV4QueryAuth(creds, "s3", "us-east-1", expires=60).add_auth(aws)
    parts = urlsplit(aws.prepare().url)
    req = Request("GET", parts.path, parts.query, [("Host", parts.netloc)])
    now = time.time()
    assert sigv4.verify(req, {"AKTEST": "s3cr3t"}.get, region="us-east-1", now=now).presigned
    with pytest.raises(SigV4Error, match="expired"):
        sigv4.verify(req, {"AKTEST": "s3cr3t"}.get, region="us-east-1", now=now + 120)
    tampered = Request("GET", parts.path.replace("c", "d"), parts.query, [("Host", parts.netloc)])
    with pytest.raises(SigV4Error, match="does not match"):
        sigv4.verify(tampered, {"AKTEST": "s3cr3t"}.get, region="us-east-1", now=now)


def test_our_signer_matches_botocore() -> None:
    now = time.time()
    headers = {"host": "127.0.0.1:9000", "x-amz-meta-a": "b"}
    sigv4.sign_headers(
        "GET",
        "/bkt/k%20ey",
        "prefix=x&list-type=2",
        headers,
        access_key="AK",
        secret="SK",
        region="us-east-1",
        now=now,
    )
    req = Request("GET", "/bkt/k%20ey", "prefix=x&list-type=2", list(headers.items()))
    assert sigv4.verify(req, {"AK": "SK"}.get, region="us-east-1", now=now).access_key == "AK"


def test_unsigned_request_is_denied() -> None:
    with pytest.raises(SigV4Error) as err:
        sigv4.verify(Request("GET", "/", "", [("Host", "x")]), lookup, region="us-east-1", now=NOW)
    assert err.value.code == "AccessDenied"


def test_uri_encode_keeps_exactly_the_unreserved_bytes() -> None:
    """RFC 3986 / SigV4 UriEncode: every byte but A-Z a-z 0-9 - _ . ~ (and / when kept) as %XX."""
    unreserved = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~"
    for byte in range(256):
        raw = bytes([byte])
        plain = byte in unreserved
        assert sigv4.uri_encode(raw, keep_slash=False) == (chr(byte) if plain else f"%{byte:02X}")
        assert sigv4.uri_encode(raw, keep_slash=True) == (
            chr(byte) if plain or raw == b"/" else f"%{byte:02X}"
        )
    assert sigv4.uri_encode("a b/é~".encode(), keep_slash=True) == "a%20b/%C3%A9~"


def test_header_lookup_is_by_lower_case_name_and_takes_the_first() -> None:
    req = Request("GET", "/", "", [("X-Amz-Date", "1"), ("x-amz-date", "2"), ("Host", "h")])
    assert req.header("x-amz-date") == req.header("X-AMZ-DATE") == "1"
    assert req.header("host") == "h"
    assert req.header("missing") is None
