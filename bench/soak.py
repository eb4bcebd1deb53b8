"""Soak: ``tapengine forward`` for a long time at a steady rate, watched from outside.

    sudo .venv/bin/python bench/soak.py                      # 10 minutes at 80% of capacity
    sudo .venv/bin/python bench/soak.py --seconds 30 --rate 20000 --json

One private namespace ``<prefix>k`` holds everything::

    generator -> tap g -> bridge 1 -> tap a => tapengine forward (a process) => tap b -> bridge 2
              -> tap s -> sink

First the capacity: the generator flat out for ``--capacity-seconds``, the sink's receive rate is
the capacity (skipped when ``--rate`` is given). Then ``--seconds`` at ``--fraction`` of it (or at
``--rate``) with four flows whose sequence numbers the sink checks: loss (sent minus received),
reordering and duplicates. Every second the forwarder's RSS (``VmRSS`` in ``/proc/PID/status``) and
open fds (``/proc/PID/fd``) are sampled; the report gives the RSS slope (least squares over the
samples after the warm-up, KiB per minute) and the fd count: its range, and the fds held at the
start and at the end (the least of the first and of the last five samples: the forwarder's link
watch opens a netlink socket for a millisecond twice a second, which a sample may catch). Exit
status 1 when anything was lost, reordered or duplicated, when the fds held at the end differ from
those at the start, or when the forwarder failed.

``--tracemalloc FILE`` runs the forwarder with tracemalloc on (25 frames) and writes, at the end,
the allocations that grew between the end of the warm-up and the end of the run (top 25 by size).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compare_forward import forwarder_process
from tapengine._pktgen import Sink
from tapengine.benchrun import _bridges, _netns, _wait_running
from tapengine.netns import inside_netns
from tapengine.nsexec import nsexec_argv
from tapengine.traffic import GenConfig, GenResult, Rate, SinkResult, parse_size
from tapengine.tun import TunQueue, open_queue

FLOWS = 4
#: The forwarder under tracemalloc: snapshots at SIGUSR2 (the warm-up's end) and at exit.
TRACED_FORWARDER = """
import atexit, signal, sys, tracemalloc
tracemalloc.start(25)
out = sys.argv.pop(1)
first = []
signal.signal(signal.SIGUSR2, lambda *_: first.append(tracemalloc.take_snapshot()))
def dump():
    if not first:
        return
    stats = tracemalloc.take_snapshot().compare_to(first[0], "traceback")
    with open(out, "w") as f:
        for stat in stats[:25]:
            f.write(f"{stat.size_diff / 1024:+.1f} KiB {stat.count_diff:+d} blocks\\n")
            f.write("\\n".join("    " + line for line in stat.traceback.format()) + "\\n")
atexit.register(dump)
from tapengine.cli import main
sys.argv[0] = "tapengine"
sys.exit(main())
"""


@dataclass
class Samples:
    t: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)


@dataclass
class SoakReport:
    seconds: float
    size: str
    capacity_pps: float | None
    rate_pps: int
    sent: int
    received: int
    lost: int
    reordered: int
    duplicates: int
    stale: int
    achieved_pps: float
    forwarder_drops: dict[str, int]
    kernel_drops: dict[str, int]  # link/counter -> packets, for the taps around the forwarder
    forwarder_exit: int | None
    rss_kib_first: int
    rss_kib_last: int
    rss_kib_min: int
    rss_kib_max: int
    rss_slope_kib_per_min: float
    warmup_s: float
    fds_min: int
    fds_max: int
    fds_start: int
    fds_end: int
    samples: int
    loadavg_before: str
    loadavg_after: str
    machine: str
    tracemalloc: str | None = None
    rss_kib_samples: list[int] = field(default_factory=list)  # one a second

    @property
    def clean(self) -> bool:
        return (self.lost == 0 and self.reordered == 0 and self.duplicates == 0
                and self.fds_start == self.fds_end and self.forwarder_exit == 0)  # fmt: skip


def read_proc(pid: int) -> tuple[int, int]:
    """The forwarder's VmRSS (KiB) and open fd count."""
    with open(f"/proc/{pid}/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def sample_every_second(pid: int, samples: Samples, stop: threading.Event) -> None:
    start = time.monotonic()
    while True:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, StopIteration):
            rss, fds = read_proc(pid)
            samples.t.append(time.monotonic() - start)
            samples.rss_kib.append(rss)
            samples.fds.append(fds)
        if stop.wait(1.0):  # a sampling period, not a wait for a condition
            return


