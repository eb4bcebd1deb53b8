"""Never touch what is not ours: ``cleanup``, ``topology down`` and a second engine, checked
against objects made by someone else (``ip``, in the test's own namespaces) and read back with
``ip``. Each case here deleted or stole something before tapengine marked what it creates."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_helpers import (
    assert_one_line_error,
    ip_json,
    link,
    namespaces,
    remove_everything,
    tapengine,
)
from tapengine import marks, tun
from tapengine.errors import DeviceBusyError
from tapengine.netns import inside_netns


@pytest.fixture(autouse=True)
def _sweep(prefix: str) -> Iterator[None]:
    yield
    if os.geteuid() == 0:
        remove_everything(prefix)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def foreign_netns(name: str) -> str:
    """A namespace made by ``ip netns add``: someone else's, as far as tapengine knows."""
    ip("netns", "add", name)
    return name


def alias(name: str, netns: str | None = None) -> str | None:
    info = link(name, netns)
    assert info is not None, f"{name} does not exist"
    return info.get("ifalias")


# -- the marks -------------------------------------------------------------------------------


def test_everything_tapengine_creates_carries_its_mark(
    privileged: None, prefix: str, tmp_path: Path
) -> None:
    spec = tmp_path / "t.toml"
    spec.write_text(f"""prefix = "{prefix}"
[netns.n]
[tap.t0]
netns = "n"
[veth.va]
netns = "n"
peer = "vb"
[bridge.br]
netns = "n"
""")
    result = tapengine("topology", "up", str(spec))
    assert result.returncode == 0, result.stderr
    ns = prefix + "n"
    for name in ("t0", "va", "vb", "br"):
        assert alias(prefix + name, ns) == marks.OWNER_MARK, name
    assert alias("lo", ns) == marks.OWNER_MARK  # the namespace's own mark
    assert alias("lo") != marks.OWNER_MARK  # the root namespace is never marked
    assert tapengine("topology", "down", str(spec)).returncode == 0
    assert ns not in namespaces()


# -- cleanup ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "create"),
    [
        ("veth", "type veth peer name {name}p"),  # a veth named like a network card
        ("ifb", "type ifb"),
        ("bridge", "type bridge"),
    ],
)
def test_cleanup_refuses_a_prefix_that_matches_a_foreign_link(
    privileged: None, prefix: str, kind: str, create: str
) -> None:
    ns = foreign_netns(prefix + "f")
    name = {"veth": "eth", "ifb": "ifb", "bridge": "br"}[kind] + secrets.token_hex(3)
    ip("-n", ns, "link", "add", name, *create.format(name=name).split())
    for extra in ([], ["--dry-run"]):
        result = tapengine("cleanup", "--prefix", name, *extra)
        assert_one_line_error(
            result, "not created by tapengine: ", f"{ns}/{name} ({kind})", "left as",
            "Nothing was removed", "--force",
        )
        assert "would remove" not in result.stdout
        assert link(name, ns) is not None
    forced = tapengine("cleanup", "--prefix", name, "--force")
    assert forced.returncode == 0, forced.stderr
    assert f"removed link {ns}/{name}" in forced.stdout
    assert link(name, ns) is None
    assert ns in namespaces()  # the prefix did not name it


def test_cleanup_refuses_a_foreign_namespace_and_removes_ours(
    privileged: None, prefix: str
) -> None:
    theirs = foreign_netns(prefix + "x")
    result = tapengine("netns", "add", prefix + "y")
    assert result.returncode == 0, result.stderr
    refused = tapengine("cleanup", "--prefix", prefix)
    assert_one_line_error(refused, f"not created by tapengine: namespace {theirs} (netns)")
    assert {theirs, prefix + "y"} <= namespaces()  # all or nothing: ours stays too
    narrowed = tapengine("cleanup", "--prefix", prefix + "y")
    assert narrowed.returncode == 0, narrowed.stderr
    assert f"removed namespace {prefix}y" in narrowed.stdout
    assert prefix + "y" not in namespaces() and theirs in namespaces()


def test_cleanup_never_removes_loopback_or_physical_devices(privileged: None) -> None:
    physical = [
        info["ifname"] for info in ip_json("-d", "link", "show")
        if "linkinfo" not in info and info["link_type"] == "ether"
    ]  # fmt: skip
    prefixes = ["lo", *(name[:3] for name in physical)]
    before = {info["ifname"] for info in ip_json("link", "show")}
    for prefix in prefixes:
        for extra in (["--dry-run"], ["--force", "--dry-run"]):
            result = tapengine("cleanup", "--prefix", prefix, *extra)
            assert_one_line_error(result, "tapengine never removes those", "Nothing was removed")
            assert "would remove" not in result.stdout
    assert {info["ifname"] for info in ip_json("link", "show")} == before


def test_cleanup_never_removes_the_namespace_it_runs_in(privileged: None, prefix: str) -> None:
    ns = prefix + "self"
    assert tapengine("netns", "add", ns).returncode == 0
    inside = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "tapengine", "cleanup", "--prefix", ns],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert_one_line_error(inside, "the namespace tapengine runs in")
    assert ns in namespaces()
    outside = tapengine("cleanup", "--prefix", ns)
    assert outside.returncode == 0, outside.stderr
    assert ns not in namespaces()


