"""The control-plane CLI in a subprocess, as a user runs it: results read back with ``ip``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from control_helpers import (
    assert_one_line_error,
    ip_json,
    leftovers,
    link,
    namespaces,
    remove_everything,
    snapshot,
    tapengine,
)
from tapengine.devices import create_veth

COMMANDS = [
    ["tap"], ["tap", "add"], ["tap", "del"], ["tap", "list"],
    ["bridge"], ["bridge", "add"], ["bridge", "del"], ["bridge", "attach"], ["bridge", "detach"],
    ["bridge", "list"], ["netns"], ["netns", "add"], ["netns", "del"], ["netns", "list"],
    ["topology"], ["topology", "up"], ["topology", "down"], ["topology", "check"],
    ["stats"], ["cleanup"],
]  # fmt: skip


@pytest.fixture(autouse=True)
def _sweep(prefix: str) -> Iterator[None]:
    yield
    if os.geteuid() == 0:
        remove_everything(prefix)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(command: list[str]) -> None:
    result = tapengine(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "example:" in result.stdout and "tapengine " + command[0] in result.stdout


def test_tap_add_list_del(make_netns: Callable[[str], str], prefix: str) -> None:
    ns = make_netns("a")
    name = prefix + "t"
    result = tapengine("tap", "add", name, "--netns", ns, "--queues", "2", "--vnet-hdr",
                       "--mtu", "9000", "--mac", "02:77:00:00:00:01", "--address", "10.77.1.1/24",
                       "--up", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    info = link(name, ns)
    assert created["index"] == info["ifindex"]
    assert info["mtu"] == 9000 and info["address"] == "02:77:00:00:00:01" and "UP" in info["flags"]
    assert info["linkinfo"]["info_data"]["multi_queue"] is True
    assert info["linkinfo"]["info_data"]["vnet_hdr"] is True

    listed = json.loads(tapengine("tap", "list", "--netns", ns, "--json").stdout)
    assert [entry["name"] for entry in listed] == [name]
    assert "10.77.1.1/24" in listed[0]["addresses"]
    human = tapengine("tap", "list", "--netns", ns).stdout
    assert f"{info['ifindex']}: {name}: tap mtu 9000" in human

    assert tapengine("tap", "del", name, "--netns", ns).returncode == 0
    assert link(name, ns) is None


def test_tap_del_refuses_other_kinds(make_netns: Callable[[str], str], prefix: str) -> None:
    ns = make_netns("a")
    assert tapengine("bridge", "add", prefix + "b", "--netns", ns).returncode == 0
    assert_one_line_error(tapengine("tap", "del", prefix + "b", "--netns", ns), "is a bridge")
    assert link(prefix + "b", ns) is not None


def test_bridge_add_attach_detach_list_del(make_netns: Callable[[str], str], prefix: str) -> None:
    ns = make_netns("a")
    assert tapengine("bridge", "add", prefix + "br", "--netns", ns, "--up").returncode == 0
    assert tapengine("tap", "add", prefix + "t", "--netns", ns).returncode == 0
    assert tapengine("bridge", "attach", prefix + "br", prefix + "t", "--netns", ns).returncode == 0
    assert link(prefix + "t", ns)["master"] == prefix + "br"
    listed = json.loads(tapengine("bridge", "list", "--netns", ns, "--json").stdout)
    assert listed[0]["name"] == prefix + "br" and listed[0]["ports"] == [prefix + "t"]
    assert tapengine("bridge", "detach", prefix + "br", prefix + "t", "--netns", ns).returncode == 0
    assert "master" not in link(prefix + "t", ns)
    assert tapengine("bridge", "del", prefix + "br", "--netns", ns).returncode == 0
    assert link(prefix + "br", ns) is None and link(prefix + "t", ns) is not None


def test_netns_add_list_del(privileged: None, prefix: str) -> None:
    name = prefix + "n"
    assert tapengine("netns", "add", name).returncode == 0
    assert name in namespaces()
    assert {"name": name} in json.loads(tapengine("netns", "list", "--json").stdout)
    assert name in tapengine("netns", "list").stdout.split()
    assert tapengine("netns", "del", name).returncode == 0
    assert name not in namespaces()


def send_loopback_udp(netns: str, count: int) -> None:
    code = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"for _ in range({count}): s.sendto(b'x' * 100, ('127.0.0.1', 9))"
    )
    subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code], check=True)


def test_stats_json_is_shaped_like_ip(make_netns: Callable[[str], str], prefix: str) -> None:
    ns = make_netns("a")
    # loopback traffic inside the namespace gives the counters something to show
    subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
    assert tapengine("tap", "add", prefix + "t", "--netns", ns).returncode == 0
    send_loopback_udp(ns, 5)
    ours = json.loads(tapengine("stats", "--netns", ns, "--json").stdout)
    theirs = ip_json("-s", "-s", "link", "show", netns=ns)
    assert [e["ifname"] for e in ours] == [e["ifname"] for e in theirs] == ["lo", prefix + "t"]
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine["stats64"] == reference["stats64"]
    assert ours[0]["stats64"]["rx"]["packets"] >= 5


def test_stats_human_output_shows_the_counters_of_ip(
    make_netns: Callable[[str], str], prefix: str
) -> None:
    ns = make_netns("a")
    subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
    send_loopback_udp(ns, 3)
    output = tapengine("stats", "lo", "--netns", ns).stdout.splitlines()
    (reference,) = ip_json("-s", "link", "show", "lo", netns=ns)
    rx = reference["stats64"]["rx"]
    assert output[0].startswith("1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536")
    assert output[1].split() == ["RX:", "bytes", "packets", "errors", "dropped", "missed", "mcast"]
    assert [int(v) for v in output[2].split()[:4]] == [
        rx["bytes"], rx["packets"], rx["errors"], rx["dropped"]
    ]


def test_stats_interval_reports_rates(make_netns: Callable[[str], str]) -> None:
    ns = make_netns("a")
    result = tapengine("stats", "lo", "--netns", ns, "--interval", "0.2", "--json")
    (rate,) = json.loads(result.stdout)
    # the interval it measured: at least the one asked for (a loaded machine may add to it)
    assert rate["name"] == "lo" and 0.19 <= rate["interval"] < 30


def test_topology_up_and_down_by_file(privileged: None, prefix: str) -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "topology.toml"
    up = tapengine("topology", "up", str(example), "--prefix", prefix, "--json")
    assert up.returncode == 0, up.stderr
    described = json.loads(up.stdout)
    for entry in described["links"]:
        assert link(entry["name"], entry["netns"]) is not None, entry
    assert tapengine("topology", "down", str(example), "--prefix", prefix).returncode == 0
    assert leftovers(prefix) == []


def test_cleanup_removes_only_its_prefix(privileged: None, prefix: str) -> None:
    other = prefix + "keep"
    mine = prefix + "gone"
    try:
        # What tapengine made (cleanup removes it) beside what someone else made with ip, under
        # another prefix (cleanup must not even look at it twice).
        subprocess.run(["ip", "netns", "add", other], check=True)
        assert tapengine("netns", "add", mine).returncode == 0
        create_veth(mine + "v", mine + "p", peer_netns=other)
        subprocess.run(["ip", "-n", other, "link", "add", other + "b", "type", "bridge"],
                       check=True)  # fmt: skip
        dry = json.loads(tapengine("cleanup", "--prefix", mine, "--dry-run", "--json").stdout)
        assert dry == {"links": [mine + "v", f"{other}/{mine}p"], "netns": [mine]}
        assert leftovers(mine) == [mine, f"None/{mine}v", f"{other}/{mine}p"]
        result = tapengine("cleanup", "--prefix", mine)
        assert result.returncode == 0, result.stderr
        assert leftovers(mine) == []
        assert other in namespaces() and link(other + "b", other) is not None
    finally:
        subprocess.run(["ip", "netns", "del", other], check=False)


# -- bad input: one line, non-zero exit, no traceback, nothing changed ----------------------------


@pytest.fixture
def lab(make_netns: Callable[[str], str], prefix: str) -> str:
    """A namespace holding tap ``<prefix>t`` and bridge ``<prefix>br``."""
    ns = make_netns("a")
    assert tapengine("tap", "add", prefix + "t", "--netns", ns).returncode == 0
    assert tapengine("bridge", "add", prefix + "br", "--netns", ns).returncode == 0
    return ns


BAD_COMMANDS: list[tuple[list[str], str]] = [
    (["tap", "add", "{p}this-name-is-too-long"], "bytes long"),
    (["tap", "add", "{p}a b"], "whitespace"),
    (["tap", "add", "{p}t"], "already exists"),
    (["tap", "add", "{p}u", "--mac", "ff:ff:ff:ff:ff:ff"], "multicast"),
    (["tap", "add", "{p}u", "--mtu", "20"], "invalid MTU"),
    (["tap", "add", "{p}u", "--address", "10.77.0.1/40"], "invalid address"),
    (["tap", "add", "{p}u", "--mtu", "65535"], "MTU 65535"),  # refused by the kernel, undone
    (["tap", "del", "{p}missing"], "--force"),
    (["bridge", "add", "{p}t"], "already exists"),
    (["bridge", "attach", "{p}nobr", "{p}t"], "no bridge named"),
    (["bridge", "attach", "{p}t", "{p}t"], "not a bridge"),
    (["bridge", "attach", "{p}br", "{p}missing"], "no link named"),
    (["bridge", "detach", "{p}br", "{p}t"], "not a port"),
    (["bridge", "del", "{p}missing"], "no link named"),
    (["netns", "add", "{ns}"], "already exists"),
    (["netns", "del", "{p}missing"], "does not exist"),
    (["stats", "{p}missing"], "no link named"),
    (["cleanup", "--prefix", "t"], "refusing prefix"),
    (["tap", "add", "{p}u", "--netns", "{p}missing"], "does not exist"),
    (["bridge", "add", "{p}u", "--netns", "{p}missing"], "does not exist"),
]


@pytest.mark.parametrize(
    ("template", "fragment"), BAD_COMMANDS, ids=[" ".join(argv) for argv, _ in BAD_COMMANDS]
)
def test_bad_input_is_one_line_and_changes_nothing(
    lab: str, prefix: str, template: list[str], fragment: str
) -> None:
    argv = [arg.format(p=prefix, ns=lab) for arg in template]
    if argv[0] in ("tap", "bridge", "stats") and "--netns" not in argv:
        argv += ["--netns", lab]
    before = snapshot(prefix)
    assert_one_line_error(tapengine(*argv), fragment)
    assert snapshot(prefix) == before


def test_forced_deletes_of_missing_things_succeed(lab: str, prefix: str) -> None:
    before = snapshot(prefix)
    for argv in (["tap", "del", prefix + "zz", "--netns", lab, "--force"],
                 ["bridge", "del", prefix + "zz", "--netns", lab, "--force"],
                 ["netns", "del", prefix + "zz", "--force"]):  # fmt: skip
        result = tapengine(*argv)
        assert result.returncode == 0 and result.stderr == "", result.stderr
    assert snapshot(prefix) == before


def test_bad_topology_file_is_reported_with_file_and_line(
    privileged: None, prefix: str, tmp_path: Path
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f'prefix = "{prefix}"\n[netns.red]\n[tap.t0]\nnetns = "blue"\n')
    before = snapshot(prefix)
    assert_one_line_error(tapengine("topology", "up", str(path)), f"{path}:4: tap.t0.netns")
    assert snapshot(prefix) == before and leftovers(prefix) == []


# -- without CAP_NET_ADMIN -------------------------------------------------------------------------

DROP_CAPS = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--ambient-caps=-all"]


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
@pytest.mark.parametrize(
    "argv",
    [["tap", "add", "{p}t"], ["bridge", "add", "{p}b"], ["netns", "add", "{p}n"],
     ["topology", "up", "{example}", "--prefix", "{p}"]],
    ids=lambda argv: " ".join(argv[:2]),
)  # fmt: skip
def test_without_cap_net_admin_the_error_says_so(
    privileged: None, prefix: str, argv: list[str]
) -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "topology.toml"
    argv = [arg.format(p=prefix, example=example) for arg in argv]
    before = snapshot(prefix)
    result = subprocess.run(
        [*DROP_CAPS, sys.executable, "-m", "tapengine", *argv],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert_one_line_error(result, "CAP_NET_ADMIN")
    assert snapshot(prefix) == before and leftovers(prefix) == []
