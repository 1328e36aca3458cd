"""Routing rules, listen parsing and head helpers: sans-IO, no sockets (spec sections 1-3)."""

from __future__ import annotations

import pytest
from tunnelmesh.abc import ProxyRule, Upstream
from tunnelmesh_proxy.headers import NO_ROUTE, RouteError, parse_port
from tunnelmesh_proxy.http1 import connection_tokens, error_response, origin_form
from tunnelmesh_proxy.listen import dedupe, parse_address, parse_listen
from tunnelmesh_proxy.mesh import HostsFileLookup, MeshPeerRule, resolver_lookup
from tunnelmesh_proxy.routing import CmuxRule, Router, match_host, workspace_ip

PORT = "x-cmux-port-internal"
WS = "x-cmux-workspace-internal"
PEER = "x-tunnelmesh-peer"


# --- port header (spec 2.1) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "port"),
    [
        ("3000", 3000),
        ("  3000\t", 3000),
        ("0003000", 3000),
        ("+80", 80),
        ("65535", 65535),
        ("1", 1),
    ],
)
def test_port_header_accepts_decimal_u16(raw: str, port: int) -> None:
    assert parse_port(raw) == port


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "header value cannot be empty"),
        ("   ", "header value cannot be empty"),
        ("0", "invalid port in X-Cmux-Port-Internal"),  # spec s.12: 400, not 502
        ("65536", "invalid port in X-Cmux-Port-Internal"),
        ("-1", "invalid port in X-Cmux-Port-Internal"),
        ("30 00", "invalid port in X-Cmux-Port-Internal"),
        ("abc", "invalid port in X-Cmux-Port-Internal"),
        ("0x50", "invalid port in X-Cmux-Port-Internal"),
        ("80\xe9", "invalid header value (not UTF-8)"),
        ("80\x01", "invalid header value (not UTF-8)"),
    ],
)
def test_port_header_errors(raw: str, reason: str) -> None:
    with pytest.raises(RouteError, match=f"^{reason.replace('(', '.').replace(')', '.')}$"):
        parse_port(raw)


# --- workspace mapping (spec 2.3) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ip"),
    [
        ("workspace-1", "127.18.0.1"),
        ("workspace-2", "127.18.0.2"),
        ("workspace-256", "127.18.1.0"),
        ("workspace-257", "127.18.1.1"),
        ("workspace-0", "127.18.0.0"),
        ("workspace-65537", "127.18.0.1"),  # wraps, as cmux does
        ("workspace-007", "127.18.0.7"),
        ("ws7", "127.18.0.7"),
        ("7", "127.18.0.7"),
        ("/root/workspace-2", "127.18.0.2"),
        ("workspace-4294967295", "127.18.255.255"),
        # no trailing digits: FNV-1a of the lower-cased name, low 16 bits
        ("workspace-a", "127.18.176.32"),
        ("Workspace-A", "127.18.176.32"),
        ("workspace-b", "127.18.180.217"),
        ("workspace-c", "127.18.179.70"),
        ("foo", "127.18.126.215"),
    ],
)
def test_workspace_ip(name: str, ip: str) -> None:
    assert workspace_ip(name) == ip


def test_workspace_number_over_32_bits_cannot_be_mapped() -> None:
    assert workspace_ip("workspace-4294967296") is None


# --- Host subdomain (spec 3) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("workspace-1-3000.localhost", ("workspace-1", 3000)),
        ("workspace-a-3000.localhost:8080", ("workspace-a", 3000)),
        ("WORKSPACE-256-3000.LOCALHOST", ("WORKSPACE-256", 3000)),
        ("app.workspace-1-3000.localhost", ("app.workspace-1", 3000)),
        ("ws-0.localhost", ("ws", 0)),
        ("ws-+80.localhost", ("ws", 80)),
    ],
)
def test_host_matches(host: str, expected: tuple[str, int]) -> None:
    assert match_host(host) == expected


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:8080",
        "workspace-1-3000.example",
        "workspace-1-3000.localhost.",
        "nodash.localhost",
        "-3000.localhost",
        "workspace-.localhost",
        "workspace-1-99999.localhost",
        ".localhost",
        "localhost",
        "[::1]:8080",
    ],
)
def test_host_does_not_match(host: str) -> None:
    assert match_host(host) is None


# --- the cmux rule: precedence and error order (spec 2, 3) ------------------------------------


def route(headers: dict[str, str], upstream_host: str = "127.0.0.1") -> Upstream:
    return Router([MeshPeerRule(lambda n: None), CmuxRule(upstream_host)]).route(headers)