def test_cleanup_recognises_a_creation_cut_short_by_kill(
    privileged: None, prefix: str
) -> None:
    name = prefix + "br"
    script = (
        "import os, signal\n"
        "from pyroute2 import IPRoute\n"
        "from tapengine import marks\n"
        f"with marks.creating('bridge', {name!r}):\n"
        f"    IPRoute().link('add', ifname={name!r}, kind='bridge')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)  # before the mark is set\n"
    )
    killed = subprocess.run([sys.executable, "-c", script], check=False, timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert alias(name) is None  # created, never marked
    result = tapengine("cleanup", "--prefix", name)
    assert result.returncode == 0, result.stderr
    assert link(name) is None
    assert not marks.interrupted("bridge", name)  # the intent went with it


# -- topology down ---------------------------------------------------------------------------


def test_topology_down_leaves_what_it_did_not_create(
    privileged: None, prefix: str, tmp_path: Path
) -> None:
    ip("link", "add", prefix + "v0", "type", "veth", "peer", "name", prefix + "v1")
    ip("link", "add", prefix + "br", "type", "bridge")
    foreign_netns(prefix + "n")
    spec = tmp_path / "t.toml"
    spec.write_text(f'prefix = "{prefix}"\n[netns.n]\n[tap.v0]\n[bridge.br]\n')
    assert tapengine("topology", "check", str(spec)).returncode == 0
    assert_one_line_error(tapengine("topology", "up", str(spec)), "already exists")
    result = tapengine("topology", "down", str(spec))
    assert_one_line_error(
        result, "not created by tapengine: ", f"{prefix}v0 (veth)", f"{prefix}br (bridge)",
        f"namespace {prefix}n (netns)", "left as they are", "Nothing was removed",
    )
    assert link(prefix + "v0") and link(prefix + "v1") and link(prefix + "br")
    assert prefix + "n" in namespaces()
    forced = tapengine("topology", "down", str(spec), "--force")
    assert forced.returncode == 0, forced.stderr
    assert link(prefix + "v0") is None and link(prefix + "br") is None
    assert prefix + "n" not in namespaces()


def test_topology_down_refuses_a_link_of_another_kind(
    privileged: None, prefix: str, tmp_path: Path
) -> None:
    assert tapengine("tap", "add", prefix + "t0").returncode == 0  # ours, but a tap
    spec = tmp_path / "t.toml"
    spec.write_text(f'prefix = "{prefix}"\n[bridge.t0]\n')
    result = tapengine("topology", "down", str(spec))
    assert_one_line_error(result, f"{prefix}t0 is a tap, not the bridge the file declares")
    assert link(prefix + "t0") is not None


# -- a second engine -------------------------------------------------------------------------


def test_a_second_user_cannot_attach_to_a_served_multi_queue_tap(
    privileged: None, prefix: str
) -> None:
    ns = foreign_netns(prefix + "q")
    name = prefix + "mq"
    with inside_netns(ns):
        first = tun.open_queues(name, 2)  # creates the device, two queues attached
        try:
            with pytest.raises(DeviceBusyError, match="2 queues of it already have an fd"):
                tun.open_queues(name, 2)
            assert link(name, ns)["linkinfo"]["info_data"]["numqueues"] == 2
            shared = tun.open_queues(name, 1, share=True)  # on purpose
            assert link(name, ns)["linkinfo"]["info_data"]["numqueues"] == 3
            shared[0].close()
        finally:
            for queue in first:
                queue.close()


def test_a_second_forward_is_refused_on_a_served_multi_queue_tap(
    privileged: None, prefix: str
) -> None:
    ns = foreign_netns(prefix + "e")
    a, b, c = prefix + "a", prefix + "b", prefix + "c"
    run = ["ip", "netns", "exec", ns, sys.executable, "-m", "tapengine", "forward"]
    first = subprocess.Popen(
        [*run, a, b, "--queues", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while (info := link(a, ns)) is None or info["linkinfo"]["info_data"]["numqueues"] < 2:
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first forwarder never attached its queues"
            time.sleep(0.05)
        second = subprocess.run([*run, a, c, "--queues", "2"], capture_output=True, text=True,
                                check=False, timeout=60)  # fmt: skip
        assert_one_line_error(second, "already have an fd attached")
        assert link(a, ns)["linkinfo"]["info_data"]["numqueues"] == 2
        assert link(c, ns) is None  # refused before anything was created
        shared = subprocess.Popen([*run, a, c, "--queues", "2", "--share-queues"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            while link(a, ns)["linkinfo"]["info_data"]["numqueues"] < 4:  # asked for on purpose
                assert shared.poll() is None, shared.communicate()
                assert time.monotonic() < deadline + 30, "--share-queues never attached"
                time.sleep(0.05)
        finally:
            shared.send_signal(signal.SIGTERM)
            shared.communicate(timeout=30)
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
