"""POST object uploads (S3's browser form upload) as AWS S3 answers them.

Forms are made by boto3's ``generate_presigned_post`` (SigV4, and SigV2 with
``signature_version="s3"``) or by hand, and sent as a browser sends them: ``multipart/form-data``
with the fields first and the file last. Every refused form is checked to have stored nothing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import urllib3
from botocore.exceptions import ClientError
from s3kit import Server, boto_client, issue, serve
from tunnelmesh_s3.server import Running

AK, SK = "AKPOSTTEST", "post-secret-for-tests"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve(tmp_path_factory, AK, SK)


def client(running: Running, ak: str = AK, sk: str = SK, signature: str = "s3v4") -> Any:
    return boto_client(running, ak, sk, signature_version=signature)


@pytest.fixture(scope="module")
def s3(server: Server) -> Any:
    s3 = client(server[1])
    s3.create_bucket(Bucket="forms")
    return s3


def post(
    url: str, fields: list[tuple[str, str]], file: bytes, filename: str = "f.bin"
) -> tuple[int, dict[str, str], bytes]:
    """POST a form as a browser does: the fields in order, then the file."""
    body, content_type = urllib3.encode_multipart_formdata(
        [*fields, ("file", (filename, file, "application/octet-stream"))]
    )
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("POST", parts.path, body, {"Content-Type": content_type})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def presigned(s3: Any, key: str, **kwargs: Any) -> tuple[str, list[tuple[str, str]]]:
    form = s3.generate_presigned_post(Bucket="forms", Key=key, **kwargs)
    return form["url"], list(form["fields"].items())


def absent(s3: Any, key: str) -> bool:
    try:
        s3.head_object(Bucket="forms", Key=key)
    except ClientError as err:
        return err.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    return False


def code_of(body: bytes) -> str:
    return body.split(b"<Code>")[1].split(b"</Code>")[0].decode()


def test_form_signed_with_a_sigv4_policy_stores_the_file_with_its_fields(s3: Any) -> None:
    url, fields = presigned(
        s3,
        "uploads/${filename}",
        Fields={"Content-Type": "text/plain", "x-amz-meta-who": "form", "acl": "private"},
        Conditions=[
            {"Content-Type": "text/plain"},
            {"x-amz-meta-who": "form"},
            {"acl": "private"},
            ["starts-with", "$key", "uploads/"],
            ["content-length-range", 1, 100],
        ],
        ExpiresIn=600,
    )
    status, headers, _ = post(url, fields, b"hello form", filename="docs/a b.txt")
    assert status == 204 and headers["etag"] == f'"{hashlib.md5(b"hello form").hexdigest()}"'
    got = s3.get_object(Bucket="forms", Key="uploads/a b.txt")  # ${filename}, path stripped
    assert got["Body"].read() == b"hello form"
    assert got["ContentType"] == "text/plain" and got["Metadata"] == {"who": "form"}


def test_form_signed_with_a_sigv2_policy_is_accepted(server: Server) -> None:
    v2 = client(server[1], signature="s3")
    url, fields = presigned(v2, "v2-form")
    assert {name for name, _ in fields} >= {"AWSAccessKeyId", "signature", "policy"}
    status, _, _ = post(url, fields, b"v2 body")
    assert status == 204
    assert v2.get_object(Bucket="forms", Key="v2-form")["Body"].read() == b"v2 body"


def test_success_action_status_201_answers_a_post_response_and_redirect_is_303(s3: Any) -> None:
    url, fields = presigned(
        s3,
        "answered",
        Fields={"success_action_status": "201"},
        Conditions=[{"success_action_status": "201"}],
    )
    status, headers, body = post(url, fields, b"x")
    assert status == 201 and b"<Key>answered</Key>" in body and b"<Bucket>forms</Bucket>" in body
    target = "https://example.test/done?from=form"
    url, fields = presigned(
        s3,
        "redirected key",
        Fields={"success_action_redirect": target},
        Conditions=[{"success_action_redirect": target}],
    )
    status, headers, _ = post(url, fields, b"y")
    etag = hashlib.md5(b"y").hexdigest()
    assert status == 303
    assert headers["location"] == f"{target}&bucket=forms&key=redirected%20key&etag=%22{etag}%22"
    # any other status is 204, as S3
    url, fields = presigned(
        s3,
        "other",
        Fields={"success_action_status": "404"},
        Conditions=[{"success_action_status": "404"}],
    )
    assert post(url, fields, b"z")[0] == 204


def _v2_form(
    key: str, conditions: list[Any], expiration: str | None = None, **extra: str
) -> list[tuple[str, str]]:
    doc: dict[str, Any] = {"conditions": conditions}
    doc["expiration"] = expiration or time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 600)
    )
    policy = base64.b64encode(json.dumps(doc).encode()).decode()
    signature = base64.b64encode(hmac.digest(SK.encode(), policy.encode(), "sha1")).decode()
    return [
        ("key", key),
        ("AWSAccessKeyId", AK),
        ("policy", policy),
        ("signature", signature),
        *extra.items(),
    ]


BASE = [{"bucket": "forms"}, ["starts-with", "$key", "refused"]]


@pytest.mark.parametrize(
    ("fields", "file", "status", "code"),
    [
        (
            _v2_form("refused-1", [*BASE, ["content-length-range", 0, 3]]),
            b"four",
            400,
            "EntityTooLarge",
        ),
        (
            _v2_form("refused-2", [*BASE, ["content-length-range", 5, 9]]),
            b"four",
            400,
            "EntityTooSmall",
        ),
        (_v2_form("refused-3", BASE, "2001-01-01T00:00:00Z"), b"x", 403, "AccessDenied"),
        (_v2_form("refused-4", BASE, "tomorrow"), b"x", 400, "InvalidPolicyDocument"),
        (_v2_form("refused-5", [["starts-with", "$key", "refused"]]), b"x", 403, "AccessDenied"),
        (_v2_form("other-6", BASE), b"x", 403, "AccessDenied"),
        (_v2_form("refused-7", BASE, **{"x-amz-meta-sneaky": "1"}), b"x", 403, "AccessDenied"),
        (
            _v2_form("refused-8", [*BASE, ["eq", "$x-amz-meta-a", "1"]], **{"x-amz-meta-a": "2"}),
            b"x",
            403,
            "AccessDenied",
        ),
        (_v2_form("refused-9", [*BASE, {}]), b"x", 400, "InvalidPolicyDocument"),
        (
            _v2_form("refused-10", [*BASE, ["content-length-range", -1, 5]]),
            b"x",
            400,
            "InvalidPolicyDocument",
        ),
        (
            _v2_form(
                "refused-11",
                BASE,
                **{
                    "x-amz-checksum-sha256": base64.b64encode(
                        hashlib.sha256(b"y").digest()
                    ).decode()
                },
            ),
            b"x",
            400,
            "BadDigest",
        ),
        ([("key", "refused-12")], b"x", 403, "AccessDenied"),  # anonymous: no policy
        (
            [(n, v) for n, v in _v2_form("refused-13", BASE) if n != "signature"],
            b"x",
            400,
            "InvalidArgument",
        ),
        (
            [(n, v[::-1] if n == "signature" else v) for n, v in _v2_form("refused-14", BASE)],
            b"x",
            403,
            "SignatureDoesNotMatch",
        ),
        (
            [
                (n, "AKNOBODY" if n == "AWSAccessKeyId" else v)
                for n, v in _v2_form("refused-15", BASE)
            ],
            b"x",
            403,
            "InvalidAccessKeyId",
        ),
        (
            [*_v2_form("refused-16", BASE), *[(f"x-ignore-{i}", "v" * 200) for i in range(100)]],
            b"x",
            400,
            "MaxPostPreDataLengthExceeded",
        ),
        (
            _v2_form("refused-17", [*BASE, {"acl": "public-read"}], acl="public-read"),
            b"x",
            400,
            "AccessControlListNotSupported",
        ),
    ],
    ids=[
        "too-large",
        "too-small",
        "expired",
        "bad-expiration",
        "no-bucket-condition",
        "key-outside-starts-with",
        "field-no-condition-names",
        "eq-fails",
        "empty-condition",
        "negative-range",
        "bad-checksum",
        "anonymous",
        "no-signature",
        "bad-signature",
        "unknown-key",
        "fields-over-20-KB",
        "public-acl",
    ],
)
def test_a_form_failing_any_check_gets_s3s_error_and_stores_nothing(
    s3: Any,
    server: Server,
    fields: list[tuple[str, str]],
    file: bytes,
    status: int,
    code: str,
) -> None:
    got, _, body = post(f"{server[1].endpoint}/forms", fields, file)
    assert (got, code_of(body)) == (status, code)
    key = dict(fields)["key"]
    assert absent(s3, key)


def test_a_form_for_one_bucket_cannot_upload_to_another(s3: Any, server: Server) -> None:
    s3.create_bucket(Bucket="forms-other")
    fields = _v2_form("refused-x", BASE)
    status, _, body = post(f"{server[1].endpoint}/forms-other", fields, b"x")
    assert (status, code_of(body)) == (403, "AccessDenied")
    with pytest.raises(ClientError):
        s3.head_object(Bucket="forms-other", Key="refused-x")


def test_the_signer_must_be_allowed_to_write_the_bucket(
    server: Server,
) -> None:
    thread, running = server
    owner = client(running, *issue(server, "form-owner"))
    reader = client(running, *issue(server, "form-reader"))
    owner.create_bucket(Bucket="form-grants")
    acl = running.authorizer.acl("form-grants")
    assert acl is not None
    acl.read.append("form-reader")
    asyncio.run_coroutine_threadsafe(
        running.authorizer.set_acl("form-grants", acl), thread.loop
    ).result(10)
    for who, expected in ((reader, 403), (owner, 204)):
        form = who.generate_presigned_post(Bucket="form-grants", Key="k")
        status, _, _ = post(form["url"], list(form["fields"].items()), b"data")
        assert status == expected
        if expected == 403:
            with pytest.raises(ClientError):
                owner.head_object(Bucket="form-grants", Key="k")
    assert owner.get_object(Bucket="form-grants", Key="k")["Body"].read() == b"data"


def test_form_tagging_field_sets_the_tags(s3: Any) -> None:
    tagging = "<Tagging><TagSet><Tag><Key>t</Key><Value>1</Value></Tag></TagSet></Tagging>"
    url, fields = presigned(
        s3, "tagged", Fields={"tagging": tagging}, Conditions=[{"tagging": tagging}]
    )
    assert post(url, fields, b"x")[0] == 204
    assert s3.get_object_tagging(Bucket="forms", Key="tagged")["TagSet"] == [
        {"Key": "t", "Value": "1"}
    ]


def test_a_sigv4_form_with_a_changed_signature_policy_or_credential_is_refused(s3: Any) -> None:
    url, fields = presigned(s3, "v4-refused", Conditions=[["content-length-range", 0, 10]])
    good = dict(fields)
    wider = base64.b64encode(base64.b64decode(good["policy"]).replace(b"10]", b"999]")).decode()
    for changed, code in (
        ({"x-amz-signature": "0" * 64}, "SignatureDoesNotMatch"),
        ({"policy": wider}, "SignatureDoesNotMatch"),  # a wider range the signer never signed
        (
            {"x-amz-credential": good["x-amz-credential"].replace(AK, "AKNOBODY")},
            "InvalidAccessKeyId",
        ),
        ({"x-amz-algorithm": "AWS4-HMAC-SHA1"}, "InvalidArgument"),
    ):
        status, _, body = post(url, list({**good, **changed}.items()), b"x" * 20)
        assert code_of(body) == code and status in (400, 403)
    assert absent(s3, "v4-refused")
    assert post(url, fields, b"x" * 20)[0] == 400  # the signed range holds: EntityTooLarge
    assert post(url, fields, b"x" * 10)[0] == 204
