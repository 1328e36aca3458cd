"""The single exception tree of tunnelmesh.

Every error tunnelmesh raises on purpose is a :class:`TunnelmeshError`. The classes of this module
are the trunk; the indented names with a module beside them are defined in that module (or in a
plugin) and derive from the trunk. ``also ValueError`` marks an error that a pure parser raises
where Python code expects a ValueError, so it subclasses both. ``tests/test_repo_error_tree.py``
fails when a class of the tree is missing from this drawing, or when the code raises a built-in
exception that its allow-list does not name with a reason.

::

    TunnelmeshError                 anything tunnelmesh raises on purpose
    ├── ConfigError                 a config file or option is wrong (names file, key, reason)
    ├── PluginError                 a plugin failed to load, or two plugins claim one name
    ├── TransportError              connect, handshake, link closed, timeouts
    ├── TunError                    tunnelmesh.tun: the TUN device cannot be made or set up
    ├── NodeError                   tunnelmesh.node.node: the node cannot start
    ├── ExitNodeError               tunnelmesh.exit.system: exit routes or NAT cannot be set up
    ├── ImpairmentError             tunnelmesh.impair: a tc impairment cannot be applied
    ├── ControlError                tunnelmesh.control_socket: a control request failed
    ├── CoordinatorUnreachable      tunnelmesh.control.client: no answer (network, TLS, timeout)
    ├── ApiRequestError             tunnelmesh.control.client: the coordinator refused a request
    ├── ServiceError                tunnelmesh.service.systemd: the service cannot be managed
    ├── CleanupError                tunnelmesh.service.cleanup: cleanup cannot run now
    ├── ProtocolError               a peer broke a protocol
    │   ├── LocalProtocolError      we were asked to do something the protocol forbids
    │   └── RemoteProtocolError     the peer sent something the protocol forbids
    │       ├── CryptoError         tunnelmesh.proto.wgcrypto: zero DH result, AEAD tag mismatch
    │       ├── StunParseError      tunnelmesh.stun: not a STUN message (also ValueError)
    │       ├── RouteError          tunnelmesh_proxy.headers: a bad routing header (also ValueError)
    │       ├── RelayFormatError    tunnelmesh_relay.proto: a bad relay message (also ValueError)
    │       ├── HeadTooLarge        tunnelmesh_proxy.client: a request head over the limit
    │       ├── SigV4Error          tunnelmesh_s3.sigv4: a request failed S3 authentication
    │       ├── DavXmlError         tunnelmesh_s3.dav.xmlbody: a WebDAV body that is not safe XML
    │       ├── IfHeaderError       tunnelmesh_s3.dav.locks: a WebDAV If header that does not parse
    │       ├── LockConflict        tunnelmesh_s3.dav.locks: a lock conflicts (or over the bounds)
    │       ├── XdrError            tunnelmesh_s3.nfs.xdr: malformed XDR in an NFS call (also ValueError)
    │       └── BadHandle           tunnelmesh_s3.nfs.handles: a forged or foreign NFS file handle (also ValueError)
    ├── StorageError                an object-storage backend (S3's) failed
    │   ├── NoSuchBucket            the bucket does not exist
    │   ├── NoSuchKey               the object does not exist
    │   ├── NoSuchUpload            the multipart upload does not exist (completed or aborted)
    │   ├── BucketAlreadyExists     create_bucket of an existing name
    │   ├── BucketNotEmpty          delete_bucket of a bucket that holds objects
    │   ├── InvalidName             a bucket name or object key the backend refuses
    │   ├── InvalidPart             a multipart completion names a missing or mismatched part
    │   ├── S3ClientError           tunnelmesh_s3.client: the server answered an S3 error
    │   └── ShareError              tunnelmesh_s3.shareaccess: a share refused an operation (kind)
    ├── StateStoreError             the coordinator's state store (SQLite, PostgreSQL) failed
    │   └── StoreConflict           tunnelmesh.coordinator.store: name or mesh IP already held
    │       └── NameReserved        tunnelmesh.coordinator.store: no asked-for name is free
    ├── CoordinatorError            the coordinator refused a request or could not serve it
    │   ├── ApiFailure              tunnelmesh.coordinator.failures: an HTTP status, code, sentence
    │   ├── GroupError              tunnelmesh.coordinator.groups: a refused group change
    │   ├── FilterBookError         tunnelmesh.coordinator.filterbook: a refused rule change
    │   ├── TransportBookError      tunnelmesh.coordinator.transportbook: a refused order
    │   ├── ClientRefused           tunnelmesh.coordinator.clients: a refused client change
    │   ├── AllocationError         tunnelmesh.coordinator.alloc: the mesh range is full
    │   ├── NameTaken               tunnelmesh.coordinator.alloc: the name has another key
    │   └── ChallengesExhausted     tunnelmesh.coordinator.auth: no room for a new nonce
    ├── S3Error                     tunnelmesh_s3.errors: an S3 error response (code, status)
    ├── DavError                    tunnelmesh_s3.dav.request: a WebDAV error response (status)
    ├── NfsError                    tunnelmesh_s3.nfs.context: an NFS procedure ends with an error status
    ├── MountError                  tunnelmesh_s3.mount: no client can mount a share, or it failed
    ├── MeshS3Error                 tunnelmesh_s3.meshclient: the coordinator refused S3 access
    ├── DnsError                    a DNS backend failed
    └── LabError                    a test lab (namespaces, a throwaway PostgreSQL) failed
        └── ImpairmentUnsupported   tunnelmesh.testing.lab: a netem option this kernel lacks

The CLI prints a :class:`TunnelmeshError` as one line without a traceback; any other exception
is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "BucketAlreadyExists",
    "BucketNotEmpty",
    "ConfigError",
    "CoordinatorError",
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
    "StateStoreError",
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
    """An object-storage backend (the S3 service's, :class:`tunnelmesh.abc.Storage`) failed."""


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


class StateStoreError(TunnelmeshError):
    """The coordinator's state store failed (it cannot be opened, read or written)."""


class CoordinatorError(TunnelmeshError):
    """The coordinator refused a request or could not serve it."""


class DnsError(TunnelmeshError):
    """A DNS backend failed."""


class LabError(TunnelmeshError):
    """A test lab (the namespace lab, a throwaway PostgreSQL) could not build or run something."""