def test_port_header_goes_to_the_upstream_host() -> None:
    assert route({PORT: "3000"}) == Upstream("127.0.0.1", 3000)
    assert route({PORT: "3000"}, "127.18.9.9") == Upstream("127.18.9.9", 3000)


def test_workspace_header_picks_the_ip() -> None:
    assert route({PORT: "3000", WS: "workspace-1"}) == Upstream("127.18.0.1", 3000)
    assert route({PORT: "3000", WS: " workspace-a "}) == Upstream("127.18.176.32", 3000)


def test_host_gives_port_and_workspace() -> None:
    assert route({"host": "workspace-1-3000.localhost"}) == Upstream("127.18.0.1", 3000)
    assert route({"host": "workspace-a-3002.localhost:8080"}) == Upstream("127.18.176.32", 3002)


def test_headers_beat_host_and_combine_with_it() -> None:
    host = {"host": "workspace-2-9999.localhost"}
    assert route({**host, PORT: "3000"}) == Upstream("127.18.0.2", 3000)
    assert route({**host, WS: "workspace-5"}) == Upstream("127.18.0.5", 9999)
    assert route({**host, PORT: "3000", WS: "workspace-5"}) == Upstream("127.18.0.5", 3000)


def test_invalid_port_header_never_falls_back_to_host() -> None:
    with pytest.raises(RouteError, match="invalid port"):
        route({"host": "workspace-2-9999.localhost", PORT: "x"})


def test_port_is_checked_before_workspace() -> None:
    with pytest.raises(RouteError, match="invalid port"):
        route({PORT: "0", WS: ""})


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, NO_ROUTE),
        ({"host": "example.com"}, NO_ROUTE),
        ({PORT: "3000", WS: "  "}, "X-Cmux-Workspace-Internal cannot be empty"),
        (
            {PORT: "3000", WS: "w\xe9"},
            "invalid header value (not UTF-8): X-Cmux-Workspace-Internal",
        ),
        (
            {PORT: "3000", WS: "workspace-99999999999"},
            "invalid workspace name: workspace-99999999999",
        ),
        (
            {"host": "workspace-99999999999-80.localhost"},
            "invalid workspace name: workspace-99999999999",
        ),
    ],
)
def test_route_errors(headers: dict[str, str], reason: str) -> None:
    with pytest.raises(RouteError) as info:
        route(headers)
    assert str(info.value) == reason


def test_cmux_rule_from_options() -> None:
    rule = CmuxRule.from_options({"upstream_host": "[::1]", "other": 1})
    assert rule.route({PORT: "80"}) == Upstream("[::1]", 80)
    assert CmuxRule.from_options({}).route({PORT: "80"}) == Upstream("127.0.0.1", 80)


# --- the mesh rule ---------------------------------------------------------------------------------


def test_mesh_rule_routes_to_the_peer_ip() -> None:
    peers = {"web": "100.64.0.7"}
    router = Router([MeshPeerRule(peers.get), CmuxRule()])
    assert router.route({PEER: "Web", PORT: "8080"}) == Upstream("100.64.0.7", 8080)
    # a peer header wins over the workspace rules
    assert router.route({PEER: "web", PORT: "80", WS: "workspace-1"}) == Upstream("100.64.0.7", 80)
    assert router.route({PORT: "80"}) == Upstream("127.0.0.1", 80)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({PEER: "db", PORT: "80"}, "unknown peer: db"),
        ({PEER: "bad_name", PORT: "80"}, "invalid peer name: bad_name"),
        ({PEER: "", PORT: "80"}, "invalid peer name: "),
        ({PEER: "web"}, NO_ROUTE),
        ({PEER: "web", PORT: "0"}, "invalid port in X-Cmux-Port-Internal"),
    ],
)
def test_mesh_rule_errors(headers: dict[str, str], reason: str) -> None:
    router = Router([MeshPeerRule({"web": "100.64.0.7"}.get), CmuxRule()])
    with pytest.raises(RouteError) as info:
        router.route(headers)
    assert str(info.value) == reason


def test_mesh_rule_is_opt_in_and_needs_a_lookup() -> None:
    assert MeshPeerRule.from_options({}) is None
    assert MeshPeerRule.from_options({"mesh": True}) is None
    # Off unless asked for: a lookup alone (the proxy always passes one) is not enough.
    assert MeshPeerRule.from_options({"peer_lookup": dict().get}) is None
    assert MeshPeerRule.from_options({"peer_lookup": dict().get, "mesh": False}) is None
    rule = MeshPeerRule.from_options({"peer_lookup": dict().get, "mesh": True})
    assert isinstance(rule, MeshPeerRule)


