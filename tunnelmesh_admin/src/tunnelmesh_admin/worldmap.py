"""The location map, drawn offline: Natural Earth's land outline as one SVG path, and markers.

The outline is ``static/vendor/land-110m.json`` (TopoJSON from the npm package ``world-atlas``,
Natural Earth 1:110m, see VENDOR.md), decoded here once: each arc's delta-encoded, quantized
points are summed and scaled, arcs are joined into rings (a negative index is the arc reversed),
and every point is projected equirectangularly onto a :data:`WIDTH` x :data:`HEIGHT` plane. No
tile server, no map library, no request leaves the dashboard: the browser gets an inline SVG.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

__all__ = [
    "HEIGHT",
    "TOP",
    "WIDTH",
    "Marker",
    "land_path",
    "land_rings",
    "markers",
    "project",
    "view_box",
]

WIDTH = 1000.0
HEIGHT = 500.0
TOP, BOTTOM = 84.0, -58.0
"""Latitudes the view shows (Antarctica is left out: no peer lives there)."""


@dataclass(frozen=True)
class Marker:
    """One peer on the map, already projected."""

    name: str
    city: str
    online: bool
    x: float
    y: float


def project(lon: float, lat: float) -> tuple[float, float]:
    """Equirectangular: longitude -180..180 to 0..WIDTH, latitude 90..-90 to 0..HEIGHT."""
    return (lon + 180.0) / 360.0 * WIDTH, (90.0 - lat) / 180.0 * HEIGHT


def view_box() -> str:
    """The SVG viewBox that shows latitudes TOP to BOTTOM."""
    _, y0 = project(0, TOP)
    _, y1 = project(0, BOTTOM)
    return f"0 {y0:.1f} {WIDTH:.0f} {y1 - y0:.1f}"


def _arcs(topo: dict[str, object]) -> list[list[tuple[float, float]]]:
    transform = topo.get("transform")
    raw = topo["arcs"]
    assert isinstance(raw, list)
    out = []
    if isinstance(transform, dict):
        (sx, sy), (tx, ty) = transform["scale"], transform["translate"]
        for arc in raw:
            x = y = 0
            points = []
            for dx, dy, *_ in arc:
                x += dx
                y += dy
                points.append((x * sx + tx, y * sy + ty))
            out.append(points)
    else:
        out = [[(float(p[0]), float(p[1])) for p in arc] for arc in raw]
    return out


def _ring(arcs: list[list[tuple[float, float]]], indexes: list[int]) -> list[tuple[float, float]]:
    ring: list[tuple[float, float]] = []
    for i in indexes:
        points = arcs[i] if i >= 0 else arcs[~i][::-1]
        ring.extend(points[1:] if ring else points)
    return ring


def _unwrap(ring: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Longitudes made continuous: no step of more than 180 degrees (-179 after 179 is 181)."""
    out: list[tuple[float, float]] = []
    for lon, lat in ring:
        if out:
            prev = out[-1][0]
            while lon - prev > 180:
                lon -= 360
            while lon - prev < -180:
                lon += 360
        out.append((lon, lat))
    return out


@cache
def land_rings() -> tuple[tuple[tuple[float, float], ...], ...]:
    """The land of the world as projected rings (a ring across the antimeridian twice,
    360 degrees apart: the viewBox clips each copy at the map's edge)."""
    data = (
        resources.files("tunnelmesh_admin") / "static" / "vendor" / "land-110m.json"
    ).read_text()
    topo = json.loads(data)
    arcs = _arcs(topo)
    rings = []
    for geometry in topo["objects"]["land"]["geometries"]:
        polygons = geometry["arcs"]
        if geometry["type"] == "Polygon":
            polygons = [polygons]
        for polygon in polygons:
            for indexes in polygon:
                ring = _unwrap(_ring(arcs, indexes))
                if len(ring) < 3:
                    continue
                lons = [lon for lon, _ in ring]
                shifts = [0.0]
                if max(lons) > 180:
                    shifts.append(-360.0)
                if min(lons) < -180:
                    shifts.append(360.0)
                for shift in shifts:
                    rings.append(tuple(project(lon + shift, lat) for lon, lat in ring))
    return tuple(rings)


@cache
def land_path() -> str:
    """The land as one SVG path ``d``."""
    return "".join(
        "M" + "L".join(f"{x:.1f},{y:.1f}" for x, y in ring) + "Z" for ring in land_rings()
    )


def markers(places: list[tuple[str, str, bool, float, float]]) -> list[Marker]:
    """``(name, city, online, lat, lon)`` to markers; positions outside the world are left out."""
    out = []
    for name, city, online, lat, lon in places:
        if -90 <= lat <= 90 and -180 <= lon <= 180:
            x, y = project(lon, lat)
            out.append(Marker(name=name, city=city, online=online, x=round(x, 1), y=round(y, 1)))
    return out
