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

import contextlib
import errno
import os
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from tapengine import marks, tun
from tapengine.errors import (
        DeviceNotFoundError,
    InvalidValueError,
)
from tapengine.netlink import (
    find_link,
    flag_names,
    is_marked,
    link_kind,
    mark,
    netlink_errors,
    rtnl,
    translate_error,
    tun_attrs,
    where,
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

IFA_F_NODAD = 0x02
NUD_PERMANENT = 0x80



# -- checks made before any syscall ----------------------------------------------------------


def _netns_option(netns: str | None) -> str:
    return "" if netns is None else f" --netns {netns}"


def _make(msg: nlmsg, netns: str | None) -> Link:
    kind = link_kind(msg)
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
        msg = find_link(ipr, self.name, self.netns)
        self.index = msg["index"]
        return msg

    def is_ours(self) -> bool:
        """Whether tapengine created this link (it carries the mark of ``tapengine.marks``)."""
        with rtnl(self.netns) as ipr, netlink_errors(f"cannot read {self}"):
            return is_marked(self._message(ipr))

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
                "kind": link_kind(msg),
                "mtu": msg.get_attr("IFLA_MTU"),
                "mac": msg.get_attr("IFLA_ADDRESS"),
                "operstate": msg.get_attr("IFLA_OPERSTATE"),
                "flags": flag_names(msg["flags"]),
                "up": bool(msg["flags"] & 0x1),
                "addresses": addresses,
                "master": master,
                "created_by_tapengine": is_marked(msg),
            }
            attrs = tun_attrs(msg)
            if attrs is not None:
                info["tun"] = attrs
        return info

    # -- changing ----------------------------------------------------------------------------

    def _set(self, what: str, **attrs: Any) -> None:
        with rtnl(self.netns) as ipr, netlink_errors(f"cannot {what} of {self}"):
            ipr.link("set", index=self._message(ipr)["index"], **attrs)

    def up(self) -> None:
        """Bring the link up (administratively, ``IFF_UP``)."""
        self._set("bring up", state="up")

    def down(self) -> None:
        """Bring the link down."""
        self._set("bring down", state="down")

    def set_mtu(self, mtu: int) -> None:
        """Set the MTU (68 to 65535, checked first)."""
        self._set(f"set MTU {mtu}", mtu=check_mtu(mtu))

    def set_mac(self, mac: str) -> None:
        """Set the MAC address (unicast, not all zeros, checked first)."""
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
        """Make link ``port`` (of the bridge's namespace, not a bridge) a port of this bridge."""
        with rtnl(self.netns) as ipr, netlink_errors(f"cannot attach {port!r} to {self}"):
            bridge = self._message(ipr)
            if link_kind(bridge) != "bridge":
                raise InvalidValueError(f"{self.name!r} is a {link_kind(bridge)}, not a bridge")
            try:
                link = find_link(ipr, port, self.netns)
            except DeviceNotFoundError:
                raise DeviceNotFoundError(
                    errno.ENODEV,
                    f"cannot attach {port!r} to bridge {self.name!r}: no link named {port!r} in "
                    f"{where(self.netns)} (a port must be in its bridge's namespace)",
                ) from None
            if link["index"] == bridge["index"]:
                raise InvalidValueError(f"cannot attach bridge {self.name!r} to itself")
            ipr.link("set", index=link["index"], master=bridge["index"])

    def detach(self, port: str) -> None:
        """Take link ``port`` out of this bridge."""
        with rtnl(self.netns) as ipr, netlink_errors(f"cannot detach {port!r} from {self}"):
            bridge = self._message(ipr)
            link = find_link(ipr, port, self.netns)
            if link.get_attr("IFLA_MASTER") != bridge["index"]:
                raise DeviceNotFoundError(
                    errno.ENOENT, f"{port!r} is not a port of bridge {self.name!r}"
                )
            ipr.link("set", index=link["index"], master=0)

    def ports(self) -> list[str]:
        """The names of this bridge's ports, sorted."""
        with rtnl(self.netns) as ipr, netlink_errors(f"cannot list the ports of {self}"):
            index = self._message(ipr)["index"]
            return sorted(
                msg.get_attr("IFLA_IFNAME")
                for msg in ipr.get_links()
                if msg.get_attr("IFLA_MASTER") == index
            )


# -- creating --------------------------------------------------------------------------------


