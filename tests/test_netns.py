"""tapengine.netns against the kernel: namespaces seen by ``ip netns``, per-thread switching."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator

import pytest

from control_helpers import ip_json, link, namespaces, remove_everything
from tapengine import devices
from tapengine.errors import DeviceExistsError, DeviceNotFoundError, InvalidNameError
from tapengine.netns import (
    Namespace,
    create_netns,
    delete_netns,
    inside_netns,
    list_netns,
    run_in_netns,
)


def thread_netns_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def netns_inode(name: str) -> int:
    return os.stat(f"/run/netns/{name}").st_ino


@pytest.fixture(autouse=True)
def _sweep(prefix: str) -> Iterator[None]:
    yield
    if os.geteuid() == 0:
        remove_everything(prefix)


@pytest.fixture
def owned_netns(privileged: None, prefix: str) -> Callable[[str], str]:
    """Names for namespaces the test creates through tapengine; removed at teardown regardless."""
    from pyroute2 import netns as pyroute2_netns

    names: list[str] = []

    def name(suffix: str) -> str:
        names.append(prefix + suffix)
        return names[-1]

    yield name
    for leftover in names:
        if os.path.exists(f"/run/netns/{leftover}"):
            pyroute2_netns.remove(leftover)


@pytest.mark.parametrize("bad", ["", "a/b", ".", "..", "with space", "x" * 256, "nul\0"])
def test_invalid_namespace_names_are_refused_before_any_syscall(bad: str) -> None:
    with pytest.raises(InvalidNameError):
        create_netns(bad)


def test_created_namespace_is_listed_by_ip_with_loopback_up(
    owned_netns: Callable[[str], str],
) -> None:
    name = owned_netns("a")
    namespace = create_netns(name)
    assert namespace.name == name and namespace.owned
    assert name in namespaces()
    assert name in list_netns()
    assert "UP" in link("lo", name)["flags"]


def test_creating_an_existing_namespace_fails_and_keeps_it(
    make_netns: Callable[[str], str],
) -> None:
    name = make_netns("a")
    before = netns_inode(name)
    with pytest.raises(DeviceExistsError, match="already exists"):
        create_netns(name)
    assert netns_inode(name) == before


def test_namespace_context_manager_deletes_what_it_created(
    owned_netns: Callable[[str], str],
) -> None:
    name = owned_netns("a")
    with create_netns(name) as namespace:
        assert namespace.exists()
    assert name not in namespaces()


def test_namespace_it_did_not_create_survives_its_context(make_netns: Callable[[str], str]) -> None:
    name = make_netns("a")
    with Namespace(name):
        pass
    assert name in namespaces()


def test_deleting_a_missing_namespace_says_so_unless_forced(prefix: str, privileged: None) -> None:
    with pytest.raises(DeviceNotFoundError, match="does not exist"):
        delete_netns(prefix + "missing")
    delete_netns(prefix + "missing", force=True)


def test_deleting_a_namespace_removes_veth_peers_outside_at_once(
    owned_netns: Callable[[str], str], prefix: str
) -> None:
    name = owned_netns("a")
    create_netns(name)
    # The peer lives in the root namespace (no address: nothing routable is added there).
    devices.create_veth(prefix + "out", prefix + "in", netns=None, peer_netns=name)
    assert link(prefix + "out") is not None
    delete_netns(name)
    assert name not in namespaces()
    assert link(prefix + "out") is None  # gone synchronously, not when the kernel gets to it


def test_run_in_netns_runs_inside_and_returns_the_result(make_netns: Callable[[str], str]) -> None:
    name = make_netns("a")
    caller = thread_netns_inode()
    assert run_in_netns(name, thread_netns_inode) == netns_inode(name)
    assert thread_netns_inode() == caller
    assert run_in_netns(name, lambda a, *, b: a + b, 2, b=3) == 5


def test_run_in_netns_reraises_the_functions_exception(make_netns: Callable[[str], str]) -> None:
    name = make_netns("a")

    def fail() -> None:
        raise KeyError("inside")

    with pytest.raises(KeyError, match="inside"):
        run_in_netns(name, fail)


def test_run_in_missing_netns_raises_not_found(prefix: str, privileged: None) -> None:
    with pytest.raises(DeviceNotFoundError):
        run_in_netns(prefix + "missing", thread_netns_inode)


def test_inside_netns_moves_only_the_calling_thread(make_netns: Callable[[str], str]) -> None:
    name = make_netns("a")
    caller = thread_netns_inode()
    go, done = threading.Event(), threading.Event()
    seen_by_other_thread: list[int] = []

    def other() -> None:  # started before the switch, looks while the caller is inside
        go.wait(10)
        seen_by_other_thread.append(thread_netns_inode())
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    with inside_netns(name):
        assert thread_netns_inode() == netns_inode(name)
        go.set()
        assert done.wait(10)
    thread.join()
    assert seen_by_other_thread == [caller]
    assert thread_netns_inode() == caller


def test_inside_netns_restores_the_namespace_when_the_body_raises(
    make_netns: Callable[[str], str],
) -> None:
    name = make_netns("a")
    caller = thread_netns_inode()
    with pytest.raises(RuntimeError), inside_netns(name):
        raise RuntimeError("boom")
    assert thread_netns_inode() == caller


def test_sockets_opened_inside_stay_in_the_namespace(owned_netns: Callable[[str], str]) -> None:
    import socket

    name = create_netns(owned_netns("a")).name
    with inside_netns(name):
        listener = socket.create_server(("127.0.0.1", 0))
    with listener:
        port = listener.getsockname()[1]
        # The root namespace's loopback does not reach it; the namespace's does.
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
        with inside_netns(name), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass


def test_list_netns_matches_ip(make_netns: Callable[[str], str]) -> None:
    mine = {make_netns("a"), make_netns("b")}
    listed = set(list_netns())
    assert mine <= listed
    assert {entry["name"] for entry in ip_json("netns", "list")} >= mine