def slope_kib_per_min(t: list[float], rss: list[int], warmup: float) -> float:
    """Least-squares slope of RSS over time after ``warmup`` seconds, in KiB per minute."""
    points = [(x, y) for x, y in zip(t, rss, strict=True) if x >= warmup]
    if len(points) < 3:
        return 0.0
    xs, ys = np.array(points, dtype=float).T
    return float(np.polyfit(xs, ys, 1)[0] * 60)


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.machine())  # fmt: skip
    return f"{cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}"


def forwarder(netns: str, a: str, b: str, io: str,
              trace_file: str | None) -> contextlib.AbstractContextManager[subprocess.Popen[str]]:
    """``tapengine forward a b --json`` in ``netns`` (it creates both taps), once it forwards; the
    caller may stop it (SIGTERM) and read its output, else it is stopped on the way out."""
    if trace_file:
        argv = [sys.executable, "-c", TRACED_FORWARDER, trace_file]
    else:
        argv = [sys.executable, "-m", "tapengine"]
    return forwarder_process(nsexec_argv(netns, [*argv, "forward", a, b, "--json", "--io", io]))


def run_traffic(g: TunQueue, s: TunQueue, sink: Sink, size: str, seconds: float,
                rate: int | None) -> tuple[GenResult, SinkResult]:  # fmt: skip
    """``seconds`` of generated frames into ``g`` at ``rate`` pps (None: flat out), read from
    ``s`` until it has been quiet for a second."""
    gen = GenConfig(sizes=parse_size(size), flows=FLOWS,
                    rate=Rate(rate, "pps") if rate else None).generator()  # fmt: skip
    sink.reset()
    reader = threading.Thread(target=sink.run, args=(s,),
                              kwargs={"idle": 1.0, "duration": seconds + 30})  # fmt: skip
    reader.start()
    try:
        gen.send(g, duration=seconds)
    finally:
        reader.join(seconds + 60)
        if reader.is_alive():
            sink.stop()
            reader.join()
    return GenResult.of(gen), SinkResult.of(sink)


def soak(*, seconds: float, size: str, rate: int | None, fraction: float, capacity_seconds: float,
         warmup: float, io: str, prefix: str, trace_file: str | None = None) -> SoakReport:
    load_before = loadavg()
    with contextlib.ExitStack() as stack:
        netns = _netns(stack, prefix + "k")
        with inside_netns(netns):
            g = stack.enter_context(open_queue(prefix + "g", "tap"))
            s = stack.enter_context(open_queue(prefix + "s", "tap"))
        proc = stack.enter_context(forwarder(netns, prefix + "a", prefix + "b", io, trace_file))
        _bridges(netns, prefix, "a", "b")
        _wait_running(netns, [prefix + name for name in ("g", "a", "b", "s")], timeout=10)
        sink = stack.enter_context(Sink(max_flows=FLOWS, window=4096))
        # A few packets first: the bridges learn, and nothing of it counts.
        run_traffic(g, s, sink, size, 0.2, 1000)
        capacity = None
        if rate is None:
            _, flat = run_traffic(g, s, sink, size, capacity_seconds, None)
            capacity = flat.pps
            rate = max(int(capacity * fraction), 1)
        samples, stop = Samples(), threading.Event()
        sampler = threading.Thread(target=sample_every_second, args=(proc.pid, samples, stop))
        sampler.start()
        try:
            if trace_file:
                threading.Timer(warmup, proc.send_signal, (signal.SIGUSR2,)).start()
            before = kernel_drops(netns, prefix)
            sent, got = run_traffic(g, s, sink, size, seconds, rate)
            after = kernel_drops(netns, prefix)
        finally:
            stop.set()
            sampler.join()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        try:
            drops = {key: value for key, value in _drops(json.loads(out)).items() if value}
        except (json.JSONDecodeError, KeyError, TypeError):
            drops = {"unreadable stats": 1}
            print(f"forwarder output: {out.strip()} {err.strip()}", file=sys.stderr)
    warm = min(warmup, seconds / 3)
    trace = Path(trace_file).read_text() if trace_file and Path(trace_file).exists() else None
    return SoakReport(
        seconds=seconds, size=size, capacity_pps=capacity, rate_pps=rate, sent=sent.packets,
        received=got.probe_packets, lost=sent.packets - got.probe_packets,
        reordered=got.reordered, duplicates=got.duplicates, stale=got.stale,
        achieved_pps=got.pps, forwarder_drops=drops, forwarder_exit=proc.returncode,
        kernel_drops={key: after[key] - before[key] for key in after if after[key] > before[key]},
        rss_kib_first=samples.rss_kib[0], rss_kib_last=samples.rss_kib[-1],
        rss_kib_min=min(samples.rss_kib), rss_kib_max=max(samples.rss_kib),
        rss_slope_kib_per_min=slope_kib_per_min(samples.t, samples.rss_kib, warm), warmup_s=warm,
        fds_min=min(samples.fds), fds_max=max(samples.fds), fds_start=min(samples.fds[:5]),
        fds_end=min(samples.fds[-5:]), samples=len(samples.t),
        loadavg_before=load_before, loadavg_after=loadavg(), machine=machine(), tracemalloc=trace,
        rss_kib_samples=samples.rss_kib)


