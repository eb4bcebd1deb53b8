"""``tapengine bench``: the generator and sink around tapengine's wire and around the kernel's own
path, side by side, in namespaces built for the run and removed afterwards.

Two labs, each in its own namespace ``<prefix>e`` / ``<prefix>k``::

    engine:  gen -> tap g -> bridge 1 -> tap a => tapengine wire => tap b -> bridge 2 -> tap s
    kernel:  gen -> tap g -> bridge 1 -> veth  ==  veth pair    == veth  -> bridge 2 -> tap s

Only the middle differs: a ``tapengine.Engine`` wire between two taps, or a kernel veth pair. For
every frame size, the runs alternate engine, kernel, engine, kernel ... (``rounds`` of each); each
run sends flat out for ``duration`` seconds and the sink measures the delivered rate, the loss and
the one-way latency. The report holds medians, spreads (min..max) and the engine/kernel ratio.
"""

from __future__ import annotations

import contextlib
import secrets
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tapengine._pktgen import Sink
from tapengine.engine import Engine, open_port
from tapengine.netns import inside_netns
from tapengine.traffic import GenConfig, GenResult, SinkResult, SizeMix, parse_size
from tapengine.tun import TunQueue, open_queue

PATHS = ("engine", "kernel")
DEFAULT_SIZES = ("64", "512", "1500", "imix")
IFF_LOWER_UP = 0x10000


@dataclass
class RunResult:
    path: str
    size: str
    sent: int
    received: int
    lost: int
    pps: float  # delivered to the sink
    bits_per_s: float
    p50_ns: int | None
    p99_ns: int | None


@dataclass
class ScenarioSummary:
    path: str
    size: str
    runs: int
    median_pps: float
    spread_pps: tuple[float, float]
    median_bits_per_s: float
    median_loss_ratio: float
    median_p50_ns: float | None
    median_p99_ns: float | None
    ratio_to_kernel: float | None = None


@dataclass
class BenchReport:
    rounds: int
    duration_s: float
    prefix: str  # of the namespaces and links the run built (and removed)
    scenarios: list[ScenarioSummary] = field(default_factory=list)
    runs: list[RunResult] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Lab:
    """One namespace with the generator's tap ``g`` and the sink's tap ``s`` on two bridges."""

    def __init__(self, netns: str, prefix: str, g: TunQueue, s: TunQueue) -> None:
        self.netns, self.prefix, self.g, self.s = netns, prefix, g, s


def _quiet(netns: str) -> None:
    with inside_netns(netns):
        for knob, value in (("ipv6/conf/all/disable_ipv6", "1"),
                            ("ipv6/conf/default/disable_ipv6", "1"),
                            ("ipv4/igmp_link_local_mcast_reports", "0")):  # fmt: skip
            with open(f"/proc/sys/net/{knob}", "w") as file:
                file.write(value)


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


def _wait_running(netns: str, names: Sequence[str], timeout: float = 5.0) -> None:
    from pyroute2 import IPRoute

    deadline = time.monotonic() + timeout
    with inside_netns(netns), IPRoute() as ipr:
        while True:
            flags = [ipr.get_links(ifname=name)[0]["flags"] for name in names]
            if all(flag & IFF_LOWER_UP for flag in flags):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"links {', '.join(names)} in {netns} never got a carrier")
            time.sleep(0.02)


@contextlib.contextmanager
def labs(prefix: str | None = None) -> Iterator[dict[str, Lab]]:
    """Build both labs; everything is removed on the way out, on errors and on KeyboardInterrupt."""
    from tapengine.netns import create_netns, delete_netns

    prefix = prefix or "te" + secrets.token_hex(3)
    created: list[str] = []
    with contextlib.ExitStack() as stack:
        try:
            built: dict[str, Lab] = {}
            for path in PATHS:
                netns = prefix + path[0]
                create_netns(netns)
                created.append(netns)
                _quiet(netns)
                with inside_netns(netns):
                    g = stack.enter_context(open_queue(prefix + "g", "tap"))
                    s = stack.enter_context(open_queue(prefix + "s", "tap"))
                    if path == "engine":
                        a = stack.enter_context(open_port(prefix + "a"))
                        b = stack.enter_context(open_port(prefix + "b"))
                if path == "engine":
                    _bridges(netns, prefix, "a", "b")
                    stack.enter_context(Engine([a, b], "wire"))
                else:
                    from pyroute2 import IPRoute

                    with inside_netns(netns), IPRoute() as ipr:
                        ipr.link("add", ifname=prefix + "v1", kind="veth", peer=prefix + "v2")
                    _bridges(netns, prefix, "v1", "v2")
                    _wait_running(netns, [prefix + "v1", prefix + "v2"])
                built[path] = Lab(netns, prefix, g, s)
            time.sleep(0.1)
            yield built
        finally:
            stack.close()
            for netns in reversed(created):
                with contextlib.suppress(OSError):
                    delete_netns(netns, force=True)


