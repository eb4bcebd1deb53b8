"""CPU per forwarded frame and latency at a fixed rate well below capacity (issue 14).

At moderate rates each wakeup of a forwarder finds one frame, so what a frame costs is the wakeup
(``epoll_wait``, the context switch), not the copy. This measures it, side by side: the
generator sends 64-byte frames at ``--rate`` through a forwarder process and the sink counts them
and their one-way latency; the forwarder's CPU (user + system of all its threads, from
``/proc/PID/stat``) over the run divided by the frames the sink received is the CPU per frame.

One private namespace ``<prefix>k`` per run (the soak's lab, bench/soak.py)::

    generator -> tap g -> bridge 1 -> tap a => forwarder (a process) => tap b -> bridge 2
              -> tap s -> sink

Setups: ``naive`` (``tapengine.naive_forward``: os.read/os.write with epoll) and ``tapengine``
(``tapengine forward a b``), the latter with extra options joined by ``+``:
``tapengine+--coalesce-usecs=30``, ``tapengine+--io=uring+--no-offload``. Rounds interleave the
setups, rotating the order; medians, every run in brackets, and each setup's ratio to the first.

    sudo .venv/bin/python bench/wakeups.py --rounds 5 --rate 40000 \\
        --setups naive,tapengine,tapengine+--coalesce-usecs=30
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import signal
import statistics
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from compare_forward import cpu_seconds, forwarder_process
from soak import FLOWS, loadavg, machine
from tapengine._pktgen import Sink
from tapengine.benchrun import _bridges, _netns, _wait_running
from tapengine.netns import inside_netns
from tapengine.nsexec import nsexec_argv
from tapengine.traffic import GenConfig, GenResult, Rate, SinkResult, parse_size
from tapengine.tun import TunQueue, open_queue


def run_traffic(g: TunQueue, s: TunQueue, sink: Sink, size: str, seconds: float,
                rate: int) -> tuple[GenResult, SinkResult]:  # fmt: skip
    """``seconds`` of frames into ``g`` at ``rate`` pps, one at a time (batch and burst 1: evenly
    spaced, as trafgen -b sends them, not the generator's default bursts of 32), read from ``s``
    until it has been quiet for a second."""
    gen = GenConfig(sizes=parse_size(size), flows=FLOWS, rate=Rate(rate, "pps"), batch=1,
                    burst=1).generator()
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


def forwarder_argv(setup: str, a: str, b: str) -> list[str]:
    """The command line of ``setup`` between taps ``a`` and ``b`` (it creates them)."""
    base, *options = setup.split("+")
    if base == "naive":
        if options:
            raise ValueError(f"the naive forwarder takes no options: {setup}")
        return [sys.executable, "-m", "tapengine.naive_forward", a, b]
    if base != "tapengine":
        raise ValueError(f"unknown setup {setup!r}: naive or tapengine[+--option[=value]...]")
    argv = [sys.executable, "-m", "tapengine", "forward", a, b]
    for option in options:
        argv += option.split("=", 1)
    return argv


#: ``--perf``: what ``perf stat`` counts in the forwarder during a run (reported per frame).
PERF_EVENTS = ("context-switches,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_read,"
               "syscalls:sys_enter_readv,syscalls:sys_enter_write,syscalls:sys_enter_writev,"
               "syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_clock_nanosleep")


@contextlib.contextmanager
def perf_stat(pid: int, events: str | None, counts: dict[str, float]) -> Iterator[None]:
    """Counts ``events`` in process ``pid`` (all threads) while the block runs, into
    ``counts``; nothing without ``events``."""
    if not events:
        yield
        return
    proc = subprocess.Popen(["perf", "stat", "-x", ",", "-e", events, "-p", str(pid)],
                            stderr=subprocess.PIPE, text=True)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        for line in err.splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[0].replace(".", "").isdigit():
                counts[fields[2].removeprefix("syscalls:sys_enter_")] = float(fields[0])


def run_once(setup: str, rate: int, seconds: float, size: str,
             perf: str | None = None) -> dict[str, Any]:  # fmt: skip
    """One run of ``setup``: frames, CPU ns per frame, latency percentiles (ns), loss, and with
    ``perf`` those events per frame."""
    prefix = "te" + secrets.token_hex(3)
    with contextlib.ExitStack() as stack:
        netns = _netns(stack, prefix + "k")
        with inside_netns(netns):
            g = stack.enter_context(open_queue(prefix + "g", "tap"))
            s = stack.enter_context(open_queue(prefix + "s", "tap"))
        argv = forwarder_argv(setup, prefix + "a", prefix + "b")
        proc = stack.enter_context(forwarder_process(nsexec_argv(netns, argv)))
        _bridges(netns, prefix, "a", "b")
        _wait_running(netns, [prefix + name for name in ("g", "a", "b", "s")], timeout=10)
        sink = stack.enter_context(Sink(max_flows=4, window=4096))
        run_traffic(g, s, sink, size, 0.2, 1000)       # the bridges learn; not counted
        cpu0 = cpu_seconds(proc.pid)
        counts: dict[str, float] = {}
        with perf_stat(proc.pid, perf, counts):
            sent, got = run_traffic(g, s, sink, size, seconds, rate)
        cpu = cpu_seconds(proc.pid) - cpu0
    latency = got.latency
    return {
        "sent": sent.packets, "received": got.probe_packets, "pps": got.pps,
        "lost": sent.packets - got.probe_packets, "cpu_s": cpu,
        "cpu_ns_per_frame": cpu * 1e9 / got.probe_packets if got.probe_packets else 0.0,
        "p50_ns": latency.p50_ns if latency else 0, "p99_ns": latency.p99_ns if latency else 0,
        "per_frame": {event: count / max(got.probe_packets, 1) for event, count in counts.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setups", default="naive,tapengine,tapengine+--coalesce-usecs=30")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rate", type=int, default=40000, help="frames per second")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--size", default="64")
    parser.add_argument("--json", type=Path, help="also write every run to this file")
    parser.add_argument("--perf", nargs="?", const=PERF_EVENTS, default=None, metavar="EVENTS",
                        help="count these perf events in the forwarder, per frame (default: "
                             "context switches and the I/O system calls)")
    args = parser.parse_args()
    setups = args.setups.split(",")
    runs: dict[str, list[dict[str, Any]]] = {setup: [] for setup in setups}
    loads = []
    for round_ in range(args.rounds):
        load0 = loadavg()
        order = setups[round_ % len(setups):] + setups[:round_ % len(setups)]
        for setup in order:
            result = run_once(setup, args.rate, args.seconds, args.size, args.perf)
            runs[setup].append(result)
            per_frame = " ".join(f"{event} {count:.2f}"
                                 for event, count in result["per_frame"].items() if count)
            print(f"round {round_ + 1} {setup:<40} {result['cpu_ns_per_frame']:7,.0f} ns/frame "
                  f"p50 {result['p50_ns'] / 1e3:6.1f} us p99 {result['p99_ns'] / 1e3:7.1f} us "
                  f"lost {result['lost']} {per_frame}", file=sys.stderr, flush=True)
        loads.append((load0, loadavg()))
        print(f"round {round_ + 1} loadavg before: {loads[-1][0]}  after: {loads[-1][1]}",
              file=sys.stderr, flush=True)

    def median(setup: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[setup])

    first = setups[0]
    print(f"\n{machine()}; {args.rounds} interleaved rounds of {args.seconds:g} s at "
          f"{args.rate:,} pps, {args.size}-byte frames; load {loads[0][0]} -> {loads[-1][1]}\n")
    print(f"| setup | CPU ns per frame | vs {first} | p50 us | p99 us | p99 - {first}'s, us | "
          "lost |")
    print("|---|---|---|---|---|---|---|")
    for setup in setups:
        cpu = median(setup, "cpu_ns_per_frame")
        each = ", ".join(f"{run['cpu_ns_per_frame']:,.0f}" for run in runs[setup])
        p99s = ", ".join(f"{run['p99_ns'] / 1e3:.0f}" for run in runs[setup])
        ratio = cpu / median(first, "cpu_ns_per_frame")
        print(f"| {setup} | **{cpu:,.0f}** ({each}) | {ratio:.2f}x"
              f" | {median(setup, 'p50_ns') / 1e3:.1f} | {median(setup, 'p99_ns') / 1e3:.1f} "
              f"({p99s}) | {(median(setup, 'p99_ns') - median(first, 'p99_ns')) / 1e3:+.1f} | "
              f"{sum(run['lost'] for run in runs[setup])} |")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "loadavg": loads, "rate": args.rate,
                                         "seconds": args.seconds, "size": args.size}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
