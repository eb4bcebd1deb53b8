"""``tapengine gen`` and ``tapengine sink`` as a user runs them, in subprocesses."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from conftest import inside_netns
from tapengine import TunQueue, open_queue
from tapengine.tun import TUNSETPERSIST


def tapengine(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tapengine", *args], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode in (1, 2)  # 2: a usage error, refused while parsing
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("command", ["gen", "sink"])
def test_help_shows_an_example(command: str) -> None:
    result = tapengine(command, "--help")
    assert result.returncode == 0
    assert "example:" in result.stdout and f"tapengine {command} " in result.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["gen", "tap0", "--rate", "12foo"], ["invalid rate '12foo'"]),
        (["gen", "tap0", "--size", "10"], ["invalid frame size 10"]),
        (["gen", "tap0", "--ipv6", "--size", "64"], ["minimum is 84"]),
        (["gen", "tap0", "--src-ip", "fd77::1"], ["IPv6 address", "--ipv6"]),
        (["gen", "tap0", "--flows", "70000"], ["flows"]),
        (["gen", "tap0", "--count", "0"], ["--count"]),
        (["sink", "tap0", "--idle", "-1"], ["--idle"]),
        (["sink", "bad/name"], ["invalid interface name"]),
    ],
)
def test_bad_arguments_are_one_line_errors(args: list[str], words: list[str]) -> None:
    assert_one_line_error(tapengine(*args), *words)


# -- privileged ------------------------------------------------------------------------------

IFF_LOWER_UP = 0x10000


@dataclass
class Lab:
    netns: str
    a: str                  # multi-queue tap: the test holds one queue open, gen opens another
    b: str                  # persistent tap: the sink opens it
    held: TunQueue


def _link(netns: str, name: str) -> dict:
    from pyroute2 import IPRoute

    with inside_netns(netns), IPRoute() as ipr:
        (msg,) = ipr.get_links(ifname=name)
        return {"flags": msg["flags"], "stats": dict(msg.get_attr("IFLA_STATS64"))}


def _wait_for_carrier(netns: str, name: str, timeout: float = 60) -> None:
    """The sink has the tap open once its carrier is up (and so is the bridge port)."""
    deadline = time.monotonic() + timeout
    while not _link(netns, name)["flags"] & IFF_LOWER_UP:
        if time.monotonic() > deadline:
            pytest.fail(f"{name} never came up: the sink did not open it")
        time.sleep(0.02)


@pytest.fixture
def lab(make_netns: Callable[[str], str], prefix: str) -> Iterator[Lab]:
    from pyroute2 import IPRoute

    netns = make_netns("ns")
    a, b = prefix + "a", prefix + "b"
    with inside_netns(netns):
        for knob in ("all", "default"):
            with open(f"/proc/sys/net/ipv6/conf/{knob}/disable_ipv6", "w") as file:
                file.write("1")
        with open("/proc/sys/net/ipv4/igmp_link_local_mcast_reports", "w") as file:
            file.write("0")
        held = open_queue(a, "tap", multi_queue=True)
        fcntl.ioctl(held.fileno(), TUNSETPERSIST, 1)
        with open_queue(b, "tap") as queue:
            fcntl.ioctl(queue.fileno(), TUNSETPERSIST, 1)
    with held:  # persistent taps go away with the namespace
        with inside_netns(netns), IPRoute() as ipr:
            ipr.link("add", ifname=prefix + "br", kind="bridge", br_stp_state=0)
            (bridge,) = ipr.link_lookup(ifname=prefix + "br")
            for name in (a, b):
                # txqlen sizes the tap's queue toward its reader when the reader attaches: room
                # for every frame a test sends, so a sink starved of CPU loses none
                ipr.link("set", index=ipr.link_lookup(ifname=name)[0], master=bridge,
                         state="up", txqlen=10000)
            ipr.link("set", index=bridge, state="up")
        yield Lab(netns, a, b, held)


@pytest.mark.privileged
@pytest.mark.parametrize("io", ["readv", "uring"])
def test_gen_into_a_bridge_is_counted_by_sink_and_kernel(
    lab: Lab, io: str, request: pytest.FixtureRequest
) -> None:
    if io == "uring":
        request.getfixturevalue("needs_io_uring")  # missing io_uring fails under CI, never skips
    before = _link(lab.netns, lab.a)["stats"]
    sink = subprocess.Popen(
        [sys.executable, "-m", "tapengine", "sink", lab.b, "--netns", lab.netns, "--idle", "1",
         "--duration", "30", "--json", "--per-flow", "--io", io],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for_carrier(lab.netns, lab.b)
        gen = tapengine("gen", lab.a, "--netns", lab.netns, "--rate", "50kpps", "--count", "6000",
                        "--flows", "3", "--size", "imix", "--json", "--io", io)  # fmt: skip
        out, err = sink.communicate(timeout=40)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.communicate()
    assert gen.returncode == 0, gen.stderr
    assert sink.returncode == 0, err
    sent, got = json.loads(gen.stdout), json.loads(out)
    after = _link(lab.netns, lab.a)["stats"]
    assert sent["packets"] == 6000 and sent["flows"] == 3 and sent["rate"] == "50 kpps"
    assert after["rx_packets"] - before["rx_packets"] == sent["packets"]
    assert after["rx_bytes"] - before["rx_bytes"] == sent["bytes"]
    assert got["probe_packets"] == 6000 and got["probe_bytes"] == sent["bytes"]
    assert (got["lost"], got["duplicates"], got["reordered"]) == (0, 0, 0)
    assert [flow["received"] for flow in got["per_flow"]] == [2000] * 3
    assert got["latency"]["count"] == 6000
    assert got["latency"]["p50_ns"] <= got["latency"]["p99_ns"] <= got["latency"]["max_ns"]


@pytest.mark.privileged
def test_human_output_names_the_results(lab: Lab) -> None:
    sink = subprocess.Popen(
        [sys.executable, "-m", "tapengine", "sink", lab.b, "--netns", lab.netns, "--count", "500",
         "--duration", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for_carrier(lab.netns, lab.b)
        gen = tapengine("gen", lab.a, "--netns", lab.netns, "--count", "500", "--rate", "20kpps")
        out, err = sink.communicate(timeout=40)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.communicate()
    assert gen.returncode == 0 and sink.returncode == 0, (gen.stderr, err)
    assert gen.stdout.startswith(f"gen {lab.a}: 500 packets (30,000 bytes)")
    assert "(asked 20 kpps)" in gen.stdout
    assert out.startswith(f"sink {lab.b}: ")
    assert "500 probe frames in 1 flow(s)" in out and "lost 0, duplicates 0, reordered 0" in out
    assert "one-way latency p50 " in out


@pytest.mark.privileged
def test_unknown_device_is_an_error_and_creates_nothing(lab: Lab) -> None:
    from pyroute2 import IPRoute

    missing = lab.a[:-1] + "x"
    for command in ("gen", "sink"):
        result = tapengine(command, missing, "--netns", lab.netns)
        assert_one_line_error(result, f"no device '{missing}'", lab.netns)
    with inside_netns(lab.netns), IPRoute() as ipr:
        assert not ipr.link_lookup(ifname=missing)


@pytest.mark.privileged
def test_gen_refuses_a_device_that_is_down(lab: Lab) -> None:
    from pyroute2 import IPRoute

    with inside_netns(lab.netns), IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=lab.b)[0], state="down")
    result = tapengine("gen", lab.b, "--netns", lab.netns, "--count", "1")
    assert_one_line_error(result, f"{lab.b} is down", "ip link set")


@pytest.mark.privileged
def test_gen_stops_at_its_duration(lab: Lab) -> None:
    started = time.monotonic()
    result = tapengine("gen", lab.a, "--netns", lab.netns, "--duration", "0.5", "--rate", "1kpps",
                       "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    generated = json.loads(result.stdout)
    # Every frame inside the half second, and never more than 1 kpps allows in it (the bucket
    # starts empty); how many fewer depends on how the process was scheduled, so no lower bound.
    assert 0 < generated["packets"] <= 500 + 1
    assert generated["elapsed_s"] <= 0.5
    assert time.monotonic() - started < 60
