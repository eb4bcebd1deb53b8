"""Every error tapengine raises on purpose.

Where a matching built-in ``OSError`` subclass exists the class derives from it, so callers can
catch ``PermissionError`` or ``FileNotFoundError`` without knowing about tapengine. All carry a
message that says what failed, why, and what to do.
"""

from __future__ import annotations

import errno as _errno
import os


class TapengineError(Exception):
    """Base class of the errors tapengine raises on purpose."""


class InvalidNameError(TapengineError, ValueError):
    """An interface or namespace name the kernel would refuse; checked before any syscall."""


class PrivilegeError(TapengineError, PermissionError):
    """The operation needs CAP_NET_ADMIN (run as root, or grant the capability)."""


class TunUnavailableError(TapengineError, FileNotFoundError):
    """``/dev/net/tun`` is missing: the tun module is not loaded or the device node not created."""


class DeviceBusyError(TapengineError, OSError):
    """The device queue is already open (a single-queue tun/tap admits one fd)."""


class FlagMismatchError(TapengineError, OSError):
    """The device exists with other flags (tun vs tap, multi-queue, vnet header)."""


class DeviceGoneError(TapengineError, OSError):
    """The device behind an open fd was deleted (EIO, EBADFD, ENODEV)."""


#: errnos that mean "the device behind this fd is gone".
DEVICE_GONE_ERRNOS = frozenset({_errno.EIO, _errno.EBADFD, _errno.ENODEV, _errno.ENXIO})


def oserror(err: int, what: str, *, completed: int | None = None) -> OSError:
    """The precise ``OSError`` subclass for ``err`` while doing ``what``.

    ``completed`` (when given) is how many packets of a batch went through before the error; it is
    stored on the exception and named in its message. This is the one errno helper of the data
    plane: every errno other than EINTR and EAGAIN reaches Python through here.
    """
    message = f"{what}: {os.strerror(err)}"
    if completed is not None:
        message += f" (after {completed} packet{'s' if completed != 1 else ''} of the batch)"
    if err in DEVICE_GONE_ERRNOS:
        exc: OSError = DeviceGoneError(err, message + "; the device was probably deleted")
    elif err in (_errno.EPERM, _errno.EACCES):
        exc = PrivilegeError(err, message + "; this needs CAP_NET_ADMIN (run as root)")
    else:
        exc = OSError(err, message)  # OSError picks the subclass (BlockingIOError, ...)
    exc.completed = completed  # type: ignore[attr-defined]
    return exc


class AddressError(TapengineError, OSError):
    """A socket address that cannot be bound or connected to (in use, not on any interface of
    the namespace, no route); the message says which and why."""


class QueueClosedError(TapengineError, OSError):
    """The queue was closed (``tapengine.aio``: also while a task waited on it; errno EBADF)."""


class DeviceExistsError(TapengineError, FileExistsError):
    """A link or network namespace with that name already exists."""


class DeviceNotFoundError(TapengineError, FileNotFoundError):
    """No link or network namespace has that name."""


class NotOwnedError(TapengineError, PermissionError):
    """A device or namespace tapengine did not create (or never removes) was asked to be removed;
    nothing was removed."""


class InvalidValueError(TapengineError, ValueError):
    """A MAC address, IP address, MTU or other setting the kernel would refuse; checked first."""


class TopologyError(TapengineError, ValueError):
    """A topology description that cannot be built, with where the problem is.

    ``source`` is the file (or ``"<dict>"``), ``line`` the 1-based line when known, ``key`` the
    dotted key path (``"veth.a.peer_netns"``). The message names all three that are known.
    """

    def __init__(
        self, message: str, *, source: str = "<dict>", key: str = "", line: int | None = None
    ) -> None:
        self.source = source
        self.key = key
        self.line = line
        self.reason = message
        where = source if line is None else f"{source}:{line}"
        if key:
            where += f": {key}"
        super().__init__(f"{where}: {message}")


class MalformedPacketError(TapengineError, ValueError):
    """A packet or its virtio-net header is refused; ``reason`` names why (a GsoReason name)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class PcapFormatError(TapengineError, ValueError):
    """A capture file that is not pcap/pcapng, is truncated or corrupt, or whose link type does
    not fit the device it is replayed into; the message names the file and the byte."""


class StageError(TapengineError, RuntimeError):
    """A stage stopped the engine: a Python stage raised (the exception, with its traceback, is
    the ``__cause__``) or a C stage's ``process()`` returned -1. ``stage`` is its name;
    ``first_batch`` says it failed on the first batch it was given."""

    stage: str = ""
    first_batch: bool = False
