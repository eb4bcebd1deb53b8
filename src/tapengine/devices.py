"""Links: tun/tap devices, veth pairs and bridges; their MTU, MAC, addresses, state and namespace.

Everything goes through rtnetlink with pyroute2's ``IPRoute`` (never by running ``ip``). Each call
opens its own ``IPRoute`` with the calling thread switched into the target namespace, so a handle
never outlives the call and the functions are safe from any thread. ``netns=None`` means the
namespace the calling thread is in (the root namespace unless you are inside ``inside_netns``).

Every ``create_*`` returns a ``Link`` that owns what it created: leaving its ``with`` block deletes
it. Links looked up with ``get_link``/``list_links`` own nothing. Input is checked before any
syscall, so bad input changes nothing on the machine.

Tun/tap devices are created with ``TUNSETIFF`` and ``IFF_TUN_EXCL`` (the kernel has no netlink call
that creates them), which makes "create, but fail if the name exists" one atomic step.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import struct
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from tapengine import tun
from tapengine.errors import (
    DeviceExistsError,
    DeviceNotFoundError,
    InvalidValueError,
    PrivilegeError,
)
from tapengine.netns import inside_netns, open_netns
from tapengine.validate import (
    MAX_TAP_QUEUES,
    check_cidr,
    check_ifname,
    check_ip,
    check_mac,
    check_mtu,
    check_netns_name,
)

if TYPE_CHECKING:
    from pyroute2 import IPRoute
    from pyroute2.netlink import nlmsg

TUNSETOWNER = tun._iow(204)
TUNSETGROUP = tun._iow(206)
IFA_F_NODAD = 0x02
NUD_PERMANENT = 0x80

# In the order ``ip link`` prints them (iproute2 print_link_flags), so output matches ``ip -j``.
_IFF_NAMES = (
    (0x8, "LOOPBACK"), (0x2, "BROADCAST"), (0x10, "POINTOPOINT"), (0x1000, "MULTICAST"),
    (0x80, "NOARP"), (0x200, "ALLMULTI"), (0x100, "PROMISC"), (0x20, "NOTRAILERS"),
    (0x4, "DEBUG"), (0x8000, "DYNAMIC"), (0x4000, "AUTOMEDIA"), (0x2000, "PORTSEL"),
    (0x400, "MASTER"), (0x800, "SLAVE"), (0x1, "UP"), (0x10000, "LOWER_UP"),
    (0x20000, "DORMANT"), (0x40000, "ECHO"),
)  # fmt: skip
IFF_UP, IFF_RUNNING = 0x1, 0x40


# -- checks made before any syscall ----------------------------------------------------------


def _netns_option(netns: str | None) -> str:
    return "" if netns is None else f" --netns {netns}"


def _where(netns: str | None) -> str:
    return "the current namespace" if netns is None else f"namespace {netns!r}"


# -- netlink plumbing ------------------------------------------------------------------------


@contextlib.contextmanager
def rtnl(netns: str | None = None) -> Iterator[IPRoute]:
    """An ``IPRoute`` talking to namespace ``netns``; the calling thread is inside it meanwhile.

    The thread stays inside for the whole block because pyroute2 performs tun/tap requests
    with ioctls in the calling thread, and those act on the thread's namespace.
    """
    from pyroute2 import IPRoute

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "tapengine.devices uses pyroute2's synchronous IPRoute, which cannot run inside a "
            "running asyncio loop: call it through asyncio.to_thread()"
        )
    with inside_netns(netns), IPRoute() as ipr:
        yield ipr


@contextlib.contextmanager
def netlink_errors(what: str) -> Iterator[None]:
    """Turn pyroute2's ``NetlinkError`` raised while doing ``what`` into our precise errors."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        yield
    except NetlinkError as err:
        raise _translate(err.code, what) from None


