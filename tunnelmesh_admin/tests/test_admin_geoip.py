"""The map's GeoIP source: a local MaxMind DB file places peers without a configured location.

The database is written by the test (``mmdb-writer``, the test extra) with city records for
documentation ranges the peers report as their endpoints, and for a private range that must
never be looked up.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from pathlib import Path
from typing import Any

import maxminddb
import netaddr
import pytest
from mmdb_writer import MMDBWriter
from tunnelmesh.control.messages import Heartbeat, Location
from tunnelmesh_admin.geoip import GeoLocator, lookup_address, open_geoip
from tunnelmesh_admin.testing import running_mesh

PARIS = {
    "city": {"names": {"en": "Paris", "de": "Paris"}},
    "location": {"latitude": 48.86, "longitude": 2.35},
}
LIMA = {"city": {"names": {"en": "Lima"}}, "location": {"latitude": -12.05, "longitude": -77.04}}
LAN = {"city": {"names": {"en": "Nowhere"}}, "location": {"latitude": 10.0, "longitude": 10.0}}


def run(coro: object) -> None:
    asyncio.run(asyncio.wait_for(coro, 120))  # type: ignore[arg-type]


def write_db(path: Path) -> Path:
    """A GeoLite2-City-shaped database: 203.0.113.0/24 Paris, 198.51.100.0/24 and
    2001:db8::/32 Lima, and 192.168.7.0/24 (private: never to be asked) somewhere."""
    w = MMDBWriter(
        ip_version=6, database_type="GeoLite2-City", languages=["en"], ipv4_compatible=True
    )
    w.insert_network(netaddr.IPSet(["203.0.113.0/24"]), PARIS)
    w.insert_network(netaddr.IPSet(["198.51.100.0/24", "2001:db8::/32"]), LIMA)
    w.insert_network(netaddr.IPSet(["192.168.7.0/24", "100.64.0.0/10"]), LAN)
    w.to_db_file(str(path))
    return path


@pytest.mark.parametrize(
    ("endpoint", "looked_up"),
    [
        ("203.0.113.7:51820", "203.0.113.7"),
        ("[2001:db8::5]:51820", "2001:db8::5"),
        ("[::ffff:203.0.113.9]:51820", "203.0.113.9"),
        ("192.168.7.3:51820", None),  # RFC 1918
        ("10.1.2.3:51820", None),
        ("172.20.0.1:51820", None),
        ("100.64.0.9:51820", None),  # carrier-grade NAT
        ("169.254.1.1:51820", None),  # link-local
        ("127.0.0.1:51820", None),
        ("[::1]:51820", None),
        ("[fd00::1]:51820", None),  # unique local
        ("[fe80::1]:51820", None),
        ("224.0.0.1:51820", None),
        ("0.0.0.0:51820", None),
        ("240.0.0.1:51820", None),  # reserved
        ("127.77.0.5:51820", None),  # the mesh
        ("vpn.example.com:51820", None),  # a name is never resolved
        ("", None),
    ],
)
def test_only_public_addresses_are_looked_up(endpoint: str, looked_up: str | None) -> None:
    mesh = ipaddress.ip_network("127.77.0.0/16")
    got = lookup_address(endpoint, mesh)
    assert got == (None if looked_up is None else ipaddress.ip_address(looked_up))
    assert lookup_address("100.70.0.5:1", ipaddress.ip_network("100.70.0.0/16")) is None


@pytest.mark.parametrize("mode", [maxminddb.MODE_AUTO, maxminddb.MODE_FILE, maxminddb.MODE_MEMORY])
def test_the_reader_places_addresses_and_caches_them_bounded(tmp_path: Path, mode: int) -> None:
    found = open_geoip(str(write_db(tmp_path / "city.mmdb")), mode)
    assert isinstance(found, GeoLocator)
    found.cache_size = 2
    paris = found.locate(ipaddress.ip_address("203.0.113.7"))
    assert paris == Location(lat=48.86, lon=2.35, city="Paris")
    assert found.locate(ipaddress.ip_address("2001:db8::5")) == Location(
        lat=-12.05, lon=-77.04, city="Lima"
    )
    assert found.locate(ipaddress.ip_address("8.8.8.8")) is None  # not in this database
    assert found.lookups == 3 and len(found._cache) == 2  # bounded: Paris went first
    assert found.locate(ipaddress.ip_address("8.8.8.8")) is None
    assert found.lookups == 3  # a cached "nowhere" too
    assert found.locate(ipaddress.ip_address("203.0.113.7")) == paris
    assert found.lookups == 4
    # a peer's endpoints: LAN ones are skipped, never asked, even though the file has them
    assert found.locate_endpoints(["192.168.7.3:51820", "198.51.100.4:4000"]) is not None
    assert ipaddress.ip_address("192.168.7.3") not in found._cache
    assert found.locate_endpoints(["192.168.7.3:51820", "100.64.0.9:1"]) is None
    found.close()


def _rows(html: str) -> dict[str, tuple[str, str, str]]:
    """name -> (lat, lon, source) from the map page's table."""
    out = {}
    for source, name, lat, lon in re.findall(
        r'<tr data-source="(\w+)"><td><a href="/peers/([^"]+)">[^<]*</a></td><td>[^<]*</td>'
        r"<td>([-\d.]+)</td><td>([-\d.]+)</td>",
        html,
    ):
        out[name] = (lat, lon, source)
    return out


