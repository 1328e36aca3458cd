"""A plugin's service lives as long as the coordinator's web application (serve_with_app)."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from tunnelmesh.coordinator.meshlisten import serve_with_app


class Service:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[str] = []

    async def start(self) -> None:
        self.calls.append("start")
        if self.fail:
            raise OSError("address in use")

    async def stop(self) -> None:
        self.calls.append("stop")


def test_a_service_starts_and_stops_with_the_app() -> None:
    async def main() -> None:
        app = web.Application()
        service = Service()
        serve_with_app(app, service)
        runner = web.AppRunner(app)
        await runner.setup()
        assert service.calls == ["start"]
        await runner.cleanup()
        assert service.calls == ["start", "stop"]

    asyncio.run(main())


def test_a_failed_start_stops_what_it_began_and_fails_the_app() -> None:
    async def main() -> None:
        app = web.Application()
        service = Service(fail=True)
        serve_with_app(app, service)
        runner = web.AppRunner(app)
        with pytest.raises(OSError, match="address in use"):
            await runner.setup()
        assert service.calls == ["start", "stop"]

    asyncio.run(main())
