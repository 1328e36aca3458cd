"""The ``admin:`` section of server.yaml."""

from __future__ import annotations

import msgspec

__all__ = ["AdminSection"]


class AdminSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``admin:`` in server.yaml.

    Attributes:
        enabled: serve the dashboard (it needs ``join_mesh``: it listens on the coordinator's
            own mesh IP).
        port: the port on the mesh IP.
        listen: ``HOST:PORT`` to listen on instead of the mesh IP (tests; the caller must still
            come from a mesh IP). Never the coordinator's public API address.
        geoip_db: a local MaxMind DB file (GeoLite2-City, DB-IP city lite ``.mmdb``): with
            ``locations: true`` the map places a peer that gives no ``location:`` by its public
            endpoint address, marked approximate. Read locally; nothing is asked over the
            network. Empty: no GeoIP.
    """

    enabled: bool = False
    port: int = 443
    listen: str = ""
    geoip_db: str = ""

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"admin.port must be 1..65535, got {self.port}")
