"""The signed policy of a POST object upload (a browser form), checked as S3 checks it.

Pure functions: form fields, the bucket, the secret lookup and the time in; the verified
:class:`Policy` (who signed it, the size range it allows) or an :class:`~.errors.S3Error` out.

A form upload carries no ``Authorization`` header. Its ``policy`` field is a base64 JSON document
(``expiration``, ``conditions``) and the form is signed over that base64 text:

* Signature Version 4: ``x-amz-algorithm`` ``AWS4-HMAC-SHA256``, ``x-amz-credential``
  (``AK/date/region/s3/aws4_request``), ``x-amz-date`` and ``x-amz-signature``, the hex
  HMAC-SHA256 of the policy with the day's signing key;
* Signature Version 2: ``AWSAccessKeyId`` and ``signature``, the base64 HMAC-SHA1 of the policy
  with the secret.

Signatures are compared in constant time. Then, as S3: the policy must not have expired; every
condition must hold (``{"field": value}`` and ``["eq", "$field", value]`` exact,
``["starts-with", "$field", prefix]``, ``["content-length-range", min, max]``); and every form
field must be named by a condition, except ``policy``, the signature, ``AWSAccessKeyId``,
``file``, ``x-ignore-*`` fields and ``x-amz-checksum-*`` (which can only make the upload fail).
The bucket is a field too: the bucket of the URL. Field and condition names are case-insensitive;
the policy's own keys are not. A form without a policy is anonymous, and this server has no
anonymous access.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tunnelmesh_s3 import sigv4
from tunnelmesh_s3.errors import S3Error

__all__ = ["UNCHECKED", "Policy", "verify"]

UNCHECKED = frozenset(
    {"policy", "signature", "x-amz-signature", "awsaccesskeyid", "file", "bucket"}
)
"""Form fields no condition needs to name (``bucket``: the URL's bucket is what is checked)."""

_EXPIRATION = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d{1,6})?Z$")


@dataclass(frozen=True)
class Policy:
    """A form whose policy checked: who signed it and the file sizes it allows."""

    access_key: str
    min_size: int = 0
    max_size: int | None = None


def _denied(message: str, code: str = "AccessDenied") -> S3Error:
    return S3Error(code, message)


def _bad_policy(message: str) -> S3Error:
    return S3Error("InvalidPolicyDocument", f"Invalid Policy: {message}")


def _signer(
    fields: Mapping[str, str],
    policy_b64: str,
    lookup_secret: Callable[[str], str | None],
    region: str,
) -> str:
    """Check the form's signature over the policy; return the access key that signed it."""
    if "x-amz-algorithm" in fields or "x-amz-credential" in fields:
        if fields.get("x-amz-algorithm") != sigv4.ALGORITHM:
            raise S3Error("InvalidArgument", f"x-amz-algorithm must be {sigv4.ALGORITHM}")
        missing = [
            f for f in ("x-amz-credential", "x-amz-date", "x-amz-signature") if f not in fields
        ]
        if missing:
            raise S3Error(
                "InvalidArgument", f"Bucket POST must contain a field named '{missing[0]}'"
            )
        try:
            access_key, date, _scope = sigv4._parse_credential(
                fields["x-amz-credential"], region, "InvalidArgument"
            )
        except sigv4.SigV4Error as exc:
            raise S3Error(exc.code, exc.message) from None
        if not fields["x-amz-date"].startswith(date):
            raise _denied("the credential date does not match x-amz-date", "SignatureDoesNotMatch")
        secret = lookup_secret(access_key)
        if secret is None:
            raise _unknown_key()
        expected = hmac.new(
            sigv4.signing_key(secret, date, region), policy_b64.encode(), hashlib.sha256
        ).hexdigest()
        given = fields["x-amz-signature"].lower()
    elif "awsaccesskeyid" in fields:
        if "signature" not in fields:
            raise S3Error("InvalidArgument", "Bucket POST must contain a field named 'Signature'")
        access_key = fields["awsaccesskeyid"]
        secret = lookup_secret(access_key)
        if secret is None:
            raise _unknown_key()
        expected = base64.b64encode(
            hmac.digest(secret.encode(), policy_b64.encode(), "sha1")
        ).decode()
        given = fields["signature"]
    else:
        raise S3Error(
            "InvalidArgument",
            "Bucket POST with a policy must contain AWSAccessKeyId or x-amz-credential",
        )
    if not hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace")):
        raise _denied(
            "The request signature we calculated does not match the signature you provided.",
            "SignatureDoesNotMatch",
        )
    return access_key


