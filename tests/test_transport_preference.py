"""The installed transports' own preferences give the order core no longer names (issue 16):
a node with an empty ``transports.order`` tries UDP, then SSH, then the relay."""

from __future__ import annotations

import pytest
from tunnelmesh.manager import make_plugin_manager
from tunnelmesh.node.node import transport_order


def test_udp_then_ssh_then_relay_without_a_configured_order() -> None:
    classes = make_plugin_manager().build_registry("transports").transports
    missing = {"udp", "ssh", "relay"} - set(classes)
    if missing:
        pytest.skip(f"not installed here: {sorted(missing)}")
    order = [n for n in transport_order([], classes) if n in ("udp", "ssh", "relay")]
    assert order == ["udp", "ssh", "relay"]
    assert [n for n in transport_order(["relay"], classes) if n in ("udp", "ssh", "relay")] == [
        "relay",
        "udp",
        "ssh",
    ]
