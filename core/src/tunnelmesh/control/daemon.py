"""Joining a mesh and running the peer's control daemon (what ``tunnelmesh join`` does).

:func:`join` is the one-time part: load or create the key, fetch and check the mesh CA,
register, optionally trust the CA system-wide, and write the context. :func:`run_daemon` keeps
the registration alive (heartbeats, push channel) until a signal, a duration, or removal.
:func:`stun_query` asks a STUN server for this host's reflexive address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tunnelmesh import stun
from tunnelmesh.aio.stopping import bounded_step, finish
from tunnelmesh.control.client import ApiRequestError, ControlClient, fetch_ca
from tunnelmesh.control.contexts import Context, ContextStore
from tunnelmesh.control.messages import RegisterResponse
from tunnelmesh.coordinator.ca import ca_fingerprint
from tunnelmesh.errors import ConfigError, TunnelmeshError
from tunnelmesh.hostaddrs import local_addresses
from tunnelmesh.identity import Identity
from tunnelmesh.private_files import ensure_private_dir, private_umask

__all__ = ["JoinResult", "client_for", "join", "run_daemon", "stun_query"]

log = logging.getLogger(__name__)


async def stun_query(
    host: str, port: int, *, local_port: int = 0, timeout: float = 1.0, attempts: int = 3
) -> tuple[str, int] | None:
    """This host's address as ``host:port`` (a STUN server) sees it; None when no answer.

    ``local_port`` picks the local UDP port to ask from (the mapping of that port is what a
    NAT shows others); 0 takes any free port.
    """
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[tuple[str, int]] = loop.create_future()
    request, tid = stun.binding_request(software="tunnelmesh")

    class _Proto(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            try:
                msg = stun.parse(data)
            except stun.StunParseError:
                return
            mapped = stun.mapped_address(msg)
            if msg.transaction_id == tid and mapped and not answer.done():
                answer.set_result(mapped)

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        transport, _ = await loop.create_datagram_endpoint(
            _Proto,
            local_addr=("::" if family == socket.AF_INET6 else "0.0.0.0", local_port),
            family=family,
        )
    except OSError as exc:
        log.debug("STUN query from port %d impossible: %s", local_port, exc)
        return None
    try:
        for _ in range(attempts):
            transport.sendto(request, (host, port))
            # asyncio.timeout, not wait_for(shield(...)): on Python 3.11 that wait_for swallowed
            # the caller's cancellation, so a `join --no-tun` heartbeat loop stopped in here
            # ran on after SIGTERM (most stops hung).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    return await asyncio.shield(answer)
        return None
    finally:
        transport.close()


def local_endpoints(listen_port: int) -> list[str]:
    """``ip:listen_port`` for every non-loopback IPv4 interface address."""
    return [f"{a}:{listen_port}" for a in local_addresses() if not a.startswith("127.")]


@dataclass
class JoinResult:
    context: Context
    registration: RegisterResponse
    identity: Identity
    key_created: bool
    ca_pem: str


async def join(
    *,
    server: str,
    token: str,
    context_name: str,
    name: str,
    key_path: Path,
    store: ContextStore,
    trust: Callable[[str], Path | None] | None = None,
    rename: bool = True,
    config_path: str = "",
    pinned_ca: str = "",
    on_pending: Callable[[RegisterResponse], bool] | None = None,
    approval_poll: float = 3.0,
    limited_backoff: float = 10.0,
) -> JoinResult:
    """Register with the coordinator and write the context.

    Args:
        token: the mesh join token, or "" to re-register a key the coordinator knows.
        pinned_ca: the CA pinned by an earlier join to this server; when given it is trusted
            as it is (the coordinator is not asked to prove the token, which may have been
            rotated since).
        trust: called with the CA PEM after a successful registration; returns where the CA was
            installed in the system trust store, or None when it was not.
        on_pending: called when the coordinator answers that this key waits for an admin's
            approval (``approve_new_peers``); True waits (re-registering every
            ``approval_poll`` seconds) until approved, False writes the context as it is.
        limited_backoff: how long a waiting join pauses when the coordinator answers 429
            (a key may register 10 times, then once every 10 s): it keeps waiting.

    Raises:
        TunnelmeshError: the coordinator cannot be reached, cannot prove the token, or refuses.
    """
    ensure_private_dir(store.home, "the tunnelmesh home (TUNNELMESH_HOME)")
    identity, created = Identity.load_or_create(key_path)
    if pinned_ca:  # pinned at the first join: trusted over any proof
        ca_pem = pinned_ca
    elif token:
        ca_pem = await fetch_ca(server, token)
    else:
        raise ConfigError("no mesh token and no pinned CA: the first join needs the token")
    ctx_dir = store.context_dir(context_name)
    async with ControlClient(
        server=server,
        identity=identity,
        ca_pem=ca_pem,
        auth_token=token,
        name=name,
        rename=rename,
    ) as client:
        reg = await client.register()
        if reg.pending and on_pending is not None and on_pending(reg):
            pause = approval_poll
            while reg.pending:  # approve_new_peers: ask again (signature only) until admitted
                await asyncio.sleep(pause)
                try:
                    reg = await client.register()
                    pause = approval_poll
                except ApiRequestError as exc:
                    if exc.status != 429:
                        raise
                    pause = limited_backoff  # over the per-key pace: ask less often
    with private_umask():  # contexts/ too (parents=True made it 0755)
        ctx_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_path = ctx_dir / "ca.crt"
    ca_path.write_text(ca_pem, encoding="ascii")
    old_trusted = ""
    old_pins: dict[str, str] = {}
    with contextlib.suppress(TunnelmeshError):
        old = store.get(context_name)
        old_trusted = old.trusted_ca_path
        if old.server == server:
            old_pins = dict(old.exit_pins)  # exit keys pinned on this mesh stay pinned
    trusted = trust(ca_pem) if trust else None
    ctx = Context(
        name=context_name,
        server=server,
        peer_name=reg.name,
        peer_id=reg.peer_id,
        mesh_ip=reg.mesh_ip,
        mesh_cidr=reg.mesh_cidr,
        domain=reg.domain,
        session_token=reg.session_token,
        ca_path=str(ca_path),
        key_path=str(key_path),
        config_path=config_path,
        trusted_ca_path=str(trusted) if trusted else old_trusted,
        is_admin=reg.is_admin,
        stun_port=reg.stun_port,
        exit_pins=old_pins,
    )
    store.put(ctx)
    log.debug("CA fingerprint %s", ca_fingerprint(ca_pem))
    return JoinResult(ctx, reg, identity, created, ca_pem)


def client_for(
    ctx: Context, store: ContextStore, *, listen_port: int = 0, identity: Identity | None = None
) -> ControlClient:
    """A :class:`ControlClient` for a stored context (its session, CA and key).

    Raises:
        ConfigError: the key or the pinned CA is missing.
    """
    try:
        ca_pem = Path(ctx.ca_path).read_text(encoding="ascii")
    except OSError as exc:
        raise TunnelmeshError(
            f"the pinned CA of context {ctx.name!r} is missing ({exc.strerror}); join again"
        ) from None
    ident = identity or Identity.load(ctx.key_path)
    reflexive: list[str] = []
    host = urlsplit(ctx.server).hostname or ""

    async def endpoints() -> list[str]:
        eps = local_endpoints(listen_port) if listen_port else []
        if ctx.stun_port and listen_port and not reflexive:
            mapped = await stun_query(host, ctx.stun_port, local_port=listen_port, attempts=1)
            if mapped is not None:
                reflexive.append(f"{mapped[0]}:{mapped[1]}")
        return eps + [e for e in reflexive if e not in eps]

    client = ControlClient(
        server=ctx.server,
        identity=ident,
        ca_pem=ca_pem,
        name=ctx.peer_name,
        session_token=ctx.session_token,
        endpoints=endpoints,
        peers_cache=store.context_dir(ctx.name) / "peers.json",
    )

    def remember(reg: RegisterResponse) -> None:
        ctx.stun_port = reg.stun_port
        ctx.session_token = reg.session_token
        ctx.peer_name = reg.name
        ctx.mesh_ip = reg.mesh_ip
        store.put(ctx, activate=False)

    client.on_register.append(remember)
    return client


async def run_daemon(
    client: ControlClient, *, duration: float | None = None, stop: asyncio.Event | None = None
) -> None:
    """Run ``client`` until SIGINT/SIGTERM, ``duration`` seconds, or removal from the mesh.

    Args:
        stop: set by the caller's own signal handlers; without it this installs SIGINT and
            SIGTERM handlers for the run.

    Raises:
        TunnelmeshError: this node was removed, or the coordinator refuses it.
    """
    loop = asyncio.get_running_loop()
    own_handlers = stop is None
    stop = stop or asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM) if own_handlers else ():
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    runner = asyncio.create_task(client.run())
    waiter = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait(
            {runner, waiter}, timeout=duration, return_when=asyncio.FIRST_COMPLETED
        )
        if runner in done:
            runner.result()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM) if own_handlers else ():
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        for t in (runner, waiter):
            t.cancel()
        # Bounded, as the node's stop: a slow step is named with where it waits.
        await bounded_step("the control loop", finish(runner, waiter), report=_report_stop)
        await bounded_step("the coordinator client", client.aclose(), report=_report_stop)


def _report_stop(line: str) -> None:
    log.warning("%s", line)
