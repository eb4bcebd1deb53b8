"""``tapengine bench``: tapengine's paths side by side with the kernel's own, in namespaces built
for the run and removed afterwards.

Two kinds of scenario. **Frames**: the generator sends flat out into tap ``g``, the sink reads tap
``s``; only the middle differs, each path in its own namespace ``<prefix>f<code>``::

    engine:  gen -> g -> bridge 1 -> tap a => tapengine wire (Engine) => tap b -> bridge 2 -> s
    kernel:  gen -> g -> bridge 1 -> veth  ==  kernel veth pair       == veth  -> bridge 2 -> s
    naive:   gen -> g -> bridge 1 -> tap a => tapengine.naive_forward => tap b -> bridge 2 -> s

**TCP**: one iperf3 stream from namespace A (10.77.0.1) to namespace B (10.77.0.2) through
``engine`` (a tapengine wire between two taps with offloads: 64 KiB superframes pass through),
``veth`` (a veth pair straight from A to B), ``bridge`` (A's and B's veths on a kernel bridge in a
third namespace) or ``naive`` (the naive Python forwarder between two plain taps).

Runs are interleaved (every path once per round, the order rotating) and repeated; the report
holds medians, spreads (min..max) and each scenario's ratio to the kernel's path of its kind
(``kernel`` for frames, ``bridge`` for TCP) measured in the same run.

The peers (iperf3, the naive forwarder) are processes started inside their namespace by
``tapengine.nsexec`` (``setns``, then ``exec``); nothing here runs ``ip``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from tapengine import naive_forward
from tapengine._pktgen import Sink, bucket_bounds
from tapengine.engine import Engine, open_port
from tapengine.netns import inside_netns
from tapengine.nsexec import nsexec_argv
from tapengine.traffic import GenConfig, GenResult, Rate, SinkResult, SizeMix, parse_size
from tapengine.tun import TunQueue, open_queue

Kind = Literal["frames", "tcp"]

FRAME_PATHS = ("engine", "readv", "kernel", "naive")
TCP_PATHS = ("engine", "readv", "veth", "bridge", "naive")
#: Only on request: the engine with its readv/writev backend (``Engine(io="readv")``); ``engine``
#: is the engine as configured by default (io_uring where the kernel allows it).
OPTIONAL_PATHS = ("readv",)
REFERENCE: dict[str, str] = {"frames": "kernel", "tcp": "bridge"}
DEFAULT_SIZES = ("64", "512", "1500", "imix")
SCENARIO_NAMES = (*FRAME_PATHS, *(f"tcp-{path}" for path in TCP_PATHS))
_FRAMES = tuple(path for path in FRAME_PATHS if path not in OPTIONAL_PATHS)
_TCP = tuple(f"tcp-{path}" for path in TCP_PATHS if path not in OPTIONAL_PATHS)
SCENARIO_GROUPS = {"all": (*_FRAMES, *_TCP), "frames": _FRAMES, "tcp": _TCP}
TCP_MSS = 1448  # payload of one segment on a 1500-byte MTU with TCP timestamps
TCP_IPS = ("10.77.0.1", "10.77.0.2")
IFF_LOWER_UP = 0x10000
IPERF3_PORT = 5201
TCP_LISTEN = "0A"  # the LISTEN state in /proc/net/tcp
_CODE = {"engine": "e", "readv": "r", "kernel": "k", "naive": "n", "veth": "v", "bridge": "b"}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Selection:
    """Which frame paths and which TCP paths to run."""

    frame_paths: tuple[str, ...]
    tcp_paths: tuple[str, ...]


def parse_scenarios(text: str) -> Selection:
    """``all``, ``frames``, ``tcp`` or a comma list of ``engine,kernel,naive,tcp-engine,...``;
    the groups leave out the optional readv paths (``readv``, ``tcp-readv``)."""
    chosen: list[str] = []
    for part in (part.strip().lower() for part in text.split(",")):
        if not part:
            continue
        if part in SCENARIO_GROUPS:
            chosen += SCENARIO_GROUPS[part]
        elif part in SCENARIO_NAMES:
            chosen.append(part)
        else:
            raise ValueError(f"unknown scenario {part!r}: choose from "
                             f"{', '.join((*SCENARIO_GROUPS, *SCENARIO_NAMES))}")  # fmt: skip
    if not chosen:
        raise ValueError("no scenario selected: name at least one, e.g. --scenarios frames")
    return Selection(tuple(p for p in FRAME_PATHS if p in chosen),
                     tuple(p for p in TCP_PATHS if f"tcp-{p}" in chosen))  # fmt: skip


def parse_sizes(text: str) -> list[str]:
    """``64,512,imix`` -> the sizes, each checked (``ValueError`` on the first bad one)."""
    sizes = [size.strip().lower() for size in text.split(",") if size.strip()]
    if not sizes:
        raise ValueError("no frame size given: use e.g. --sizes 64,1500,imix")
    for size in sizes:
        parse_size(size)
    return list(dict.fromkeys(sizes))


# -- results ------------------------------------------------------------------------------------


@dataclass
class RunResult:
    scenario: str           # "engine/64", "tcp/bridge"
    kind: str               # "frames" or "tcp"
    path: str
    size: str               # frame size, or "tcp"
    sent: int               # frames: generator's packets; TCP: bytes the sender sent
    received: int           # frames: probe frames at the sink; TCP: bytes received
    lost: int               # frames only; TCP retransmissions for TCP
    pps: float              # frames delivered to the sink; TCP: received bytes / TCP_MSS per s
    bits_per_s: float       # frames: bytes written by the generator that arrived; TCP: goodput
    p50_ns: int | None      # one-way latency (frames) or TCP's mean round-trip time (iperf3)
    p99_ns: int | None
    offered_pps: float | None = None    # frames: what the generator wrote into tap g per second
    histogram: list[int] | None = field(default=None, repr=False)  # sink's latency histogram


@dataclass
class ScenarioSummary:
    scenario: str
    kind: str
    path: str
    size: str
    runs: int
    median_pps: float
    spread_pps: tuple[float, float]
    median_bits_per_s: float
    spread_bits_per_s: tuple[float, float]
    median_loss_ratio: float | None
    median_offered_pps: float | None
    median_p50_ns: float | None
    median_p99_ns: float | None
    reference: str                   # the kernel path this scenario is compared with
    ratio_to_kernel: float | None = None   # median packets/s (frames) or Gbit/s (TCP) ratio
    latency: list[tuple[int, int]] = field(default_factory=list)  # (bucket ns, frames), all runs


@dataclass
class BenchReport:
    rounds: int
    duration_s: float
    tcp_duration_s: float
    prefix: str  # of the namespaces and links the run built (and removed)
    sizes: list[str] = field(default_factory=list)
    rate: str = "max"  # the generator's rate in the frame runs
    scenarios: list[ScenarioSummary] = field(default_factory=list)
    runs: list[RunResult] = field(default_factory=list)
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for run in out["runs"]:
            del run["histogram"]
        return out

    def scenario(self, name: str) -> ScenarioSummary:
        for summary in self.scenarios:
            if summary.scenario == name:
                return summary
        raise KeyError(name)


# -- building the labs -------------------------------------------------------------------------


@dataclass
class FrameLab:
    """One namespace with the generator's tap ``g`` and the sink's tap ``s`` on two bridges."""

    path: str
    netns: str
    g: TunQueue
    s: TunQueue


@dataclass
class TcpLab:
    """Namespaces ``a`` and ``b`` joined by one ``path``: a veth, a bridge, the engine, naive."""

    path: str
    a: str
    b: str


def _quiet(netns: str) -> None:
    """No IPv6 and no IGMP reports: the only frames in the namespace are the ones we send."""
    with inside_netns(netns):
        for knob, value in (("ipv6/conf/all/disable_ipv6", "1"),
                            ("ipv6/conf/default/disable_ipv6", "1"),
                            ("ipv4/igmp_link_local_mcast_reports", "0")):  # fmt: skip
            with open(f"/proc/sys/net/{knob}", "w") as file:
                file.write(value)


def _netns(stack: contextlib.ExitStack, name: str) -> str:
    from tapengine.netns import create_netns

    stack.enter_context(create_netns(name))
    _quiet(name)
    return name


def _bridges(netns: str, prefix: str, left: str, right: str) -> None:
    """Bridge 1 joins ``g`` and ``left``, bridge 2 joins ``right`` and ``s``; all up."""
    from pyroute2 import IPRoute

    with inside_netns(netns), IPRoute() as ipr:
        for bridge, ports in (("br1", ("g", left)), ("br2", (right, "s"))):
            ipr.link("add", ifname=prefix + bridge, kind="bridge", br_stp_state=0)
            (master,) = ipr.link_lookup(ifname=prefix + bridge)
            for port in ports:
                (index,) = ipr.link_lookup(ifname=prefix + port)
                ipr.link("set", index=index, master=master, state="up")
            ipr.link("set", index=master, state="up")


def _wait_for(ready: Callable[[], bool], timeout: float, failure: str) -> None:
    """Poll ``ready()`` until it is true; ``TimeoutError(failure)`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(failure)
        time.sleep(0.01)


def _wait_running(netns: str, names: Sequence[str], timeout: float = 5.0) -> None:
    from pyroute2 import IPRoute

    with inside_netns(netns), IPRoute() as ipr:
        _wait_for(lambda: all(ipr.get_links(ifname=name)[0]["flags"] & IFF_LOWER_UP
                              for name in names),
                  timeout, f"links {', '.join(names)} in {netns} never got a carrier")  # fmt: skip


def naive_forwarder_argv(netns: str, tap_a: str, tap_b: str) -> list[str]:
    """``python -m tapengine.naive_forward TAP_A TAP_B`` inside ``netns``."""
    return nsexec_argv(netns, [sys.executable, "-m", naive_forward.__name__, tap_a, tap_b])


@contextlib.contextmanager
def naive_forwarder(netns: str, tap_a: str, tap_b: str, timeout: float = 10.0) -> Iterator[int]:
    """Run the naive forwarder between ``tap_a`` and ``tap_b`` inside ``netns`` (it creates both
    taps there); yields its pid once it forwards, stops it with SIGTERM on the way out."""
    proc = subprocess.Popen(naive_forwarder_argv(netns, tap_a, tap_b),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else ""
        if "forwarding" not in line:
            proc.kill()
            raise RuntimeError(f"the naive forwarder did not start: {line.strip()} "
                               f"{proc.communicate()[1].strip()}".strip())  # fmt: skip
        yield proc.pid
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


def build_frame_lab(stack: contextlib.ExitStack, prefix: str, path: str) -> FrameLab:
    netns = _netns(stack, prefix + "f" + _CODE[path])
    with inside_netns(netns):
        g = stack.enter_context(open_queue(prefix + "g", "tap"))
        s = stack.enter_context(open_queue(prefix + "s", "tap"))
        if path in ("engine", "readv"):
            a = stack.enter_context(open_port(prefix + "a"))
            b = stack.enter_context(open_port(prefix + "b"))
    if path in ("engine", "readv"):
        _bridges(netns, prefix, "a", "b")
        stack.enter_context(Engine([a, b], "wire", io="readv" if path == "readv" else "auto"))
    elif path == "naive":
        stack.enter_context(naive_forwarder(netns, prefix + "na", prefix + "nb"))
        _bridges(netns, prefix, "na", "nb")
    elif path == "kernel":
        from tapengine.devices import create_veth

        create_veth(prefix + "v1", prefix + "v2", netns=netns)
        _bridges(netns, prefix, "v1", "v2")
        _wait_running(netns, [prefix + "v1", prefix + "v2"])
    else:
        raise ValueError(f"unknown frame path {path!r}")
    return FrameLab(path, netns, g, s)


def _address(sides: Sequence[tuple[str, str]]) -> None:
    """Give A's and B's interface their address, bring them up, and add static neighbours."""
    from tapengine.devices import add_neighbor, get_link

    macs = []
    for (netns, ifname), ip in zip(sides, TCP_IPS, strict=True):
        link = get_link(ifname, netns)
        link.add_address(f"{ip}/24")
        link.up()
        macs.append(link.info()["mac"])
    for (netns, ifname), ip, mac in zip(sides, TCP_IPS[::-1], macs[::-1], strict=True):
        add_neighbor(ifname, ip, mac, netns=netns)


def build_tcp_lab(stack: contextlib.ExitStack, prefix: str, path: str) -> TcpLab:
    from tapengine.devices import create_bridge, create_veth, get_link

    code = "t" + _CODE[path]
    a, b = _netns(stack, prefix + code + "a"), _netns(stack, prefix + code + "b")
    taps = (prefix + code + "a", prefix + code + "b")   # link names, unique in every namespace
    if path in ("engine", "readv"):
        ports = []
        for tap, netns in zip(taps, (a, b), strict=True):
            with inside_netns(netns):
                ports.append(stack.enter_context(open_port(tap)))
        stack.enter_context(Engine(ports, "wire", io="readv" if path == "readv" else "auto"))
    elif path == "naive":
        # both taps are created in A by the forwarder process; B's is moved (its fd keeps working)
        stack.enter_context(naive_forwarder(a, *taps))
        get_link(taps[1], a).move_to(b)
    elif path == "veth":
        create_veth(taps[0], taps[1], netns=a, peer_netns=b)
    elif path == "bridge":
        s = _netns(stack, prefix + code + "s")
        bridge = create_bridge(prefix + "br", netns=s)
        ports = (prefix + code + "sa", prefix + code + "sb")
        for tap, port, side in zip(taps, ports, (a, b), strict=True):
            create_veth(tap, port, netns=side, peer_netns=s)
            bridge.attach(port)
            get_link(port, s).up()
        bridge.up()
    else:
        raise ValueError(f"unknown TCP path {path!r}")
    _address(((a, taps[0]), (b, taps[1])))
    return TcpLab(path, a, b)


@contextlib.contextmanager
def labs(selection: Selection, prefix: str | None = None
         ) -> Iterator[tuple[dict[str, FrameLab], dict[str, TcpLab]]]:
    """Build every lab ``selection`` needs; all is removed on the way out, on errors and on
    KeyboardInterrupt (namespaces last, so links inside them go with them)."""
    prefix = prefix or "te" + secrets.token_hex(3)
    with contextlib.ExitStack() as stack:
        frames = {path: build_frame_lab(stack, prefix, path) for path in selection.frame_paths}
        tcp = {path: build_tcp_lab(stack, prefix, path) for path in selection.tcp_paths}
        time.sleep(0.1)
        yield frames, tcp


# -- one run ------------------------------------------------------------------------------------


def run_frames(lab: FrameLab, size: str, duration: float, rate: Rate | None = None) -> RunResult:
    """``duration`` seconds through ``lab`` at ``rate`` (None: flat out); the sink reports what
    arrived."""
    gen = GenConfig(sizes=parse_size(size), flows=4, rate=rate).generator()
    with Sink(max_flows=4) as sink:
        sink.run(lab.s, duration=0.05)          # leftovers of the previous run
        sink.reset()
        reader = threading.Thread(target=sink.run, args=(lab.s,),
                                  kwargs={"idle": 0.3, "duration": duration + 10})
        reader.start()
        try:
            gen.send(lab.g, duration=duration)
        finally:
            reader.join(duration + 15)
            if reader.is_alive():
                sink.stop()
                reader.join()
        result = SinkResult.of(sink)
        histogram = [int(n) for n in sink.histogram]
    sent = GenResult.of(gen)
    bits = result.probe_bytes * 8 / result.elapsed_s if result.elapsed_s > 0 else 0.0
    latency = result.latency
    return RunResult(f"{lab.path}/{size}", "frames", lab.path, size, sent.packets,
                     result.probe_packets, sent.packets - result.probe_packets, result.pps, bits,
                     latency.p50_ns if latency else None, latency.p99_ns if latency else None,
                     sent.pps, histogram)  # fmt: skip


def iperf3_argv(netns: str, *args: str) -> list[str]:
    """``iperf3 -p IPERF3_PORT ARGS...`` inside ``netns``."""
    return nsexec_argv(netns, ["iperf3", "-p", str(IPERF3_PORT), *args])


def _listening(netns: str, port: int) -> bool:
    """Whether a TCP socket listens on ``port`` in ``netns`` (read from that namespace's
    ``/proc/net/tcp``: the calling thread's, through ``/proc/thread-self``)."""
    with inside_netns(netns), open("/proc/thread-self/net/tcp") as table:
        rows = [line.split() for line in table][1:]
    return any(int(row[1].rsplit(":", 1)[1], 16) == port and row[3] == TCP_LISTEN
               for row in rows)  # fmt: skip


def run_tcp(lab: TcpLab, duration: float, timeout: float = 10.0) -> RunResult:
    """One iperf3 TCP stream from A to B for ``duration`` seconds."""
    server = subprocess.Popen(iperf3_argv(lab.b, "-s", "-1", "-B", TCP_IPS[1]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:

        def server_listens() -> bool:
            if server.poll() is not None:
                raise RuntimeError(f"the iperf3 server in {lab.b} exited: "
                                   f"{server.communicate()[1].strip()}")  # fmt: skip
            return _listening(lab.b, IPERF3_PORT)

        _wait_for(server_listens, timeout, f"the iperf3 server in {lab.b} never listened")
        client = subprocess.run(iperf3_argv(lab.a, "-c", TCP_IPS[1], "-t", f"{duration:g}", "-J"),
                                capture_output=True, text=True, timeout=duration + 30)
        try:
            report = json.loads(client.stdout)
        except ValueError:
            report = {"error": (client.stderr.strip() or "no output").splitlines()[-1]}
        if client.returncode != 0 or "error" in report:
            raise RuntimeError(f"iperf3 through the {lab.path} path failed: "
                               f"{report.get('error', f'exit code {client.returncode}')}")
    finally:
        if server.poll() is None:
            try:
                server.wait(5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    end = report["end"]
    received = end["sum_received"]
    sender = end["streams"][0]["sender"]
    rtt = sender.get("mean_rtt")
    seconds = received["seconds"] or duration
    return RunResult(f"tcp/{lab.path}", "tcp", lab.path, "tcp", int(end["sum_sent"]["bytes"]),
                     int(received["bytes"]), int(end["sum_sent"].get("retransmits", 0)),
                     received["bytes"] / TCP_MSS / seconds, float(received["bits_per_second"]),
                     int(rtt * 1000) if rtt else None, None)  # fmt: skip


# -- summaries ----------------------------------------------------------------------------------


def _latency_buckets(runs: Sequence[RunResult]) -> list[tuple[int, int]]:
    hists = [run.histogram for run in runs if run.histogram]
    if not hists:
        return []
    total = np.sum(np.array(hists, dtype=np.uint64), axis=0)
    low, high = bucket_bounds()
    return [(int(low[k] + (high[k] - low[k]) // 2), int(total[k])) for k in np.flatnonzero(total)]


def summarize(report: BenchReport) -> None:
    by_key: dict[str, list[RunResult]] = {}
    for run in report.runs:
        by_key.setdefault(run.scenario, []).append(run)
    summaries: dict[str, ScenarioSummary] = {}
    for name, runs in by_key.items():
        first = runs[0]
        pps = [run.pps for run in runs]
        bits = [run.bits_per_s for run in runs]
        p50 = [run.p50_ns for run in runs if run.p50_ns is not None]
        p99 = [run.p99_ns for run in runs if run.p99_ns is not None]
        loss = offered = None
        if first.kind == "frames":
            loss = statistics.median(run.lost / run.sent if run.sent else 0.0 for run in runs)
            offered = statistics.median(run.offered_pps or 0.0 for run in runs)
        summaries[name] = ScenarioSummary(
            name, first.kind, first.path, first.size, len(runs),
            statistics.median(pps), (min(pps), max(pps)),
            statistics.median(bits), (min(bits), max(bits)), loss, offered,
            statistics.median(p50) if p50 else None, statistics.median(p99) if p99 else None,
            REFERENCE[first.kind], latency=_latency_buckets(runs),
        )
    for summary in summaries.values():
        ref_name = (f"{summary.reference}/{summary.size}" if summary.kind == "frames"
                    else f"tcp/{summary.reference}")
        ref = summaries.get(ref_name)
        if summary.kind == "frames" and ref and ref.median_pps > 0:
            summary.ratio_to_kernel = summary.median_pps / ref.median_pps
        elif summary.kind == "tcp" and ref and ref.median_bits_per_s > 0:
            summary.ratio_to_kernel = summary.median_bits_per_s / ref.median_bits_per_s
    report.scenarios = list(summaries.values())


def _rotate(items: Sequence[str], k: int) -> list[str]:
    k %= max(1, len(items))
    return [*items[k:], *items[:k]]


def run_bench(selection: Selection, sizes: Sequence[str] = DEFAULT_SIZES, *, rounds: int = 5,
              duration: float = 2.0, tcp_duration: float = 3.0, rate: Rate | None = None,
              progress: Progress | None = None, prefix: str | None = None) -> BenchReport:
    """Build the labs, run every scenario ``rounds`` times interleaved, tear everything down."""
    sizes = [str(size) for size in sizes]
    for size in sizes:
        parse_size(size)  # bad sizes fail before anything is built
    if rounds < 1 or duration <= 0 or tcp_duration < 1:
        raise ValueError("rounds must be >= 1, duration > 0 and the TCP duration >= 1 s")
    if selection.tcp_paths and not shutil.which("iperf3"):
        raise FileNotFoundError("iperf3 is not installed (apt-get install iperf3, "
                                "or make system-deps), or leave out TCP: --scenarios frames")
    started = time.monotonic()
    report = BenchReport(rounds, duration, tcp_duration, prefix or "te" + secrets.token_hex(3),
                         sizes if selection.frame_paths else [], str(rate) if rate else "max")
    total = (len(report.sizes) * len(selection.frame_paths) + len(selection.tcp_paths)) * rounds

    def record(run: RunResult) -> None:
        report.runs.append(run)
        if progress:
            if run.kind == "frames":
                detail = (f"{run.pps:>12,.0f} pps {run.bits_per_s / 1e9:6.3f} Gbit/s delivered,"
                          f" {run.lost / run.sent if run.sent else 0:6.1%} lost")
            else:
                detail = f"{run.bits_per_s / 1e9:6.2f} Gbit/s, {run.lost} retransmits"
            progress(f"[{len(report.runs)}/{total}] {run.scenario:<13} {detail}")

    if progress:
        progress(f"building namespaces {report.prefix}* ...")
    with labs(selection, report.prefix) as (frame_labs, tcp_labs):
        for size in report.sizes:
            for round_ in range(rounds):
                for path in _rotate(selection.frame_paths, round_):
                    record(run_frames(frame_labs[path], size, duration, rate))
        for round_ in range(rounds):
            for path in _rotate(selection.tcp_paths, round_):
                record(run_tcp(tcp_labs[path], tcp_duration))
    summarize(report)
    report.elapsed_s = time.monotonic() - started
    return report


# -- output -------------------------------------------------------------------------------------


def _order(report: BenchReport) -> list[ScenarioSummary]:
    sizes = {size: k for k, size in enumerate(report.sizes)}

    def key(s: ScenarioSummary) -> tuple[int, int, int]:
        if s.kind == "frames":
            return (0, sizes.get(s.size, 99), FRAME_PATHS.index(s.path))
        return (1, 0, TCP_PATHS.index(s.path))

    return sorted(report.scenarios, key=key)


def _us(ns: float | None) -> str:
    return "-" if ns is None else f"{ns / 1e3:,.0f} µs"


def format_table(report: BenchReport) -> str:
    """The report as an aligned text table, frames by size then TCP."""
    head = ["scenario", "packets/s", "spread (min..max)", "Gbit/s", "offered/s", "loss", "p50",
            "p99", "vs kernel"]
    rows = []
    for s in _order(report):
        if s.kind == "frames":
            spread = f"{s.spread_pps[0]:,.0f}..{s.spread_pps[1]:,.0f}"
            loss = f"{s.median_loss_ratio:.1%}" if s.median_loss_ratio is not None else "-"
            offered = f"{s.median_offered_pps:,.0f}" if s.median_offered_pps else "-"
            p50, p99 = _us(s.median_p50_ns), _us(s.median_p99_ns)
        else:
            spread = f"{s.spread_bits_per_s[0] / 1e9:.2f}..{s.spread_bits_per_s[1] / 1e9:.2f} G"
            loss, offered, p99 = "-", "-", "-"
            p50 = _us(s.median_p50_ns) + " rtt" if s.median_p50_ns else "-"
        ratio = f"{s.ratio_to_kernel:.2f}x {s.reference}" if s.ratio_to_kernel is not None else "-"
        rows.append([s.scenario, f"{s.median_pps:,.0f}", spread,
                     f"{s.median_bits_per_s / 1e9:.3f}", offered, loss, p50, p99, ratio])
    widths = [max(len(row[k]) for row in [head, *rows]) for k in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) if k == 0 else cell.rjust(w)
                               for k, (cell, w) in enumerate(zip(row, widths, strict=True)))
                     for row in [head, *rows])  # fmt: skip


def legend(report: BenchReport) -> str:
    """What the table's columns mean, one line each (only for the kinds of scenario it has)."""
    kinds = {s.kind for s in report.scenarios}
    load = "flat out" if report.rate == "max" else f"at {report.rate}"
    lines = [f"{report.rounds} interleaved round(s); medians, spread = min..max over the rounds."]
    if "frames" in kinds:
        lines += [
            f"frames: the generator {load} for {report.duration_s:g} s per run, 4 flows, sizes "
            "with FCS (imix = 64/570/1518 in 7:4:1).",
            "  packets/s, Gbit/s: DELIVERED to the sink, not offered; offered/s: what the "
            "generator wrote;",
            "  loss: the share that never arrived (a forwarder that falls behind loses it in its "
            "tap's queue);",
            "  p50, p99: one-way latency under that load, queueing included.",
        ]
    if "tcp" in kinds:
        lines.append(
            f"tcp: one iperf3 stream for {report.tcp_duration_s:g} s per run; Gbit/s = goodput, "
            f"packets/s = goodput in {TCP_MSS}-byte segments, rtt = iperf3's mean round-trip time.")
    lines.append(
        "vs kernel: ratio of medians to the kernel's path of the same kind in the same run "
        "(frames: kernel = a veth pair between the same bridges; tcp: bridge = a kernel bridge).")
    return "\n".join(lines)


def machine() -> str:
    """One line describing this machine: CPU model and count, kernel, Python."""
    import platform

    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (f"{os.cpu_count()} x {model}, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


__all__ = [
    "DEFAULT_SIZES",
    "FRAME_PATHS",
    "SCENARIO_NAMES",
    "TCP_PATHS",
    "BenchReport",
    "FrameLab",
    "RunResult",
    "ScenarioSummary",
    "Selection",
    "SizeMix",
    "TcpLab",
    "format_table",
    "labs",
    "legend",
    "machine",
    "parse_scenarios",
    "parse_sizes",
    "run_bench",
    "run_frames",
    "run_tcp",
]  # fmt: skip
