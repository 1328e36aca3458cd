"""A Linux TUN device for the mesh, configured over netlink with pyroute2.

::

    with TunDevice.create("tun-mesh0", address="10.42.0.5/16", mtu=1420) as tun:
        loop.add_reader(tun.fileno(), ...)   # one IP packet per os.read / os.write

The device is *not* persistent (``TUNSETPERSIST`` is never set): the kernel deletes it when
the last file descriptor closes, so it also disappears when the process crashes or is killed.
:meth:`TunDevice.create` first removes a leftover device of the same name (a persistent one
made by another tool, or one whose owner is still exiting) and refuses, with a clear error, a
name that belongs to another kind of interface.

Offload (``vnet_hdr=True``): every packet read or written starts with a 10-byte
``virtio_net_hdr``; :meth:`TunDevice.set_offload` then lets the kernel hand over TCP
super-packets up to 64 KiB (TSO) and accept partial checksums, see
:mod:`tunnelmesh.mesh.offload`.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import struct
from collections.abc import Sequence
from types import TracebackType

from tunnelmesh.errors import TunnelmeshError

__all__ = [
    "TUN_F_CSUM",
    "TUN_F_TSO4",
    "TUN_F_TSO6",
    "TunDevice",
    "TunError",
    "remove_stale",
]

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
VNET_HDR_SIZE = 10


class TunError(TunnelmeshError):
    """The TUN device could not be created or configured."""


def remove_stale(name: str) -> bool:
    """Delete a leftover TUN interface called ``name``; True if one was removed.

    Raises:
        TunError: an interface of that name exists and is not a TUN device.
    """
    from pyroute2 import IPRoute  # type: ignore[import-untyped]

    with IPRoute() as ipr:
        links = ipr.link_lookup(ifname=name)
        if not links:
            return False
        link = ipr.get_links(links[0])[0]
        info = link.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        if kind != "tun":
            raise TunError(f"interface {name!r} exists and is not a TUN device (kind {kind!r})")
        ipr.link("del", index=links[0])
        return True


class TunDevice:
    """An open TUN device (IFF_TUN, no packet information header)."""

    def __init__(self, fd: int, name: str, vnet_hdr: bool) -> None:
        self._fd = fd
        self.name = name
        self.vnet_hdr = vnet_hdr
        self.mtu = 1500
        self.offload = 0

    @classmethod
    def create(
        cls,
        name: str,
        *,
        address: str | Sequence[str] = (),
        mtu: int = 1420,
        routes: Sequence[str] = (),
        vnet_hdr: bool = False,
    ) -> TunDevice:
        """Open ``/dev/net/tun``, name the device, and configure it.

        Args:
            name: the interface name (at most 15 characters).
            address: one or more ``ip/prefix`` to assign (the prefix also routes the mesh).
            mtu: the interface MTU.
            routes: extra CIDRs to route into the device.
            vnet_hdr: prefix every packet with a virtio_net_hdr (needed for offload).

        Raises:
            TunError: no permission, no ``/dev/net/tun``, or netlink refused a setting.
        """
        if not 0 < len(name) < 16:
            raise TunError(f"interface name {name!r} must be 1 to 15 characters")
        try:
            remove_stale(name)
        except OSError as exc:
            raise TunError(f"cannot remove stale interface {name!r}: {exc}") from exc
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise TunError(f"cannot open /dev/net/tun: {exc.strerror}") from exc
        flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
        try:
            ifr = struct.pack("16sH22x", name.encode(), flags)
            fcntl.ioctl(fd, TUNSETIFF, ifr)
            if vnet_hdr:
                fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_SIZE))
        except OSError as exc:
            os.close(fd)
            hint = " (needs CAP_NET_ADMIN)" if exc.errno == errno.EPERM else ""
            raise TunError(f"cannot create TUN device {name!r}: {exc.strerror}{hint}") from exc
        dev = cls(fd, name, vnet_hdr)
        try:
            dev.configure(address, mtu=mtu, routes=routes)
        except BaseException:
            dev.close()
            raise
        return dev

    def configure(
        self, address: str | Sequence[str] = (), *, mtu: int = 1420, routes: Sequence[str] = ()
    ) -> None:
        """Set the MTU, add addresses and routes, and bring the device up."""
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

        addresses = [address] if isinstance(address, str) else list(address)
        try:
            with IPRoute() as ipr:
                index = ipr.link_lookup(ifname=self.name)[0]
                ipr.link("set", index=index, mtu=mtu)
                for cidr in addresses:
                    iface = ipaddress.ip_interface(cidr)
                    ipr.addr(
                        "add",
                        index=index,
                        address=str(iface.ip),
                        prefixlen=iface.network.prefixlen,
                    )
                ipr.link("set", index=index, state="up")
                for cidr in routes:
                    net = ipaddress.ip_network(cidr, strict=False)
                    ipr.route("replace", dst=str(net), oif=index)
        except (NetlinkError, IndexError, ValueError) as exc:
            raise TunError(f"cannot configure {self.name!r}: {exc}") from exc
        self.mtu = mtu

    def set_offload(self, flags: int) -> bool:
        """Ask for TUN offload (``TUN_F_*``); False when the kernel refuses."""
        if not self.vnet_hdr:
            raise TunError("offload needs a device opened with vnet_hdr=True")
        try:
            fcntl.ioctl(self._fd, TUNSETOFFLOAD, flags)
        except OSError:
            return False
        self.offload = flags
        return True

    def fileno(self) -> int:
        """The file descriptor (non-blocking): one packet per read or write."""
        if self._fd < 0:
            raise TunError("the TUN device is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._fd < 0

    def close(self) -> None:
        """Close the descriptor; the kernel removes the interface with it. Idempotent."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
