"""The coordinator API's messages: msgspec Structs shared by the server and the peers.

Everything travels as JSON over HTTPS. Requests are decoded strictly into these types (a wrong
type or a missing field is a 400 that names the field); unknown fields are ignored so that newer
peers can talk to older coordinators. Push-channel messages form a tagged union on ``type``.
"""

from __future__ import annotations

import math

import msgspec

__all__ = [
    "API_VERSION",
    "ApiError",
    "CaResponse",
    "ChallengeResponse",
    "ClientInfo",
    "ClientStatus",
    "Clients",
    "ConcentratorStatus",
    "Coordinators",
    "Counters",
    "DnsRecord",
    "DnsResponse",
    "FilterRules",
    "Heartbeat",
    "HeartbeatAck",
    "Location",
    "PeerGone",
    "PeerInfo",
    "PeerUpserted",
    "PeersResponse",
    "PolicyRule",
    "PushMessage",
    "RegisterRequest",
    "RegisterResponse",
    "Rendezvous",
    "RendezvousAck",
    "RendezvousRequest",
    "Snapshot",
    "TransportOrder",
    "decode_push",
    "encode",
    "location_problem",
]

API_VERSION = 1


class ApiError(msgspec.Struct, kw_only=True):
    """Every error answer: a short code, a sentence for humans, the HTTP status."""

    error: str
    message: str
    status: int


class CaResponse(msgspec.Struct, kw_only=True):
    """``GET /api/v1/ca?nonce=...``: the mesh CA with a proof that the server knows the token.

    ``proof`` is HMAC-SHA256(key=auth_token, "tunnelmesh-ca-v1" NUL nonce NUL SHA-256(CA DER)),
    hex; see :func:`tunnelmesh.coordinator.ca.ca_proof`.
    """

    ca_pem: str
    proof: str


class ChallengeResponse(msgspec.Struct, kw_only=True):
    nonce: str  # base64
    expires_in: float


class RegisterRequest(msgspec.Struct, kw_only=True):
    """``POST /api/v1/register`` (with ``Authorization: Bearer <auth_token>``)."""

    name: str
    public_key: str  # "ssh-ed25519 AAAA..."
    nonce: str  # base64, from /register/challenge
    signature: str  # base64 ed25519 signature of auth.registration_message(...)
    endpoints: list[str] = msgspec.field(default_factory=list)
    rename: bool = True  # on a name held by another key: True = take name-2, False = 409
    version: str = ""
    is_coordinator: bool = False


class RegisterResponse(msgspec.Struct, kw_only=True):
    peer_id: str
    name: str
    mesh_ip: str
    mesh_cidr: str
    domain: str
    is_admin: bool
    session_token: str
    heartbeat_interval: float
    server_version: str
    renamed: bool = False
    coordinator_ips: list[str] = msgspec.field(default_factory=list)
    stun_port: int = 0  # the coordinator's STUN (RFC 5389) UDP port, 0 = none
    pending: bool = False  # approve_new_peers: this key waits for an admin's approval
    coordinators: list[str] = msgspec.field(default_factory=list)
    """URLs of every live coordinator of the mesh (several on one database; their
    ``public_url``): the peer moves to another when the one it talks to is gone."""


