"""S3 ACLs mapped onto the mesh's bucket grants, driven with boto3: what maps works, what cannot
map is refused (AccessControlListNotSupported, as AWS answers when a bucket's ACLs are disabled)
and changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError
from s3kit import Server, boto_client, code, issue, serve
from tunnelmesh_s3.server import Running

AK, SK = "AKACLTEST", "acl-secret-for-tests"
AUTH_USERS = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve(tmp_path_factory, AK, SK)


def client(running: Running, ak: str = AK, sk: str = SK) -> Any:
    return boto_client(running, ak, sk)


@pytest.fixture(scope="module")
def people(server: Server) -> dict[str, Any]:
    return {name: client(server[1], *issue(server, name)) for name in ("owner", "bob", "carol")}


def grants(s3: Any, bucket: str) -> list[tuple[str, str]]:
    return [
        (g["Grantee"].get("ID") or g["Grantee"].get("URI"), g["Permission"])
        for g in s3.get_bucket_acl(Bucket=bucket)["Grants"]
    ]


def denied(call: Any) -> bool:
    try:
        call()
    except ClientError as err:
        return err.response["Error"]["Code"] == "AccessDenied"
    return False


def test_get_bucket_acl_shows_the_owner_with_full_control(people: dict[str, Any]) -> None:
    owner = people["owner"]
    owner.create_bucket(Bucket="acl-default")
    acl = owner.get_bucket_acl(Bucket="acl-default")
    assert acl["Owner"]["ID"] == "owner"
    assert grants(owner, "acl-default") == [("owner", "FULL_CONTROL")]


def test_grant_headers_and_canned_acls_map_onto_the_buckets_grants(
    people: dict[str, Any],
) -> None:
    owner, bob, carol = people["owner"], people["bob"], people["carol"]
    owner.create_bucket(Bucket="acl-grants")
    owner.put_object(Bucket="acl-grants", Key="k", Body=b"v")
    assert denied(lambda: bob.get_object(Bucket="acl-grants", Key="k"))
    owner.put_bucket_acl(Bucket="acl-grants", GrantRead='id="bob"', GrantWrite='id="carol"')
    assert grants(owner, "acl-grants") == [
        ("owner", "FULL_CONTROL"),
        ("bob", "READ"),
        ("carol", "READ"),  # write implies read here, and the ACL says so
        ("carol", "WRITE"),
    ]
    assert bob.get_object(Bucket="acl-grants", Key="k")["Body"].read() == b"v"
    assert denied(lambda: bob.put_object(Bucket="acl-grants", Key="k", Body=b"bob"))
    carol.put_object(Bucket="acl-grants", Key="k", Body=b"carol")
    # the policy read back and put again changes nothing (tools round-trip it)
    policy = owner.get_bucket_acl(Bucket="acl-grants")
    owner.put_bucket_acl(
        Bucket="acl-grants",
        AccessControlPolicy={"Grants": policy["Grants"], "Owner": policy["Owner"]},
    )
    assert grants(owner, "acl-grants")[1:] == [
        ("bob", "READ"),
        ("carol", "READ"),
        ("carol", "WRITE"),
    ]
    owner.put_bucket_acl(Bucket="acl-grants", ACL="authenticated-read")
    assert grants(owner, "acl-grants") == [("owner", "FULL_CONTROL"), (AUTH_USERS, "READ")]
    assert carol.get_object(Bucket="acl-grants", Key="k")["Body"].read() == b"carol"
    assert denied(lambda: carol.put_object(Bucket="acl-grants", Key="k", Body=b"again"))
    owner.put_bucket_acl(Bucket="acl-grants", ACL="private")
    assert grants(owner, "acl-grants") == [("owner", "FULL_CONTROL")]
    assert denied(lambda: bob.get_object(Bucket="acl-grants", Key="k"))


@pytest.mark.parametrize(
    "request_acl",
    [
        {"ACL": "public-read"},
        {"ACL": "public-read-write"},
        {"GrantRead": 'uri="http://acs.amazonaws.com/groups/global/AllUsers"'},
        {"GrantRead": 'emailAddress="bob@example.com"'},
        {"GrantReadACP": 'id="bob"'},
        {"GrantFullControl": 'id="bob"'},
    ],
    ids=["public-read", "public-read-write", "all-users", "e-mail", "read-acp", "full-control"],
)
def test_acls_that_cannot_map_are_refused_and_change_nothing(
    people: dict[str, Any], request_acl: dict[str, str]
) -> None:
    owner = people["owner"]
    owner.create_bucket(Bucket="acl-refused")
    owner.put_bucket_acl(Bucket="acl-refused", GrantRead='id="bob"')
    with pytest.raises(ClientError) as err:
        owner.put_bucket_acl(Bucket="acl-refused", **request_acl)
    expected = (
        "UnresolvableGrantByEmailAddress"
        if "emailAddress" in str(request_acl)
        else "AccessControlListNotSupported"
    )
    assert code(err) == expected
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert grants(owner, "acl-refused") == [("owner", "FULL_CONTROL"), ("bob", "READ")]
    # a bucket asked for with such an ACL is not created
    with pytest.raises(ClientError) as err:
        owner.create_bucket(Bucket="acl-never", **request_acl)
    assert code(err) == expected
    with pytest.raises(ClientError) as err:
        owner.head_bucket(Bucket="acl-never")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_create_bucket_with_authenticated_read_grants_every_principal_read(
    people: dict[str, Any],
) -> None:
    owner, bob = people["owner"], people["bob"]
    owner.create_bucket(Bucket="acl-authread", ACL="authenticated-read")
    owner.put_object(Bucket="acl-authread", Key="k", Body=b"for all")
    assert bob.get_object(Bucket="acl-authread", Key="k")["Body"].read() == b"for all"


def test_objects_have_their_buckets_acl_and_take_only_private(people: dict[str, Any]) -> None:
    owner, bob = people["owner"], people["bob"]
    owner.create_bucket(Bucket="acl-objects")
    owner.put_bucket_acl(Bucket="acl-objects", GrantRead='id="bob"')
    owner.put_object(Bucket="acl-objects", Key="k", Body=b"v", ACL="private")
    owner.put_object(Bucket="acl-objects", Key="k2", Body=b"v", ACL="bucket-owner-full-control")
    assert bob.get_object(Bucket="acl-objects", Key="k2")["Body"].read() == b"v"  # the bucket's
    for refused in (
        {"ACL": "public-read"},
        {"ACL": "authenticated-read"},
        {"GrantRead": 'id="bob"'},
    ):
        with pytest.raises(ClientError) as err:
            owner.put_object(Bucket="acl-objects", Key="new", Body=b"v", **refused)
        assert code(err) == "AccessControlListNotSupported"
        with pytest.raises(ClientError) as err:
            owner.put_object_acl(Bucket="acl-objects", Key="k", **refused)
        assert code(err) == "AccessControlListNotSupported"
        with pytest.raises(ClientError) as err:
            owner.copy_object(
                Bucket="acl-objects",
                Key="new",
                CopySource={"Bucket": "acl-objects", "Key": "k"},
                **refused,
            )
        assert code(err) == "AccessControlListNotSupported"
    with pytest.raises(ClientError):
        owner.head_object(Bucket="acl-objects", Key="new")
    owner.put_object_acl(Bucket="acl-objects", Key="k", ACL="private")
    got = owner.get_object_acl(Bucket="acl-objects", Key="k")
    assert [(g["Grantee"].get("ID"), g["Permission"]) for g in got["Grants"]] == [
        ("owner", "FULL_CONTROL"),
        ("bob", "READ"),
    ]
    with pytest.raises(ClientError) as err:
        owner.get_object_acl(Bucket="acl-objects", Key="missing")
    assert code(err) == "NoSuchKey"


def test_who_may_read_and_change_acls(people: dict[str, Any]) -> None:
    """Get/PutBucketAcl and GetObjectAcl: the owner; PutObjectAcl: writers (a no-op)."""
    owner, bob, carol = people["owner"], people["bob"], people["carol"]
    owner.create_bucket(Bucket="acl-walk")
    owner.put_object(Bucket="acl-walk", Key="k", Body=b"v")
    owner.put_bucket_acl(Bucket="acl-walk", GrantRead='id="bob"', GrantWrite='id="carol"')
    for who in (bob, carol):
        assert denied(lambda c=who: c.get_bucket_acl(Bucket="acl-walk"))
        assert denied(lambda c=who: c.put_bucket_acl(Bucket="acl-walk", ACL="private"))
        assert denied(lambda c=who: c.get_object_acl(Bucket="acl-walk", Key="k"))
    assert denied(lambda: bob.put_object_acl(Bucket="acl-walk", Key="k", ACL="private"))
    carol.put_object_acl(Bucket="acl-walk", Key="k", ACL="private")
    assert grants(owner, "acl-walk")[1:] == [("bob", "READ"), ("carol", "READ"), ("carol", "WRITE")]
