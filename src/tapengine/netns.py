"""Named network namespaces: create, delete, list, and run code inside one.

A named namespace is a bind mount of a namespace file at ``/run/netns/NAME``, the convention
``ip netns`` uses, so namespaces made here and there are the same thing.

Switching namespaces is per thread: ``setns(2)`` on a network namespace moves only the calling
thread. ``inside_netns`` therefore saves and restores the *calling thread's* namespace through
``/proc/thread-self/ns/net`` (``/proc/self`` would name the main thread's), so it is safe to use
from any thread and from several threads at once. Sockets and netlink handles opened inside stay
bound to that namespace after the thread switches back.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Self, TypeVar

from tapengine import marks
from tapengine.errors import DeviceExistsError, DeviceNotFoundError, PrivilegeError
from tapengine.marks import OWNER_MARK
from tapengine.validate import check_netns_name

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000

T = TypeVar("T")

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def netns_path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, check_netns_name(name))


def _privilege_error(err: int, what: str) -> PrivilegeError:
    return PrivilegeError(
        err, f"{what}: {os.strerror(err)}; this needs CAP_NET_ADMIN and CAP_SYS_ADMIN (run as root)"
    )


def open_netns(name: str) -> int:
    """An ``O_RDONLY`` fd of namespace ``name`` (the caller closes it)."""
    path = netns_path(name)
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DeviceNotFoundError(
            errno.ENOENT,
            f"network namespace {name!r} does not exist "
            f"(list them with 'tapengine netns list', create it with 'tapengine netns add {name}')",
        ) from None
    except PermissionError as err:
        raise _privilege_error(err.errno, f"cannot open network namespace {name!r}") from None


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        if err in (errno.EPERM, errno.EACCES):
            raise _privilege_error(err, what)
        raise OSError(err, f"{what}: {os.strerror(err)}")


@contextlib.contextmanager
def inside_netns(name: str | None) -> Iterator[None]:
    """Run the body with the calling thread inside namespace ``name``.

    ``None`` stays where the thread is. The thread's previous namespace is restored on exit, even
    when the body raises. Only this thread moves; other threads are unaffected.
    """
    if name is None:
        yield
        return
    target = open_netns(name)
    try:
        saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target, f"cannot enter network namespace {name!r}")
        except BaseException:
            os.close(saved)
            raise
    finally:
        os.close(target)
    try:
        yield
    finally:
        try:
            # If this fails the thread is stranded in the wrong namespace; nothing sensible can
            # continue on it, so the error propagates.
            _setns(saved, f"cannot return from network namespace {name!r}")
        finally:
            os.close(saved)


def run_in_netns(name: str | None, func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Call ``func(*args, **kwargs)`` in a helper thread inside ``name``; return or re-raise.

    The calling thread never changes namespace, so this is safe from an asyncio event loop or
    from code that holds per-thread state.
    """
    if name is not None:
        check_netns_name(name)
    outcome: dict[str, Any] = {}

    def body() -> None:
        try:
            with inside_netns(name):
                outcome["result"] = func(*args, **kwargs)
        except BaseException as exc:  # handed back to the caller below
            outcome["error"] = exc

    thread = threading.Thread(target=body, name=f"netns-{name}", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def list_netns() -> list[str]:
    """Names of the namespaces in ``/run/netns``, sorted."""
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def netns_exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def create_netns(name: str) -> Namespace:
    """Create namespace ``name`` with its loopback up; ``DeviceExistsError`` if it exists.

    Returns a ``Namespace`` that owns it: leaving its ``with`` block deletes it.
    """
    from pyroute2 import netns as pyroute2_netns

    if netns_exists(name):
        raise DeviceExistsError(
            errno.EEXIST,
            f"network namespace {name!r} already exists "
            f"(delete it with 'tapengine netns del {name}')",
        )
    with marks.creating("netns", name):
        try:
            pyroute2_netns.create(name)
        except FileExistsError:
            raise DeviceExistsError(
                errno.EEXIST, f"network namespace {name!r} already exists"
            ) from None
        except OSError as err:
            _remove_mountpoint(name)
            code = err.errno or errno.EPERM
            if code in (errno.EPERM, errno.EACCES):
                raise _privilege_error(code, f"cannot create network namespace {name!r}") from None
            message = f"cannot create network namespace {name!r}: {os.strerror(code)}"
            raise OSError(code, message) from None
        namespace = Namespace(name, owned=True)
        try:
            # A fresh namespace has lo down; nearly every use (local sockets, tests) wants it up.
            namespace.run(_loopback_up)
        except BaseException:
            namespace.delete(force=True)
            raise
    return namespace


def _loopback_up() -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        # The mark on lo says "tapengine made this namespace" (see tapengine.marks).
        ipr.link("set", index=1, state="up", ifalias=OWNER_MARK)


def _loopback_marked() -> bool:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return bool(ipr.link("get", index=1)[0].get_attr("IFLA_IFALIAS") == OWNER_MARK)


def netns_is_ours(name: str) -> bool:
    """Whether tapengine created namespace ``name`` (its loopback carries tapengine's mark)."""
    return run_in_netns(name, _loopback_marked)


def current_netns() -> str | None:
    """The name of the named namespace this thread runs in, or None (root or unnamed)."""
    here = os.stat("/proc/thread-self/ns/net")
    for name in list_netns():
        with contextlib.suppress(OSError):
            there = os.stat(os.path.join(NETNS_RUN_DIR, name))
            if (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino):
                return name
    return None


def _remove_mountpoint(name: str) -> None:
    path = netns_path(name)
    with contextlib.suppress(OSError):
        if not os.path.ismount(path):
            os.unlink(path)


def _delete_links_inside(name: str) -> None:
    """Delete the virtual links of namespace ``name`` now, so veth peers elsewhere vanish at once.

    Without this the kernel frees a namespace's devices asynchronously after the last reference
    goes, and a veth peer in another namespace would linger for a moment (or for as long as any
    process keeps the namespace open).
    """
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    def delete_all() -> None:
        with IPRoute() as ipr:
            for msg in ipr.get_links():
                linkinfo = msg.get_attr("IFLA_LINKINFO")
                if msg["index"] == 1 or linkinfo is None:
                    continue  # loopback, or a physical device: it returns to the root namespace
                with contextlib.suppress(NetlinkError):
                    ipr.link("del", index=msg["index"])

    run_in_netns(name, delete_all)


def delete_netns(name: str, *, force: bool = False) -> None:
    """Delete namespace ``name`` and the virtual links inside it.

    ``DeviceNotFoundError`` if it does not exist, unless ``force``.
    """
    from pyroute2 import netns as pyroute2_netns

    path = netns_path(name)
    if not os.path.exists(path):
        if force:
            return
        raise DeviceNotFoundError(
            errno.ENOENT,
            f"network namespace {name!r} does not exist (use --force to ignore missing ones)",
        )
    with contextlib.suppress(OSError):
        _delete_links_inside(name)
    try:
        pyroute2_netns.remove(name)
    except FileNotFoundError:
        if not force:
            raise DeviceNotFoundError(
                errno.ENOENT, f"network namespace {name!r} does not exist"
            ) from None
    except PermissionError as err:
        raise _privilege_error(err.errno, f"cannot delete network namespace {name!r}") from None


class Namespace:
    """A named network namespace; a context manager that deletes it on exit if it created it."""

    def __init__(self, name: str, *, owned: bool = False) -> None:
        self.name = check_netns_name(name)
        self.owned = owned

    def run(self, func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``run_in_netns(self.name, func, ...)``."""
        return run_in_netns(self.name, func, *args, **kwargs)

    def inside(self) -> contextlib.AbstractContextManager[None]:
        """``inside_netns(self.name)``: the calling thread inside this namespace."""
        return inside_netns(self.name)

    def exists(self) -> bool:
        return netns_exists(self.name)

    def delete(self, *, force: bool = False) -> None:
        delete_netns(self.name, force=force)
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
        return f"<Namespace {self.name!r}{' owned' if self.owned else ''}>"
