"""Prometheus metrics (``tapengine.metrics``, ``--metrics``): scrapes read with prometheus_client's
own parser equal what ``forward --json``, ``switch --json`` and ``sink --json`` print at the same
moment, counted against the kernel's own counters; non-loopback addresses are refused unless
spelled out; ``import tapengine`` does not load prometheus_client."""

from __future__ import annotations

import json
import re
import select
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fwdnet import Host, add_neighbor, attach, in_netns, kernel_stats, quiet_ipv6, udp_send
from netutil import wait_until
from tapengine.engine import EngineStats, PortStats
from tapengine.errors import InvalidValueError
from tapengine.metrics import EngineCollector, check_bind, parse_listen

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by name and sorted labels (prometheus_client's
    parser: what a Prometheus server would read)."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples}  # fmt: skip


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=30) as answer:
        assert answer.status == 200
        return parse(answer.read().decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every sample of ``name`` whose labels include ``labels``."""
    return sum(v for (n, have), v in samples.items()
               if n == name and set(labels.items()) <= set(have))  # fmt: skip


def assert_matches_json(samples: Samples, final: dict) -> None:
    """Every counter of ``forward --json`` (``EngineStats.as_json()``) equals its metric."""
    workers = final["workers"]
    for port in final["ports"]:
        name = port["ifname"]
        for direction in ("rx", "tx"):
            stats = port["stats64"][direction]
            labels = {"port": name, "direction": direction}
            assert value(samples, "tapengine_port_packets_total", **labels) == stats["packets"]
            assert value(samples, "tapengine_port_bytes_total", **labels) == stats["bytes"]
            assert value(samples, "tapengine_port_errors_total", **labels) == stats["errors"]
            assert total(samples, "tapengine_port_dropped_total", **labels) == stats["dropped"]
        for reason, count in port["drops"].items():
            assert total(samples, "tapengine_port_dropped_total", port=name, reason=reason) == count
        assert total(samples, "tapengine_port_dropped_total", port=name) == \
            sum(port["drops"].values())
        assert value(samples, "tapengine_port_batches_total", port=name) == port["batches"]
        assert value(samples, "tapengine_port_flooded_total", port=name) == port["flooded"]
        assert value(samples, "tapengine_port_segmented_total", port=name) == port["segmented"]
        assert value(samples, "tapengine_port_up", port=name) * \
            value(samples, "tapengine_port_link_up", port=name) == (port["operstate"] == "UP")
        for k, queue in enumerate(port["queues"]):
            for direction in ("rx", "tx"):
                labels = {"port": name, "queue": str(k), "direction": direction}
                assert value(samples, "tapengine_queue_packets_total", **labels) == \
                    queue[f"{direction}_packets"]
                assert value(samples, "tapengine_queue_bytes_total", **labels) == \
                    queue[f"{direction}_bytes"]
        if port["ring"]:
            assert value(samples, "tapengine_ring_slots", port=name) == port["ring"]["slots"]
            assert value(samples, "tapengine_ring_slot_size_bytes", port=name) == \
                port["ring"]["slot_size"]
            assert value(samples, "tapengine_ring_memory_bytes", port=name) == \
                port["ring"]["bytes"] * workers
    # The batch-size histogram: cumulative, one bucket per forwarder bucket, le its upper end.
    cumulative = 0
    for label, count in final["batch_sizes"].items():
        cumulative += count
        le = repr(float(label.rpartition("-")[2]))
        assert value(samples, "tapengine_batch_size_packets_bucket", le=le) == cumulative
    assert value(samples, "tapengine_batch_size_packets_bucket", le="+Inf") == cumulative
    assert value(samples, "tapengine_batch_size_packets_count") == cumulative
    assert value(samples, "tapengine_batch_size_packets_sum") == \
        sum(port["stats64"]["rx"]["packets"] for port in final["ports"])
    for reason, count in final["header_drops"].items():
        assert value(samples, "tapengine_header_drops_total", reason=reason) == count
    assert value(samples, "tapengine_engine_info", mode=final["mode"], workers=str(workers)) == 1
    if "mac_table" in final:
        assert value(samples, "tapengine_mac_table_entries") == len(final["mac_table"])
    for stage in final.get("stages", []):
        for key, count in stage.items():
            if key == "ns":
                assert value(samples, "tapengine_stage_seconds_total", stage=stage["name"]) == \
                    count / 1e9
            elif key != "name":
                assert value(samples, f"tapengine_stage_{key}_total", stage=stage["name"]) == \
                    count, key


# -- the address ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("9464", ("127.0.0.1", 9464)), ("0", ("127.0.0.1", 0)), ("127.0.0.2:80", ("127.0.0.2", 80)),
     ("[::1]:9464", ("::1", 9464)), ("localhost:1", ("127.0.0.1", 1)),
     ("0.0.0.0:9464", ("0.0.0.0", 9464))],
)  # fmt: skip
def test_listen_address_is_parsed_with_loopback_by_default(text: str,
                                                           expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["", "x", "65536", "-1", "::1:80", "example.org:80", "1.2.3:4"])
def test_bad_listen_address_is_refused(text: str) -> None:
    with pytest.raises(InvalidValueError):
        parse_listen(text)


def test_only_loopback_is_served_without_the_explicit_flag() -> None:
    for host in ("127.0.0.1", "::1", "127.9.9.9"):
        check_bind(host, 9464, public=False)
    for host in ("0.0.0.0", "::", "10.77.0.1"):
        with pytest.raises(InvalidValueError, match="--metrics-public"):
            check_bind(host, 9464, public=False)
        check_bind(host, 9464, public=True)


def tapengine_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tapengine", *args], capture_output=True,
                          text=True, timeout=60)  # fmt: skip


@pytest.mark.parametrize("command", ["forward", "switch", "sink"])
def test_a_public_address_without_the_flag_is_one_line_and_nothing_happens(
        command: str, prefix: str) -> None:
    devices = [prefix + "x0"] if command == "sink" else [prefix + "x0", prefix + "x1"]
    result = tapengine_run(command, *devices, "--metrics", "0.0.0.0:0")
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"tapengine {command}: refusing to serve metrics on 0.0.0.0:0")
    assert "--metrics-public" in lines[0]
    # Refused before anything else: the sink did not even look for its (missing) device, and
    # the prefix fixture finds no device created.


def test_a_busy_port_is_one_line_before_any_device_is_created(prefix: str) -> None:
    from tapengine.metrics import MetricsServer

    with MetricsServer(EngineCollector()) as busy:
        result = tapengine_run("forward", prefix + "b0", prefix + "b1", "--metrics",
                               str(busy.port))  # fmt: skip
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert f"cannot serve metrics on 127.0.0.1:{busy.port}: Address already in use" in \
        result.stderr
    # (the prefix fixture fails the test if a device was created)


def test_a_bad_metrics_address_is_a_usage_error() -> None:
    result = tapengine_run("forward", "tea", "teb", "--metrics", "nowhere:80")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--metrics" in result.stderr and "not an IP address" in result.stderr


def test_help_names_the_public_flag() -> None:
    result = tapengine_run("forward", "--help")
    assert "--metrics [ADDR:]PORT" in result.stdout and "--metrics-public" in result.stdout


def test_import_and_the_command_line_do_not_load_prometheus_client() -> None:
    code = ("import sys, tapengine, tapengine.cli\n"
            "tapengine.cli.build_parser()\n"
            "assert 'prometheus_client' not in sys.modules, 'loaded'\n")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the collector ----------------------------------------------------------------------------


class FakeEngine:
    """What ``EngineCollector`` reads, with counters set by hand."""

    def __init__(self, stats: EngineStats) -> None:
        self._stats = stats
        self.failure = None

    def stats(self) -> EngineStats:
        return self._stats

    def worker_states(self) -> list[dict[str, object]]:
        return [{"running": True, "passes": 7, "sleeps": 3}, {"running": False, "passes": 1,
                                                               "sleeps": 1}]

    def ring_occupancy(self) -> dict[str, int]:
        return {"tap0": 5, "tap1": 0}


def fake_stats() -> EngineStats:
    from tapengine._forward import COUNTER_NAMES, HISTOGRAM_BUCKETS

    def port(name: str, seed: int, up: bool) -> PortStats:
        counters = {key: seed * 1000 + k for k, key in enumerate(COUNTER_NAMES)}
        queues = [{"rx_packets": seed + q, "rx_bytes": 60 * (seed + q), "tx_packets": seed,
                   "tx_bytes": 1} for q in range(2)]
        ring = {"slots": 64, "slot_size": 1600, "bytes": 110_000}
        return PortStats(name, up, 0 if up else 5, counters, ["csum"], queues, ring, True)

    return EngineStats(
        timestamp=1.0, elapsed=2.5, mode="switch", workers=2,
        ports=(port("tap0", 1, True), port("tap1", 2, False)),
        batch_sizes={label: 3 * k for k, label in enumerate(HISTOGRAM_BUCKETS)},
        header_drops={"too_short": 4, "bad_flags": 9},
        mac_table=[("02:00:00:00:00:01", "tap0", 1.0)],
    )  # fmt: skip


def test_collector_exports_every_counter_of_the_json() -> None:
    stats = fake_stats()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(FakeEngine(stats)))  # type: ignore[arg-type]
    samples = parse(generate_latest(registry).decode())
    assert_matches_json(samples, json.loads(json.dumps(stats.as_json())))
    assert value(samples, "tapengine_ring_occupied_slots", port="tap0") == 5
    assert value(samples, "tapengine_worker_running", worker="0") == 1
    assert value(samples, "tapengine_worker_running", worker="1") == 0
    assert value(samples, "tapengine_worker_passes_total", worker="0") == 7
    assert value(samples, "tapengine_engine_failed") == 0
    assert value(samples, "tapengine_engine_elapsed_seconds") == 2.5
    assert value(samples, "tapengine_port_up", port="tap1") == 0
    # Egress reasons on tx, the rest on rx; every reason exported, zero or not.
    assert ("tapengine_port_dropped_total",
            (("direction", "tx"), ("port", "tap0"), ("reason", "full"))) in samples
    assert ("tapengine_port_dropped_total",
            (("direction", "rx"), ("port", "tap0"), ("reason", "truncated"))) in samples


def test_an_engine_not_given_yet_scrapes_empty() -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector())  # type: ignore[arg-type]
    assert parse(generate_latest(registry).decode()) == {}


def test_stage_counters_become_metrics() -> None:
    from dataclasses import replace

    from tapengine.engine import StageStats

    stats = replace(fake_stats(), stages=(
        StageStats("acl", {"batches": 4, "seen": 10, "dropped": 3, "redirected": 1,
                           "ns": 2_000_000}),
        StageStats("mirror", {"batches": 4, "seen": 7, "dropped": 0, "redirected": 7, "ns": 5}),
    ))  # fmt: skip
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(FakeEngine(stats)))  # type: ignore[arg-type]
    samples = parse(generate_latest(registry).decode())
    assert_matches_json(samples, json.loads(json.dumps(stats.as_json())))
    assert value(samples, "tapengine_stage_seen_total", stage="acl") == 10
    assert value(samples, "tapengine_stage_dropped_total", stage="acl") == 3
    assert value(samples, "tapengine_stage_redirected_total", stage="mirror") == 7
    assert value(samples, "tapengine_stage_seconds_total", stage="acl") == 0.002


# -- the commands -----------------------------------------------------------------------------


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tapengine", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def read_line(proc: subprocess.Popen[str], stream: str = "stdout", timeout: float = 60) -> str:
    pipe = getattr(proc, stream)
    ready, _, _ = select.select([pipe], [], [], timeout)
    if not ready:
        proc.kill()
        pytest.fail(f"no line from tapengine within {timeout} s: {proc.communicate()}")
    return pipe.readline()


def metrics_url(line: str) -> str:
    match = re.search(r"metrics at (http://127\.0\.0\.1:(\d+)/metrics)", line)
    assert match and int(match.group(2)) > 0, line
    return match.group(1)


def stop(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def settled(url: str, hosts: list[Host]) -> Samples | None:
    """A scrape whose counters equal the kernel's for every tap (each frame a namespace sent
    was read by the engine, each frame the engine wrote was counted by the kernel), else None."""
    samples = scrape(url)
    for host in hosts:
        kernel = kernel_stats(host)
        rx = value(samples, "tapengine_port_packets_total", port=host.ifname, direction="rx")
        tx = value(samples, "tapengine_port_packets_total", port=host.ifname, direction="tx")
        if (rx, tx) != (kernel["tx_packets"], kernel["rx_packets"]):
            return None
    return samples


DROP_PORT = str(Path(__file__).resolve().parent.parent / "examples/stages/drop_port.py")


@pytest.mark.parametrize(("command", "stage"),
                         [("forward", False), ("switch", False), ("forward", True)],
                         ids=["forward", "switch", "forward-with-a-stage"])
def test_a_scrape_equals_the_final_json(command: str, stage: bool,
                                        make_netns: Callable[[str], str], prefix: str,
                                        procs: list) -> None:  # fmt: skip
    n = 2 if command == "forward" else 3
    names = [f"{prefix}p{k}" for k in range(n)]
    options = ["--stage", f"{DROP_PORT}:stage"] if stage else []
    proc = start(command, *names, "--json", "--metrics", "0", *options)
    procs.append(proc)
    line = read_line(proc)
    url = metrics_url(line)
    hosts = []
    for k, name in enumerate(names):
        netns = make_netns(f"n{k}")
        quiet_ipv6(netns)
        hosts.append(attach(name, netns, f"10.77.0.{k + 1}"))
    for host in hosts:
        for other in hosts:
            if other is not host:
                add_neighbor(host, other)   # no ARP: after the datagrams nothing moves
    sizes = [18 + (37 * k) % 1400 for k in range(120)]
    for k, host in enumerate(hosts):
        udp_send(host, hosts[(k + 1) % n], [bytes(size) for size in sizes[k::n]])
    if stage:                                   # dropped by the stage: UDP to port 9
        udp_send(hosts[0], hosts[1], [bytes(40)] * 7, port=9)
    samples = wait_until(lambda: settled(url, hosts), 60, "the engine to forward every datagram")
    code, out, err = stop(proc)
    assert code == 0, err
    final = json.loads(out)
    assert_matches_json(samples, final)
    assert value(samples, "tapengine_worker_running", worker="0") == 1
    assert value(samples, "tapengine_engine_failed") == 0
    assert total(samples, "tapengine_port_packets_total", direction="rx") >= len(sizes)
    assert value(samples, "tapengine_batch_size_packets_count") == \
        sum(port["batches"] for port in final["ports"])
    if stage:
        assert value(samples, "tapengine_stage_dropped_total", stage="drop_port") == 7
        assert value(samples, "tapengine_stage_seen_total", stage="drop_port") == \
            total(samples, "tapengine_port_packets_total", direction="rx")


def send_frames(netns: str, ifname: str, frames: list[bytes]) -> None:
    """Hand ``frames`` to the kernel to transmit out of ``ifname`` (an AF_PACKET socket)."""
    def send() -> None:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
            sock.bind((ifname, 0))
            for frame in frames:
                sock.send(frame)

    in_netns(netns, send)


def test_a_sink_scrape_equals_its_final_json(make_netns: Callable[[str], str], prefix: str,
                                             procs: list) -> None:  # fmt: skip
    from pyroute2 import IPRoute

    from tapengine import GenConfig, PacketRing

    netns = make_netns("s")
    quiet_ipv6(netns)
    name = prefix + "s"
    with IPRoute(netns=netns) as ipr:
        ipr.link("add", ifname=name, kind="tuntap", mode="tap")
        # room for every frame even if the sink is starved of CPU
        ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up", txqlen=10000)
    tap = Host(netns, name, "")
    proc = start("sink", name, "--netns", netns, "--json", "--metrics", "127.0.0.1:0")
    procs.append(proc)
    url = metrics_url(read_line(proc, "stderr"))
    gen = GenConfig(flows=3).generator()
    with PacketRing(512, 2048) as ring:
        first = gen.fill(ring, 300)
        probes = [ring.packet(first + k) for k in range(300)]
    other = [bytes.fromhex("ffffffffffff020000000001") + b"\x88\xb5" + bytes(k + 50)
             for k in range(20)]  # local experimental ethertype: no stack answers it
    send_frames(netns, name, probes + other)
    seen: dict[str, object] = {}

    def settled() -> Samples | None:
        """A scrape counting every frame the kernel handed to the sink (a tap's tx_packets
        count the frames its reader took), once the kernel handed over or dropped all 320,
        and equal to the scrape before it: the sink counts a frame's packets first and its
        probe, latency and flow counters after, so one scrape can land between the two
        (a sink thread preempted there on a loaded machine)."""
        samples, kernel = scrape(url), kernel_stats(tap)
        previous = seen.get("samples")
        seen.update(kernel=kernel, samples=samples,
                    sink=samples["tapengine_sink_packets_total", (("device", name),)])
        if kernel["tx_packets"] + kernel["tx_dropped"] < 320:
            return None
        complete = seen["sink"] == kernel["tx_packets"] and samples == previous
        return samples if complete else None

    try:
        samples = wait_until(settled, 60, "the sink to read every frame")
    except AssertionError as timeout:
        seen.pop("samples", None)
        raise AssertionError(f"{timeout}; last seen: {seen}") from None
    code, out, err = stop(proc)
    assert code == 0, err
    final = json.loads(out)
    assert final["packets"] == 320 and final["probe_packets"] == 300, seen
    for key in ("packets", "bytes", "probe_packets", "probe_bytes", "other_packets",
                "other_bytes", "untracked", "duplicates", "reordered", "stale",
                "negative_latency"):
        assert value(samples, f"tapengine_sink_{key}_total", device=name) == final[key], key
    assert value(samples, "tapengine_sink_lost_packets", device=name) == final["lost"] == 0
    assert value(samples, "tapengine_sink_flows", device=name) == final["flows_seen"] == 3
    latency = final["latency"]
    assert value(samples, "tapengine_sink_latency_seconds_count", device=name) == \
        latency["count"] == 300
    assert value(samples, "tapengine_sink_latency_seconds_sum", device=name) == \
        pytest.approx(latency["mean_ns"] * latency["count"] / 1e9)
    # Cumulative buckets; a bucket counts only samples at or below its bound.
    bounds = sorted((float(le), v) for (n, labels), v in samples.items()
                    if n == "tapengine_sink_latency_seconds_bucket"
                    for key, le in labels if key == "le" and le != "+Inf")
    counts = [count for _, count in bounds]
    assert counts == sorted(counts) and counts[-1] <= 300
    below_max = [count for bound, count in bounds if bound * 1e9 < latency["min_ns"]]
    assert all(count == 0 for count in below_max)