def run_once(lab: Lab, path: str, size: str, duration: float) -> RunResult:
    """Flat out for ``duration`` seconds through ``lab``; the sink reports what arrived."""
    gen = GenConfig(sizes=parse_size(size), flows=4).generator()
    with Sink(max_flows=4) as sink:
        sink.run(lab.s, duration=0.02)          # leftovers of the previous run
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
    sent = GenResult.of(gen)
    bits = result.probe_bytes * 8 / result.elapsed_s if result.elapsed_s > 0 else 0.0
    latency = result.latency
    return RunResult(path, size, sent.packets, result.probe_packets,
                     sent.packets - result.probe_packets, result.pps, bits,
                     latency.p50_ns if latency else None, latency.p99_ns if latency else None)


def summarize(report: BenchReport) -> None:
    by_key: dict[tuple[str, str], list[RunResult]] = {}
    for run in report.runs:
        by_key.setdefault((run.path, run.size), []).append(run)
    summaries: dict[tuple[str, str], ScenarioSummary] = {}
    for (path, size), runs in by_key.items():
        pps = [run.pps for run in runs]
        p50 = [run.p50_ns for run in runs if run.p50_ns is not None]
        p99 = [run.p99_ns for run in runs if run.p99_ns is not None]
        summaries[path, size] = ScenarioSummary(
            path, size, len(runs), statistics.median(pps), (min(pps), max(pps)),
            statistics.median(run.bits_per_s for run in runs),
            statistics.median(run.lost / run.sent if run.sent else 0.0 for run in runs),
            statistics.median(p50) if p50 else None, statistics.median(p99) if p99 else None,
        )
    for (path, size), summary in summaries.items():
        kernel = summaries.get(("kernel", size))
        if kernel and kernel.median_pps > 0:
            summary.ratio_to_kernel = summary.median_pps / kernel.median_pps
        del path
    report.scenarios = list(summaries.values())


def run_bench(sizes: Sequence[str] = DEFAULT_SIZES, *, rounds: int = 5, duration: float = 2.0,
              progress: Callable[[str], None] | None = None) -> BenchReport:
    """Build the labs, run every size through both paths ``rounds`` times interleaved, tear down."""
    for size in sizes:
        parse_size(size)  # bad sizes fail before anything is built
    if rounds < 1 or duration <= 0:
        raise ValueError("rounds must be >= 1 and duration > 0")
    report = BenchReport(rounds, duration, "te" + secrets.token_hex(3))
    total = len(sizes) * rounds * len(PATHS)
    with labs(report.prefix) as built:
        for size in sizes:
            for _ in range(rounds):
                for path in PATHS:
                    run = run_once(built[path], path, size, duration)
                    report.runs.append(run)
                    if progress:
                        progress(f"[{len(report.runs)}/{total}] {path:<6} {size:>5}: "
                                 f"{run.pps:,.0f} pps delivered, {run.lost:,} lost")
    summarize(report)
    return report


def format_table(report: BenchReport) -> str:
    lines = [f"{'path':<7}{'size':>6}{'pps (median)':>14}{'spread':>22}{'Gbit/s':>8}"
             f"{'loss':>7}{'p50':>10}{'p99':>10}{'vs kernel':>10}"]  # fmt: skip
    order = {size: k for k, size in enumerate(dict.fromkeys(s.size for s in report.scenarios))}
    for s in sorted(report.scenarios, key=lambda s: (order[s.size], PATHS.index(s.path))):
        spread = f"{s.spread_pps[0]:,.0f}..{s.spread_pps[1]:,.0f}"
        p50 = f"{s.median_p50_ns / 1e3:,.0f} µs" if s.median_p50_ns is not None else "-"
        p99 = f"{s.median_p99_ns / 1e3:,.0f} µs" if s.median_p99_ns is not None else "-"
        ratio = f"{s.ratio_to_kernel:.2f}x" if s.ratio_to_kernel is not None else "-"
        lines.append(f"{s.path:<7}{s.size:>6}{s.median_pps:>14,.0f}{spread:>22}"
                     f"{s.median_bits_per_s / 1e9:>8.3f}{s.median_loss_ratio:>7.1%}{p50:>10}"
                     f"{p99:>10}{ratio:>10}")  # fmt: skip
    return "\n".join(lines)


__all__ = [
    "BenchReport",
    "RunResult",
    "ScenarioSummary",
    "SizeMix",
    "format_table",
    "labs",
    "run_bench",
    "run_once",
]  # fmt: skip
