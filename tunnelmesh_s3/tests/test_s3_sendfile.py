"""GET with sendfile (the filesystem backend's objects are files) answers exactly as streaming.

Every case runs twice: through ``sendfile`` and with the backend's :class:`LocalFiles`
capability removed (the streaming path other backends take); both must give the same status,
headers and bytes, for whole objects, ranges (suffix, open-ended, across part boundaries) and
unsatisfiable ranges (416 InvalidRange).
"""

from __future__ import annotations

import http.client
import os
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import boto3
import pytest
import tunnelmesh_s3.objects as objects
from botocore.config import Config
from botocore.exceptions import ClientError
from tunnelmesh_s3.server import Running, ServerThread

AK, SK = "AKSENDFILETEST", "sendfile-secret-for-tests"
MiB = 1024 * 1024
PART = 5 * MiB
SINGLE = os.urandom(3 * MiB + 17)
PARTS = [os.urandom(PART), os.urandom(PART), os.urandom(12345)]
MULTI = b"".join(PARTS)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with ServerThread(tmp_path_factory.mktemp("s3"), access_key=AK, secret_key=SK) as running:
        yield running


def _client(running: Running) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=running.endpoint,
        aws_access_key_id=AK,
        aws_secret_access_key=SK,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}),
    )


@pytest.fixture(scope="module")
def s3(running: Running) -> Any:
    s3 = _client(running)
    s3.create_bucket(Bucket="sfb")
    s3.put_object(Bucket="sfb", Key="single", Body=SINGLE, Metadata={"who": "me"})
    s3.put_object(Bucket="sfb", Key="empty", Body=b"")
    up = s3.create_multipart_upload(Bucket="sfb", Key="multi")["UploadId"]
    etags = [
        s3.upload_part(Bucket="sfb", Key="multi", UploadId=up, PartNumber=n, Body=d)["ETag"]
        for n, d in enumerate(PARTS, 1)
    ]
    s3.complete_multipart_upload(
        Bucket="sfb",
        Key="multi",
        UploadId=up,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]},
    )
    return s3


@runtime_checkable
class _NoLocalFiles(Protocol):
    """A capability no reader has: GET takes the streaming path as for other backends."""

    def no_such_capability(self) -> None: ...


class Path:
    def __init__(self) -> None:
        self.calls: list[int] = []
        self.body_sent: bool | None = True
        """Whether the test's GETs send a body (None: not checked)."""


