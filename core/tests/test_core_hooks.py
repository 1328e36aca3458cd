"""Each hook spec is called by core as documented: one test_hook_<name> per hook (a meta-test
checks the list is complete)."""

from __future__ import annotations

import types
from typing import Any, ClassVar

import click
import msgspec
import pytest
from tunnelmesh import hookimpl, hookspecs
from tunnelmesh._manager import PluginManager
from tunnelmesh.abc import DnsBackend, PacketFilter, ProxyRule, Storage, Upstream
from tunnelmesh.cli import build_cli


def plugin(**impls: Any) -> types.ModuleType:
    mod = types.ModuleType("p")
    for name, fn in impls.items():
        setattr(mod, name, hookimpl(fn))
    return mod


def pm_with(**impls: Any) -> PluginManager:
    pm = PluginManager()
    pm.register(plugin(**impls), name="p")
    pm.check_pending()
    return pm


class Allow(PacketFilter):
    name: ClassVar[str] = "allow"

    def verdicts(self, packets: Any, peer: str, inbound: bool) -> list[bool]:
        return [True] * len(packets)


class Hosts(DnsBackend):
    name: ClassVar[str] = "hosts"

    def lookup(self, qname: str, qtype: str) -> list[str] | None:
        return ["172.30.0.1"] if qname == "a.tunnelmesh" else None


class Fixed(ProxyRule):
    name: ClassVar[str] = "fixed"

    def route(self, headers: Any, default: Any = None) -> Upstream | None:
        return Upstream("127.0.0.1", 80)


def test_hook_tunnelmesh_register_transports() -> None:
    from test_core_manager import make_transport

    cls = make_transport("tcp")
    reg = pm_with(
        tunnelmesh_register_transports=lambda registry: registry.add_transport(cls)
    ).build_registry()
    assert reg.transports == {"tcp": cls}


def test_hook_tunnelmesh_register_filters() -> None:
    reg = pm_with(
        tunnelmesh_register_filters=lambda registry: registry.add_filter(Allow)
    ).build_registry()
    assert reg.filters["allow"]().verdicts([b"x", b"y"], "peer", True) == [True, True]


def test_hook_tunnelmesh_register_dns_backends() -> None:
    reg = pm_with(
        tunnelmesh_register_dns_backends=lambda registry: registry.add_dns_backend(Hosts)
    ).build_registry()
    assert reg.dns_backends["hosts"]().lookup("a.tunnelmesh", "A") == ["172.30.0.1"]


def test_hook_tunnelmesh_register_storage() -> None:
    class Mem(Storage):
        name: ClassVar[str] = "mem"

    reg = pm_with(
        tunnelmesh_register_storage=lambda registry: registry.add_storage(Mem)
    ).build_registry()
    assert reg.storage == {"mem": Mem}


def test_hook_tunnelmesh_register_state_backends(tmp_path: Any) -> None:
    from tunnelmesh.config import ServerConfig, StateConfig
    from tunnelmesh.coordinator.backends import state_store_for
    from tunnelmesh.coordinator.sqlite import SqliteStore

    class Mem(SqliteStore):
        name: ClassVar[str] = "mem"

        @classmethod
        def from_config(cls, state: StateConfig, data_dir: Any) -> Mem:
            return cls(data_dir / "mem.db")

    pm = pm_with(
        tunnelmesh_register_state_backends=lambda registry: registry.add_state_backend(Mem)
    )
    reg = pm.build_registry("state_backends")
    assert reg.state_backends == {"mem": Mem}
    config = ServerConfig(
        auth_token="x" * 16,
        data_dir=str(tmp_path),
        state=StateConfig(backend="mem", encryption_key_file="k"),
    )
    store = state_store_for(config, pm)
    assert isinstance(store, Mem) and store.path == tmp_path / "mem.db"


def test_hook_tunnelmesh_register_proxy_rules() -> None:
    reg = pm_with(
        tunnelmesh_register_proxy_rules=lambda registry: registry.add_proxy_rule(Fixed)
    ).build_registry()
    assert reg.proxy_rules["fixed"]().route({}) == Upstream("127.0.0.1", 80)


def test_hook_tunnelmesh_register_config_sections() -> None:
    class Sec(msgspec.Struct):
        x: int = 1

    reg = pm_with(
        tunnelmesh_register_config_sections=lambda registry: registry.add_config_section(
            "sec", Sec, peer=False
        )
    ).build_registry()
    section = reg.config_sections["sec"]
    assert (section.type, section.server, section.peer, section.plugin) == (Sec, True, False, "p")


def test_hook_tunnelmesh_register_admin_panels() -> None:
    from tunnelmesh.errors import PluginError
    from tunnelmesh.registry import AdminPanel

    panel = AdminPanel("clients", "Clients", "/api/v1/x/clients", "clients", (("name", "Name"),))
    reg = pm_with(
        tunnelmesh_register_admin_panels=lambda registry: registry.add_admin_panel(panel)
    ).build_registry("admin_panels")
    assert reg.admin_panels == {"clients": panel}
    assert reg.provided_by("p") == {"admin panel": ["clients"]}
    for bad in (
        {"slug": "Bad Slug"},
        {"api": "https://elsewhere.example/x"},
        {"api": "/api/v1/x/{name}"},
        {"columns": ()},
    ):
        fields = {"slug": "ok", "title": "T", "api": "/api/v1/x", "list_key": "k"}
        fields["columns"] = (("a", "A"),)  # type: ignore[assignment]
        with pytest.raises(PluginError):
            AdminPanel(**{**fields, **bad})  # type: ignore[arg-type]


def test_hook_tunnelmesh_register_commands() -> None:
    cmd = click.Command("extra", callback=lambda: None)
    pm = pm_with(tunnelmesh_register_commands=lambda cli: cli.add_command(cmd))
    assert build_cli(pm).commands["extra"] is cmd


def test_hook_tunnelmesh_register_coordinator_routes() -> None:
    seen: list[tuple[Any, Any]] = []
    pm = pm_with(
        tunnelmesh_register_coordinator_routes=lambda app, coordinator: seen.append(
            (app, coordinator)
        )
    )
    pm.hook.tunnelmesh_register_coordinator_routes(app="app", coordinator="coord")
    assert seen == [("app", "coord")]


@pytest.mark.parametrize("hook", ["tunnelmesh_node_started", "tunnelmesh_node_stopping"])
def test_hook_notifications(hook: str) -> None:
    seen: list[Any] = []
    pm = pm_with(**{hook: lambda node: seen.append(node)})
    getattr(pm.hook, hook)(node="n")
    assert seen == ["n"]


def test_every_hook_has_a_test() -> None:
    specs = [n for n in dir(hookspecs) if n.startswith("tunnelmesh_")]
    here = globals()
    params = {"tunnelmesh_node_started", "tunnelmesh_node_stopping"}
    missing = [n for n in specs if f"test_hook_{n}" not in here and n not in params]
    assert not missing, f"hooks without a test_hook_<name>: {missing}"