def _unknown_key() -> S3Error:
    return _denied(
        "The AWS Access Key Id you provided does not exist in our records.", "InvalidAccessKeyId"
    )


def _expiration(value: object, now: float) -> None:
    if not isinstance(value, str) or (m := _EXPIRATION.match(value)) is None:
        raise _bad_policy("Invalid 'expiration' value: it must be like 2030-01-01T00:00:00Z")
    try:
        when = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        raise _bad_policy(f"Invalid 'expiration' value: {value!r}") from None
    if now > when + float(m.group(2) or 0):
        raise _denied("Invalid according to Policy: Policy expired.")


def verify(
    fields: Mapping[str, str],
    *,
    bucket: str,
    lookup_secret: Callable[[str], str | None],
    region: str,
    now: float,
) -> Policy:
    """Check a form's signature and policy against its fields.

    Args:
        fields: every form field before the file, names lower-cased; ``key`` already has
            ``${filename}`` replaced.
        bucket: the bucket of the URL.
        lookup_secret: access key to secret, or None for an unknown key.
        region: the region SigV4 credentials must name.
        now: the current Unix time.

    Raises:
        S3Error: 400 for a malformed form or policy, 403 for a bad signature, an expired policy,
            a failed condition or a field no condition names.
    """
    policy_b64 = fields.get("policy")
    if policy_b64 is None:
        raise _denied("Anonymous POST uploads are not accepted: sign the form's policy.")
    access_key = _signer(fields, policy_b64, lookup_secret, region)
    try:
        document = json.loads(base64.b64decode(policy_b64, validate=True))
    except (binascii.Error, ValueError):
        raise _bad_policy("the policy is not base64 JSON") from None
    if not isinstance(document, dict):
        raise _bad_policy("the policy must be a JSON object")
    if "expiration" not in document:
        raise _bad_policy("Policy missing expiration")
    _expiration(document["expiration"], now)
    conditions = document.get("conditions")
    if not isinstance(conditions, list):
        raise _bad_policy("Policy missing conditions")
    values = dict(fields, bucket=bucket)
    named: set[str] = set()
    low, high = 0, None
    for condition in conditions:
        if isinstance(condition, dict):
            if len(condition) != 1:
                raise _bad_policy("a condition object names one field")
            ((name, value),) = condition.items()
            op, field = "eq", str(name).lower()
        elif isinstance(condition, list) and condition:
            op = str(condition[0]).lower()
            if op == "content-length-range":
                low, high = _range(condition)
                continue
            if len(condition) != 3 or not isinstance(condition[1], str):
                raise _bad_policy(f"a {op!r} condition takes a $field and a value")
            if not condition[1].startswith("$"):
                raise _bad_policy(f"the field of a condition starts with $: {condition[1]!r}")
            field, value = condition[1][1:].lower(), condition[2]
        else:
            raise _bad_policy(f"unknown condition {condition!r}")
        if op not in ("eq", "starts-with") or not isinstance(value, str):
            raise _bad_policy(f"unknown condition {condition!r}")
        have = values.get(field)
        if have is None or not (have == value if op == "eq" else have.startswith(value)):
            raise _denied(
                f"Invalid according to Policy: Policy Condition failed: "
                f'["{op}", "${field}", {json.dumps(value)}]'
            )
        named.add(field)
    extra = sorted(
        name
        for name in values
        if name not in named
        and name not in UNCHECKED - {"bucket"}
        and not name.startswith(("x-ignore-", "x-amz-checksum-"))
    )
    if extra:
        raise _denied(f"Invalid according to Policy: Extra input fields: {', '.join(extra)}")
    return Policy(access_key, low, high)


def _range(condition: list[object]) -> tuple[int, int]:
    if len(condition) != 3 or not all(type(v) is int for v in condition[1:]):
        raise _bad_policy("content-length-range takes two integers")
    low, high = condition[1], condition[2]
    assert isinstance(low, int) and isinstance(high, int)
    if low < 0 or high < low:
        raise _bad_policy("content-length-range needs 0 <= min <= max")
    return low, high
