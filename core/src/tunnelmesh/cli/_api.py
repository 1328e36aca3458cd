"""Calling the coordinator's API with the active context's session (admin commands)."""

from __future__ import annotations

import asyncio
from typing import Any

from tunnelmesh.control.contexts import ContextStore


def api_call(context_name: str | None, method: str, path: str, body: Any = None) -> Any:
    """One request to the context's coordinator as this peer; the decoded JSON answer.

    Raises:
        TunnelmeshError: no such context, the coordinator refuses (403 for a non-admin on an
            admin route) or cannot be reached.
    """
    from tunnelmesh.control import daemon

    store = ContextStore()
    ctx = store.get(context_name)

    async def main() -> Any:
        async with daemon.client_for(ctx, store) as client:
            return await asyncio.wait_for(client.request(method, path, body), 30)

    return asyncio.run(main())