def test_the_map_places_a_peer_by_geoip_and_a_configured_location_wins(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = write_db(tmp_path / "city.mmdb")

    async def main() -> None:
        caplog.set_level(logging.INFO, logger="tunnelmesh_admin")
        async with running_mesh(
            tmp_path, server_fields={"locations": True}, geoip_db=str(db)
        ) as mesh:
            coord = mesh.server.coordinator
            geoip = mesh.service.geoip
            assert geoip is not None
            gamma = await mesh.callers.register("gamma")

            def beat(client: Any, **fields: Any) -> None:
                pid = client.registration.peer_id
                coord.heartbeat_pace.forget(pid)
                coord.heartbeat(coord.peers[pid], Heartbeat(**fields), "")

            # the member: no location of its own, a LAN and a public endpoint -> GeoIP Paris
            beat(mesh.callers.peer, endpoints=["192.168.7.3:51820", "203.0.113.7:51820"])
            # the admin: its own location wins over the database's answer for its address
            here = Location(lat=52.52, lon=13.4, city="Berlin")
            beat(mesh.callers.admin, endpoints=["198.51.100.4:51820"], location=here)
            # gamma: only a private endpoint (in the file, but never asked) -> not placed
            beat(gamma, endpoints=["192.168.7.9:51820"])

            member = mesh.browser(mesh.mesh_ip(mesh.callers.peer))
            status, _, page = await member.call("GET", "/map")
            html = page.decode()
            assert status == 200
            rows = _rows(html)
            assert rows["authz-peer"] == ("48.86", "2.35", "geoip")
            assert rows["authz-admin"] == ("52.52", "13.40", "config")
            assert "gamma" not in rows and re.search(r"Without a location: [^<]*gamma", html)
            assert html.count('class="marker') == 2
            assert html.count("marker approximate") == 1
            assert 'data-name="authz-peer" data-source="geoip"' in html
            assert 'data-name="authz-admin" data-source="config"' in html
            assert "GeoIP (approximate)" in html and "Paris (GeoIP, approximate)" in html
            # Paris on the projection (lon 2.35, lat 48.86 -> x 506.5, y 114.3)
            assert 'cx="506.5" cy="114.3"' in html
            asked = set(geoip._cache)
            assert ipaddress.ip_address("203.0.113.7") in asked
            assert not asked & {ipaddress.ip_address(a) for a in ("192.168.7.3", "192.168.7.9")}
            assert ipaddress.ip_address("198.51.100.4") not in asked  # config won: not asked

            # the next page view is answered from the cache
            before = geoip.lookups
            await member.call("GET", "/map")
            assert geoip.lookups == before
        assert any("places peers without a location" in r.getMessage() for r in caplog.records)

    run(main())


@pytest.mark.parametrize("kind", ["corrupt", "missing"])
def test_an_unusable_database_is_one_warning_and_the_map_still_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    db = tmp_path / "city.mmdb"
    if kind == "corrupt":
        good = write_db(tmp_path / "good.mmdb").read_bytes()
        db.write_bytes(good[: len(good) // 3] + b"\x00" * 64)  # the metadata section is gone

    async def main() -> None:
        caplog.set_level(logging.INFO, logger="tunnelmesh_admin")
        async with running_mesh(
            tmp_path / "mesh", server_fields={"locations": True}, geoip_db=str(db)
        ) as mesh:
            coord = mesh.server.coordinator
            assert mesh.service.geoip is None
            pid = mesh.callers.admin.registration.peer_id  # type: ignore[union-attr]
            coord.heartbeat_pace.forget(pid)
            here = Location(lat=52.52, lon=13.4, city="Berlin")
            coord.heartbeat(coord.peers[pid], Heartbeat(location=here), "")
            pid = mesh.callers.peer.registration.peer_id  # type: ignore[union-attr]
            coord.heartbeat_pace.forget(pid)
            coord.heartbeat(coord.peers[pid], Heartbeat(endpoints=["203.0.113.7:51820"]), "")
            member = mesh.browser(mesh.mesh_ip(mesh.callers.peer))
            for _ in range(2):
                status, _, page = await member.call("GET", "/map")
                html = page.decode()
                assert status == 200
                assert _rows(html) == {"authz-admin": ("52.52", "13.40", "config")}
                assert "Without a location: authz-peer" in html
        warned = [r for r in caplog.records if "GeoIP database" in r.getMessage()]
        assert len(warned) == 1 and warned[0].levelno == logging.WARNING
        assert str(db) in warned[0].getMessage()
        assert "only the locations peers configure" in warned[0].getMessage()

    run(main())


def test_a_database_without_locations_true_is_not_opened(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = write_db(tmp_path / "city.mmdb")

    async def main() -> None:
        async with running_mesh(tmp_path / "mesh", geoip_db=str(db)) as mesh:
            assert mesh.service.geoip is None
            member = mesh.browser(mesh.mesh_ip(mesh.callers.peer))
            status, _, _ = await member.call("GET", "/map")
            assert status == 404
        assert any(
            "geoip_db" in r.getMessage() and "locations: true" in r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING
        )

    run(main())


@pytest.mark.parametrize("mode", [maxminddb.MODE_AUTO, maxminddb.MODE_FILE])
def test_a_damaged_data_section_answers_no_place_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int
) -> None:
    """The file opens (tree and metadata intact) but its records are garbage: every lookup
    answers no place, counted, and the operator is told once."""
    data = write_db(tmp_path / "good.mmdb").read_bytes()
    meta = data.rindex(b"\xab\xcd\xefMaxMind.com")
    with maxminddb.open_database(str(tmp_path / "good.mmdb"), maxminddb.MODE_FILE) as good:
        info = good.metadata()
    tree = info.node_count * info.record_size * 2 // 8 + 16  # the tree and its 16-byte separator
    damaged = tmp_path / "damaged.mmdb"
    damaged.write_bytes(data[:tree] + b"\xff" * (meta - tree) + data[meta:])
    found = open_geoip(str(damaged), mode)
    assert found is not None
    assert found.locate_endpoints(["203.0.113.7:1", "198.51.100.4:1"]) is None
    assert found.failed == 2
    warned = [r for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(warned) == 1 and str(damaged) in warned[0].getMessage()
    found.close()