def kernel_drops(netns: str, prefix: str) -> dict[str, int]:
    """The kernel's drop counters of the four taps: where a frame lost outside the engine went."""
    from tapengine.kstats import read_stats

    found = {}
    for name in ("g", "a", "b", "s"):
        stats = read_stats(prefix + name, netns)
        for counter in ("rx_dropped", "tx_dropped", "rx_errors", "tx_errors"):
            found[f"{name}/{counter}"] = getattr(stats, counter)
    return found


def _drops(stats: Any) -> dict[str, int]:
    """Every drop counter of ``forward --json`` summed over its ports (``ip -j -s link`` shape)."""
    totals: dict[str, int] = {}
    ports = stats["ports"] if isinstance(stats, dict) else stats
    for port in ports:
        for key, value in port.get("drops", {}).items():
            totals[key] = totals.get(key, 0) + int(value)
        for direction in ("rx", "tx"):
            dropped = port.get("stats64", {}).get(direction, {}).get("dropped", 0)
            totals[f"{direction}_dropped"] = totals.get(f"{direction}_dropped", 0) + int(dropped)
    return totals


def format_report(report: SoakReport) -> str:
    capacity = f"capacity {report.capacity_pps:,.0f} pps, " if report.capacity_pps else ""
    return "\n".join([
        f"soak: {report.seconds:.0f} s of {report.size}-byte frames at {report.rate_pps:,} pps "
        f"({capacity}achieved {report.achieved_pps:,.0f} pps)",
        f"  sent {report.sent:,}, received {report.received:,}: lost {report.lost}, "
        f"reordered {report.reordered}, duplicates {report.duplicates}",
        f"  forwarder drops: {report.forwarder_drops or 'none'}; exit {report.forwarder_exit}; "
        f"kernel drops (tap/counter): {report.kernel_drops or 'none'}",
        f"  RSS {report.rss_kib_first:,} -> {report.rss_kib_last:,} KiB "
        f"(min {report.rss_kib_min:,}, max {report.rss_kib_max:,}); slope after "
        f"{report.warmup_s:.0f} s: {report.rss_slope_kib_per_min:+.2f} KiB/min",
        f"  open fds: {report.fds_start} at the start, {report.fds_end} at the end; "
        f"{report.fds_min}..{report.fds_max} over {report.samples} samples",
        f"  load: {report.loadavg_before} -> {report.loadavg_after}; {report.machine}",
        *([f"  tracemalloc (growth after the warm-up):\n{report.tracemalloc}"]
          if report.tracemalloc else []),
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--rate", type=int, default=None,
                        help="packets per second (default: --fraction of the measured capacity)")
    parser.add_argument("--fraction", type=float, default=0.8)
    parser.add_argument("--capacity-seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=30.0,
                        help="seconds left out of the RSS slope (at most a third of the run)")
    parser.add_argument("--size", default="64")
    parser.add_argument("--io", choices=("readv", "uring"), default="readv")
    parser.add_argument("--prefix", default=None, help="name prefix (default: te + 6 hex)")
    parser.add_argument("--tracemalloc", metavar="FILE", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = soak(seconds=args.seconds, size=args.size, rate=args.rate, fraction=args.fraction,
                  capacity_seconds=args.capacity_seconds, warmup=args.warmup, io=args.io,
                  prefix=args.prefix or "te" + secrets.token_hex(3),
                  trace_file=args.tracemalloc)  # fmt: skip
    print(json.dumps(asdict(report)) if args.json else format_report(report))
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