@contextlib.contextmanager
def _deleted_on_error(name: str, netns: str | None) -> Iterator[None]:
    """Delete link ``name``, which we just created, if the body fails: a half-made link that does
    not carry our mark would be left for nobody to remove."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            delete_link(name, netns=netns, force=True)
        raise


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
    flags = tun.tun_flags(mode, queues > 1, vnet_hdr)
    held: list[tun.TunQueue] = []
    with inside_netns(netns):  # a tun fd creates its device in the namespace it was opened in
        fd = tun.create_exclusive(name, flags, owner=owner, group=group,
                                  hint=f"tapengine tap del {name}{_netns_option(netns)}")
        try:
            # Marked while the device still lives only as long as this fd: a crash before this
            # point leaves nothing behind, and nothing unmarked.
            with rtnl(None) as ipr:
                index = find_link(ipr, name, netns)["index"]
                mark(ipr, index)
            if persistent:
                tun.set_persist(fd)
                os.close(fd)
            else:
                if vnet_hdr:
                    tun.set_vnet_hdr_size(fd)
                held.append(tun.TunQueue(fd, name, flags))
                for _ in range(queues - 1):
                    held.append(tun.open_queue(name, mode, vnet_hdr=vnet_hdr, multi_queue=True))  # type: ignore[arg-type]
        except BaseException:
            for queue in held:
                queue.close()
            if not held:
                os.close(fd)
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
        what = f"cannot create veth {name!r} with peer {peer!r}"
        with marks.creating("veth", name, netns), marks.creating("veth", peer, peer_netns):
            with rtnl(netns) as ipr, netlink_errors(what):
                ipr.link("add", ifname=name, kind="veth", peer=peer_spec)
            with _deleted_on_error(name, netns):
                with rtnl(netns) as ipr:
                    index = find_link(ipr, name, netns)["index"]
                    mark(ipr, index)
                with rtnl(peer_netns) as ipr:
                    peer_index = find_link(ipr, peer, peer_netns)["index"]
                    mark(ipr, peer_index)
    finally:
        if peer_fd is not None:
            os.close(peer_fd)
    link = Link(name, netns=netns, index=index, kind="veth", owned=True)
    link.peer = Link(peer, netns=peer_netns, index=peer_index, kind="veth")
    return link


def create_bridge(name: str, *, netns: str | None = None, stp: bool = False) -> Bridge:
    """Create a bridge (STP off unless ``stp``)."""
    check_ifname(name)
    if netns is not None:
        check_netns_name(netns)
    what = f"cannot create bridge {name!r} in {where(netns)}"
    with marks.creating("bridge", name, netns):
        with rtnl(netns) as ipr, netlink_errors(what):
            ipr.link("add", ifname=name, kind="bridge", br_stp_state=1 if stp else 0)
        with _deleted_on_error(name, netns), rtnl(netns) as ipr:
            index = find_link(ipr, name, netns)["index"]
            mark(ipr, index)
    return Bridge(name, netns=netns, index=index, kind="bridge", owned=True)


# -- looking up and deleting -----------------------------------------------------------------


def get_link(name: str, netns: str | None = None) -> Link:
    """The link ``name`` in ``netns`` (a ``Bridge`` for bridges); ``DeviceNotFoundError``."""
    with rtnl(netns) as ipr:
        return _make(find_link(ipr, name, netns), netns)


def get_bridge(name: str, netns: str | None = None) -> Bridge:
    """The bridge ``name``: ``DeviceNotFoundError`` if missing, ``InvalidValueError`` if another
    kind of link has that name."""
    link = get_link(name, netns)
    if not isinstance(link, Bridge):
        raise InvalidValueError(f"{name!r} in {where(netns)} is a {link.kind}, not a bridge")
    return link


def list_links(netns: str | None = None, *, kind: str | None = None) -> list[Link]:
    """All links of ``netns`` (only those of ``kind``, e.g. ``"tap"``, if given), by index."""
    with rtnl(netns) as ipr, netlink_errors(f"cannot list links of {where(netns)}"):
        links = [_make(msg, netns) for msg in ipr.get_links()]
    return [link for link in links if kind is None or link.kind == kind]


def delete_link(name: str, *, netns: str | None = None, force: bool = False) -> None:
    """Delete link ``name``; ``DeviceNotFoundError`` if it does not exist, unless ``force``."""
    check_ifname(name)
    with rtnl(netns) as ipr:
        try:
            msg = find_link(ipr, name, netns)
        except DeviceNotFoundError:
            if force:
                return
            raise DeviceNotFoundError(
                errno.ENODEV,
                f"no link named {name!r} in {where(netns)} (use --force to ignore missing ones)",
            ) from None
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            ipr.link("del", index=msg["index"])
        except NetlinkError as err:
            if err.code == errno.ENODEV and force:
                return  # it went away meanwhile (a veth peer deleted with its other end)
            what = f"cannot delete link {name!r} in {where(netns)}"
            raise translate_error(err.code, what) from None


def add_neighbor(dev: str, ip: str, mac: str, *, netns: str | None = None) -> None:
    """Add a permanent ARP (IPv4) or neighbour (IPv6) entry ``ip -> mac`` on ``dev``."""
    address = check_ip(ip)
    lladdr = check_mac(mac)
    with rtnl(netns) as ipr, netlink_errors(f"cannot add neighbour {ip} on {dev!r}"):
        index = find_link(ipr, dev, netns)["index"]
        ipr.neigh("add", dst=str(address), lladdr=lladdr, ifindex=index, state=NUD_PERMANENT)
