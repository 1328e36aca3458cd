"""S3 errors: the codes, their HTTP statuses, and the mapping from storage errors.

A handler raises :class:`S3Error`; the app's middleware renders it as S3's XML error document
(``<Error><Code>...</Code><Message>...</Message><Resource>...</Resource><RequestId>...``).
"""

from __future__ import annotations

from tunnelmesh.errors import (
    BucketAlreadyExists,
    BucketNotEmpty,
    InvalidName,
    InvalidPart,
    NoSuchBucket,
    NoSuchKey,
    NoSuchUpload,
    StorageError,
    TunnelmeshError,
)

__all__ = ["STATUS", "S3Error", "from_storage"]

STATUS: dict[str, int] = {
    "AccessDenied": 403,
    "AccessControlListNotSupported": 400,
    "AccessForbidden": 403,
    "AuthorizationHeaderMalformed": 400,
    "AuthorizationQueryParametersError": 400,
    "BadDigest": 400,
    "BadRequest": 400,
    "BucketAlreadyExists": 409,
    "BucketAlreadyOwnedByYou": 409,
    "BucketNotEmpty": 409,
    "ConditionalRequestConflict": 409,
    "EntityTooLarge": 400,
    "EntityTooSmall": 400,
    "IncompleteBody": 400,
    "InternalError": 500,
    "InvalidAccessKeyId": 403,
    "InvalidArgument": 400,
    "InvalidBucketName": 400,
    "InvalidDigest": 400,
    "InvalidPart": 400,
    "InvalidPartOrder": 400,
    "InvalidRange": 416,
    "InvalidRequest": 400,
    "InvalidTag": 400,
    "KeyTooLongError": 400,
    "MalformedACLError": 400,
    "MalformedXML": 400,
    "MethodNotAllowed": 405,
    "MissingContentLength": 411,
    "MissingSecurityHeader": 400,
    "NoSuchBucket": 404,
    "NoSuchCORSConfiguration": 404,
    "NoSuchKey": 404,
    "NoSuchTagSet": 404,
    "NoSuchUpload": 404,
    "NotImplemented": 501,
    "PreconditionFailed": 412,
    "RequestTimeTooSkewed": 403,
    "SignatureDoesNotMatch": 403,
    "UnexpectedContent": 400,
    "UnresolvableGrantByEmailAddress": 400,
    "XAmzContentSHA256Mismatch": 400,
}


class S3Error(TunnelmeshError):
    """An S3 error response.

    Args:
        code: the S3 error code (a key of :data:`STATUS`).
        message: the human-readable message.
        status: the HTTP status; by default the code's usual one.
        extra: more elements of the error document (e.g. ``BucketName``).
    """

    def __init__(self, code: str, message: str, *, status: int | None = None, **extra: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or STATUS.get(code, 400)
        self.extra = extra


def from_storage(exc: StorageError, bucket: str = "", key: str = "") -> S3Error:
    """The S3 error for a storage backend's error."""
    if isinstance(exc, NoSuchBucket):
        return S3Error("NoSuchBucket", "The specified bucket does not exist", BucketName=bucket)
    if isinstance(exc, NoSuchKey):
        return S3Error("NoSuchKey", "The specified key does not exist.", Key=key)
    if isinstance(exc, NoSuchUpload):
        return S3Error("NoSuchUpload", "The specified multipart upload does not exist.")
    if isinstance(exc, BucketAlreadyExists):
        return S3Error("BucketAlreadyExists", "The requested bucket name is not available.")
    if isinstance(exc, BucketNotEmpty):
        return S3Error(
            "BucketNotEmpty", "The bucket you tried to delete is not empty", BucketName=bucket
        )
    if isinstance(exc, InvalidPart):
        code = {"order": "InvalidPartOrder", "too_small": "EntityTooSmall"}.get(
            exc.reason, "InvalidPart"
        )
        return S3Error(code, str(exc))
    if isinstance(exc, InvalidName):
        text = str(exc)
        if "bucket" in text:
            return S3Error("InvalidBucketName", text, BucketName=bucket)
        if "limit is" in text:
            return S3Error("KeyTooLongError", text)
        return S3Error("InvalidArgument", text)
    return S3Error("InternalError", "We encountered an internal error. Please try again.")
