"""``tunnelmesh cleanup``: undo what a node that did not stop cleanly (``kill -9``, a crash, an
OOM kill) left on the host. The unit's ``ExecStopPost=`` runs it after every stop.

It uses the crash-repair code the node itself runs at its next start, so both undo the same
things the same way:

* routes tunnelmesh added (exit client: split and bypass routes, all ``proto 211``):
  :meth:`~tunnelmesh.exit.system.ExitRoutes.recover` flushes them;
* the exit's nftables table ``ip tunnelmesh_exit`` and ``net.ipv4.ip_forward``, put back from
  the state file next to the control socket: :meth:`~tunnelmesh.exit.system.ExitGateway.recover`;
* the system resolver: a ``resolv.conf`` swapped for the mesh resolver is put back from its
  backup (:meth:`~tunnelmesh.dns.system.SystemDns.recover`); systemd-resolved's per-link
  settings vanished with the TUN device;
* the loss table of a ``tunnelmesh benchmark --loss`` run that was killed
  (``inet tunnelmesh_bench``);
* a control socket file nobody listens on any more.

A node that is still running is never touched: cleanup refuses while its control socket
answers. Routes marked ``proto 211``, the exit table and ``ip_forward`` are shared by all nodes
of a host; while another node runs (another context's service: ``/run/tunnelmesh-*/node.sock``
answers), only this node's own resolver change and socket are undone. The TUN device needs nothing: it disappears with the process that created it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from pathlib import Path

from tunnelmesh.config import PeerConfig
from tunnelmesh.errors import TunnelmeshError

__all__ = ["CleanupError", "cleanup", "node_running"]

log = logging.getLogger(__name__)


class CleanupError(TunnelmeshError):
    """Cleanup cannot run (the node is still running)."""


def node_running(control_socket: str) -> bool:
    """Whether a process accepts connections on the node's control socket."""
    if not control_socket or not Path(control_socket).exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(control_socket)
        except OSError:
            return False
    return True


def other_sockets() -> list[str]:
    """Control sockets of other nodes on this host: the default one and the services' ones."""
    import glob

    return ["/run/tunnelmesh.sock", *sorted(glob.glob("/run/tunnelmesh-*/node.sock"))]


def cleanup(
    cfg: PeerConfig, *, mesh_cidr: str = "0.0.0.0/0", others: list[str] | None = None
) -> list[str]:
    """Undo a dead node's routes, NAT, forwarding and resolver change; return what was done.

    Raises:
        CleanupError: the node is still running (its control socket answers).
    """
    from tunnelmesh.exit.system import ExitGateway, ExitNodeError, ExitRoutes, run_command

    sock = cfg.control_socket or "/run/tunnelmesh.sock"
    if node_running(sock):
        raise CleanupError(
            f"the node is running (its control socket {sock} answers): stop it first"
        )
    done: list[str] = []
    running = [o for o in (other_sockets() if others is None else others) if o != sock]
    running = [o for o in running if node_running(o)]
    if running:
        # routes (proto 211), the exit table and ip_forward are shared by every node of this
        # host: another running node (another context's service) still uses them
        done.append(
            f"another tunnelmesh node runs ({', '.join(running)}): exit routes, NAT and "
            "ip_forward are shared with it and left alone"
        )
        _resolver_and_socket(cfg, sock, done)
        return done

    routes = run_command(["ip", "-4", "route", "show", "proto", "211"]) if _has("ip") else ""
    if routes.strip():
        try:
            ExitRoutes(cfg.tun.name).recover()
            n = len(routes.strip().splitlines())
            done.append(f"removed {n} exit route{'s' if n != 1 else ''} (proto 211)")
        except ExitNodeError as exc:
            log.warning("routes: %s", exc)

    gateway = ExitGateway(mesh_cidr, state_dir=Path(str(sock) + ".state"))
    had_table = False
    if _has("nft"):
        with contextlib.suppress(ExitNodeError):
            run_command(["nft", "list", "table", "ip", "tunnelmesh_exit"])
            had_table = True
        try:
            if gateway.recover():
                done.append("put ip_forward back as it was before the exit started")
            if had_table:
                done.append("removed the nftables table ip tunnelmesh_exit")
        except (ExitNodeError, OSError) as exc:
            log.warning("exit gateway: %s", exc)

    if _has("nft"):  # a `tunnelmesh benchmark --loss` killed mid-run
        from tunnelmesh.impair import NFT_TABLE as BENCH_TABLE

        with contextlib.suppress(ExitNodeError):
            run_command(["nft", "list", "table", "inet", BENCH_TABLE])
            run_command(["nft", "delete", "table", "inet", BENCH_TABLE])
            done.append(f"removed the nftables table inet {BENCH_TABLE} (benchmark loss)")

    _resolver_and_socket(cfg, sock, done)
    return done


def _resolver_and_socket(cfg: PeerConfig, sock: str, done: list[str]) -> None:
    """This node's own leftovers: its resolv.conf swap and its control socket file."""
    from tunnelmesh.dns.system import SystemDns

    if cfg.dns.enabled and cfg.dns.system != "off":
        dns = SystemDns(cfg.dns.listen, link=cfg.tun.name, mode=cfg.dns.system)
        try:
            if dns.recover():
                done.append(f"restored {dns.resolv_conf} from {dns.backup.name}")
        except OSError as exc:
            log.warning("resolver: %s", exc)
    if Path(sock).is_socket():
        with contextlib.suppress(OSError):
            Path(sock).unlink()
            done.append(f"removed the stale control socket {sock}")


def _has(tool: str) -> bool:
    import shutil

    return shutil.which(tool) is not None