def _translate(code: int, what: str) -> OSError:
    reason = os.strerror(code)
    if code in (errno.EPERM, errno.EACCES):
        return PrivilegeError(code, f"{what}: {reason}; this needs CAP_NET_ADMIN (run as root)")
    if code == errno.EEXIST:
        return DeviceExistsError(code, f"{what}: a link or address with that name already exists")
    if code in (errno.ENODEV, errno.ENOENT):
        return DeviceNotFoundError(code, f"{what}: no such device")
    if code in (errno.EINVAL, errno.ERANGE, errno.EADDRNOTAVAIL, errno.EOPNOTSUPP):
        return InvalidValueError(f"{what}: the kernel refused it ({reason})")
    return OSError(code, f"{what}: {reason}")


def _find(ipr: IPRoute, name: str, netns: str | None) -> nlmsg:
    check_ifname(name)
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        msgs = ipr.link("get", ifname=name)
    except NetlinkError as err:
        if err.code != errno.ENODEV:
            raise _translate(err.code, f"cannot look up link {name!r}") from None
        msgs = []
    if not msgs:
        raise DeviceNotFoundError(errno.ENODEV, f"no link named {name!r} in {_where(netns)}")
    return msgs[0]


def _kind_of(msg: nlmsg) -> str:
    """``tap``, ``tun``, ``veth``, ``bridge``, ... from IFLA_LINKINFO; ``device`` for hardware."""
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    if linkinfo is None:
        return "loopback" if msg["flags"] & 0x8 else "device"
    kind = linkinfo.get_attr("IFLA_INFO_KIND") or "device"
    if kind == "tun":
        data = linkinfo.get_attr("IFLA_INFO_DATA")
        return "tun" if data is not None and data.get_attr("IFLA_TUN_TYPE") == 1 else "tap"
    return kind


def flag_names(flags: int) -> list[str]:
    """``ifi_flags`` as ``ip link`` names them: NO-CARRIER for up without carrier, no RUNNING."""
    names = [name for bit, name in _IFF_NAMES if flags & bit]
    if flags & IFF_UP and not flags & IFF_RUNNING:
        names.insert(0, "NO-CARRIER")
    return names


def _make(msg: nlmsg, netns: str | None) -> Link:
    kind = _kind_of(msg)
    cls = Bridge if kind == "bridge" else Link
    return cls(msg.get_attr("IFLA_IFNAME"), netns=netns, index=msg["index"], kind=kind)


# -- links -----------------------------------------------------------------------------------


