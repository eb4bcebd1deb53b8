"""``tapengine forward`` and ``tapengine switch`` as a user runs them: a subprocess that creates its
taps, says it forwards, carries the kernel's traffic between namespaces, and on SIGTERM/SIGINT
prints final stats that agree with the kernel's counters, exits 0 and leaves nothing behind."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from fwdnet import (
    add_neighbor,
    attach,
    delete_link,
    in_netns,
    kernel_stats,
    link_exists,
    ping,
    quiet_ipv6,
    tcp_transfer,
)
from netutil import wait_until

MB = 1 << 20


def tapengine(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tapengine", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def first_line(proc: subprocess.Popen[str], timeout: float = 60.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        proc.kill()
        pytest.fail(f"no line from tapengine within {timeout} s: {proc.communicate()[1]}")
    return proc.stdout.readline()


@pytest.fixture
def cli(make_netns: Callable[[str], str], prefix: str) -> Iterator[Callable[..., tuple]]:
    """``cli(command, n, *options)``: start ``tapengine command`` on n new taps, wait for its first
    line, move each tap into its own namespace (10.77.0.k/24). Killed at teardown if still alive."""
    procs: list[subprocess.Popen[str]] = []

    def start(command: str, n: int, *options: str) -> tuple:
        names = [f"{prefix}c{k}" for k in range(n)]
        proc = tapengine(command, *names, *options)
        procs.append(proc)
        line = first_line(proc)
        hosts = []
        for k, name in enumerate(names):
            netns = make_netns(f"m{k}")
            quiet_ipv6(netns)
            hosts.append(attach(name, netns, f"10.77.0.{k + 1}"))
        return proc, line, hosts

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[int, str, str]:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def stderr_until(proc: subprocess.Popen[str], words: str, timeout: float = 60.0) -> str:
    """Read ``proc``'s stderr until it holds ``words``; return what was read (which
    ``communicate()`` will not return again)."""
    assert proc.stderr is not None
    read = b""
    deadline = time.monotonic() + timeout
    while words.encode() not in read:
        ready, _, _ = select.select([proc.stderr], [], [], max(deadline - time.monotonic(), 0))
        chunk = os.read(proc.stderr.fileno(), 65536) if ready else b""
        if not chunk:
            pytest.fail(f"no {words!r} on tapengine's stderr within {timeout} s: {read[-2000:]!r}")
        read += chunk
    return read.decode()


def tcp_is_quiet(netns: str) -> bool:
    """No TCP socket in ``netns`` has a segment left to send or to wait for: only listeners and
    TIME-WAIT (which send nothing unprompted) remain, so the transfer's last ACK has arrived."""
    def states() -> set[str]:
        found = set()
        for table in ("tcp", "tcp6"):
            with open(f"/proc/thread-self/net/{table}") as file:
                found |= {line.split()[3] for line in file.readlines()[1:]}
        return found

    return in_netns(netns, states) <= {"0A", "06"}        # LISTEN, TIME_WAIT


def test_forward_carries_ping_and_200_mb_then_sigterm_prints_final_stats(
        cli: Callable[..., tuple]) -> None:
    proc, line, (a, b) = cli("forward", 2, "--json")
    assert line.startswith("forwarding ") and a.ifname in line and b.ifname in line
    add_neighbor(a, b)          # no ARP refresh later: the counters below stay still
    add_neighbor(b, a)
    result = ping(a, b)
    assert result.returncode == 0, result.stdout + result.stderr
    sent, received, nbytes = tcp_transfer(a, b, 200 * MB)
    assert (received, nbytes) == (sent, 200 * MB)
    wait_until(lambda: tcp_is_quiet(a.netns) and tcp_is_quiet(b.netns), 60,
               "the transfer's connection to finish closing")
    kernel = {host.ifname: kernel_stats(host) for host in (a, b)}
    code, out, err = stop(proc)
    assert code == 0, err
    final = json.loads(out[len(line) - 1:] if out.startswith("forwarding") else out)
    ports = {port["ifname"]: port for port in final["ports"]}
    for host in (a, b):
        stats64 = ports[host.ifname]["stats64"]
        assert stats64["rx"]["packets"] == kernel[host.ifname]["tx_packets"]
        assert stats64["tx"]["packets"] == kernel[host.ifname]["rx_packets"]
        assert stats64["tx"]["bytes"] == kernel[host.ifname]["rx_bytes"]
    assert ports[a.ifname]["stats64"]["rx"]["bytes"] > 200 * MB
    assert not link_exists(a.ifname, a.netns) and not link_exists(b.ifname, b.netns)


def test_forward_without_offload_carries_tcp_and_reports_live_rates(
        cli: Callable[..., tuple]) -> None:
    proc, line, (a, b) = cli("forward", 2, "--no-offload", "--stats-interval", "0.3")
    assert "offload off" in line
    sent, received, nbytes = tcp_transfer(a, b, 50 * MB)
    assert (received, nbytes) == (sent, 50 * MB)
    live = stderr_until(proc, "pps")             # a live line, however quick the transfer was
    code, out, err = stop(proc, signal.SIGINT)
    assert code == 0, err
    assert "Mbit/s" in live + err
    assert a.ifname in out and "rx packets" in out


