"""python-pytun's API on tapengine: ``import tapengine.compat.pytun as pytun`` is the only change.

A program written for python-pytun (``TunTapDevice``, ``Error``, the ``IFF_*`` constants) runs
unchanged and sees what it saw with pytun: the same defaults (a tun without ``IFF_NO_PI``, a
blocking fd, a kernel-chosen ``tun%d``/``tap%d`` name), the same kernel requests (the legacy
``SIOCSIF*`` ioctls, whose semantics programs rely on: a classful netmask or a /32 on a
point-to-point tun when ``addr`` is set, ``netmask``/``dstaddr`` editing that address), and the
same exceptions with the same messages (``Error`` is an ``OSError``; ``Error(errno, strerror)``
for a failed system call, ``Error(message)`` for a refused value; ``TypeError`` and friends for
arguments of the wrong type).

What pytun never had: IPv6 (and any) addresses over netlink (``add_address``, ``del_address``,
``addresses``), a context manager that closes the device, and ``read_batch``, which drains every
queued packet with tapengine's batched receive loop (no Python call per packet until the copy out).

Differences on purpose, none of which a working pytun program can notice: the fd is close-on-exec
(pytun's is inherited by children), ``read``/``write`` retry on ``EINTR`` as Python's own I/O does
(pytun raises ``Error(EINTR)``), ``write`` also takes a ``bytearray`` or ``memoryview`` (pytun
refuses them), and deleting an attribute raises ``AttributeError`` (pytun crashes).
"""

from __future__ import annotations

import errno
import fcntl
import operator
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self

from tapengine import tun
from tapengine._batchio import recv_batch
from tapengine._ring import MAX_SLOT_SIZE, MIN_SLOT_SIZE, PacketRing
from tapengine.netlink import find_link, rtnl
from tapengine.validate import check_cidr, check_int

__all__ = [
    "IFF_MULTI_QUEUE",
    "IFF_NO_PI",
    "IFF_ONE_QUEUE",
    "IFF_TAP",
    "IFF_TUN",
    "IFF_TUN_EXCL",
    "IFF_VNET_HDR",
    "Error",
    "TunTapDevice",
]

IFF_TUN = int(tun.IfFlag.TUN)
IFF_TAP = int(tun.IfFlag.TAP)
IFF_NO_PI = int(tun.IfFlag.NO_PI)
IFF_ONE_QUEUE = 0x2000  # obsolete (the kernel ignores it), kept because pytun exports it
IFF_VNET_HDR = int(tun.IfFlag.VNET_HDR)
IFF_TUN_EXCL = int(tun.IfFlag.TUN_EXCL)
IFF_MULTI_QUEUE = int(tun.IfFlag.MULTI_QUEUE)

IFNAMSIZ = 16
TUNSETQUEUE = (1 << 30) | (4 << 16) | (ord("T") << 8) | 217  # _IOW('T', 217, int)
ATTACH_QUEUE = 0x0200
DETACH_QUEUE = 0x0400
ARPHRD_ETHER = 1
IFA_F_NODAD = 0x02
MAX_BATCH = 4096  # packets per read_batch call: the ring it reads into is kept between calls
LINK_UP = 0x1

# The legacy interface ioctls (linux/sockios.h) and the parts of struct ifreq (40 bytes) they use.
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
SIOCGIFADDR, SIOCSIFADDR = 0x8915, 0x8916
SIOCGIFDSTADDR, SIOCSIFDSTADDR = 0x8917, 0x8918
SIOCGIFNETMASK, SIOCSIFNETMASK = 0x891B, 0x891C
SIOCGIFMTU, SIOCSIFMTU = 0x8921, 0x8922
SIOCSIFHWADDR, SIOCGIFHWADDR = 0x8924, 0x8927
_os_read, _os_write = os.read, os.write  # one global look-up per packet instead of two

_IFR_NAME = struct.Struct("16s24x")
_IFR_SETIFF = struct.Struct("16sH22x")
_IFR_FLAGS = struct.Struct("16sh22x")
_IFR_INET = struct.Struct("16sH2x4s8x8x")  # sockaddr_in: family, port, address, zero
_IFR_INT = struct.Struct("16si20x")
_IFR_HWADDR = struct.Struct("16sH6s8x8x")  # sockaddr: family, sa_data[14]


class Error(OSError):
    """This exception is raised when an error occurs. The accompanying value is
    either a string telling what went wrong or a pair (errno, string)
    representing an error returned by a system call, similar to the value
    accompanying os.error. See the module errno, which contains names for the
    error codes defined by the underlying operating system."""


def _error(err: OSError) -> Error:
    """pytun's ``Error(errno, strerror)`` for a failed system call."""
    code = err.errno or errno.EIO
    return Error(code, os.strerror(code))


