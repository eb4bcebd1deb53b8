"""What a stage costs: the 64-byte forwarding rate of an ``Engine`` wire with and without stages.

    sudo .venv/bin/python bench/stage_cost.py [--rounds 7] [--seconds 3] [--size 64] [--budget 64]

The path is ``tapengine bench``'s frame path (tapengine.benchrun)::

    gen -> g -> bridge 1 -> tap a => Engine wire (+ stages) => tap b -> bridge 2 -> s -> sink

built once in a private namespace; each run starts a fresh ``Engine`` on the same two taps with
one of the variants below, the generator sends flat out for ``--seconds`` and the sink counts what
arrived. Two figures per run: the rate at the sink (frames/s end to end: generator, bridges and
sink share the machine's two cores with the worker, so it swings with the load of everything else
running), and the worker's own rate, frames forwarded per second of the worker thread's CPU time
(user + system, ``pthread_getcpuclockid``): what the forwarder can move per core, the figure a
stage's cost shows in, and one that waiting for a CPU does not inflate. Variants run interleaved,
their order rotating every round; the report gives per variant the medians and the median of the
per-round ratios to the no-stage run of the same round (paired):

- ``none``: no stage (the built-in wire only);
- ``python-noop``: a Python stage that returns at once (the cost of taking the GIL and making a
  ``Batch`` once per batch);
- ``c-noop``: ``tapengine._stage.NullStage``, a C stage that does nothing (the cost of the
  mechanism: the verdict array, the checks after a stage);
- ``python-filter``: examples/stages/drop_port.py's vectorised UDP/TCP port filter (``l4_ports``
  over the batch), for a port the traffic does not use, so that every frame still arrives;
- ``c-acl`` (with ``--acl DIR``, a directory where examples/stages/acl was built): the external
  Cython stage ``port_acl.PortAcl`` dropping UDP port 53, which the traffic does not use.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tapengine import Batch
from tapengine._stage import NullStage
from tapengine.benchrun import FrameLab, _bridges, _netns, machine, run_frames
from tapengine.engine import Engine, open_port
from tapengine.netns import inside_netns
from tapengine.tun import open_queue

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "stages" / "drop_port.py"


def noop(batch: Batch) -> None:
    """A Python stage that looks at nothing."""


def port_filter() -> Any:
    """examples/stages/drop_port.py's DropPort for UDP port 53 (the generator sends to port 9)."""
    spec = importlib.util.spec_from_file_location("drop_port", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DropPort(udp=[53])


VARIANTS: dict[str, Callable[[], list[Any]]] = {
    "none": list,
    "python-noop": lambda: [noop],
    "c-noop": lambda: [NullStage()],
    "python-filter": lambda: [port_filter()],
}


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.3f} ({min(values):.3f}..{max(values):.3f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--size", default="64")
    parser.add_argument("--budget", type=int, default=64)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--acl", metavar="DIR", help="where examples/stages/acl was built")
    parser.add_argument("--json", action="store_true", help="the runs as JSON on stdout")
    args = parser.parse_args()
    variants = args.variants.split(",")
    if args.acl:
        sys.path.insert(0, args.acl)
        import port_acl

        VARIANTS["c-acl"] = lambda: [port_acl.PortAcl(udp=[53])]
        variants.append("c-acl")
    prefix = "te" + secrets.token_hex(2)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    ratios: dict[str, list[float]] = {name: [] for name in variants}
    cpu_rates: dict[str, list[float]] = {name: [] for name in variants}
    cpu_ratios: dict[str, list[float]] = {name: [] for name in variants}
    stage_ns: dict[str, list[float]] = {name: [] for name in variants}
    batch_sizes: dict[str, list[float]] = {name: [] for name in variants}
    loads: list[float] = []
    with contextlib.ExitStack() as stack:
        netns = _netns(stack, prefix + "sc")
        with inside_netns(netns):
            g = stack.enter_context(open_queue(prefix + "g", "tap"))
            s = stack.enter_context(open_queue(prefix + "s", "tap"))
            a = stack.enter_context(open_port(prefix + "a"))
            b = stack.enter_context(open_port(prefix + "b"))
        _bridges(netns, prefix, "a", "b")
        lab = FrameLab("engine", netns, g, s)
        for k in range(args.rounds):
            order = variants[k % len(variants):] + variants[:k % len(variants)]
            measured: dict[str, float] = {}
            per_cpu: dict[str, float] = {}
            for name in order:
                engine = Engine([a, b], "wire", budget=args.budget, stages=VARIANTS[name]())
                with engine:
                    run = run_frames(lab, args.size, args.seconds)
                    cpu = sum(time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
                              for thread in engine._threads if thread.ident is not None)
                stats = engine.stats()
                measured[name] = run.pps
                forwarded = sum(port.tx_packets for port in stats.ports)
                batches = sum(port.rx_batches for port in stats.ports)
                batch_sizes[name].append(sum(port.rx_packets for port in stats.ports)
                                         / max(batches, 1))
                per_cpu[name] = forwarded / cpu if cpu > 0 else 0.0
                for stage in stats.stages:
                    stage_ns[name].append(stage.ns / max(stage.batches, 1))
            loads.append(os.getloadavg()[0])
            for name in variants:
                rates[name].append(measured[name])
                cpu_rates[name].append(per_cpu[name])
                if measured.get("none"):
                    ratios[name].append(measured[name] / measured["none"])
                if per_cpu.get("none"):
                    cpu_ratios[name].append(per_cpu[name] / per_cpu["none"])
            print(f"round {k + 1}: " + ", ".join(
                f"{name} {measured[name]:,.0f} pps ({per_cpu[name]:,.0f}/CPU-s)"
                for name in variants) + f" (load {loads[-1]:.1f})",
                file=sys.stderr, flush=True)  # fmt: skip
    print(f"{machine()}; load average {min(loads):.1f}-{max(loads):.1f}; "
          f"{args.rounds} rounds x {args.seconds:g} s, {args.size}-byte frames, budget "
          f"{args.budget}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| variant | worker: frames per CPU-s, median | ratio to none, median (min..max) | "
          "end to end: pps, median | ratio to none, median (min..max) | frames per batch, "
          "median | ns per batch in the stage (wall), median |")
    print("|---|---|---|---|---|---|---|")
    for name in variants:
        ns = f"{statistics.median(stage_ns[name]):,.0f}" if stage_ns[name] else "-"
        print(f"| {name} | {statistics.median(cpu_rates[name]):,.0f} | "
              f"{_spread(cpu_ratios[name])} | {statistics.median(rates[name]):,.0f} | "
              f"{_spread(ratios[name])} | {statistics.median(batch_sizes[name]):.1f} | {ns} |")
    if args.json:
        print(json.dumps({"rates": rates, "ratios": ratios, "cpu_rates": cpu_rates,
                          "cpu_ratios": cpu_ratios, "stage_ns": stage_ns,
                          "batch_sizes": batch_sizes, "loads": loads}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
