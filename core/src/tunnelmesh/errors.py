"""The single exception tree of tunnelmesh.

::

    TunnelmeshError                 anything tunnelmesh raises on purpose
    ├── ConfigError                 a config file or option is wrong (names file, key, reason)
    ├── PluginError                 a plugin failed to load, or two plugins claim one name
    ├── TransportError              connect, handshake, link closed, timeouts
    ├── ProtocolError               a peer broke a protocol
    │   ├── LocalProtocolError      we were asked to do something the protocol forbids
    │   └── RemoteProtocolError     the peer sent something the protocol forbids
    ├── StorageError                a storage backend failed
    │   ├── NoSuchBucket            the bucket does not exist
    │   ├── NoSuchKey               the object does not exist
    │   ├── NoSuchUpload            the multipart upload does not exist (completed or aborted)
    │   ├── BucketAlreadyExists     create_bucket of an existing name
    │   ├── BucketNotEmpty          delete_bucket of a bucket that holds objects
    │   ├── InvalidName             a bucket name or object key the backend refuses
    │   └── InvalidPart             a multipart completion names a missing or mismatched part
    ├── DnsError                    a DNS backend failed
    └── LabError                    the namespace test lab could not build or run something

The CLI prints a :class:`TunnelmeshError` as one line without a traceback; any other exception
is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "BucketAlreadyExists",
    "BucketNotEmpty",
    "ConfigError",
    "DnsError",
    "InvalidName",
    "InvalidPart",
    "LabError",
    "LocalProtocolError",
    "NoSuchBucket",
    "NoSuchKey",
    "NoSuchUpload",
    "PluginError",
    "ProtocolError",
    "RemoteProtocolError",
    "StorageError",
    "TransportError",
    "TunnelmeshError",
]


class TunnelmeshError(Exception):
    """Base of every error tunnelmesh raises on purpose."""


class ConfigError(TunnelmeshError):
    """A configuration file or option is invalid.

    Args:
        message: what is wrong.
        path: the file, when the error comes from one.
        key: the dotted key inside the file, when known.
    """

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None) -> None:
        self.path = path
        self.key = key
        self.reason = message
        where = ""
        if path:
            where = f"{path}: "
        if key:
            where += f"{key}: "
        super().__init__(f"{where}{message}")


class PluginError(TunnelmeshError):
    """A plugin could not be loaded, or two plugins claim the same name."""


class TransportError(TunnelmeshError):
    """A transport could not connect, handshake, or lost its link."""


class ProtocolError(TunnelmeshError):
    """A protocol rule was broken."""


class LocalProtocolError(ProtocolError):
    """We were asked to do something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


class StorageError(TunnelmeshError):
    """A storage backend failed."""


class NoSuchBucket(StorageError):
    """The bucket does not exist."""


class NoSuchKey(StorageError):
    """The object does not exist."""


class NoSuchUpload(StorageError):
    """The multipart upload does not exist: never created, completed or aborted."""


class BucketAlreadyExists(StorageError):
    """A bucket of that name exists already."""


class BucketNotEmpty(StorageError):
    """The bucket still holds objects."""


class InvalidName(StorageError):
    """A bucket name or an object key that the backend refuses (see :mod:`tunnelmesh.storage`)."""


class InvalidPart(StorageError):
    """A multipart completion names a part that is missing, out of order or too small.

    Attributes:
        reason: ``"missing"`` (no such part or a wrong ETag), ``"order"`` (part numbers not
            ascending) or ``"too_small"`` (a part other than the last under the minimum size).
    """

    def __init__(self, message: str, *, reason: str = "missing") -> None:
        super().__init__(message)
        self.reason = reason


class DnsError(TunnelmeshError):
    """A DNS backend failed."""


class LabError(TunnelmeshError):
    """The namespace test lab could not build or run something."""
