"""Object and bucket tagging as AWS S3 does it, driven with boto3 over loopback.

Each test is named after the AWS behaviour it checks; who may call each tagging operation is
walked in :func:`test_who_may_tag`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from s3kit import Server, boto_client, code, issue, serve
from tunnelmesh_s3.server import Running, ServerThread

from tunnelmesh_s3 import tagging

AK, SK = "AKTAGGINGTEST", "tagging-secret-for-tests"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve(tmp_path_factory, AK, SK)


def client(running: Running, ak: str = AK, sk: str = SK, validate: bool = True) -> Any:
    return boto_client(running, ak, sk, parameter_validation=validate)


@pytest.fixture(scope="module")
def s3(server: Server) -> Any:
    s3 = client(server[1])
    s3.create_bucket(Bucket="tags")
    return s3


def tagset(n: int) -> dict[str, Any]:
    return {"TagSet": [{"Key": str(i), "Value": str(i)} for i in range(n)]}


def test_put_get_delete_object_tagging_keeps_data_etag_and_last_modified(s3: Any) -> None:
    put = s3.put_object(Bucket="tags", Key="obj", Body=b"data")
    before = s3.head_object(Bucket="tags", Key="obj")
    assert "x-amz-tagging-count" not in before["ResponseMetadata"]["HTTPHeaders"]
    assert s3.get_object_tagging(Bucket="tags", Key="obj")["TagSet"] == []
    s3.put_object_tagging(Bucket="tags", Key="obj", Tagging=tagset(2))
    assert s3.get_object_tagging(Bucket="tags", Key="obj")["TagSet"] == tagset(2)["TagSet"]
    head = s3.head_object(Bucket="tags", Key="obj")
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-amz-tagging-count"] == "2"
    assert head["ETag"] == put["ETag"] and head["LastModified"] == before["LastModified"]
    got = s3.get_object(Bucket="tags", Key="obj")
    assert got["TagCount"] == 2 and got["Body"].read() == b"data"
    # a new tag set replaces the old one whole
    s3.put_object_tagging(
        Bucket="tags", Key="obj", Tagging={"TagSet": [{"Key": "k3", "Value": "v3"}]}
    )
    assert s3.get_object_tagging(Bucket="tags", Key="obj")["TagSet"] == [
        {"Key": "k3", "Value": "v3"}
    ]
    resp = s3.delete_object_tagging(Bucket="tags", Key="obj")
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert s3.get_object_tagging(Bucket="tags", Key="obj")["TagSet"] == []
    assert s3.get_object(Bucket="tags", Key="obj")["Body"].read() == b"data"
    with pytest.raises(ClientError) as err:
        s3.get_object_tagging(Bucket="tags", Key="missing")
    assert code(err) == "NoSuchKey"
    with pytest.raises(ClientError) as err:
        s3.put_object_tagging(Bucket="tags", Key="missing", Tagging=tagset(1))
    assert code(err) == "NoSuchKey"


@pytest.mark.parametrize(
    "tags",
    [
        [{"Key": str(i), "Value": "v"} for i in range(11)],  # more than 10
        [{"Key": "k" * 129, "Value": "v"}],  # key over 128 characters
        [{"Key": "k", "Value": "v" * 257}],  # value over 256 characters
        [{"Key": "k", "Value": "1"}, {"Key": "k", "Value": "2"}],  # the same key twice
        [{"Key": "aws:owner", "Value": "me"}],  # AWS's own prefix
        [{"Key": "", "Value": "v"}],  # an empty key
    ],
    ids=["eleven", "long-key", "long-value", "duplicate", "aws-prefix", "empty-key"],
)
def test_tags_past_s3_limits_are_invalid_tag_and_change_nothing(
    server: Server, s3: Any, tags: list[dict[str, str]]
) -> None:
    s3 = client(server[1], validate=False)  # botocore would refuse some before sending
    s3.put_object(Bucket="tags", Key="limits", Body=b"x", Tagging="kept=yes")
    with pytest.raises(ClientError) as err:
        s3.put_object_tagging(Bucket="tags", Key="limits", Tagging={"TagSet": tags})
    assert code(err) == "InvalidTag"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert s3.get_object_tagging(Bucket="tags", Key="limits")["TagSet"] == [
        {"Key": "kept", "Value": "yes"}
    ]
    header = "&".join(f"{t['Key']}={t['Value']}" for t in tags)
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket="tags", Key="limits", Body=b"replaced", Tagging=header)
    assert code(err) == "InvalidTag"
    assert s3.get_object(Bucket="tags", Key="limits")["Body"].read() == b"x"


def test_the_largest_tags_s3_allows_are_kept_exactly(s3: Any) -> None:
    s3.put_object(Bucket="tags", Key="max", Body=b"x")
    tags = [
        {"Key": f"{i}" + "ké &=+/%" * 15 + "k" * 7, "Value": "vé&=+ /" * 36 + "v" * 4}
        for i in range(10)
    ]
    assert all(len(t["Key"]) == 128 and len(t["Value"]) == 256 for t in tags)
    s3.put_object_tagging(Bucket="tags", Key="max", Tagging={"TagSet": tags})
    assert s3.get_object_tagging(Bucket="tags", Key="max")["TagSet"] == tags


def test_x_amz_tagging_on_put_sets_the_tags_sorted_a_key_alone_has_an_empty_value(
    s3: Any,
) -> None:
    s3.put_object(Bucket="tags", Key="hdr", Body=b"x", Tagging="foo=bar&bar")
    assert s3.get_object_tagging(Bucket="tags", Key="hdr")["TagSet"] == [
        {"Key": "bar", "Value": ""},
        {"Key": "foo", "Value": "bar"},
    ]
    # overwriting the object without tags leaves it without tags (tags belong to the version)
    s3.put_object(Bucket="tags", Key="hdr", Body=b"y")
    assert s3.get_object_tagging(Bucket="tags", Key="hdr")["TagSet"] == []


def test_multipart_upload_carries_the_tags_of_create_multipart_upload(s3: Any) -> None:
    uid = s3.create_multipart_upload(Bucket="tags", Key="mp", Tagging="Hello=World&foo=bar")[
        "UploadId"
    ]
    etag = s3.upload_part(Bucket="tags", Key="mp", UploadId=uid, PartNumber=1, Body=b"p")["ETag"]
    s3.complete_multipart_upload(
        Bucket="tags",
        Key="mp",
        UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]},
    )
    assert s3.get_object_tagging(Bucket="tags", Key="mp")["TagSet"] == [
        {"Key": "Hello", "Value": "World"},
        {"Key": "foo", "Value": "bar"},
    ]
    with pytest.raises(ClientError) as err:
        s3.create_multipart_upload(Bucket="tags", Key="mp2", Tagging="aws:x=1")
    assert code(err) == "InvalidTag"


def test_copy_keeps_the_source_tags_unless_the_tagging_directive_is_replace(s3: Any) -> None:
    s3.put_object(Bucket="tags", Key="src", Body=b"s", Tagging="a=1", Metadata={"m": "1"})
    src = {"Bucket": "tags", "Key": "src"}
    s3.copy_object(Bucket="tags", Key="c1", CopySource=src)
    assert s3.get_object_tagging(Bucket="tags", Key="c1")["TagSet"] == [{"Key": "a", "Value": "1"}]
    s3.copy_object(
        Bucket="tags", Key="c2", CopySource=src, TaggingDirective="REPLACE", Tagging="b=2"
    )
    assert s3.get_object_tagging(Bucket="tags", Key="c2")["TagSet"] == [{"Key": "b", "Value": "2"}]
    assert s3.head_object(Bucket="tags", Key="c2")["Metadata"] == {"m": "1"}
    # metadata replaced, tags copied
    s3.copy_object(
        Bucket="tags", Key="c3", CopySource=src, MetadataDirective="REPLACE", Metadata={"n": "2"}
    )
    assert s3.get_object_tagging(Bucket="tags", Key="c3")["TagSet"] == [{"Key": "a", "Value": "1"}]
    assert s3.head_object(Bucket="tags", Key="c3")["Metadata"] == {"n": "2"}
    # replacing the tags of an object in place by copying it onto itself
    s3.copy_object(Bucket="tags", Key="src", CopySource=src, TaggingDirective="REPLACE")
    assert s3.get_object_tagging(Bucket="tags", Key="src")["TagSet"] == []
    with pytest.raises(ClientError) as err:
        s3.copy_object(Bucket="tags", Key="c4", CopySource=src, TaggingDirective="MERGE")
    assert code(err) == "InvalidArgument"


def test_bucket_tagging_no_such_tag_set_until_put_then_204_on_delete(s3: Any) -> None:
    with pytest.raises(ClientError) as err:
        s3.get_bucket_tagging(Bucket="tags")
    assert code(err) == "NoSuchTagSet"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    s3.put_bucket_tagging(Bucket="tags", Tagging={"TagSet": [{"Key": "Hello", "Value": "World"}]})
    assert s3.get_bucket_tagging(Bucket="tags")["TagSet"] == [{"Key": "Hello", "Value": "World"}]
    with pytest.raises(ClientError) as err:  # a bucket takes 50 tags
        s3.put_bucket_tagging(
            Bucket="tags", Tagging={"TagSet": [{"Key": str(i), "Value": ""} for i in range(51)]}
        )
    assert code(err) == "InvalidTag"
    assert s3.get_bucket_tagging(Bucket="tags")["TagSet"] == [{"Key": "Hello", "Value": "World"}]
    s3.put_bucket_tagging(Bucket="tags", Tagging=tagset(50))
    assert len(s3.get_bucket_tagging(Bucket="tags")["TagSet"]) == 50
    resp = s3.delete_bucket_tagging(Bucket="tags")
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as err:
        s3.get_bucket_tagging(Bucket="tags")
    assert code(err) == "NoSuchTagSet"
    with pytest.raises(ClientError) as err:
        s3.get_bucket_tagging(Bucket="no-such-bucket-here")
    assert code(err) == "NoSuchBucket"


def test_bucket_tags_go_with_the_bucket_and_survive_a_restart(tmp_path: Path) -> None:
    with ServerThread(tmp_path, access_key=AK, secret_key=SK) as running:
        s3 = client(running)
        s3.create_bucket(Bucket="kept")
        s3.put_bucket_tagging(Bucket="kept", Tagging=tagset(1))
        s3.create_bucket(Bucket="gone")
        s3.put_bucket_tagging(Bucket="gone", Tagging=tagset(1))
        s3.delete_bucket(Bucket="gone")
        s3.create_bucket(Bucket="gone")
    with ServerThread(tmp_path, access_key=AK, secret_key=SK) as running:
        s3 = client(running)
        assert s3.get_bucket_tagging(Bucket="kept")["TagSet"] == tagset(1)["TagSet"]
        with pytest.raises(ClientError) as err:  # a new bucket of an old name starts bare
            s3.get_bucket_tagging(Bucket="gone")
        assert code(err) == "NoSuchTagSet"


def test_malformed_tagging_documents_are_malformed_xml(s3: Any) -> None:
    s3.put_object(Bucket="tags", Key="xml", Body=b"x", Tagging="a=1")

    def send_raw(body: bytes) -> None:
        def swap(request: Any, **_: Any) -> None:
            request.data = body
            for name in list(request.headers.keys()):
                if name.lower() == "content-md5" or name.lower().startswith("x-amz-checksum-"):
                    del request.headers[name]
                if name.lower() == "x-amz-sdk-checksum-algorithm":
                    del request.headers[name]

        s3.meta.events.register_first("before-sign.s3.PutObjectTagging", swap)
        try:
            s3.put_object_tagging(Bucket="tags", Key="xml", Tagging=tagset(1))
        finally:
            s3.meta.events.unregister("before-sign.s3.PutObjectTagging", swap)

    for bad in (
        b"<Tagging><TagSet><Tag><Key>k</Key></Tag></TagSet></Tagging>",
        b"<Tagging></Tagging>",
        b"<NotTagging/>",
        b"not xml",
        b'<!DOCTYPE x [<!ENTITY a "b">]><Tagging/>',
    ):
        with pytest.raises(ClientError) as err:
            send_raw(bad)
        assert code(err) == "MalformedXML", bad
    assert s3.get_object_tagging(Bucket="tags", Key="xml")["TagSet"] == [{"Key": "a", "Value": "1"}]


def grant(server: Server, bucket: str, **grants: list[str]) -> None:
    thread, running = server
    acl = running.authorizer.acl(bucket)
    assert acl is not None
    for action, names in grants.items():
        getattr(acl, action).extend(names)
    asyncio.run_coroutine_threadsafe(running.authorizer.set_acl(bucket, acl), thread.loop).result(
        10
    )


def test_who_may_tag(server: Server) -> None:
    """Each tagging operation as the bucket's owner, a peer granted write, one granted read and
    a stranger: object tags are read by readers and changed by writers; bucket tags are read by
    readers and changed by the owner only. A refused call changes nothing."""
    owner = client(server[1], *issue(server, "owner"))
    writer = client(server[1], *issue(server, "writer"))
    reader = client(server[1], *issue(server, "reader"))
    stranger = client(server[1], *issue(server, "stranger"))
    owner.create_bucket(Bucket="walk")
    owner.put_object(Bucket="walk", Key="o", Body=b"x", Tagging="orig=1")
    owner.put_bucket_tagging(Bucket="walk", Tagging={"TagSet": [{"Key": "b", "Value": "1"}]})
    grant(server, "walk", write=["writer"], read=["reader"])
    ops: dict[str, tuple[str, Any]] = {
        "GetObjectTagging": ("read", lambda c: c.get_object_tagging(Bucket="walk", Key="o")),
        "PutObjectTagging": (
            "write",
            lambda c: c.put_object_tagging(Bucket="walk", Key="o", Tagging={"TagSet": []}),
        ),
        "DeleteObjectTagging": (
            "write",
            lambda c: c.delete_object_tagging(Bucket="walk", Key="o"),
        ),
        "GetBucketTagging": ("read", lambda c: c.get_bucket_tagging(Bucket="walk")),
        "PutBucketTagging": (
            "own",
            lambda c: c.put_bucket_tagging(Bucket="walk", Tagging={"TagSet": []}),
        ),
        "DeleteBucketTagging": ("own", lambda c: c.delete_bucket_tagging(Bucket="walk")),
    }
    may = {
        "owner": {"read", "write", "own"},
        "writer": {"read", "write"},
        "reader": {"read"},
        "stranger": set(),
    }
    clients = {"owner": owner, "writer": writer, "reader": reader, "stranger": stranger}
    for who, c in clients.items():
        for op, (needs, call) in ops.items():
            if needs in may[who]:
                call(c)
            else:
                with pytest.raises(ClientError) as err:
                    call(c)
                assert code(err) == "AccessDenied", (who, op)
            # put everything back, so that each refusal is checked against known tags
            owner.put_object_tagging(
                Bucket="walk", Key="o", Tagging={"TagSet": [{"Key": "orig", "Value": "1"}]}
            )
            owner.put_bucket_tagging(
                Bucket="walk", Tagging={"TagSet": [{"Key": "b", "Value": "1"}]}
            )
    # a refused change changed nothing: checked by the stranger's refusals against known tags
    with pytest.raises(ClientError):
        stranger.put_object_tagging(Bucket="walk", Key="o", Tagging={"TagSet": []})
    assert owner.get_object_tagging(Bucket="walk", Key="o")["TagSet"] == [
        {"Key": "orig", "Value": "1"}
    ]


def test_tag_header_round_trips_any_text() -> None:
    tags = [("a b", "c+d"), ("é", "&="), ("k", "")]
    assert tagging.decode(tagging.encode(tags)) == tags
    assert tagging.from_header("k") == [("k", "")]