class Link:
    """A network interface in a namespace; a context manager that deletes it if it created it."""

    def __init__(
        self, name: str, *, netns: str | None, index: int, kind: str, owned: bool = False
    ) -> None:
        self.name = name
        self.netns = netns
        self.index = index
        self.kind = kind
        self.owned = owned
        self.peer: Link | None = None  # the other end of a veth pair
        self.queues: list[tun.TunQueue] = []  # the fds keeping a non-persistent tun/tap alive

    # -- reading -----------------------------------------------------------------------------

    def _message(self, ipr: IPRoute) -> nlmsg:
        msg = _find(ipr, self.name, self.netns)
        self.index = msg["index"]
        return msg

    def exists(self) -> bool:
        try:
            with rtnl(self.netns) as ipr:
                self._message(ipr)
        except DeviceNotFoundError:
            return False
        return True

    def info(self) -> dict[str, Any]:
        """What the kernel says about this link now (read back over netlink)."""
        with rtnl(self.netns) as ipr, netlink_errors(f"cannot read {self}"):
            msg = self._message(ipr)
            addresses = [
                f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}"
                for addr in ipr.get_addr(index=msg["index"])
            ]
            master_index = msg.get_attr("IFLA_MASTER")
            master = None
            if master_index:
                master = ipr.link("get", index=master_index)[0].get_attr("IFLA_IFNAME")
            info: dict[str, Any] = {
                "name": self.name,
                "netns": self.netns,
                "index": msg["index"],
                "kind": _kind_of(msg),
                "mtu": msg.get_attr("IFLA_MTU"),
                "mac": msg.get_attr("IFLA_ADDRESS"),
                "operstate": msg.get_attr("IFLA_OPERSTATE"),
                "flags": flag_names(msg["flags"]),
                "up": bool(msg["flags"] & 0x1),
                "addresses": addresses,
                "master": master,
            }
            linkinfo = msg.get_attr("IFLA_LINKINFO")
            data = linkinfo.get_attr("IFLA_INFO_DATA") if linkinfo is not None else None
            if info["kind"] in ("tap", "tun") and data is not None:
                owner = data.get_attr("IFLA_TUN_OWNER")
                group = data.get_attr("IFLA_TUN_GROUP")
                info["tun"] = {
                    "multi_queue": bool(data.get_attr("IFLA_TUN_MULTI_QUEUE")),
                    "vnet_hdr": bool(data.get_attr("IFLA_TUN_VNET_HDR")),
                    "persist": bool(data.get_attr("IFLA_TUN_PERSIST")),
                    # the kernel reports "no owner" as (uid_t)-1
                    "owner": None if owner in (None, 0xFFFFFFFF) else owner,
                    "group": None if group in (None, 0xFFFFFFFF) else group,
                    "queues": data.get_attr("IFLA_TUN_NUM_QUEUES"),
                }
        return info

    # -- changing ----------------------------------------------------------------------------

    def _set(self, what: str, **attrs: Any) -> None:
        with rtnl(self.netns) as ipr, netlink_errors(f"cannot {what} of {self}"):
            ipr.link("set", index=self._message(ipr)["index"], **attrs)

    def up(self) -> None:
        self._set("bring up", state="up")

    def down(self) -> None:
        self._set("bring down", state="down")

    def set_mtu(self, mtu: int) -> None:
        self._set(f"set MTU {mtu}", mtu=check_mtu(mtu))

    def set_mac(self, mac: str) -> None:
        self._set(f"set MAC {mac}", address=check_mac(mac))

    def add_address(self, cidr: str, *, nodad: bool = False) -> None:
        """Add an IPv4 or IPv6 address (``10.77.0.1/24``, ``fd77::1/64``).

        ``nodad`` skips IPv6 duplicate address detection, so the address is usable at once.
        """
        iface = check_cidr(cidr)
        extra: dict[str, Any] = {}
        if nodad and iface.version == 6:
            extra["flags"] = IFA_F_NODAD
        with rtnl(self.netns) as ipr, netlink_errors(f"cannot add address {cidr} to {self}"):
            ipr.addr(
                "add",
                index=self._message(ipr)["index"],
                address=str(iface.ip),
                prefixlen=iface.network.prefixlen,
                **extra,
            )

    def move_to(self, netns: str | None) -> None:
        """Move this link into namespace ``netns`` (``None``: the root namespace of PID 1).

        Addresses are dropped by the kernel on the way, as with ``ip link set ... netns``.
        """
        if netns is not None:
            check_netns_name(netns)
            target = open_netns(netns)
        else:
            target = os.open("/proc/1/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            where = "the root namespace" if netns is None else f"namespace {netns!r}"
            self._set(f"move to {where}", net_ns_fd=target)
        finally:
            os.close(target)
        self.netns = netns
        with rtnl(netns) as ipr:
            self._message(ipr)

    def delete(self, *, force: bool = False) -> None:
        """Delete the link (a veth's peer goes with it); ``force`` ignores a missing link."""
        held_open = bool(self.queues)
        for queue in self.queues:
            queue.close()  # a non-persistent tap disappears with its last fd
        self.queues.clear()
        try:
            delete_link(self.name, netns=self.netns, force=force or held_open)
        except DeviceNotFoundError:
            if not force:
                raise
        self.owned = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.owned:
            self.delete(force=True)

    def __repr__(self) -> str:
        netns = "" if self.netns is None else f" netns={self.netns!r}"
        return f"<{type(self).__name__} {self.kind} {self.name!r}{netns} index={self.index}>"

    def __str__(self) -> str:
        return f"{self.kind} {self.name!r}" + ("" if self.netns is None else f" in {self.netns!r}")


class Bridge(Link):
    """A Linux bridge; ports are links in the same namespace."""

    def attach(self, port: str) -> None:
        with rtnl(self.netns) as ipr, netlink_errors(f"cannot attach {port!r} to {self}"):
            bridge = self._message(ipr)
            if _kind_of(bridge) != "bridge":
                raise InvalidValueError(f"{self.name!r} is a {_kind_of(bridge)}, not a bridge")
            try:
                link = _find(ipr, port, self.netns)
            except DeviceNotFoundError:
                raise DeviceNotFoundError(
                    errno.ENODEV,
                    f"cannot attach {port!r} to bridge {self.name!r}: no link named {port!r} in "
                    f"{_where(self.netns)} (a port must be in its bridge's namespace)",
                ) from None
            if link["index"] == bridge["index"]:
                raise InvalidValueError(f"cannot attach bridge {self.name!r} to itself")
            ipr.link("set", index=link["index"], master=bridge["index"])

    def detach(self, port: str) -> None:
        with rtnl(self.netns) as ipr, netlink_errors(f"cannot detach {port!r} from {self}"):
            bridge = self._message(ipr)
            link = _find(ipr, port, self.netns)
            if link.get_attr("IFLA_MASTER") != bridge["index"]:
                raise DeviceNotFoundError(
                    errno.ENOENT, f"{port!r} is not a port of bridge {self.name!r}"
                )
            ipr.link("set", index=link["index"], master=0)

    def ports(self) -> list[str]:
        with rtnl(self.netns) as ipr, netlink_errors(f"cannot list the ports of {self}"):
            index = self._message(ipr)["index"]
            return sorted(
                msg.get_attr("IFLA_IFNAME")
                for msg in ipr.get_links()
                if msg.get_attr("IFLA_MASTER") == index
            )


# -- creating --------------------------------------------------------------------------------


def _tun_flags(mode: str, multi_queue: bool, vnet_hdr: bool) -> tun.IfFlag:
    flags = tun.IfFlag.NO_PI | (tun.IfFlag.TAP if mode == "tap" else tun.IfFlag.TUN)
    if multi_queue:
        flags |= tun.IfFlag.MULTI_QUEUE
    if vnet_hdr:
        flags |= tun.IfFlag.VNET_HDR
    return flags


def _open_exclusive(
    name: str, flags: tun.IfFlag, owner: int | None, group: int | None, netns: str | None
) -> int:
    """Create tun/tap ``name`` on a new fd, failing if any link has that name (``IFF_TUN_EXCL``)."""
    fd = tun._open_control()
    try:
        try:
            request = tun._IFREQ.pack(name.encode(), int(flags | tun.IfFlag.TUN_EXCL))
            fcntl.ioctl(fd, tun.TUNSETIFF, request)
        except OSError as err:
            if err.errno == errno.EBUSY:
                raise DeviceExistsError(
                    errno.EEXIST,
                    f"cannot create {name!r}: a link with that name already exists "
                    f"(delete it with 'tapengine tap del {name}{_netns_option(netns)}', "
                    "or pick another name)",
                ) from None
            if err.errno in (errno.EPERM, errno.EACCES):
                raise PrivilegeError(
                    err.errno,
                    f"cannot create {name!r}: operation not permitted; creating a tun/tap device "
                    "needs CAP_NET_ADMIN (run as root)",
                ) from None
            raise tun._explain_setiff(err, name, flags) from None
        if owner is not None:
            fcntl.ioctl(fd, TUNSETOWNER, owner)
        if group is not None:
            fcntl.ioctl(fd, TUNSETGROUP, group)
    except BaseException:
        os.close(fd)  # the device was not made persistent: it vanishes with this fd
        raise
    return fd


def create_tap(
    name: str,
    *,
    mode: str = "tap",
    queues: int = 1,
    vnet_hdr: bool = False,
    owner: int | None = None,
    group: int | None = None,
    persistent: bool = True,
    netns: str | None = None,
) -> Link:
    """Create a tap (or, with ``mode="tun"``, a tun) device; ``queues > 1`` makes it multi-queue.

    A persistent device outlives this process; the engine opens its queues itself with
    ``tapengine.tun.open_queues(name, queues, mode, vnet_hdr=...)`` from inside ``netns``.
    A non-persistent device is kept alive by the ``queues`` fds this ``Link`` holds in
    ``.queues`` and disappears when they are closed.
    """
    check_ifname(name)
    if mode not in ("tap", "tun"):
        raise InvalidValueError(f"invalid mode {mode!r}: expected 'tap' or 'tun'")
    if isinstance(queues, bool) or not isinstance(queues, int) or not 1 <= queues <= MAX_TAP_QUEUES:
        raise InvalidValueError(f"invalid queue count {queues!r}: expected 1 to {MAX_TAP_QUEUES}")
    for label, ident in (("owner", owner), ("group", group)):
        if ident is not None and (
            isinstance(ident, bool) or not isinstance(ident, int) or ident < 0
        ):
            raise InvalidValueError(
                f"invalid {label} {ident!r}: expected a non-negative integer id"
            )
    if netns is not None:
        check_netns_name(netns)
    flags = _tun_flags(mode, queues > 1, vnet_hdr)
    held: list[tun.TunQueue] = []
    with inside_netns(netns):  # a tun fd creates its device in the namespace it was opened in
        fd = _open_exclusive(name, flags, owner, group, netns)
        try:
            if persistent:
                fcntl.ioctl(fd, tun.TUNSETPERSIST, 1)
                os.close(fd)
            else:
                if vnet_hdr:
                    fcntl.ioctl(fd, tun.TUNSETVNETHDRSZ, struct.pack("i", tun.VNET_HDR_LEN))
                held.append(tun.TunQueue(fd, name, flags))
                for _ in range(queues - 1):
                    held.append(tun.open_queue(name, mode, vnet_hdr=vnet_hdr, multi_queue=True))  # type: ignore[arg-type]
        except BaseException:
            for queue in held:
                queue.close()
            if not held:
                os.close(fd)
            raise
        try:
            with rtnl(None) as ipr:
                index = _find(ipr, name, netns)["index"]
        except BaseException:
            for queue in held:
                queue.close()
            with contextlib.suppress(OSError):
                delete_link(name, force=True)  # never leave a persistent device we cannot return
            raise
    link = Link(name, netns=netns, index=index, kind=mode, owned=True)
    link.queues = held
    return link


def create_veth(
    name: str, peer: str, *, netns: str | None = None, peer_netns: str | None = None
) -> Link:
    """Create a veth pair ``name`` (in ``netns``) and ``peer`` (created directly in ``peer_netns``).

    ``peer_netns=None`` puts the peer beside ``name``. The returned link's ``.peer`` is the
    other end; deleting either deletes both.
    """
    check_ifname(name)
    check_ifname(peer)
    for ns in (netns, peer_netns):
        if ns is not None:
            check_netns_name(ns)
    if peer_netns is None:
        peer_netns = netns
    if name == peer and netns == peer_netns:
        raise InvalidValueError(f"a veth and its peer need different names, both are {name!r}")
    peer_fd = open_netns(peer_netns) if peer_netns is not None else None
    try:
        peer_spec: dict[str, Any] = {"ifname": peer}
        if peer_fd is not None:
            peer_spec["net_ns_fd"] = peer_fd
        with rtnl(netns) as ipr:
            with netlink_errors(f"cannot create veth {name!r} with peer {peer!r}"):
                ipr.link("add", ifname=name, kind="veth", peer=peer_spec)
            index = _find(ipr, name, netns)["index"]
    finally:
        if peer_fd is not None:
            os.close(peer_fd)
    link = Link(name, netns=netns, index=index, kind="veth", owned=True)
    with rtnl(peer_netns) as ipr:
        peer_index = _find(ipr, peer, peer_netns)["index"]
    link.peer = Link(peer, netns=peer_netns, index=peer_index, kind="veth")
    return link


def create_bridge(name: str, *, netns: str | None = None, stp: bool = False) -> Bridge:
    """Create a bridge (STP off unless ``stp``)."""
    check_ifname(name)
    if netns is not None:
        check_netns_name(netns)
    with rtnl(netns) as ipr:
        with netlink_errors(f"cannot create bridge {name!r} in {_where(netns)}"):
            ipr.link("add", ifname=name, kind="bridge", br_stp_state=1 if stp else 0)
        index = _find(ipr, name, netns)["index"]
    return Bridge(name, netns=netns, index=index, kind="bridge", owned=True)


# -- looking up and deleting -----------------------------------------------------------------


def get_link(name: str, netns: str | None = None) -> Link:
    """The link ``name`` in ``netns`` (a ``Bridge`` for bridges); ``DeviceNotFoundError``."""
    with rtnl(netns) as ipr:
        return _make(_find(ipr, name, netns), netns)


def get_bridge(name: str, netns: str | None = None) -> Bridge:
    """The bridge ``name``: ``DeviceNotFoundError`` if missing, ``InvalidValueError`` if another
    kind of link has that name."""
    link = get_link(name, netns)
    if not isinstance(link, Bridge):
        raise InvalidValueError(f"{name!r} in {_where(netns)} is a {link.kind}, not a bridge")
    return link


def list_links(netns: str | None = None, *, kind: str | None = None) -> list[Link]:
    """All links of ``netns`` (only those of ``kind``, e.g. ``"tap"``, if given), by index."""
    with rtnl(netns) as ipr, netlink_errors(f"cannot list links of {_where(netns)}"):
        links = [_make(msg, netns) for msg in ipr.get_links()]
    return [link for link in links if kind is None or link.kind == kind]


def delete_link(name: str, *, netns: str | None = None, force: bool = False) -> None:
    """Delete link ``name``; ``DeviceNotFoundError`` if it does not exist, unless ``force``."""
    check_ifname(name)
    with rtnl(netns) as ipr:
        try:
            msg = _find(ipr, name, netns)
        except DeviceNotFoundError:
            if force:
                return
            raise DeviceNotFoundError(
                errno.ENODEV,
                f"no link named {name!r} in {_where(netns)} (use --force to ignore missing ones)",
            ) from None
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            ipr.link("del", index=msg["index"])
        except NetlinkError as err:
            if err.code == errno.ENODEV and force:
                return  # it went away meanwhile (a veth peer deleted with its other end)
            raise _translate(err.code, f"cannot delete link {name!r} in {_where(netns)}") from None


def describe_link(name: str) -> str | None:
    """How link ``name`` of the calling thread's namespace was made, for error messages:
    ``"a multi-queue tap"``, ``"a veth, not a tun/tap device"``; None if unknown."""
    try:
        with rtnl(None) as ipr:
            msg = _find(ipr, name, None)
    except Exception:  # only an embellishment of another error: never mask that one
        return None
    kind = _kind_of(msg)
    if kind not in ("tap", "tun"):
        return f"a {kind}, not a tun/tap device"
    data = msg.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
    queues = "multi-queue" if data.get_attr("IFLA_TUN_MULTI_QUEUE") else "single-queue"
    return f"a {queues} {kind}"


def add_neighbor(dev: str, ip: str, mac: str, *, netns: str | None = None) -> None:
    """Add a permanent ARP (IPv4) or neighbour (IPv6) entry ``ip -> mac`` on ``dev``."""
    address = check_ip(ip)
    lladdr = check_mac(mac)
    with rtnl(netns) as ipr, netlink_errors(f"cannot add neighbour {ip} on {dev!r}"):
        index = _find(ipr, dev, netns)["index"]
        ipr.neigh("add", dst=str(address), lladdr=lladdr, ifindex=index, state=NUD_PERMANENT)
