"""Offloads and queues side by side: TCP through ``tapengine forward`` against the kernel.

Namespace A (10.77.0.1) sends to namespace B (10.77.0.2) with iperf3; only the middle differs:

- ``offload``: ``tapengine forward ta tb`` (offloads on: 64 KiB superframes pass through).
- ``no-offload``: the same with ``--no-offload`` (plain MTU frames).
- ``veth``, ``bridge``: a direct veth pair, and two veths joined by a kernel bridge
  (from ``bench/compare_forward.py``).
- ``q1-P4`` / ``q2-P4``: ``tapengine forward`` with one queue / ``--queues 2``, iperf3 ``-P 4``.
- any setup name plus ``+ARGS`` runs ``tapengine forward`` with extra options, e.g.
  ``offload+--io=uring`` or ``q2-P4+--budget=128`` (``=`` becomes a space); the options
  ``--spin``, ``--pin-workers``, ``--txqueuelen``, ``--sndbuf`` run ``bench/lever_forward.py``
  (the same ``Engine`` with those knobs) instead of the CLI.

Rounds interleave the setups (order rotated each round); the table gives medians, every run,
ratios to the references, iperf3's retransmits and the forwarder's CPU seconds per GB.

    .venv/bin/python bench/compare_offload.py --rounds 3 --seconds 10
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_forward import (
    IPS,
    Side,
    configure,
    cpu_seconds,
    forwarder_process,
    netns_popen,
    netns_run,
    quiet,
)
from compare_forward import topology as kernel_topology
from tapengine.devices import get_link
from tapengine.netns import create_netns

SETUPS = ("offload", "no-offload", "veth", "bridge", "q1-P4", "q2-P4")
HERE = Path(__file__).resolve().parent
LEVERS = {"--spin", "--pin-workers", "--txqueuelen", "--sndbuf"}
TARGETS = (("offload", "veth", 0.8), ("offload", "bridge", 0.9), ("offload", "no-offload", 2.0),
           ("q2-P4", "q1-P4", 1.3))


def parse(setup: str) -> tuple[str, list[str], int]:
    """(base setup, extra ``tapengine forward`` options, iperf3 streams)."""
    base, _, extra = setup.partition("+")
    options = [word for part in extra.split("+") if part for word in part.split("=")]
    streams = 4 if base.endswith("-P4") else 1
    if base == "no-offload":
        options.append("--no-offload")
    if base.startswith("q2"):
        options += ["--queues", "2"]
    return base, options, streams


@contextlib.contextmanager
def engine_topology(options: list[str], pin: str | None) -> Iterator[tuple[Side, Side]]:
    prefix = "te" + secrets.token_hex(3)
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(create_netns(prefix + "a")).name
        b = stack.enter_context(create_netns(prefix + "b")).name
        for netns in (a, b):
            quiet(netns)
        taps = (prefix + "ta", prefix + "tb")
        argv = [sys.executable, "-m", "tapengine", "forward", *taps, *options]
        if LEVERS & set(options):           # levers the CLI does not offer: the same Engine
            argv = [sys.executable, str(HERE / "lever_forward.py"), *taps, *options]
        if pin:
            argv = ["taskset", "-c", pin, *argv]
        pid = stack.enter_context(forwarder_process(argv)).pid
        for tap, netns in zip(taps, (a, b), strict=True):
            get_link(tap).move_to(netns)
        sides = (Side(a, taps[0], IPS[0], forwarder_pid=pid), Side(b, taps[1], IPS[1]))
        configure(sides)
        yield sides


def topology(setup: str, pin: str | None) -> contextlib.AbstractContextManager[tuple[Side, Side]]:
    base, options, _ = parse(setup)
    if base in ("veth", "bridge"):
        return kernel_topology(base)
    return engine_topology(options, pin)


def iperf(a: Side, b: Side, seconds: float, streams: int) -> dict[str, float]:
    """Bits per second received in B, retransmits, and forwarder CPU seconds per GB."""
    server = netns_popen(b.netns, "iperf3", "-s", "-1", "-B", b.ip)
    try:
        time.sleep(0.3)
        cpu0 = cpu_seconds(a.forwarder_pid)
        out = netns_run(a.netns, "iperf3", "-c", b.ip, "-t", f"{seconds:g}", "-P", str(streams),
                        "-J", timeout=seconds + 30).stdout
        cpu1 = cpu_seconds(a.forwarder_pid)
    finally:
        server.wait(10)
    end = json.loads(out)["end"]
    received = float(end["sum_received"]["bytes"])
    return {"bps": float(end["sum_received"]["bits_per_second"]),
            "retransmits": float(end["sum_sent"].get("retransmits", 0)),
            "cpu_s_per_gb": (cpu1 - cpu0) / (received / 1e9) if received else 0.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--pin", default="", metavar="CPUS",
                        help="taskset -c CPUS for the forwarder (default: not pinned)")
    parser.add_argument("--json", type=Path, help="also write every run to this file")
    args = parser.parse_args()
    setups = args.setups.split(",")
    runs: dict[str, dict[str, list[float]]] = {
        s: {"bps": [], "retransmits": [], "cpu_s_per_gb": []} for s in setups}
    for round_ in range(args.rounds):
        order = setups[round_ % len(setups):] + setups[:round_ % len(setups)]
        for setup in order:
            with topology(setup, args.pin or None) as (a, b):
                result = iperf(a, b, args.seconds, parse(setup)[2])
            for key, value in result.items():
                runs[setup][key].append(value)
            print(f"round {round_ + 1} {setup:<24} {result['bps'] / 1e9:6.2f} Gbit/s  "
                  f"retr {result['retransmits']:.0f}  cpu {result['cpu_s_per_gb']:.2f} s/GB",
                  file=sys.stderr, flush=True)
    med = {s: {k: statistics.median(v) for k, v in r.items()} for s, r in runs.items()}
    print(f"\n{os.cpu_count()} CPUs; {args.rounds} interleaved rounds; iperf3 TCP "
          f"{args.seconds:g} s; forwarder "
          f"{'pinned to ' + args.pin if args.pin else 'not pinned'}\n")
    print("| setup | streams | Gbit/s median (runs) | spread | retransmits (median) "
          "| forwarder CPU s/GB |")
    print("|---|---|---|---|---|---|")
    for setup in setups:
        values = runs[setup]["bps"]
        spread = (max(values) - min(values)) / med[setup]["bps"] if med[setup]["bps"] else 0
        print(f"| {setup} | {parse(setup)[2]} | **{med[setup]['bps'] / 1e9:.2f}** ("
              + ", ".join(f"{v / 1e9:.2f}" for v in values) + f") | {spread:.0%} | "
              f"{med[setup]['retransmits']:.0f} | {med[setup]['cpu_s_per_gb']:.2f} |")
    print("\n| ratio | median | target | per round |")
    print("|---|---|---|---|")
    for setup in setups:
        for top, ref, target in TARGETS:
            if setup.partition("+")[0] != top or ref not in setups:
                continue
            paired = [x / y for x, y in zip(runs[setup]["bps"], runs[ref]["bps"], strict=True)]
            ratio = med[setup]["bps"] / med[ref]["bps"]
            print(f"| {setup} / {ref} | **{ratio:.2f}x** | >= {target}x "
                  f"{'met' if ratio >= target else 'MISSED'} | "
                  + ", ".join(f"{r:.2f}" for r in paired) + " |")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "medians": med}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