@pytest.fixture(params=["sendfile", "stream"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Which GET path serves the test; checks afterwards that it was the one taken."""
    state = Path()
    calls = state.calls
    real = objects._sendfile

    async def counting(*args: Any) -> None:
        calls.append(1)
        await real(*args)

    monkeypatch.setattr(objects, "_sendfile", counting)
    if request.param == "stream":
        monkeypatch.setattr(objects, "LocalFiles", _NoLocalFiles)
    yield state
    if state.body_sent is not None:
        assert bool(calls) == (state.body_sent and request.param == "sendfile")


def _expected(data: bytes, spec: str) -> tuple[bytes, str]:
    """Bytes and Content-Range S3 answers a satisfiable ``bytes=`` spec with."""
    first, last = spec.removeprefix("bytes=").split("-")
    size = len(data)
    if first == "":
        start, end = max(size - int(last), 0), size
    else:
        start = int(first)
        end = size if last == "" else min(int(last) + 1, size)
    return data[start:end], f"bytes {start}-{end - 1}/{size}"


RANGES = [
    "bytes=0-0",
    "bytes=0-",  # open-ended from the start
    "bytes=100-",  # open-ended
    "bytes=-1",  # suffix: the last byte
    "bytes=-1000",  # suffix
    "bytes=-99999999",  # suffix longer than the object: the whole object
    "bytes=1000-2000",
    "bytes=1000-99999999",  # last past the end: clipped
]
MULTI_RANGES = [
    f"bytes={PART - 2}-{PART + 1}",  # across the first part boundary
    f"bytes={PART - 1}-{2 * PART}",  # last byte of part 1 .. first byte of part 3
    f"bytes={2 * PART}-",  # exactly the last part, open-ended
    f"bytes=-{12345 + 1}",  # suffix reaching one byte into part 2
]


@pytest.mark.parametrize(
    ("key", "spec"),
    [("single", r) for r in RANGES] + [("multi", r) for r in RANGES + MULTI_RANGES],
)
def test_ranged_get_answers_the_bytes_and_content_range_s3_does(
    s3: Any, path: Path, key: str, spec: str
) -> None:
    data = SINGLE if key == "single" else MULTI
    got = s3.get_object(Bucket="sfb", Key=key, Range=spec)
    body, content_range = _expected(data, spec)
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert got["ContentRange"] == content_range
    assert got["ContentLength"] == len(body)
    assert got["Body"].read() == body


def test_whole_get_keeps_every_header(s3: Any, path: Path) -> None:
    head = s3.head_object(Bucket="sfb", Key="single")
    got = s3.get_object(Bucket="sfb", Key="single")
    assert got["Body"].read() == SINGLE
    for name in ("ETag", "LastModified", "Metadata", "ContentType", "ContentLength"):
        assert got[name] == head[name], name
    assert got["Metadata"] == {"who": "me"}
    multi = s3.get_object(Bucket="sfb", Key="multi")
    assert multi["Body"].read() == MULTI
    assert multi["ETag"].endswith('-3"')


def test_get_part_number_serves_that_part(s3: Any, path: Path) -> None:
    got = s3.get_object(Bucket="sfb", Key="multi", PartNumber=2)
    assert got["Body"].read() == PARTS[1]
    assert got["ContentRange"] == f"bytes {PART}-{2 * PART - 1}/{len(MULTI)}"


def test_conditional_get_is_answered_before_any_body(s3: Any, path: Path) -> None:
    etag = s3.head_object(Bucket="sfb", Key="single")["ETag"]
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="sfb", Key="single", IfNoneMatch=etag)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="sfb", Key="single", IfMatch='"0000"')
    assert err.value.response["Error"]["Code"] == "PreconditionFailed"
    path.body_sent = False


@pytest.mark.parametrize(
    ("key", "spec"),
    [
        ("single", f"bytes={len(SINGLE)}-"),  # starts at the end
        ("single", f"bytes={len(SINGLE) + 10}-{len(SINGLE) + 20}"),  # wholly past the end
        ("single", "bytes=-0"),  # empty suffix
        ("multi", f"bytes={len(MULTI)}-"),
        ("empty", "bytes=0-"),
    ],
)
def test_range_past_the_end_is_416_invalid_range(s3: Any, path: Path, key: str, spec: str) -> None:
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="sfb", Key=key, Range=spec)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 416
    assert err.value.response["Error"]["Code"] == "InvalidRange"
    path.body_sent = False


def test_empty_object_get(s3: Any, path: Path) -> None:
    got = s3.get_object(Bucket="sfb", Key="empty")
    assert got["Body"].read() == b""
    assert got["ContentLength"] == 0
    path.body_sent = None  # zero bytes: nothing to send either way


def test_get_in_progress_keeps_serving_the_version_it_opened(
    s3: Any, running: Running, path: Path
) -> None:
    old = os.urandom(24 * MiB)
    s3.put_object(Bucket="sfb", Key="moving", Body=old)
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "sfb", "Key": "moving"})
    target = url.split(str(running.port), 1)[1]
    conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        assert resp.status == 200
        first = resp.read(MiB)
        s3.put_object(Bucket="sfb", Key="moving", Body=b"new")  # overwritten mid-GET
        s3.delete_object(Bucket="sfb", Key="moving")  # and deleted
        rest = resp.read()
    finally:
        conn.close()
    assert first + rest == old


SMALL = os.urandom(5000)


@pytest.mark.parametrize("spec", [None, *RANGES[:-3], "bytes=4999-"])
def test_small_object_is_answered_from_memory(
    s3: Any, monkeypatch: pytest.MonkeyPatch, spec: str | None
) -> None:
    """A small object lives in the filesystem backend's index, not in a file: its GET is one
    response from memory (no sendfile), with the same bytes and headers."""
    calls: list[int] = []

    async def counting(*args: Any) -> None:
        calls.append(1)

    monkeypatch.setattr(objects, "_sendfile", counting)
    s3.put_object(Bucket="sfb", Key="small", Body=SMALL, Metadata={"size": "small"})
    head = s3.head_object(Bucket="sfb", Key="small")
    got = s3.get_object(Bucket="sfb", Key="small", **({"Range": spec} if spec else {}))
    if spec is None:
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 200
        assert got["Body"].read() == SMALL
        for name in ("ETag", "LastModified", "Metadata", "ContentType", "ContentLength"):
            assert got[name] == head[name], name
    else:
        body, content_range = _expected(SMALL, spec)
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert got["ContentRange"] == content_range
        assert got["ContentLength"] == len(body)
        assert got["Body"].read() == body
    assert got["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]
    assert calls == []


def test_uvloop_which_has_no_sendfile_still_sends_every_byte(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The coordinator's own peer serves S3 (and the shares over it) on uvloop, whose loop has
    no ``sendfile``: GET fell silent after its headers (an empty body, a WebDAV copy read back
    empty). The body goes out in chunks there: whole, ranged, across parts."""
    uvloop = pytest.importorskip("uvloop")
    with ServerThread(
        tmp_path_factory.mktemp("s3uv"),
        loop_factory=uvloop.new_event_loop,
        access_key=AK,
        secret_key=SK,
    ) as running:
        s3 = _client(running)
        s3.create_bucket(Bucket="uvb")
        s3.put_object(Bucket="uvb", Key="single", Body=SINGLE)
        up = s3.create_multipart_upload(Bucket="uvb", Key="multi")["UploadId"]
        parts = [
            {
                "PartNumber": n,
                "ETag": s3.upload_part(
                    Bucket="uvb", Key="multi", UploadId=up, PartNumber=n, Body=d
                )["ETag"],
            }
            for n, d in enumerate(PARTS, 1)
        ]
        s3.complete_multipart_upload(
            Bucket="uvb", Key="multi", UploadId=up, MultipartUpload={"Parts": parts}
        )
        assert s3.get_object(Bucket="uvb", Key="single")["Body"].read() == SINGLE
        assert s3.get_object(Bucket="uvb", Key="multi")["Body"].read() == MULTI
        spec = f"bytes={PART - 2}-{2 * PART + 5}"
        body = s3.get_object(Bucket="uvb", Key="multi", Range=spec)["Body"].read()
        assert body == _expected(MULTI, spec)[0]
