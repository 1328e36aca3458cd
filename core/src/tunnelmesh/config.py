"""Server and peer configuration: msgspec Structs loaded from YAML.

A bad file gives one :class:`~tunnelmesh.errors.ConfigError` line that names the file, the key
and what is wrong. Plugins add their own top-level sections through the
``tunnelmesh_register_config_sections`` hook; those are decoded into the plugin's Struct and kept
in ``config.sections[name]``.

Search order when no ``-c`` is given:
    server: ``./server.yaml``, ``./tunnelmesh-server.yaml``
    peer:   ``~/.tunnelmesh/config.yaml``, ``./tunnelmesh.yaml``, ``./peer.yaml``
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import msgspec
import yaml

from tunnelmesh.control.messages import Location, location_problem
from tunnelmesh.errors import ConfigError
from tunnelmesh.registry import ConfigSection

__all__ = [
    "DnsConfig",
    "Duration",
    "ExitConfig",
    "FilterConfig",
    "FilterRule",
    "JoinMesh",
    "PeerConfig",
    "ServerConfig",
    "TransportConfig",
    "TunConfig",
    "find_config",
    "load_config",
    "load_peer_config",
    "load_server_config",
]

S = TypeVar("S", bound=msgspec.Struct)

log = logging.getLogger(__name__)

SERVER_CONFIG_NAMES = ("server.yaml", "tunnelmesh-server.yaml")
PEER_CONFIG_NAMES = ("~/.tunnelmesh/config.yaml", "tunnelmesh.yaml", "peer.yaml")

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class Duration(float):
    """Seconds; YAML may say ``10``, ``2.5``, ``500ms``, ``10s``, ``2m`` or ``1h``."""


def _dec_hook(typ: type, value: Any) -> Any:
    if typ is Duration:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return Duration(value)
        if isinstance(value, str) and (m := _DURATION.match(value)):
            return Duration(float(m.group(1)) * _UNITS[m.group(2)])
        raise ValueError(f"expected a duration such as 10s, 500ms or 2m, got {value!r}")
    raise NotImplementedError(f"no decoder for {typ!r}")


def _check_label(name: str, what: str) -> None:
    if name and not _LABEL.match(name):
        raise ValueError(
            f"{what} {name!r} is not a DNS label (lower-case letters, digits and '-', "
            "at most 63, not starting or ending with '-')"
        )


class TunConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The TUN interface."""

    name: str = "tun-mesh0"
    mtu: int = 1420

    def __post_init__(self) -> None:
        if not 576 <= self.mtu <= 65535:
            raise ValueError(f"mtu must be between 576 and 65535, got {self.mtu}")
        if not 0 < len(self.name) < 16:
            raise ValueError("interface name must be 1 to 15 characters")


class DnsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The built-in resolver (see docs/dns.md).

    Attributes:
        enabled: run the resolver.
        listen: ``ip:port`` it serves on (UDP and TCP).
        cache_ttl: TTL of mesh answers, seconds.
        aliases: extra names of this peer (registered with the coordinator).
        upstreams: resolvers for other names, ``ip[:port]``; empty: those of /etc/resolv.conf.
        upstream_timeout: how long to wait for each upstream.
        forward: forward non-mesh names (else they are refused).
        system: how to point the system resolver at it: ``auto``, ``resolved``,
            ``resolv.conf`` or ``off``.
    """

    enabled: bool = True
    listen: str = "127.0.0.53:5353"
    cache_ttl: int = 300
    aliases: list[str] = msgspec.field(default_factory=list)
    upstreams: list[str] = msgspec.field(default_factory=list)
    upstream_timeout: Duration = Duration(2.0)
    forward: bool = True
    system: Literal["auto", "resolved", "resolv.conf", "off"] = "auto"

    def __post_init__(self) -> None:
        if self.upstream_timeout <= 0:
            raise ValueError("upstream_timeout must be positive")
        if not 0 <= self.cache_ttl <= 86400:
            raise ValueError(f"cache_ttl must be between 0 and 86400, got {self.cache_ttl}")
        for alias in self.aliases:
            for label in alias.split("."):
                _check_label(label, "dns alias")
        if len(set(self.aliases)) != len(self.aliases):
            raise ValueError("dns aliases must not repeat")


class FilterRule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One packet filter rule."""

    port: int
    protocol: Literal["tcp", "udp"] = "tcp"
    action: Literal["allow", "deny"] = "allow"
    source_peer: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be between 1 and 65535, got {self.port}")


class FilterConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The packet filter (see docs/filter.md).

    Attributes:
        default_deny: drop new inbound flows that no rule allows.
        allow_icmp: pass all inbound ICMP; when false only replies to our pings and errors
            about our own flows pass.
        rules: the config layer's rules.
        max_flows: the size bound of the connection-tracking table.
    """

    default_deny: bool = False
    allow_icmp: bool = True
    rules: list[FilterRule] = msgspec.field(default_factory=list)
    max_flows: int = 65536

    def __post_init__(self) -> None:
        if self.max_flows < 1:
            raise ValueError(f"max_flows must be at least 1, got {self.max_flows}")


class TransportConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``transports:``: the order to try transports in, globally and per peer, and the port.

    Attributes:
        order: transport names, most preferred first. Installed transports it leaves out come
            after it in their own order (``Transport.preference``); empty (the default): every
            installed transport in that order.
        per_peer: an order per peer name.
        listen_port: the port the node's transports listen on (the UDP transport's WireGuard
            socket, the SSH transport's TCP listener) and its published endpoints carry; its
            STUN-reflexive address is asked from it. Was ``udp_port`` (still read, with a
            warning).
    """

    order: list[str] = msgspec.field(default_factory=list)
    per_peer: dict[str, list[str]] = msgspec.field(default_factory=dict)
    listen_port: int = 2223

    def __post_init__(self) -> None:
        if not 0 <= self.listen_port < 65536:
            raise ValueError(f"listen_port must be 0..65535, got {self.listen_port}")


class MetricsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``metrics:``: the Prometheus endpoint (``GET /metrics``; see docs/metrics.md).

    ``listen`` empty: a node listens on its mesh IP (port 9273), the coordinator on
    127.0.0.1:9274, so neither is visible outside the mesh or the machine.
    """

    enabled: bool = True
    listen: str = ""


class StateConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``state:``: where the coordinator keeps its state (see docs/scale.md).

    Attributes:
        backend: ``sqlite`` (default: ``<data_dir>/state.db``, one coordinator) or a backend a
            plugin registers (``postgres``, from ``tunnelmesh[postgres]``: several coordinators
            on one database).
        dsn_file: a file (mode 0600) holding the networked backend's connection string with
            its password; the string is never logged and never in ``server.yaml``.
        encryption_key_file: a file (mode 0600) holding the key that encrypts the mesh CA's
            private key and the rotated join token in the database (32 random bytes as 64 hex
            digits or base64; ``openssl rand -hex 32``). Every coordinator of one database is
            given the same file. Required for a networked backend; optional for SQLite.
    """

    backend: str = "sqlite"
    dsn_file: str = ""
    encryption_key_file: str = ""

    def __post_init__(self) -> None:
        if not re.match(r"^[a-z][a-z0-9_]*$", self.backend):
            raise ValueError(f"state.backend {self.backend!r} is not a backend name")
        if self.backend != "sqlite" and not self.encryption_key_file:
            raise ValueError(
                f"state.backend {self.backend!r} needs state.encryption_key_file: the mesh CA's "
                "key is kept in a database other machines reach, so it is stored encrypted "
                "(create one with: openssl rand -hex 32 > FILE; chmod 600 FILE)"
            )


class ExitConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What an exit node (``allow_exit_traffic``) forwards; see docs/exitnode.md.

    Attributes:
        allowed_peers: the peers whose internet traffic it forwards, by peer ID (16 hex
            digits, ``tunnelmesh peers --json``) or OpenSSH public key; empty: every peer.
            A WireGuard client (``tunnelmesh wg add --full-tunnel``) is listed by its own
            client ID (``tunnelmesh wg show NAME``), not its concentrator's.
            Names are refused: a name can change hands, a key cannot.
        allow_lan: also forward to private, CGNAT, link-local (169.254.169.254), loopback and
            the exit's own LAN destinations (default: dropped).
    """

    allowed_peers: list[str] = msgspec.field(default_factory=list)
    allow_lan: bool = False

    def __post_init__(self) -> None:
        ids = []
        for entry in self.allowed_peers:
            text = entry.strip() if isinstance(entry, str) else ""
            if re.fullmatch(r"[0-9a-f]{16}", text):
                ids.append(text)
                continue
            if text.startswith("ssh-ed25519 "):
                from tunnelmesh.identity import parse_public_key, peer_id_of

                try:
                    ids.append(peer_id_of(parse_public_key(text)))
                    continue
                except ValueError as exc:
                    raise ValueError(f"exit.allowed_peers: {exc}") from None
            raise ValueError(
                f"exit.allowed_peers: {entry!r} is not a peer ID (16 hex digits) or an "
                "ssh-ed25519 public key; names are not accepted (a name can change hands, a "
                "key cannot): `tunnelmesh peers --json` shows each peer_id"
            )
        self.allowed_peers = list(dict.fromkeys(ids))


class BenchmarkConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``benchmark:``: the listener ``tunnelmesh benchmark`` measures against (docs/benchmark.md),
    TCP and UDP on the node's mesh IP. Off unless enabled."""

    enabled: bool = False
    port: int = 9998

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"benchmark.port must be 1..65535, got {self.port}")


