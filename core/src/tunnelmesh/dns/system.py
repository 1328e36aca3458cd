"""Pointing the system resolver at the mesh resolver for the mesh domains only, and back.

Two ways, chosen by ``mode`` (``auto`` picks the first that works):

``resolved``
    systemd-resolved is running (``/run/systemd/resolve`` exists and ``resolvectl`` is on
    PATH): per-link DNS on the TUN link, ``resolvectl dns <link> <ip>[:port]`` and one
    ``resolvectl domain <link> ~tunnelmesh ~tm ~mesh`` (routing-only domains: only those
    names go to us; every other name keeps the system's resolvers). Undone with
    ``resolvectl revert <link>``; if the daemon crashes, the settings vanish with the link.

``resolv.conf``
    The documented fallback without systemd-resolved. resolv.conf cannot name a port or a
    domain, so this needs the resolver on port 53 and sends *every* name to it (the resolver
    forwards non-mesh names to the servers the original file listed, see
    :meth:`SystemDns.original_upstreams`). The original file (or symlink) is copied to the
    state directory (``$TUNNELMESH_HOME/dns/``, not next to the file: ``ip netns exec`` bind-
    mounts every file of ``/etc/netns/<ns>/`` and warned about a backup there) and put back
    on exit; a backup left by a crash is restored first. A resolv.conf that is a mount point
    (``ip netns exec`` mounts ``/etc/netns/<ns>/resolv.conf`` over it) is rewritten in place. Other setups (NetworkManager's dnsmasq, a local unbound) can instead forward the
    mesh domains to the resolver themselves; ``docs/dns.md`` shows how.

``off``
    Change nothing.

Every path and the command runner are parameters, so tests never touch the real files.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from tunnelmesh.dns.backend import DEFAULT_DOMAINS
from tunnelmesh.dns.server import read_resolv_conf
from tunnelmesh.errors import DnsError

__all__ = ["SystemDns"]

log = logging.getLogger(__name__)

Mode = Literal["auto", "resolved", "resolv.conf", "off"]
Runner = Callable[[Sequence[str]], None]

BACKUP_SUFFIX = ".tunnelmesh-orig"


def _run(cmd: Sequence[str]) -> None:
    try:
        subprocess.run(list(cmd), check=True, capture_output=True, text=True, timeout=10)
    except subprocess.CalledProcessError as exc:
        raise DnsError(f"{' '.join(cmd)} failed: {exc.stderr.strip() or exc}") from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DnsError(f"{' '.join(cmd)} failed: {exc}") from None


class SystemDns:
    """Configure and restore the system resolver; see the module docstring.

    Args:
        server: the resolver's address, ``ip`` or ``ip:port``.
        link: the TUN interface (for systemd-resolved's per-link settings).
        domains: the mesh domains.
        mode: ``auto``, ``resolved``, ``resolv.conf`` or ``off``.
        resolvectl: the resolvectl binary (None: not available).
        resolved_dir: the directory whose existence means systemd-resolved runs.
        resolv_conf: the resolv.conf path (default: ``$TUNNELMESH_RESOLV_CONF``, else
            ``/etc/resolv.conf``; tests point it at a file of their own).
        run: runs a command, raising :class:`DnsError` when it fails.
        backup_dir: where the original resolv.conf is kept while it is replaced (default:
            ``$TUNNELMESH_HOME/dns``).
    """

    def __init__(
        self,
        server: str,
        *,
        link: str = "tun-mesh0",
        domains: Sequence[str] = DEFAULT_DOMAINS,
        mode: Mode = "auto",
        resolvectl: str | None = shutil.which("resolvectl"),
        resolved_dir: str | os.PathLike[str] = "/run/systemd/resolve",
        resolv_conf: str | os.PathLike[str] | None = None,
        run: Runner = _run,
        backup_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.server = server
        self.link = link
        self.domains = list(domains)
        self.mode = mode
        self.resolvectl = resolvectl
        self.resolved_dir = Path(resolved_dir)
        if resolv_conf is None:
            resolv_conf = os.environ.get("TUNNELMESH_RESOLV_CONF") or "/etc/resolv.conf"
        self.resolv_conf = Path(resolv_conf)
        if backup_dir is None:
            from tunnelmesh.identity import tunnelmesh_home

            backup_dir = tunnelmesh_home() / "dns"
        flat = str(self.resolv_conf.absolute()).strip("/").replace("/", "_")
        self.backup = Path(backup_dir) / (flat + BACKUP_SUFFIX)
        self.legacy_backup = Path(str(resolv_conf) + BACKUP_SUFFIX)
        """Where versions before 0.1 kept the backup (recovered too)."""
        self.run = run
        self.applied: str | None = None

    def _host_port(self) -> tuple[str, int]:
        host, _, port = self.server.rpartition(":")
        if host and port.isdigit() and (host.count(":") == 0 or host.startswith("[")):
            return host.strip("[]"), int(port)
        return self.server.strip("[]"), 53

    def resolved_available(self) -> bool:
        return self.resolvectl is not None and self.resolved_dir.is_dir()

    def original_upstreams(self) -> list[tuple[str, int]]:
        """The name servers the system used before :meth:`apply` (for forwarding)."""
        src = self.resolv_conf
        if self.backup.is_symlink():  # a relative target is relative to resolv.conf's folder
            src = self.resolv_conf.parent / os.readlink(self.backup)
        elif self.backup.exists():
            src = self.backup
        return read_resolv_conf(src)

    def apply(self) -> str:
        """Point the system at the resolver; return the mode used (``off`` when none).

        Raises:
            DnsError: the chosen mode could not be applied.
        """
        self.recover()
        mode = self.mode
        if mode == "auto":
            if self.resolved_available():
                mode = "resolved"
            elif self._host_port()[1] == 53:
                mode = "resolv.conf"
            else:
                log.warning(
                    "no systemd-resolved, and the resolver is not on port 53: the system "
                    "resolver is left alone; query %s directly or see docs/dns.md",
                    self.server,
                )
                mode = "off"
        if mode == "resolved":
            self._apply_resolved()
        elif mode == "resolv.conf":
            self._apply_resolv_conf()
        self.applied = mode
        return mode

    def restore(self) -> None:
        """Undo :meth:`apply`. Idempotent; errors are logged, not raised (this runs on exit)."""
        mode, self.applied = self.applied, None
        try:
            if mode == "resolved":
                assert self.resolvectl is not None
                self.run([self.resolvectl, "revert", self.link])
            elif mode == "resolv.conf":
                self.recover()
        except DnsError as exc:
            log.warning("could not restore the system resolver: %s", exc)

    def recover(self) -> bool:
        """Put back a resolv.conf backup left behind (by a crash); return whether there was one."""
        if self.legacy_backup.exists() or self.legacy_backup.is_symlink():
            os.replace(self.legacy_backup, self.resolv_conf)
            log.info("restored %s from %s", self.resolv_conf, self.legacy_backup)
            return True
        if not (self.backup.exists() or self.backup.is_symlink()):
            return False
        if self.backup.is_symlink():
            self._put(link=os.readlink(self.backup))
        else:
            self._put(data=self.backup.read_bytes(), mode=self.backup.stat().st_mode & 0o7777)
        self.backup.unlink()
        log.info("restored %s from %s", self.resolv_conf, self.backup)
        return True

    def _put(self, *, data: bytes = b"", mode: int = 0o644, link: str | None = None) -> None:
        """Make resolv.conf hold ``data`` (or be a symlink to ``link``): a new file renamed
        over it, or, when it is a mount point (rename says EBUSY), rewritten in place."""
        tmp = self.resolv_conf.with_name(self.resolv_conf.name + ".tunnelmesh-new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if link is not None:
            os.symlink(link, tmp)
        else:
            tmp.write_bytes(data)
            tmp.chmod(mode)
        try:
            os.replace(tmp, self.resolv_conf)
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                tmp.unlink()
                raise
            content = tmp.read_bytes()  # through the link: the file it names
            tmp.unlink()
            with open(self.resolv_conf, "wb") as f:
                f.write(content)

    def _save(self) -> None:
        """Copy resolv.conf (file or symlink) to the backup, atomically."""
        self.backup.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.backup.with_name(self.backup.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if self.resolv_conf.is_symlink():
            os.symlink(os.readlink(self.resolv_conf), tmp)
        else:
            shutil.copy2(self.resolv_conf, tmp)
        os.replace(tmp, self.backup)

    def _apply_resolved(self) -> None:
        if not self.resolved_available():
            raise DnsError("systemd-resolved is not running (or resolvectl is missing)")
        assert self.resolvectl is not None
        host, port = self._host_port()
        server = host if port == 53 else (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        self.run([self.resolvectl, "dns", self.link, server])
        self.run([self.resolvectl, "domain", self.link, *(f"~{d}" for d in self.domains)])

    def _apply_resolv_conf(self) -> None:
        host, port = self._host_port()
        if port != 53:
            raise DnsError(
                f"resolv.conf cannot name a port: the resolver must listen on port 53, "
                f"not {port} (set dns.listen to {host}:53)"
            )
        text = (
            "# Written by tunnelmesh while it runs; the original is "
            f"{self.backup} and comes back on exit.\n"
            f"nameserver {host}\n"
        )
        if self.resolv_conf.exists() or self.resolv_conf.is_symlink():
            self._save()  # keeps a symlink a symlink
        self._put(data=text.encode())