def _bool_argument(method: str, flag: object) -> bool:
    if not isinstance(flag, bool):
        raise TypeError(f"{method}() argument 1 must be bool, not {type(flag).__name__}")
    return flag


def _c_int(value: object) -> int:
    """``value`` as C's ``int`` parsing (``PyArg_ParseTuple`` ``"i"``) would take it."""
    number = operator.index(value)  # type: ignore[arg-type]
    if number > 0x7FFFFFFF:
        raise OverflowError("signed integer is greater than maximum")
    if number < -0x80000000:
        raise OverflowError("signed integer is less than minimum")
    return number


def _c_string(value: object, argument: str) -> bytes:
    """``value`` as a NUL-free C string (``PyArg_ParseTuple`` ``"s"``)."""
    if not isinstance(value, str):
        raise TypeError(f"argument {argument} must be str, not {type(value).__name__}")
    if "\0" in value:
        raise ValueError("embedded null character")
    return value.encode()


def _inet_aton(value: object) -> bytes:
    """An address as pytun reads it: ASCII text parsed by libc's ``inet_aton`` (``10.1`` is
    10.0.0.1), up to a NUL byte, as C sees the string."""
    if not isinstance(value, str):
        raise TypeError("bad argument type for built-in operation")
    text = value.encode("ascii").split(b"\0", 1)[0].decode()
    try:
        return socket.inet_aton(text)
    except OSError:
        raise Error("Bad IP address") from None


def _inet_property(get: int, put: int, doc: str) -> Any:
    """A ``str`` property read and written with the ioctls ``get`` and ``put``, as pytun's."""

    def getter(self: TunTapDevice) -> str:
        answer = self._ifreq(get, _IFR_NAME.pack(self._name.encode()))
        return socket.inet_ntoa(_IFR_INET.unpack(answer)[2])

    def setter(self: TunTapDevice, value: str) -> None:
        address = _inet_aton(value)
        self._ifreq(put, _IFR_INET.pack(self._name.encode(), socket.AF_INET, address))

    return property(getter, setter, doc=doc)


