"""Test-side network plumbing written straight on pyroute2, independent of tapengine's own code,
and ``wait_until``: the one way a test waits for something to happen."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from pyroute2 import IPRoute

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float, what: str) -> T:
    """Poll ``condition`` until it returns something true, and return that.

    Tests wait for the condition they need, never for a fixed time: ``timeout`` is a generous
    bound for a loaded machine (seconds), and passing it fails the test, saying ``what`` never
    happened.
    """
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.001)
    return result


def move_link(name: str, netns: str) -> None:
    with IPRoute() as ipr:
        (index,) = ipr.link_lookup(ifname=name)
        ipr.link("set", index=index, net_ns_fd=netns)


def configure(name: str, netns: str, *, address: str | None = None,
              neighbors: dict[str, str] | None = None) -> dict[str, object]:
    """Bring ``name`` up inside ``netns``, with an address and static neighbors; return its info."""
    with IPRoute(netns=netns) as ipr:
        (index,) = ipr.link_lookup(ifname=name)
        if address:
            ip, prefixlen = address.split("/")
            ipr.addr("add", index=index, address=ip, prefixlen=int(prefixlen))
        ipr.link("set", index=index, state="up")
        for ip, mac in (neighbors or {}).items():
            ipr.neigh("add", dst=ip, lladdr=mac, ifindex=index, state="permanent")
        link = ipr.link("get", index=index)[0]
        return {"mac": link.get("IFLA_ADDRESS"), "index": index}


def stats64(name: str, netns: str | None = None) -> dict[str, int]:
    with IPRoute(netns=netns) if netns else IPRoute() as ipr:
        (index,) = ipr.link_lookup(ifname=name)
        return dict(ipr.link("get", index=index)[0].get("IFLA_STATS64"))


def link_exists(name: str, netns: str | None = None) -> bool:
    with IPRoute(netns=netns) if netns else IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=name))


def link_flags(name: str) -> int:
    with IPRoute() as ipr:
        (index,) = ipr.link_lookup(ifname=name)
        return ipr.link("get", index=index)[0]["flags"]


def sleeps_in_epoll_wait(thread: threading.Thread) -> bool:
    """Whether ``thread`` is asleep in epoll_wait, as the kernel reports it (its wait channel)."""
    with open(f"/proc/self/task/{thread.native_id}/wchan") as file:
        channel = file.read()
    return "epoll" in channel or channel == "ep_poll"
