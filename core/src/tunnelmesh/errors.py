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
    ├── DnsError                    a DNS backend failed
    └── LabError                    the namespace test lab could not build or run something

The CLI prints a :class:`TunnelmeshError` as one line without a traceback; any other exception
is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DnsError",
    "LabError",
    "LocalProtocolError",
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


class DnsError(TunnelmeshError):
    """A DNS backend failed."""


class LabError(TunnelmeshError):
    """The namespace test lab could not build or run something."""
