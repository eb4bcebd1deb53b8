"""Opening tun/tap queues: ``/dev/net/tun``, ``TUNSETIFF`` and the ioctls around it.

Opening a queue on a name that does not exist creates a non-persistent device that lives as long
as its fds; opening one on an existing (persistent) device must use the flags it was created with.
Every fd is non-blocking and close-on-exec. Names are checked before any syscall.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import os
import struct
from types import TracebackType
from typing import Literal, Self

from tapengine import _batchio
from tapengine._ring import PacketRing
from tapengine.errors import (
    DeviceBusyError,
    DeviceExistsError,
    DeviceNotFoundError,
    FlagMismatchError,
    PrivilegeError,
    TunUnavailableError,
    oserror,
)
from tapengine.netlink import describe_link, find_link, rtnl, tun_attrs
from tapengine.validate import check_id, check_ifname

TUN_PATH = "/dev/net/tun"


def _iow(nr: int) -> int:
    # _IOW('T', nr, int): direction write, 4-byte argument.
    return (1 << 30) | (4 << 16) | (ord("T") << 8) | nr


def _ior(nr: int) -> int:
    return (2 << 30) | (4 << 16) | (ord("T") << 8) | nr


TUNSETIFF = _iow(202)
TUNSETPERSIST = _iow(203)
TUNSETOWNER = _iow(204)
TUNSETGROUP = _iow(206)
TUNGETFEATURES = _ior(207)
TUNSETOFFLOAD = _iow(208)
TUNGETIFF = _ior(210)
TUNSETSNDBUF = _iow(212)
TUNSETVNETHDRSZ = _iow(216)

VNET_HDR_LEN = 10  # sizeof(struct virtio_net_hdr)


class IfFlag(enum.IntFlag):
    """``ifr_flags`` of TUNSETIFF (linux/if_tun.h)."""

    TUN = 0x0001
    TAP = 0x0002
    MULTI_QUEUE = 0x0100
    PERSIST = 0x0800
    NO_PI = 0x1000
    VNET_HDR = 0x4000
    TUN_EXCL = 0x8000


class Offload(enum.IntFlag):
    """``TUNSETOFFLOAD`` flags: what the kernel may hand us unsegmented or without checksum."""

    CSUM = 0x01
    TSO4 = 0x02
    TSO6 = 0x04
    TSO_ECN = 0x08
    UFO = 0x10
    USO4 = 0x20
    USO6 = 0x40


Mode = Literal["tap", "tun"]

_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, flags, padding to 40 bytes


def _open_control() -> int:
    try:
        return os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TunUnavailableError(
            errno.ENOENT,
            f"{TUN_PATH} does not exist: load the tun module (modprobe tun) or create the node "
            "(mknod /dev/net/tun c 10 200)",
        ) from None
    except PermissionError:
        raise PrivilegeError(
            errno.EACCES,
            f"cannot open {TUN_PATH}: permission denied; tun/tap needs root or CAP_NET_ADMIN",
        ) from None


def features() -> IfFlag:
    """The ``TUNSETIFF`` flags this kernel supports (``TUNGETFEATURES``)."""
    fd = _open_control()
    try:
        raw = fcntl.ioctl(fd, TUNGETFEATURES, b"\0" * 4)
    finally:
        os.close(fd)
    return IfFlag(struct.unpack("I", raw)[0])


def _explain_setiff(err: OSError, name: str, flags: IfFlag) -> OSError:
    mode = "tap" if flags & IfFlag.TAP else "tun"
    mq = "multi-queue" if flags & IfFlag.MULTI_QUEUE else "single-queue"
    if err.errno == errno.EPERM:
        return PrivilegeError(
            errno.EPERM,
            f"cannot open {mode} {name!r}: operation not permitted; this needs CAP_NET_ADMIN "
            "(run as root) or a device created with your uid as owner",
        )
    if err.errno == errno.EBUSY:
        return DeviceBusyError(
            errno.EBUSY,
            f"cannot open {mode} {name!r}: it is busy; a single-queue device admits one fd "
            "(close the other user, or create the device with multi-queue)",
        )
    if err.errno == errno.EINVAL:
        actual = describe_link(name)
        return FlagMismatchError(
            errno.EINVAL,
            f"cannot open {name!r} as a {mq} {mode}: invalid argument; the device exists with "
            "other flags (tun vs tap, or multi-queue) or another kind of link has that name"
            + (f": it is {actual}" if actual else ""),
        )
    return oserror(err.errno or errno.EIO, f"cannot open {mode} {name!r}")


def tun_flags(mode: str, multi_queue: bool = False, vnet_hdr: bool = False) -> IfFlag:
    """The ``TUNSETIFF`` flags of a ``mode`` (``"tap"``/``"tun"``) device, always ``IFF_NO_PI``."""
    flags = IfFlag.NO_PI | (IfFlag.TAP if mode == "tap" else IfFlag.TUN)
    if multi_queue:
        flags |= IfFlag.MULTI_QUEUE
    if vnet_hdr:
        flags |= IfFlag.VNET_HDR
    return flags


def create_exclusive(
    name: str, flags: IfFlag, *, owner: int | None = None, group: int | None = None,
    hint: str = "",
) -> int:  # fmt: skip
    """Create tun/tap ``name`` on a new fd, failing if any link has that name (``IFF_TUN_EXCL``).

    The device is not persistent yet: it vanishes with the fd unless the caller sets
    ``TUNSETPERSIST``. ``hint`` is a command that would remove a clashing device.
    """
    check_ifname(name)
    fd = _open_control()
    try:
        try:
            fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(name.encode(), int(flags | IfFlag.TUN_EXCL)))
        except OSError as err:
            if err.errno == errno.EBUSY:
                remedy = "pick another name"
                if hint:
                    remedy = f"delete it with '{hint}', or {remedy}"
                raise DeviceExistsError(
                    errno.EEXIST,
                    f"cannot create {name!r}: a link with that name already exists ({remedy})",
                ) from None
            if err.errno in (errno.EPERM, errno.EACCES):
                raise PrivilegeError(
                    err.errno,
                    f"cannot create {name!r}: operation not permitted; creating a tun/tap device "
                    "needs CAP_NET_ADMIN (run as root)",
                ) from None
            raise _explain_setiff(err, name, flags) from None
        # The kernel takes the id as the ioctl's argument itself, a uid_t: ids of 2^31 and more
        # go through fcntl's C int as the same 32 bits.
        if owner is not None:
            fcntl.ioctl(fd, TUNSETOWNER, _as_c_int(check_id(owner, "owner")))
        if group is not None:
            fcntl.ioctl(fd, TUNSETGROUP, _as_c_int(check_id(group, "group")))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _as_c_int(value: int) -> int:
    """The C ``int`` with the same 32 bits as unsigned ``value``."""
    return value - (1 << 32) if value >= 1 << 31 else value


def set_persist(fd: int, persist: bool = True) -> None:
    """Make the device of ``fd`` outlive its fds (``TUNSETPERSIST``), or stop it doing so."""
    fcntl.ioctl(fd, TUNSETPERSIST, int(persist))


def set_vnet_hdr_size(fd: int) -> None:
    """Reset the virtio-net header size to 10 bytes: a persistent device keeps the size a
    previous user set (``TUNSETVNETHDRSZ``)."""
    fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))


class TunQueue:
    """One open queue (fd) of a tun or tap device.

    A context manager: leaving the ``with`` block closes the fd (and a non-persistent device
    disappears with its last fd).
    """

    def __init__(self, fd: int, name: str, flags: IfFlag) -> None:
        self._fd = fd
        self.name = name
        self.flags = flags
        self.offload = Offload(0)

    # -- properties -----------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return "tap" if self.flags & IfFlag.TAP else "tun"

    @property
    def vnet_hdr(self) -> bool:
        return bool(self.flags & IfFlag.VNET_HDR)

    @property
    def multi_queue(self) -> bool:
        return bool(self.flags & IfFlag.MULTI_QUEUE)

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError(f"the queue of {self.name!r} is closed")
        return self._fd

    # -- ioctls ---------------------------------------------------------------------------

    def set_offload(self, offload: Offload) -> None:
        """Tell the kernel which offloads we accept (``TUNSETOFFLOAD``); needs ``vnet_hdr``."""
        if offload and not self.vnet_hdr:
            raise ValueError(f"{self.name}: offloads need a queue opened with vnet_hdr=True")
        try:
            fcntl.ioctl(self.fileno(), TUNSETOFFLOAD, int(offload))
        except OSError as err:
            raise oserror(err.errno, f"{self.name}: TUNSETOFFLOAD {offload!r}") from None
        self.offload = Offload(offload)

    def negotiate_offload(self, wanted: Offload) -> Offload:
        """Enable as many of ``wanted`` as the kernel accepts, dropping refused flags one by one.

        Returns what was enabled. TSO needs CSUM, so without CSUM nothing is enabled.
        """
        enabled = Offload(wanted)
        for flag in (Offload.USO6, Offload.USO4, Offload.UFO, Offload.TSO_ECN, Offload.TSO6,
                     Offload.TSO4, Offload.CSUM):
            try:
                self.set_offload(enabled)
                return enabled
            except OSError as err:
                if err.errno != errno.EINVAL:
                    raise
                enabled &= ~flag
        self.set_offload(Offload(0))
        return Offload(0)

    def device_flags(self) -> IfFlag:
        """The flags the kernel holds for this queue's device (``TUNGETIFF``): what was really
        negotiated, ``PERSIST`` included."""
        raw = fcntl.ioctl(self.fileno(), TUNGETIFF, b"\0" * _IFREQ.size)
        return IfFlag(_IFREQ.unpack(raw)[1])

    def set_sndbuf(self, size: int) -> None:
        """Bytes the device may queue toward this fd before dropping (``TUNSETSNDBUF``)."""
        fcntl.ioctl(self.fileno(), TUNSETSNDBUF, struct.pack("i", size))

    # -- batched I/O ----------------------------------------------------------------------

    def recv_batch(self, ring: PacketRing, budget: int = 64) -> int:
        """Read up to ``budget`` packets into ``ring`` (see ``tapengine.recv_batch``)."""
        return _batchio.recv_batch(self.fileno(), ring, budget, vnet_hdr=self.vnet_hdr)

    def send_batch(self, ring: PacketRing, first: int, count: int) -> int:
        """Write ``count`` packets from ``ring`` (see ``tapengine.send_batch``)."""
        return _batchio.send_batch(self.fileno(), ring, first, count, vnet_hdr=self.vnet_hdr)

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else f"fd={self._fd}"
        return f"<TunQueue {self.mode} {self.name!r} {state} flags={self.flags!r}>"


def open_queue(
    name: str,
    mode: Mode = "tap",
    *,
    vnet_hdr: bool = False,
    multi_queue: bool = False,
) -> TunQueue:
    """Open one queue of the tun or tap device ``name`` (creating it if it does not exist).

    The fd is non-blocking and close-on-exec, with ``IFF_NO_PI``. With ``vnet_hdr`` every packet
    carries a 10-byte ``virtio_net_hdr`` and the header size is reset to 10 (a persistent device
    keeps the size a previous user set). ``multi_queue`` must match how the device was created.
    """
    check_ifname(name)
    if mode not in ("tap", "tun"):
        raise ValueError(f"mode must be 'tap' or 'tun', not {mode!r}")
    flags = tun_flags(mode, multi_queue, vnet_hdr)
    fd = _open_control()
    try:
        try:
            fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(name.encode(), int(flags)))
        except OSError as err:
            raise _explain_setiff(err, name, flags) from None
        if vnet_hdr:
            set_vnet_hdr_size(fd)
        queue = TunQueue(fd, name, flags)
        if vnet_hdr:
            queue.set_offload(Offload(0))  # a persistent device keeps old offloads: start clean
    except BaseException:
        os.close(fd)
        raise
    return queue


def open_queues(
    name: str,
    count: int,
    mode: Mode = "tap",
    *,
    vnet_hdr: bool = False,
    share: bool = False,
) -> list[TunQueue]:
    """Open ``count`` queues of a multi-queue device; all or none (closed again on error).

    A device whose queues another process already holds is refused with ``DeviceBusyError``
    (the kernel would hand that process's flows to our queues too), unless ``share``.
    """
    if count < 1:
        raise ValueError(f"queue count must be >= 1, not {count}")
    check_ifname(name)
    if not share:
        attached = attached_queues(name)
        if attached:
            raise DeviceBusyError(
                errno.EBUSY,
                f"cannot open {name!r}: {attached} queue{'s' if attached != 1 else ''} of it "
                "already have an fd attached (another engine serves it?); traffic would be "
                "split between both. Stop the other user, or share the device on purpose "
                "(share=True, --share-queues)",
            )
    queues: list[TunQueue] = []
    try:
        for _ in range(count):
            queues.append(open_queue(name, mode, vnet_hdr=vnet_hdr, multi_queue=True))
    except BaseException:
        for queue in queues:
            queue.close()
        raise
    return queues


def attached_queues(name: str) -> int:
    """How many queues of tun/tap ``name`` (in this thread's namespace) have an fd attached now
    (``IFLA_TUN_NUM_QUEUES``); 0 if there is no such device or it is not a tun/tap."""
    try:
        with rtnl(None) as ipr:
            attrs = tun_attrs(find_link(ipr, name, None))
    except DeviceNotFoundError:
        return 0
    return int(attrs["queues"] or 0) if attrs else 0