class Counters(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Traffic counters a peer reports (totals since its daemon started)."""

    bytes_sent: int = 0
    bytes_received: int = 0
    packets_sent: int = 0
    packets_received: int = 0
    dropped: int = 0


class Location(msgspec.Struct, kw_only=True, frozen=True):
    """Where a peer is (its ``location:`` in peer.yaml), for the dashboard's map."""

    lat: float  # degrees, -90 to 90
    lon: float  # degrees, -180 to 180
    city: str = ""  # at most 64 printable characters


def location_problem(loc: Location) -> str | None:
    """None when ``loc`` is a place on Earth with a short printable city name, else why not."""
    if not (math.isfinite(loc.lat) and -90.0 <= loc.lat <= 90.0):
        return f"location lat must be between -90 and 90, got {loc.lat}"
    if not (math.isfinite(loc.lon) and -180.0 <= loc.lon <= 180.0):
        return f"location lon must be between -180 and 180, got {loc.lon}"
    if len(loc.city) > 64 or not loc.city.isprintable():
        return "location city must be at most 64 printable characters"
    return None


class ClientStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One client as its concentrator sees it (reported in the concentrator's heartbeat)."""

    latest_handshake: float = 0.0  # unix time of the last completed handshake, 0 = never
    rx_bytes: int = 0
    tx_bytes: int = 0
    endpoint: str = ""  # "ip:port" the client was last seen from


class ConcentratorStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A concentrator peer's report: where its clients dial it, and how each one is doing."""

    kind: str = "wireguard"
    endpoint: str = ""  # "host:port" the clients dial (host: an IP address or a DNS name)
    clients: dict[str, ClientStatus] = msgspec.field(default_factory=dict)  # by client_id


class Heartbeat(msgspec.Struct, kw_only=True):
    """``POST /api/v1/heartbeat`` (with ``Authorization: Bearer <session_token>``).

    ``transports`` maps a peer name to the transport in use towards it ("udp", "ssh", ...);
    ``rtt_ms`` maps a peer name to the measured round-trip time; ``reasons`` says why that
    transport is in use (or why none is).
    """

    endpoints: list[str] = msgspec.field(default_factory=list)
    transports: dict[str, str] = msgspec.field(default_factory=dict)
    rtt_ms: dict[str, float] = msgspec.field(default_factory=dict)
    reasons: dict[str, str] = msgspec.field(default_factory=dict)
    counters: Counters = msgspec.field(default_factory=Counters)
    allow_exit_traffic: bool = False  # this peer forwards other peers' internet traffic
    aliases: list[str] = msgspec.field(default_factory=list)  # dns.aliases: extra DNS names
    transport_order: list[str] = msgspec.field(default_factory=list)  # the order in force
    location: Location | None = None  # peer.yaml's location: (kept by the coordinator only
    # when its server.yaml has locations: true)
    concentrator: ConcentratorStatus | None = None  # this peer serves clients (tunnelmesh_wg)


class HeartbeatAck(msgspec.Struct, kw_only=True):
    interval: float
    server_time: float
    observed_addr: str  # the source address the coordinator saw for this request


class PeerInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One peer as other peers and the CLI see it."""

    name: str
    peer_id: str
    public_key: str  # OpenSSH ed25519
    wg_public_key: str  # base64 X25519 key derived from public_key, for the data plane
    mesh_ip: str
    endpoints: list[str] = msgspec.field(default_factory=list)
    online: bool = False
    last_seen: float = 0.0  # unix time, 0 = never
    is_admin: bool = False
    is_coordinator: bool = False
    transports: dict[str, str] = msgspec.field(default_factory=dict)
    rtt_ms: dict[str, float] = msgspec.field(default_factory=dict)
    reasons: dict[str, str] = msgspec.field(default_factory=dict)
    counters: Counters = msgspec.field(default_factory=Counters)
    version: str = ""
    allow_exit_traffic: bool = False  # an exit node: clients may route internet traffic via it
    aliases: list[str] = msgspec.field(default_factory=list)  # extra DNS names, e.g. "db"
    concentrator_endpoint: str = ""  # a concentrator: "host:port" its clients dial


class ClientInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A client of the mesh: a host that is no tunnelmesh peer (a phone with the WireGuard
    app), with its own mesh IP and DNS name, reached through its concentrator peer.

    Its identity is its public key (``client_id`` is derived from it, in the peer-ID space but
    never equal to a peer's ID). Peers route ``mesh_ip`` to ``concentrator`` while ``active``.
    """

    client_id: str
    name: str  # one DNS label, unique among peers and clients
    kind: str  # "wireguard"
    public_key: str  # wireguard: base64 of the 32-byte X25519 key (as `wg pubkey` prints it)
    mesh_ip: str
    concentrator: str  # peer ID of the peer that serves it
    enabled: bool = True
    expires_at: float = 0.0  # unix time, 0 = never
    active: bool = True  # enabled and not expired when the coordinator sent this
    exit_peer: str = ""  # peer ID of the exit its internet traffic goes through ("" = none)
    preshared_key: str = ""  # base64; only in what is sent to its own concentrator
    created_by: str = ""  # peer ID of the admin who added it
    created_at: float = 0.0
    status: ClientStatus | None = None  # as its concentrator last reported (API answers only)

    def live(self, now: float) -> bool:
        """Whether traffic to and from this client may flow at ``now`` (unix time): active
        when sent, and not expired since."""
        return self.active and (not self.expires_at or now < self.expires_at)


class PeersResponse(msgspec.Struct, kw_only=True):
    peers: list[PeerInfo]
    revision: int
    clients: list[ClientInfo] = msgspec.field(default_factory=list)


class DnsRecord(msgspec.Struct, kw_only=True):
    name: str  # fully qualified without the trailing dot, e.g. "alpha.tunnelmesh"
    ip: str


class DnsResponse(msgspec.Struct, kw_only=True):
    records: list[DnsRecord]


class RendezvousRequest(msgspec.Struct, kw_only=True):
    """``POST /api/v1/rendezvous``: ask the coordinator to tell ``to`` to punch towards us."""

    to: str  # peer name
    endpoints: list[str] = msgspec.field(default_factory=list)


class RendezvousAck(msgspec.Struct, kw_only=True):
    delivered: bool  # the target has a live push channel and was told
    peer_endpoints: list[str]


# --- push channel (WebSocket /api/v1/push), server -> peer ------------------------------------


class Snapshot(msgspec.Struct, kw_only=True, tag="snapshot", tag_field="type"):
    """First message on a push channel: the whole peer table."""

    peers: list[PeerInfo]
    revision: int
    coordinators: list[str] = msgspec.field(default_factory=list)  # as in RegisterResponse


class PeerUpserted(msgspec.Struct, kw_only=True, tag="peer", tag_field="type"):
    """A peer joined, or changed (endpoints, online state, name)."""

    peer: PeerInfo
    revision: int


class PeerGone(msgspec.Struct, kw_only=True, tag="peer_gone", tag_field="type"):
    """A peer left the mesh (or was deleted)."""

    peer_id: str
    name: str
    revision: int


class Rendezvous(msgspec.Struct, kw_only=True, tag="rendezvous", tag_field="type"):
    """Another peer wants a direct path: punch towards ``endpoints`` now."""

    from_peer: str
    peer_id: str
    endpoints: list[str]


class PolicyRule(msgspec.Struct, kw_only=True, frozen=True):
    """One coordinator filter rule (server.yaml's ``filter.rules`` or one an admin added at
    run time), as peers receive it; ``expires`` is unix time, 0 for never."""

    port: int
    protocol: str = "tcp"
    action: str = "allow"
    source_peer: str = ""
    expires: float = 0.0


class FilterRules(msgspec.Struct, kw_only=True, tag="filter_rules", tag_field="type"):
    """The coordinator layer of every peer's packet filter: sent right after each snapshot and
    again whenever the coordinator's rules change (the whole list each time)."""

    rules: list[PolicyRule]


class Coordinators(msgspec.Struct, kw_only=True, tag="coordinators", tag_field="type"):
    """The live coordinators of the mesh changed (one started, or one is gone): their URLs."""

    urls: list[str]


class TransportOrder(msgspec.Struct, kw_only=True, tag="transport_order", tag_field="type"):
    """The transport order an admin (or this peer) set for this node through the coordinator,
    most preferred first; empty: the node's own ``transports.order`` again. Sent to that node
    only, after its snapshot when one is set, and on every change."""

    order: list[str]


class Clients(msgspec.Struct, kw_only=True, tag="clients", tag_field="type"):
    """Every client of the mesh (inactive ones too): sent after each snapshot and again on
    every change, the whole list each time. Only a client's own concentrator gets its
    preshared key."""

    clients: list[ClientInfo]


PushMessage = (
    Snapshot
    | PeerUpserted
    | PeerGone
    | Rendezvous
    | FilterRules
    | Coordinators
    | TransportOrder
    | Clients
)

_encoder = msgspec.json.Encoder()
_push_decoder = msgspec.json.Decoder(PushMessage)


def encode(obj: object) -> bytes:
    """JSON bytes of any message."""
    return _encoder.encode(obj)


def decode_push(data: bytes | str) -> PushMessage:
    """Decode one push-channel message.

    Raises:
        msgspec.DecodeError: not a push message (callers treat it as a protocol error).
    """
    msg: PushMessage = _push_decoder.decode(data)
    return msg
