"""rtnetlink for everybody: a handle in a namespace, link look-up, kind detection, and the one
translation of netlink errors into tapengine's exceptions.

Every call opens its own pyroute2 ``IPRoute`` with the calling thread switched into the target
namespace (``netns=None``: the namespace the thread is in), so a handle never outlives the call
and the functions are safe from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tapengine.errors import (
    DeviceExistsError,
    DeviceNotFoundError,
    InvalidValueError,
    PrivilegeError,
)
from tapengine.marks import OWNER_MARK
from tapengine.netns import inside_netns
from tapengine.validate import check_ifname

if TYPE_CHECKING:
    from pyroute2 import IPRoute
    from pyroute2.netlink import nlmsg


def where(netns: str | None) -> str:
    """``namespace 'x'`` or ``the current namespace``, for messages."""
    return "the current namespace" if netns is None else f"namespace {netns!r}"


# In the order ``ip link`` prints them (iproute2 print_link_flags), so output matches ``ip -j``.
_IFF_NAMES = (
    (0x8, "LOOPBACK"), (0x2, "BROADCAST"), (0x10, "POINTOPOINT"), (0x1000, "MULTICAST"),
    (0x80, "NOARP"), (0x200, "ALLMULTI"), (0x100, "PROMISC"), (0x20, "NOTRAILERS"),
    (0x4, "DEBUG"), (0x8000, "DYNAMIC"), (0x4000, "AUTOMEDIA"), (0x2000, "PORTSEL"),
    (0x400, "MASTER"), (0x800, "SLAVE"), (0x1, "UP"), (0x10000, "LOWER_UP"),
    (0x20000, "DORMANT"), (0x40000, "ECHO"),
)  # fmt: skip
IFF_UP, IFF_RUNNING = 0x1, 0x40


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
        raise translate_error(err.code, what) from None


def translate_error(code: int, what: str) -> OSError:
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


def find_link(ipr: IPRoute, name: str, netns: str | None) -> nlmsg:
    """The RTM_NEWLINK message of link ``name``; ``DeviceNotFoundError`` naming ``netns``."""
    check_ifname(name)
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        msgs = ipr.link("get", ifname=name)
    except NetlinkError as err:
        if err.code != errno.ENODEV:
            raise translate_error(err.code, f"cannot look up link {name!r}") from None
        msgs = []
    if not msgs:
        raise DeviceNotFoundError(errno.ENODEV, f"no link named {name!r} in {where(netns)}")
    return msgs[0]


def link_kind(msg: nlmsg) -> str:
    """``tap``, ``tun``, ``veth``, ``bridge``, ... from IFLA_LINKINFO; ``device`` for hardware."""
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    if linkinfo is None:
        return "loopback" if msg["flags"] & 0x8 else "device"
    kind = linkinfo.get_attr("IFLA_INFO_KIND") or "device"
    if kind == "tun":
        data = linkinfo.get_attr("IFLA_INFO_DATA")
        return "tun" if data is not None and data.get_attr("IFLA_TUN_TYPE") == 1 else "tap"
    return kind


def is_marked(msg: nlmsg) -> bool:
    """Whether the link carries tapengine's ownership mark (see ``tapengine.marks``)."""
    return bool(msg.get_attr("IFLA_IFALIAS") == OWNER_MARK)


def mark(ipr: IPRoute, index: int) -> None:
    """Put tapengine's ownership mark on link ``index`` (its ``IFLA_IFALIAS``)."""
    ipr.link("set", index=index, ifalias=OWNER_MARK)


def tun_attrs(msg: nlmsg) -> dict[str, Any] | None:
    """The tun/tap settings of a link (``IFLA_TUN_*``), or None for other kinds of link.

    ``queues`` is how many queues have an fd attached now (``IFLA_TUN_NUM_QUEUES``).
    """
    if link_kind(msg) not in ("tap", "tun"):
        return None
    data = msg.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
    if data is None:
        return None
    owner = data.get_attr("IFLA_TUN_OWNER")
    group = data.get_attr("IFLA_TUN_GROUP")
    return {
        "multi_queue": bool(data.get_attr("IFLA_TUN_MULTI_QUEUE")),
        "vnet_hdr": bool(data.get_attr("IFLA_TUN_VNET_HDR")),
        "persist": bool(data.get_attr("IFLA_TUN_PERSIST")),
        # the kernel reports "no owner" as (uid_t)-1
        "owner": None if owner in (None, 0xFFFFFFFF) else owner,
        "group": None if group in (None, 0xFFFFFFFF) else group,
        "queues": data.get_attr("IFLA_TUN_NUM_QUEUES"),
    }


def flag_names(flags: int) -> list[str]:
    """``ifi_flags`` as ``ip link`` names them: NO-CARRIER for up without carrier, no RUNNING."""
    names = [name for bit, name in _IFF_NAMES if flags & bit]
    if flags & IFF_UP and not flags & IFF_RUNNING:
        names.insert(0, "NO-CARRIER")
    return names


def describe_link(name: str) -> str | None:
    """How link ``name`` of the calling thread's namespace was made, for error messages:
    ``"a multi-queue tap"``, ``"a veth, not a tun/tap device"``; None if unknown."""
    try:
        with rtnl(None) as ipr:
            msg = find_link(ipr, name, None)
    except Exception:  # only an embellishment of another error: never mask that one
        return None
    kind = link_kind(msg)
    attrs = tun_attrs(msg)
    if attrs is None:
        return f"a {kind}, not a tun/tap device"
    queues = "multi-queue" if attrs["multi_queue"] else "single-queue"
    return f"a {queues} {kind}"