def test_resolver_lookup_names_the_mesh_domain() -> None:
    assert resolver_lookup("mesh.example.")("web") == "web.mesh.example"


def test_hosts_file_lookup_reloads_on_change(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "hosts"
    now = [0.0]
    lookup = HostsFileLookup(path, "tunnelmesh", clock=lambda: now[0])
    assert lookup("web") is None  # no file: no peers
    path.write_text("# mesh records\n172.30.0.5 web.tunnelmesh web-alias\n172.30.0.6 db  # db\n")
    now[0] += 1.5
    assert lookup("web") == "172.30.0.5"
    assert lookup("web-alias") == "172.30.0.5"
    assert lookup("db") == "172.30.0.6"
    path.write_text("172.30.0.9 web\n")
    import os

    os.utime(path, ns=(1, 10**18))
    assert lookup("web") == "172.30.0.5"  # checked at most once a second
    now[0] += 1.5
    assert lookup("web") == "172.30.0.9"
    assert lookup("db") is None


# --- the rule interface ---------------------------------------------------------------------------


def test_router_collects_headers_and_private_headers() -> None:
    router = Router([MeshPeerRule(dict().get), CmuxRule()])
    assert router.header_names == {PORT, WS, PEER, "host"}
    assert router.private_headers == {PORT, WS, PEER}


def test_third_party_rule_is_asked_in_order() -> None:
    class Fixed(ProxyRule):
        name = "fixed"
        headers = frozenset({"x-fixed"})

        def route(self, headers):  # type: ignore[no-untyped-def]
            return Upstream("127.18.3.3", 9) if "x-fixed" in headers else None

    router = Router([Fixed(), CmuxRule()])
    assert router.route({"x-fixed": "1", PORT: "80"}) == Upstream("127.18.3.3", 9)
    assert router.route({PORT: "80"}) == Upstream("127.0.0.1", 80)
    assert "x-fixed" in router.header_names and "x-fixed" not in router.private_headers


# --- listen addresses (spec 1) -----------------------------------------------------------------


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_address("[::1]:8080") == ("::1", 8080)


@pytest.mark.parametrize(
    "item",
    [
        "localhost:8080",
        "8080",
        ":8080",
        " 127.0.0.1:8080",
        "127.0.0.1:8080 ",
        "::1:80",
        "1.2.3.4:70000",
        "",
    ],
)
def test_parse_address_rejects(item: str) -> None:
    with pytest.raises(ValueError):
        parse_address(item)


def test_listen_defaults_dedupe_to_the_wildcard() -> None:
    assert parse_listen(["0.0.0.0:8080,127.0.0.1:8080"]) == [("0.0.0.0", 8080)]


def test_listen_repeated_and_comma_separated() -> None:
    got = parse_listen(["127.0.0.2:81,127.0.0.1:80", "127.0.0.1:80", "[::1]:80"])
    assert got == [("127.0.0.1", 80), ("::1", 80), ("127.0.0.2", 81)]


def test_wildcard_covers_its_family_and_port_only() -> None:
    got = dedupe(
        [
            ("127.0.0.1", 80),
            ("0.0.0.0", 80),
            ("127.0.0.1", 81),
            ("::1", 80),
            ("::", 80),
            ("::1", 81),
        ]
    )
    assert got == [("0.0.0.0", 80), ("::", 80), ("127.0.0.1", 81), ("::1", 81)]
    assert dedupe([("0.0.0.0", 0), ("127.0.0.1", 0)]) == [("0.0.0.0", 0)]


# --- head helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/a?b", b"/a?b"),
        (b"*", b"*"),
        (b"http://x/y?z", b"/y?z"),
        (b"http://x", b"/"),
        (b"http://x?q=1", b"/?q=1"),
        (b"https://user@x:81/p/q", b"/p/q"),
    ],
)
def test_origin_form(target: bytes, expected: bytes) -> None:
    assert origin_form(target) == expected


def test_connection_tokens() -> None:
    assert connection_tokens(b"Keep-Alive, X-Foo ,,upgrade") == {
        b"keep-alive",
        b"x-foo",
        b"upgrade",
    }


def test_error_response_is_plain_text() -> None:
    raw = error_response(400, "bad thing", keep_alive=False)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"content-type: text/plain; charset=utf-8" in head
    assert b"content-length: 9" in head and b"connection: close" in head
    assert body == b"bad thing"