class TunTapDevice:
    """TunTapDevice(name='', flags=IFF_TUN, dev='/dev/net/tun') -> TUN/TAP device object.

    Creates (or attaches to) tun/tap ``name`` with ``TUNSETIFF`` and exactly ``flags``; an empty
    name lets the kernel pick ``tun%d``/``tap%d``. The fd is blocking, as pytun's is.
    Also a context manager: leaving the ``with`` block closes the device.
    """

    __slots__ = ("__weakref__", "_batch_ring", "_ctl", "_fd", "_name", "_truncated")

    def __init__(self, name: str = "", flags: int = IFF_TUN, dev: str = tun.TUN_PATH) -> None:
        self._fd = -1
        self._name = ""
        self._ctl: socket.socket | None = None
        self._batch_ring: PacketRing | None = None
        self._truncated = 0  # by the rings read_batch used before its current one
        raw_name = _c_string(name, "1")
        flags = _c_int(flags)
        raw_dev = _c_string(dev, "3")
        if not flags & (IFF_TUN | IFF_TAP):
            raise Error("Bad flags: either IFF_TUN or IFF_TAP must be set")
        if flags & IFF_TUN and flags & IFF_TAP:
            raise Error("Bad flags: IFF_TUN and IFF_TAP could not both be set")
        if len(raw_name) >= IFNAMSIZ:
            raise Error("Interface name too long")
        try:
            fd = os.open(raw_dev, os.O_RDWR | os.O_CLOEXEC)
        except OSError as err:
            raise _error(err) from None
        try:
            request = _IFR_SETIFF.pack(raw_name, flags & 0xFFFF)
            answer = fcntl.ioctl(fd, tun.TUNSETIFF, request)
            # The legacy ioctls name the device; their socket lives where the fd was opened.
            self._ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        except OSError as err:
            os.close(fd)
            raise _error(err) from None
        self._name = answer[:IFNAMSIZ].split(b"\0", 1)[0].decode()
        self._fd = fd

    # -- the fd -------------------------------------------------------------------------------

    def read(self, size: int, /) -> bytes:
        """read(size) -> read at most size bytes, returned as a string."""
        try:
            return _os_read(self._fd, size)
        except OSError as err:
            raise _error(err) from None

    def write(self, data: bytes | str, /) -> int:
        """write(str) -> number of bytes written.
        Write str to device."""
        try:
            return _os_write(self._fd, data)  # type: ignore[arg-type]
        except OSError as err:
            raise _error(err) from None
        except TypeError:
            if isinstance(data, str):  # pytun writes a str as UTF-8
                return self.write(data.encode())
            raise

    def _open_fd(self) -> int:
        """The fd; ``EBADF`` (an ``OSError``) once closed, as the system call would say."""
        if self._fd < 0:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return self._fd

    def fileno(self) -> int:
        """fileno() -> integer "file descriptor"."""
        return self._fd

    def close(self) -> None:
        """close() -> None.
        Close the device."""
        fd, self._fd = self._fd, -1
        ctl, self._ctl = self._ctl, None
        ring, self._batch_ring = self._batch_ring, None
        if ctl is not None:
            ctl.close()
        if ring is not None:
            self._truncated += ring.truncated
            ring.close()
        if fd >= 0:
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
        if getattr(self, "_fd", -1) >= 0:
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else f"fd={self._fd}"
        return f"<{__name__}.TunTapDevice {self._name!r} {state}>"

    # -- the device's own ioctls --------------------------------------------------------------

    def persist(self, flag: bool = True, /) -> None:
        """persist(flag) -> None.
        Make the TUN/TAP persistent if flags is True else
        make it non-persistent."""
        persist = _bool_argument("persist", flag)
        try:
            tun.set_persist(self._open_fd(), persist)
        except OSError as err:
            raise _error(err) from None

    def mq_attach(self, flag: bool = True, /) -> None:
        """mq_attach(flag) -> None.
        Enable the queue if flags is True else
        disable the queue."""
        attach = _bool_argument("attach", flag)
        request = _IFR_SETIFF.pack(b"", ATTACH_QUEUE if attach else DETACH_QUEUE)
        try:
            fcntl.ioctl(self._open_fd(), TUNSETQUEUE, request)
        except OSError as err:
            raise _error(err) from None

    # -- interface settings through the legacy ioctls, by name --------------------------------

    def _ifreq(self, request: int, data: bytes) -> bytes:
        """Send ``data`` (a struct ifreq) with ``request`` on an AF_INET socket; the answer.

        The device's own socket while it is open; afterwards a socket per call, as pytun does
        every time (the name may still exist: a persistent device)."""
        try:
            if self._ctl is not None:
                return fcntl.ioctl(self._ctl, request, data)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                return fcntl.ioctl(sock, request, data)
        except OSError as err:
            raise _error(err) from None

    @property
    def name(self) -> str:
        return self._name

    addr = _inet_property(SIOCGIFADDR, SIOCSIFADDR, "The IPv4 address (``SIOCGIFADDR``).")
    dstaddr = _inet_property(SIOCGIFDSTADDR, SIOCSIFDSTADDR,
                             "The point-to-point peer's address (``SIOCGIFDSTADDR``).")
    netmask = _inet_property(SIOCGIFNETMASK, SIOCSIFNETMASK,
                             "The netmask of ``addr`` (``SIOCGIFNETMASK``).")

    @property
    def hwaddr(self) -> bytes:
        answer = self._ifreq(SIOCGIFHWADDR, _IFR_NAME.pack(self._name.encode()))
        return bytes(_IFR_HWADDR.unpack(answer)[2])

    @hwaddr.setter
    def hwaddr(self, value: bytes) -> None:
        if not isinstance(value, bytes):
            raise TypeError(f"expected bytes, {type(value).__name__} found")
        if len(value) != 6:
            raise Error("Bad MAC address")
        self._ifreq(SIOCSIFHWADDR, _IFR_HWADDR.pack(self._name.encode(), ARPHRD_ETHER, value))

    @property
    def mtu(self) -> int:
        answer = self._ifreq(SIOCGIFMTU, _IFR_NAME.pack(self._name.encode()))
        return int(_IFR_INT.unpack(answer)[1])

    @mtu.setter
    def mtu(self, value: int) -> None:
        number = operator.index(value)
        if not -(1 << 63) <= number < 1 << 63:
            raise OverflowError("Python int too large to convert to C long")
        mtu = (number + (1 << 31)) % (1 << 32) - (1 << 31)  # pytun stores the long in an int
        if mtu <= 0:
            raise Error("Bad MTU, should be > 0")
        self._ifreq(SIOCSIFMTU, _IFR_INT.pack(self._name.encode(), mtu))

    def _set_up(self, up: bool) -> None:
        name = self._name.encode()
        flags = _IFR_FLAGS.unpack(self._ifreq(SIOCGIFFLAGS, _IFR_NAME.pack(name)))[1]
        if bool(flags & LINK_UP) != up:
            self._ifreq(SIOCSIFFLAGS, _IFR_FLAGS.pack(name, flags ^ LINK_UP))

    def up(self) -> None:
        """up() -> None.
        Bring up the device."""
        self._set_up(True)

    def down(self) -> None:
        """down() -> None.
        Bring down the device."""
        self._set_up(False)

    # -- what pytun never had -------------------------------------------------------------

    @property
    def addresses(self) -> list[str]:
        """Every address of the device, IPv4 and IPv6, as ``address/prefixlen`` (over netlink,
        in the calling thread's namespace), in the kernel's order."""
        with self._netlink("read the addresses of") as (ipr, index):
            # IFA_LOCAL is the device's own address; IFA_ADDRESS the peer's on a point-to-point
            return [f"{msg.get_attr('IFA_LOCAL') or msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}"
                    for msg in ipr.get_addr(index=index)]  # fmt: skip

    def add_address(self, cidr: str, *, nodad: bool = False) -> None:
        """Add an IPv6 (or IPv4) address with its prefix length: ``fd77::1/64``.

        ``nodad`` skips IPv6 duplicate address detection, so the address is usable at once.
        Unlike ``addr`` this adds an address and leaves the others alone; no default netmask.
        A malformed ``cidr`` is a ``ValueError``; what the kernel refuses, an ``Error``.
        """
        iface = check_cidr(cidr)
        extra = {"flags": IFA_F_NODAD} if nodad and iface.version == 6 else {}
        with self._netlink(f"add {cidr} to") as (ipr, index):
            ipr.addr("add", index=index, address=str(iface.ip),
                     prefixlen=iface.network.prefixlen, **extra)  # fmt: skip

    def del_address(self, cidr: str) -> None:
        """Remove the address ``cidr`` (``fd77::1/64``) from the device."""
        iface = check_cidr(cidr)
        with self._netlink(f"remove {cidr} from") as (ipr, index):
            ipr.addr("del", index=index, address=str(iface.ip),
                     prefixlen=iface.network.prefixlen)  # fmt: skip

    @contextmanager
    def _netlink(self, what: str) -> Iterator[tuple[Any, int]]:
        """An rtnetlink handle and this device's index; failures as pytun's ``Error``."""
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            with rtnl(None) as ipr:
                yield ipr, find_link(ipr, self._name, None)["index"]
        except NetlinkError as err:
            raise Error(err.code, f"cannot {what} {self._name!r}: {os.strerror(err.code)}"
                        ) from None  # fmt: skip
        except OSError as err:
            raise Error(err.errno or errno.EIO, f"cannot {what} {self._name!r}: {err.strerror}"
                        ) from None  # fmt: skip

    def read_batch(self, size: int, max_packets: int = 64) -> list[bytes]:
        """Up to ``max_packets`` packets of at most ``size`` bytes each, read in one C loop.

        Waits for the first packet as ``read`` does (unless the fd was made non-blocking), then
        takes every packet already queued without waiting for more. Each packet is what ``read``
        would return (the packet-information or virtio-net header included, if the device has
        one); a packet longer than ``size`` is dropped and counted in ``truncated``, where
        ``read`` would have cut it. ``size`` is 64 to 65664 bytes, ``max_packets`` 1 to 4096
        (``ValueError`` otherwise). Do not read the same device from two threads meanwhile: the
        fd is non-blocking for the duration of the call.
        """
        size = check_int(size, "read_batch size", MIN_SLOT_SIZE, MAX_SLOT_SIZE)
        max_packets = check_int(max_packets, "read_batch max_packets", 1, MAX_BATCH)
        ring = self._ring_for(size, max_packets)
        try:
            fd = self._open_fd()
            mode = fcntl.fcntl(fd, fcntl.F_GETFL)
            blocking = not mode & os.O_NONBLOCK
            if blocking:
                fcntl.fcntl(fd, fcntl.F_SETFL, mode | os.O_NONBLOCK)
            try:
                ring.clear()
                count = recv_batch(fd, ring, max_packets)
                while count == 0 and blocking:
                    _wait_readable(fd)
                    count = recv_batch(fd, ring, max_packets)
            finally:
                if blocking:
                    fcntl.fcntl(fd, fcntl.F_SETFL, mode)
        except OSError as err:
            raise _error(err) from None
        if count == 0:  # a non-blocking fd with nothing queued: what read() says then
            raise Error(errno.EAGAIN, os.strerror(errno.EAGAIN))
        packet = ring.packet
        return [packet(i) for i in range(count)]

    @property
    def truncated(self) -> int:
        """Packets ``read_batch`` dropped because they were longer than its ``size``."""
        ring = self._batch_ring
        return self._truncated + (0 if ring is None else ring.truncated)

    def _ring_for(self, size: int, max_packets: int) -> PacketRing:
        """The ring ``read_batch`` reads into, allocated once and kept while its shape fits."""
        nslots = 1 << (max_packets - 1).bit_length()
        ring = self._batch_ring
        if ring is None or ring.slot_size != size or ring.nslots < nslots:
            ring, self._batch_ring = PacketRing(nslots, size), ring
            if self._batch_ring is not None:
                self._truncated += self._batch_ring.truncated
                self._batch_ring.close()
            self._batch_ring = ring
        return ring


def _wait_readable(fd: int) -> None:
    """Sleep until ``fd`` has something to read (or an error to report)."""
    import select

    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.poll()