def test_forward_tun_devices(cli: Callable[..., tuple]) -> None:
    proc, line, (a, b) = cli("forward", 2, "--tun")
    assert "tun" in line
    result = ping(a, b)
    assert result.returncode == 0, result.stdout + result.stderr
    code, out, err = stop(proc)
    assert code == 0, err
    assert a.ifname in out and "rx packets" in out


def test_switch_learns_every_station_and_reports_a_port_that_vanishes(
        cli: Callable[..., tuple]) -> None:
    proc, line, hosts = cli("switch", 3, "--json")
    assert line.startswith("switching ")
    for src, dst in ((0, 1), (0, 2), (1, 2)):
        result = ping(hosts[src], hosts[dst], count=1)
        assert result.returncode == 0, result.stdout
    delete_link(hosts[2])
    noticed = stderr_until(proc, f"port {hosts[2].ifname} is down")
    assert ping(hosts[0], hosts[1], count=1).returncode == 0
    code, out, err = stop(proc)
    assert code == 0, noticed + err
    final = json.loads(out[out.index("{"):])
    table = {row["mac"]: row["port"] for row in final["mac_table"]}
    assert table == {host.mac: host.ifname for host in hosts[:2]}
    states = {port["ifname"]: port["operstate"] for port in final["ports"]}
    assert states == {hosts[0].ifname: "UP", hosts[1].ifname: "UP", hosts[2].ifname: "DOWN"}


@pytest.mark.parametrize("args, message", [
    (["forward", "PLACEHOLDERx", "PLACEHOLDERx"], "twice"),
    (["forward", "bad name", "PLACEHOLDERy"], "whitespace"),
    (["forward", "PLACEHOLDERx", "PLACEHOLDERy", "--queues", "0"], "--queues"),
    (["switch", "PLACEHOLDERx", "PLACEHOLDERy", "--tun"], "Ethernet"),
])
def test_bad_invocations_fail_with_one_line_and_exit_1_or_2(privileged: None, prefix: str,
                                                        args: list[str], message: str) -> None:
    args = [arg.replace("PLACEHOLDER", prefix) for arg in args]
    proc = tapengine(*args)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode in (1, 2)    # 2: a usage error, refused while parsing
    assert out == ""
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not link_exists(prefix + "x") and not link_exists(prefix + "y")


def test_help_shows_an_example() -> None:
    for command in ("forward", "switch"):
        out = subprocess.run([sys.executable, "-m", "tapengine", command, "--help"],
                             capture_output=True, text=True, check=True).stdout
        assert f"tapengine {command} " in out.split("example:")[1]




def test_demo_forwards_the_kernels_traffic_and_removes_everything(privileged: None) -> None:
    result = subprocess.run([sys.executable, "-m", "tapengine", "demo", "--seconds", "1",
                             "--json"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["iperf3"]["bytes"] > 0
    assert "0% packet loss" in report["ping"][0]
    for port in report["engine"]["ports"]:
        kernel = report["kernel"][port["ifname"]]
        assert port["stats64"]["rx"]["packets"] == kernel["tx_packets"]
        assert port["stats64"]["tx"]["packets"] == kernel["rx_packets"]
    removed = [line for line in result.stderr.splitlines() if line.startswith("removed")]
    netns_a, netns_b = removed[0].split()[2], removed[0].split()[4]
    assert netns_a not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                         text=True).stdout
    assert netns_b not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                         text=True).stdout
    for port in report["engine"]["ports"]:
        assert not link_exists(port["ifname"])


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as status:
        return dict(line.rstrip("\n").split(":\t", 1) for line in status if ":\t" in line)


def test_forward_as_nobody_keeps_forwarding_with_no_capability(
        cli: Callable[..., tuple]) -> None:
    """--user: every fd open first, then no uid 0, no capability, no_new_privs (the kernel's own
    view in /proc), and the kernel's ping still crosses the wire."""
    proc, line, (a, b) = cli("forward", 2, "--user", "nobody")
    assert line.startswith("forwarding "), line
    status = proc_status(proc.pid)
    assert status["Uid"].split() == ["65534"] * 4 and status["Gid"].split() == ["65534"] * 4
    assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
    assert status["NoNewPrivs"].strip() == "1" and status["Groups"].strip() == ""
    assert int(status["Threads"]) > 1  # the workers run as nobody too
    result = ping(a, b)
    assert result.returncode == 0, result.stdout + result.stderr
    code, out, err = stop(proc)
    assert code == 0, err
    assert "stopped by SIGTERM" in err
    rows = {row.split()[0]: row.split() for row in out.splitlines() if row.startswith(a.ifname)}
    assert int(rows[a.ifname][2]) >= 3  # the pings' requests, received as nobody
