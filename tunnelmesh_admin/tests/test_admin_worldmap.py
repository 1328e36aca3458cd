"""The offline world outline: decoded from the vendored TopoJSON, projected, on the right side."""

from __future__ import annotations

import pytest
from tunnelmesh_admin.worldmap import WIDTH, land_path, land_rings, markers, project, view_box


def on_land(lon: float, lat: float) -> bool:
    """Even-odd rule over every ring (what an SVG fill with fill-rule evenodd would paint)."""
    x, y = project(lon, lat)
    inside = False
    for ring in land_rings():
        j = len(ring) - 1
        for i in range(len(ring)):
            (xi, yi), (xj, yj) = ring[i], ring[j]
            if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
                inside = not inside
            j = i
    return inside


@pytest.mark.parametrize(
    ("place", "lon", "lat", "land"),
    [
        ("Berlin", 13.4, 52.5, True),
        ("Nairobi", 36.8, -1.3, True),
        ("Denver", -105.0, 39.7, True),
        ("Sydney inland", 150.0, -33.0, True),
        ("Chukotka (across the antimeridian)", 175.0, 66.0, True),
        ("Chukotka's east end", -172.0, 65.5, True),
        ("mid-Atlantic", -30.0, 30.0, False),
        ("Pacific", -140.0, 0.0, False),
        ("Indian Ocean", 80.0, -20.0, False),
    ],
)
def test_the_outline_has_land_where_land_is(place: str, lon: float, lat: float, land: bool) -> None:
    assert on_land(lon, lat) is land, place


def test_projection_view_and_markers() -> None:
    assert project(0, 0) == (WIDTH / 2, 250.0)
    assert project(-180, 90) == (0.0, 0.0)
    d = land_path()
    assert d.startswith("M") and d.count("Z") == len(land_rings()) > 100
    assert view_box().startswith("0 16.7 1000 ")
    got = markers([("a", "Berlin", True, 52.5, 13.4), ("bad", "", True, 95.0, 0.0)])
    assert [(m.name, m.x, m.y) for m in got] == [("a", 537.2, 104.2)]
