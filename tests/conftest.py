"""Shared fixtures: privilege gating and namespaces that are always removed.

Privileged tests take the ``privileged`` fixture. Without root (or without /dev/net/tun) they skip
with the reason, unless ``TAPENGINE_REQUIRE_PRIVILEGED=1`` is set (as in CI), which turns the skip
into a failure. io_uring is required the same way (``needs_io_uring``; ``batch_io`` runs a test
once per I/O backend). Every namespace and link a test creates carries a unique ``te`` prefix and is
removed by a finalizer, whether the test passed or not.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tapengine._batchio import BatchIO

REQUIRE_PRIVILEGED = os.environ.get("TAPENGINE_REQUIRE_PRIVILEGED", "") not in ("", "0")


def _privilege_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN) to create namespaces and tun/tap devices"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None


def _require(problem: str | None) -> None:
    """Nothing when ``problem`` is None; else skip, or fail under TAPENGINE_REQUIRE_PRIVILEGED=1."""
    if problem is None:
        return
    if REQUIRE_PRIVILEGED:
        pytest.fail(f"TAPENGINE_REQUIRE_PRIVILEGED=1 but this test {problem}")
    pytest.skip(problem)


@pytest.fixture
def privileged() -> None:
    _require(_privilege_problem())


@pytest.fixture
def needs_io_uring() -> None:
    """io_uring must carry batches here (the probe of ``tapengine._uring``), as privilege must."""
    from tapengine._uring import unavailable_reason

    reason = unavailable_reason()
    _require(f"needs io_uring, unusable here: {reason}" if reason else None)


@pytest.fixture(params=["readv", "io_uring"])
def batch_io(request: pytest.FixtureRequest) -> Iterator[BatchIO]:
    """Each I/O backend in turn, closed at teardown: ``ReadvIO``, then a 64-entry ``UringIO``."""
    from tapengine import ReadvIO, UringIO

    if request.param == "io_uring":
        request.getfixturevalue("needs_io_uring")
        with UringIO(64) as uring:
            yield uring
    else:
        with ReadvIO() as readv:
            yield readv


def unique_prefix() -> str:
    """``te`` and six hex digits: short enough to leave room in a 15-byte interface name."""
    return "te" + secrets.token_hex(3)


def leftovers(prefix: str) -> list[str]:
    """Namespaces, and links of the root namespace, whose names start with ``prefix``."""
    from pyroute2 import IPRoute, netns

    found = [f"namespace {name}" for name in netns.listnetns() if name.startswith(prefix)]
    with IPRoute() as ipr:
        found += [
            f"link {link.get('IFLA_IFNAME')}"
            for link in ipr.get_links()
            if link.get("IFLA_IFNAME", "").startswith(prefix)
        ]
    return found


@pytest.fixture
def prefix() -> Iterator[str]:
    """A unique name prefix; at teardown, anything still carrying it fails the test (a leak)."""
    name = unique_prefix()
    yield name
    if _privilege_problem() is not None:
        return
    # The kernel destroys namespaces (and the veth peers in them) asynchronously, and on a loaded
    # machine that can take seconds: a generous bound, reached only by a real leak.
    deadline = time.monotonic() + 30.0
    while (leaked := leftovers(name)) and time.monotonic() < deadline:
        time.sleep(0.1)
    if leaked:
        from tapengine.cleanup import cleanup_prefix

        cleanup_prefix(name, force=True)  # the prefix is this test's own: marked or not
        pytest.fail(f"the test left behind: {', '.join(leaked)} (removed now)")


@pytest.fixture
def make_netns(privileged: None, prefix: str) -> Iterator[Callable[[str], str]]:
    """Factory: ``make_netns("a")`` creates namespace ``<prefix>a``; all removed at teardown."""
    from pyroute2 import netns

    created: list[str] = []

    def make(suffix: str) -> str:
        name = prefix + suffix
        netns.create(name)
        created.append(name)
        return name

    yield make
    for name in reversed(created):
        with contextlib.suppress(FileNotFoundError):  # the test may have removed it itself
            netns.remove(name)


@contextlib.contextmanager
def inside_netns(name: str) -> Iterator[None]:
    """Run the body with the calling thread inside namespace ``name`` (sockets stay there)."""
    from pyroute2 import netns

    netns.pushns(name)
    try:
        yield
    finally:
        netns.popns()
