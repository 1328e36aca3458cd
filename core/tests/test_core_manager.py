"""The plugin manager: entry points, block/allow lists, import failures, duplicate names."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from tunnelmesh import hookimpl
from tunnelmesh._manager import PluginManager, make_plugin_manager
from tunnelmesh.abc import Link, Transport
from tunnelmesh.errors import PluginError


@dataclass
class FakeDist:
    name: str
    version: str = "1.0"


@dataclass
class FakeEntryPoint:
    """Just what the manager reads of an importlib.metadata.EntryPoint."""

    name: str
    value: str
    dist: FakeDist | None
    module: Any = None

    def load(self) -> Any:
        if self.module is None:
            raise ModuleNotFoundError(f"No module named {self.value.split('.')[0]!r}")
        return self.module


def make_transport(tname: str) -> type[Transport]:
    class T(Transport):
        name: ClassVar[str] = tname

        async def listen(self, on_link: Any) -> None:
            raise NotImplementedError

        async def dial(self, peer: str, endpoints: Any) -> Link:
            raise NotImplementedError

        async def aclose(self) -> None:
            return None

    return T


def plugin_module(modname: str, transport: str) -> types.ModuleType:
    mod = types.ModuleType(modname)
    cls = make_transport(transport)

    @hookimpl
    def tunnelmesh_register_transports(registry: Any) -> None:
        registry.add_transport(cls)

    mod.tunnelmesh_register_transports = tunnelmesh_register_transports  # type: ignore[attr-defined]
    return mod


def test_loads_entry_points_and_lists_hooks() -> None:
    pm = PluginManager()
    pm.load_entry_points(
        [FakeEntryPoint("udp", "x_udp.plugin", FakeDist("tm-udp"), plugin_module("m1", "udp"))]
    )
    info = pm.infos["udp"]
    assert (info.status, info.dist, info.version) == ("loaded", "tm-udp", "1.0")
    assert info.hooks == ["tunnelmesh_register_transports"]
    registry = pm.build_registry()
    assert list(registry.transports) == ["udp"]
    assert registry.provided_by("udp") == {"transport": ["udp"]}


def test_two_distributions_claiming_one_plugin_name_name_both() -> None:
    pm = PluginManager()
    eps = [
        FakeEntryPoint("udp", "a.plugin", FakeDist("dist-a"), plugin_module("ma", "a")),
        FakeEntryPoint("udp", "b.plugin", FakeDist("dist-b"), plugin_module("mb", "b")),
    ]
    with pytest.raises(
        PluginError, match=r"'udp' is claimed by two distributions: 'dist-a' and 'dist-b'"
    ):
        pm.load_entry_points(eps)


def test_two_plugins_registering_one_transport_name_name_both() -> None:
    pm = PluginManager()
    pm.load_entry_points(
        [
            FakeEntryPoint("first", "a.plugin", FakeDist("dist-a"), plugin_module("ma", "tcp")),
            FakeEntryPoint("second", "b.plugin", FakeDist("dist-b"), plugin_module("mb", "tcp")),
        ]
    )
    with pytest.raises(
        PluginError,
        match=r"transport name 'tcp' is claimed by two plugins: '(first|second)' and '(first|second)'",
    ):
        pm.build_registry()


def test_failed_import_names_the_extra_and_does_not_stop_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pm = PluginManager()
    pm.load_entry_points(
        [
            FakeEntryPoint("ssh", "tunnelmesh_ssh.plugin", FakeDist("tunnelmesh-ssh")),
            FakeEntryPoint(
                "udp", "x.plugin", FakeDist("tunnelmesh-udp"), plugin_module("m", "udp")
            ),
        ]
    )
    assert pm.infos["ssh"].status == "failed"
    assert "pip install 'tunnelmesh[ssh]'" in pm.infos["ssh"].error
    assert pm.infos["udp"].status == "loaded"
    assert "not loaded" in caplog.text


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        ("TUNNELMESH_DISABLE_PLUGINS", "udp, other", {"udp": "blocked", "ssh": "loaded"}),
        ("TUNNELMESH_LOAD_PLUGINS", "udp", {"udp": "loaded", "ssh": "blocked"}),
    ],
)
def test_block_and_allow_lists(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, expected: dict[str, str]
) -> None:
    monkeypatch.setenv(env, value)
    pm = PluginManager()
    pm.load_entry_points(
        [
            FakeEntryPoint("udp", "a.plugin", FakeDist("a"), plugin_module("ma", "udp")),
            FakeEntryPoint("ssh", "b.plugin", FakeDist("b"), plugin_module("mb", "ssh")),
        ]
    )
    assert {n: i.status for n, i in pm.infos.items()} == expected
    assert sorted(pm.build_registry().transports) == sorted(
        n for n, s in expected.items() if s == "loaded"
    )


def test_misspelled_hook_is_caught() -> None:
    mod = types.ModuleType("typo")

    @hookimpl
    def tunnelmesh_register_transport(registry: Any) -> None:  # missing "s"
        pass

    mod.tunnelmesh_register_transport = tunnelmesh_register_transport  # type: ignore[attr-defined]
    pm = PluginManager()
    pm.register(mod, name="typo")
    with pytest.raises(Exception, match="unknown hook 'tunnelmesh_register_transport'"):
        pm.check_pending()


def test_make_plugin_manager_loads_installed_distributions() -> None:
    pm = make_plugin_manager()
    for name, info in pm.infos.items():
        assert info.status in {"loaded", "blocked", "failed"}, name
    assert sys.modules["tunnelmesh._manager"]


def test_build_registry_runs_only_the_kinds_asked_for() -> None:
    calls: list[str] = []

    class Plugin:
        @hookimpl
        def tunnelmesh_register_transports(self, registry: Any) -> None:
            calls.append("transports")

        @hookimpl
        def tunnelmesh_register_proxy_rules(self, registry: Any) -> None:
            calls.append("proxy_rules")

    pm = PluginManager()
    pm.register(Plugin(), name="p")
    pm.build_registry("proxy_rules")
    assert calls == ["proxy_rules"]
    pm.build_registry()
    assert calls == ["proxy_rules", "transports", "proxy_rules"]
    with pytest.raises(ValueError, match="no registry kind"):
        pm.build_registry("proxy_rule")