class _PeerFields(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str = ""
    private_key: str = "~/.tunnelmesh/id_ed25519"
    control_socket: str = "/run/tunnelmesh.sock"
    heartbeat_interval: Duration = Duration(10.0)
    log_level: Literal["debug", "info", "warning", "error"] | None = None
    tun: TunConfig = msgspec.field(default_factory=TunConfig)
    dns: DnsConfig = msgspec.field(default_factory=DnsConfig)
    filter: FilterConfig = msgspec.field(default_factory=FilterConfig)
    transports: TransportConfig = msgspec.field(default_factory=TransportConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    benchmark: BenchmarkConfig = msgspec.field(default_factory=BenchmarkConfig)
    exit_node: str = ""
    allow_exit_traffic: bool = False
    exit: ExitConfig = msgspec.field(default_factory=ExitConfig)
    location: Location | None = None  # {lat, lon, city}: where this peer is (dashboard map)

    def __post_init__(self) -> None:
        _check_label(self.name, "name")
        if self.location is not None and (why := location_problem(self.location)):
            raise ValueError(why)
        if self.exit_node.endswith(".tunnelmesh"):
            self.exit_node = self.exit_node[: -len(".tunnelmesh")]


class JoinMesh(_PeerFields, forbid_unknown_fields=True, kw_only=True):
    """``join_mesh:`` in the server config: the coordinator is also a mesh peer."""


class PeerConfig(_PeerFields, forbid_unknown_fields=True, kw_only=True):
    """A peer's configuration (``peer.yaml``)."""

    server: str = ""
    auth_token: str = ""
    sections: dict[str, Any] = msgspec.field(default_factory=dict)


_PEER_ID = re.compile(r"^[0-9a-f]{16}$")


def _https_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return parts.scheme == "https" and bool(parts.hostname) and parts.path in ("", "/")


_SSH_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")


def admin_entry_problem(entry: str) -> str | None:
    """None when ``entry`` can be an ``admin_peers`` entry, else why not.

    An entry names a key, never a name: a 16-hex-digit peer ID (``tunnelmesh status``) or the
    ``SHA256:`` fingerprint of the peer's ed25519 key as ``ssh-keygen -lf KEY.pub`` prints it.
    """
    if _PEER_ID.match(entry) or _SSH_FINGERPRINT.match(entry):
        return None
    return (
        "not a peer ID (16 hex digits) or a SHA256: key fingerprint; names and globs are not "
        "accepted, because a name can be registered by another key (give the peer ID from "
        "`tunnelmesh status` or `ssh-keygen -lf ~/.tunnelmesh/id_ed25519.pub`)"
    )


class ServerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The coordination server's configuration (``server.yaml``)."""

    auth_token: str
    listen: str = "0.0.0.0:8443"
    stun_listen: str = "0.0.0.0:3478"
    mesh_cidr: str = "172.30.0.0/16"
    domain: str = "tunnelmesh"
    data_dir: str = "/var/lib/tunnelmesh"
    admin_peers: list[str] = msgspec.field(default_factory=list)
    approve_new_peers: bool = False
    heartbeat_interval: Duration = Duration(10.0)
    log_level: Literal["debug", "info", "warning", "error"] | None = None
    tls_names: list[str] = msgspec.field(default_factory=list)
    public_url: str = ""
    auth_failures_burst: int = 20
    auth_failures_per_minute: float = 30.0
    joins_burst: int = 100
    locations: bool = False  # keep and show peers' location: (the dashboard's map)
    joins_per_minute: float = 20.0
    filter: FilterConfig = msgspec.field(default_factory=FilterConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    state: StateConfig = msgspec.field(default_factory=StateConfig)
    join_mesh: JoinMesh | None = None
    sections: dict[str, Any] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.auth_token) < 16:
            raise ValueError(
                "auth_token must be at least 16 characters (try: openssl rand -hex 32)"
            )
        try:
            net = ipaddress.ip_network(self.mesh_cidr)
        except ValueError as exc:
            raise ValueError(f"mesh_cidr: {exc}") from None
        if net.num_addresses < 4:
            raise ValueError(f"mesh_cidr {self.mesh_cidr} is too small")
        _check_label(self.domain, "domain")
        if self.auth_failures_burst < 1 or self.auth_failures_per_minute < 0:
            raise ValueError("auth_failures_burst must be >= 1 and auth_failures_per_minute >= 0")
        if self.joins_burst < 1 or self.joins_per_minute < 0:
            raise ValueError("joins_burst must be >= 1 and joins_per_minute >= 0")
        if self.public_url and not _https_url(self.public_url):
            raise ValueError(
                f"public_url {self.public_url!r}: not an https://host[:port] URL (the address "
                "peers reach this coordinator at)"
            )
        if self.heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be positive")
        for i, entry in enumerate(self.admin_peers):
            reason = admin_entry_problem(entry)
            if reason is not None:
                raise ValueError(f"admin_peers[{i}] {entry!r}: {reason}")
        for i, rule in enumerate(self.filter.rules):
            if rule.source_peer and not _PEER_ID.match(rule.source_peer):
                raise ValueError(
                    f"filter.rules[{i}].source_peer {rule.source_peer!r}: not a peer ID (16 hex "
                    "digits); the coordinator's rules name peers by key, because a name can be "
                    "registered by another key (`tunnelmesh peers --json` shows each peer_id)"
                )


def _error_from_validation(exc: msgspec.ValidationError, path: str, prefix: str) -> ConfigError:
    message = str(exc)
    key = None
    m = re.search(r" - at `\$(.*)`$", message)
    if m:
        message = message[: m.start()]
        key = (prefix + m.group(1)).lstrip(".")
        key = re.sub(r"\[(\d+)\]", r"[\1]", key)
    elif prefix:
        key = prefix.lstrip(".")
    message = message.replace("Object contains unknown field", "unknown key")
    return ConfigError(message[:1].lower() + message[1:], path=path, key=key)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", path=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path=str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}invalid YAML: {problem}", path=str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping of keys", path=str(path))
    return data


RENAMED_KEYS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("transports", "udp_port"): ("transports", "listen_port"),
}
"""Keys of a peer's settings that were renamed (old path to new path): a file that still uses
the old one is read as if it said the new one, with one warning naming both."""


def _renamed(data: Any, path: Path, prefix: str = "") -> None:
    """Move the :data:`RENAMED_KEYS` of one peer's settings (``data``) to their new place."""
    for old, new in RENAMED_KEYS.items():
        parent = data
        for part in old[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or old[-1] not in parent:
            continue
        target = data
        for part in new[:-1]:
            target = target.setdefault(part, {}) if isinstance(target, dict) else None
        old_key, new_key = prefix + ".".join(old), prefix + ".".join(new)
        if not isinstance(target, dict) or new[-1] in target:
            raise ConfigError(
                f"the old name of {new_key}, which is set too; keep only {new_key}",
                path=str(path),
                key=old_key,
            )
        target[new[-1]] = parent.pop(old[-1])
        log.warning(
            "%s: %s is deprecated: it is now %s (same meaning); rename the key",
            path,
            old_key,
            new_key,
        )


def load_config(
    path: str | os.PathLike[str],
    kind: type[S],
    sections: Mapping[str, ConfigSection] | None = None,
) -> S:
    """Load a YAML file into ``kind`` (a config Struct), with plugin sections.

    Raises:
        ConfigError: one line naming the file, the key and what is wrong.
    """
    p = Path(path).expanduser()
    data = _read_yaml(p)
    decoded_sections: dict[str, Any] = {}
    is_server = kind is ServerConfig
    if is_server:
        _renamed(data.get("join_mesh"), p, "join_mesh.")
    else:
        _renamed(data, p)
    for name, section in (sections or {}).items():
        if not (section.server if is_server else section.peer):
            continue
        raw = data.pop(name, {})
        try:
            decoded_sections[name] = msgspec.convert(
                raw or {}, section.type, dec_hook=_dec_hook, str_keys=True
            )
        except msgspec.ValidationError as exc:
            raise _error_from_validation(exc, str(p), f".{name}") from None
    if "sections" in data:
        raise ConfigError("unknown key", path=str(p), key="sections")
    try:
        config = msgspec.convert(data, kind, dec_hook=_dec_hook, str_keys=True)
    except msgspec.ValidationError as exc:
        raise _error_from_validation(exc, str(p), "") from None
    config.sections.update(decoded_sections)  # type: ignore[attr-defined]
    return config


def find_config(candidates: Iterable[str], explicit: str | None = None) -> Path | None:
    """The config file to use: ``explicit`` when given, else the first candidate that exists."""
    if explicit:
        return Path(explicit).expanduser()
    for candidate in candidates:
        p = Path(candidate).expanduser()
        if p.is_file():
            return p
    return None


def load_server_config(
    explicit: str | None = None, sections: Mapping[str, ConfigSection] | None = None
) -> ServerConfig:
    """Find and load the server config.

    Raises:
        ConfigError: no file was found, or the file is invalid.
    """
    path = find_config(SERVER_CONFIG_NAMES, explicit)
    if path is None:
        raise ConfigError(
            "no server config found (looked for " + ", ".join(SERVER_CONFIG_NAMES) + "); "
            "create one with: tunnelmesh init --server"
        )
    return load_config(path, ServerConfig, sections)


def load_peer_config(
    explicit: str | None = None, sections: Mapping[str, ConfigSection] | None = None
) -> PeerConfig:
    """Find and load the peer config; built-in defaults when there is no file."""
    path = find_config(PEER_CONFIG_NAMES, explicit)
    if path is None:
        return PeerConfig()
    return load_config(path, PeerConfig, sections)
