"""Forwarding side by side: tapengine, the naive Python forwarder, a veth pair, the kernel bridge.

Every setup joins namespace A (10.77.0.1) and namespace B (10.77.0.2); only the middle differs:

- ``tapengine``: ``tapengine forward ta tb`` (offloads on, the default); the taps are created by
  the command, then their links moved into A and B.
- ``tapengine-no-offload``: the same with ``--no-offload`` (plain MTU frames).
- ``tapengine-uring``: the same with ``--io uring`` (a batch per io_uring submission).
- ``naive``: ``python -m tapengine.naive_forward ta tb`` (os.read/os.write with epoll).
- ``veth``: a veth pair straight from A to B (no forwarder at all: the ceiling).
- ``bridge``: A's veth and B's veth joined by a kernel bridge in a third namespace.
- ``<tapengine setup>+--option=value...``: the same with more options of ``tapengine forward``,
  e.g. ``tapengine+--io=uring+--coalesce-usecs=30``.
- ``<tapengine setup>@before`` (with ``--python-before PY``): the same tapengine setup run by
  another build's interpreter, e.g. an older commit's worktree venv, so that two builds are
  interleaved in one run (``--setups tapengine,tapengine@before``).

Two measurements per setup and round: TCP throughput (iperf3, one stream, A -> B) and the rate of
60-byte frames (64 on a wire with the FCS: Ethernet + IPv4 + UDP + 18 bytes) that ``trafgen``
(netsniff-ng) sends flat out from A, counted by the kernel on B's interface (``rx_packets``).
Rounds interleave the setups (rotating the order each round); medians and ratios are printed as
a Markdown table. Needs root, iperf3 and trafgen; everything lives in namespaces named
``te<hex>...`` and is removed afterwards, also on Ctrl-C.

    .venv/bin/python bench/compare_forward.py --rounds 3
    .venv/bin/python bench/compare_forward.py --python-before /work/wt-before/.venv/bin/python \
        --setups tapengine,tapengine@before,naive,bridge

Each round's ``/proc/loadavg`` before and after is printed on stderr (and kept in ``--json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tapengine.devices import add_neighbor, create_bridge, create_veth, get_link
from tapengine.kstats import read_stats
from tapengine.netns import create_netns

SETUPS = ("tapengine", "tapengine-no-offload", "tapengine-uring", "naive", "veth", "bridge")
IPS = ("10.77.0.1", "10.77.0.2")


@dataclass
class Side:
    netns: str
    ifname: str
    ip: str
    mac: str = ""
    forwarder_pid: int | None = None     # the userspace forwarder between A and B, if any


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far; 0 without one."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def netns_run(netns: str, *argv: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True,
                          text=True, check=True, **kwargs)  # type: ignore[call-overload]


def netns_popen(netns: str, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", netns, *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


@contextlib.contextmanager
def trafgen(netns: str, *args: str, grace: float = 10.0) -> Iterator[subprocess.Popen[str]]:
    """``trafgen ARGS`` inside ``netns`` for the body of the ``with``; then it ends, with
    everything it forked. trafgen forks a worker per CPU (``-P``): signalling only the parent,
    and SIGKILLing it when it did not end in time on a loaded machine, left the worker sending
    forever, orphaned (and its namespace alive). So it runs in a session of its own and the
    whole group gets SIGINT, then SIGKILL after ``grace`` seconds for what is left of it."""
    gen = subprocess.Popen(["ip", "netns", "exec", netns, "trafgen", *args],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)  # fmt: skip
    try:
        yield gen
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(gen.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            gen.wait(grace)
        with contextlib.suppress(ProcessLookupError):   # the workers, the parent gone or not
            os.killpg(gen.pid, signal.SIGKILL)
        gen.communicate()


def configure(sides: tuple[Side, Side]) -> None:
    for side in sides:
        link = get_link(side.ifname, side.netns)
        link.add_address(f"{side.ip}/24")
        link.up()
        side.mac = link.info()["mac"]
    for side, other in (sides, sides[::-1]):
        add_neighbor(side.ifname, other.ip, other.mac, netns=side.netns)


def quiet(netns: str) -> None:
    for scope in ("all", "default"):
        netns_run(netns, "sysctl", "-qw", f"net.ipv6.conf.{scope}.disable_ipv6=1")


@contextlib.contextmanager
def forwarder_process(argv: list[str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if "forwarding" not in line:
            raise RuntimeError(f"{argv[0]} did not start: {line}{proc.communicate()[1]}")
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


@contextlib.contextmanager
def topology(setup: str, pin_cpu: int | None = None, python_before: str | None = None,
             extra_args: Sequence[str] = ()) -> Iterator[tuple[Side, Side]]:
    python = sys.executable
    if setup.endswith("@before"):
        setup = setup.removesuffix("@before")
        if python_before is None or not setup.startswith("tapengine"):
            raise ValueError(f"{setup}@before needs --python-before and a tapengine setup")
        python = python_before
    setup, *options = setup.split("+")
    prefix = "te" + secrets.token_hex(3)
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(create_netns(prefix + "a")).name
        b = stack.enter_context(create_netns(prefix + "b")).name
        for netns in (a, b):
            quiet(netns)
        if setup in ("tapengine", "tapengine-no-offload", "tapengine-uring", "naive"):
            taps = (prefix + "ta", prefix + "tb")
            if setup == "naive":
                argv = [sys.executable, "-m", "tapengine.naive_forward", *taps]
            else:
                argv = [python, "-m", "tapengine", "forward", *taps]
                if setup == "tapengine-no-offload":
                    argv.append("--no-offload")
                if setup == "tapengine-uring":
                    argv += ["--io", "uring"]
                for option in options:
                    argv += option.split("=", 1)
                argv += extra_args      # e.g. --pcap FILE (bench/capture_cost.py)
            if pin_cpu is not None:
                argv = ["taskset", "-c", str(pin_cpu), *argv]
            pid = stack.enter_context(forwarder_process(argv)).pid
            for tap, netns in zip(taps, (a, b), strict=True):
                get_link(tap).move_to(netns)
            sides = (Side(a, taps[0], IPS[0], forwarder_pid=pid), Side(b, taps[1], IPS[1]))
        elif setup == "veth":
            create_veth(prefix + "va", prefix + "vb", netns=a, peer_netns=b)
            sides = (Side(a, prefix + "va", IPS[0]), Side(b, prefix + "vb", IPS[1]))
        elif setup == "bridge":
            s = stack.enter_context(create_netns(prefix + "s")).name
            quiet(s)
            bridge = create_bridge(prefix + "br", netns=s)
            create_veth(prefix + "va", prefix + "sa", netns=a, peer_netns=s)
            create_veth(prefix + "vb", prefix + "sb", netns=b, peer_netns=s)
            for port in (prefix + "sa", prefix + "sb"):
                bridge.attach(port)
                get_link(port, s).up()
            bridge.up()
            sides = (Side(a, prefix + "va", IPS[0]), Side(b, prefix + "vb", IPS[1]))
        else:
            raise ValueError(setup)
        configure(sides)
        yield sides


def tcp_throughput(a: Side, b: Side, seconds: float) -> float:
    """Bits per second received by iperf3 in B from one TCP stream from A."""
    server = netns_popen(b.netns, "iperf3", "-s", "-1", "-B", b.ip)
    try:
        time.sleep(0.3)
        out = netns_run(a.netns, "iperf3", "-c", b.ip, "-t", f"{seconds:g}", "-J",
                        timeout=seconds + 30).stdout
        return float(json.loads(out)["end"]["sum_received"]["bits_per_second"])
    finally:
        server.wait(10)


def small_frame_rate(a: Side, b: Side, seconds: float, kind: str,
                     rate: str | None = None) -> tuple[float, float, float]:
    """(frames/s counted on B's interface, frames/s offered by trafgen on A's interface,
    frames per CPU-second of the userspace forwarder, 0 where there is none).

    ``kind`` "udp": IPv4/UDP to port 9 of B (B's stack takes each in, then answers with a
    rate-limited ICMP); "raw": an IEEE local experimental ethertype (0x88b5) that B's stack
    counts and drops at once, so the figure is the forwarding path alone. ``rate``: trafgen's
    ``-b`` (e.g. ``100000pps``) instead of flat out.
    """
    if kind == "udp":
        frame = bytes(Ether(src=a.mac, dst=b.mac) / IP(src=a.ip, dst=b.ip) /
                      UDP(sport=9999, dport=9) / (b"\0" * 18))
    else:
        frame = bytes(Ether(src=a.mac, dst=b.mac, type=0x88B5) / (b"\0" * 46))
    assert len(frame) == 60
    with tempfile.NamedTemporaryFile("w", suffix=".cfg") as conf:
        conf.write("{ " + ", ".join(f"0x{byte:02x}" for byte in frame) + " }\n")
        conf.flush()
        with trafgen(a.netns, "-o", a.ifname, "-i", conf.name, "-P", "1", "--no-sock-mem",
                     "-Q", "-C", *(["-b", rate] if rate else [])):  # fmt: skip
            time.sleep(1.0)                                 # warm up
            rx0, tx0 = read_stats(b.ifname, b.netns), read_stats(a.ifname, a.netns)
            cpu0 = cpu_seconds(a.forwarder_pid)
            time.sleep(seconds)
            rx1, tx1 = read_stats(b.ifname, b.netns), read_stats(a.ifname, a.netns)
            cpu1 = cpu_seconds(a.forwarder_pid)
    span = rx1.timestamp - rx0.timestamp
    offered = (tx1.tx_packets + tx1.tx_dropped) - (tx0.tx_packets + tx0.tx_dropped)
    received = rx1.rx_packets - rx0.rx_packets
    per_cpu = received / (cpu1 - cpu0) if cpu1 > cpu0 else 0.0
    return received / span, offered / span, per_cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tcp-seconds", type=float, default=10.0)
    parser.add_argument("--frame-seconds", type=float, default=5.0)
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--frames", default="raw,udp", help="frame kinds to send: raw, udp")
    parser.add_argument("--no-tcp", action="store_true")
    parser.add_argument("--rate", metavar="RATE",
                        help="trafgen's -b (e.g. 100000pps): frames at that rate, not flat out")
    parser.add_argument("--pin", type=int, default=1, metavar="CPU",
                        help="run the userspace forwarders on this CPU (trafgen's sender is "
                             "pinned to CPU 0 by trafgen itself); -1: leave it to the scheduler")
    parser.add_argument("--json", type=Path, help="also write every run to this file")
    parser.add_argument("--python-before", metavar="PY",
                        help="interpreter (of another build's venv) for the <setup>@before "
                             "setups")
    args = parser.parse_args()
    setups = args.setups.split(",")
    kinds = [kind for kind in args.frames.split(",") if kind]
    metrics = ([] if args.no_tcp else ["tcp"]) + [f"{kind}_pps" for kind in kinds] + \
        [f"{kind}_per_cpu_s" for kind in kinds] + [f"{kind}_offered" for kind in kinds]
    runs = {setup: {metric: [] for metric in metrics} for setup in setups}
    loadavg: list[tuple[str, str]] = []
    for round_ in range(args.rounds):
        load0 = Path("/proc/loadavg").read_text().strip()
        order = setups[round_ % len(setups):] + setups[:round_ % len(setups)]
        for setup in order:
            result: dict[str, float] = {}
            with topology(setup, None if args.pin < 0 else args.pin,
                          args.python_before) as (a, b):
                if not args.no_tcp:
                    result["tcp"] = tcp_throughput(a, b, args.tcp_seconds)
                for kind in kinds:
                    (result[f"{kind}_pps"], result[f"{kind}_offered"],
                     result[f"{kind}_per_cpu_s"]) = small_frame_rate(a, b, args.frame_seconds,
                                                                     kind, args.rate)
            for metric, value in result.items():
                runs[setup][metric].append(value)
            print(f"round {round_ + 1} {setup:<27} " + "  ".join(
                f"{metric} {value / 1e9:.2f} Gbit/s" if metric == "tcp" else
                f"{metric} {value:,.0f}/s" for metric, value in result.items()),
                file=sys.stderr, flush=True)
        loadavg.append((load0, Path("/proc/loadavg").read_text().strip()))
        print(f"round {round_ + 1} loadavg before: {loadavg[-1][0]}  after: {loadavg[-1][1]}",
              file=sys.stderr, flush=True)
    med = {s: {k: statistics.median(v) for k, v in r.items()} for s, r in runs.items()}
    pinned = "not pinned" if args.pin < 0 else f"pinned to CPU {args.pin}"
    print(f"\nuserspace forwarders {pinned}; trafgen's sender on CPU 0; {os.cpu_count()} CPUs")
    print(f"{args.rounds} interleaved rounds; TCP: iperf3, one stream, {args.tcp_seconds:g} s; "
          f"frames: trafgen, 60-byte frames (64 with FCS), {args.frame_seconds:g} s, counted by "
          f"the kernel on B's interface\n")
    columns = [m for m in metrics if not m.endswith("_offered")]
    head = ["setup"] + [("TCP Gbit/s" if m == "tcp" else f"{m[:-4]} frames/s"
                         if m.endswith("_pps") else f"{m[:-10]} frames per forwarder CPU-s")
                        for m in columns]
    ratios = [(m, ref) for m in columns for ref in ("bridge", "naive") if ref in setups
              and not (ref == "bridge" and m.endswith("_per_cpu_s"))]
    head += [f"{m.replace('_pps', '').replace('_per_cpu_s', ' per CPU-s')} vs {ref}"
             for m, ref in ratios]
    print("| " + " | ".join(head) + " |")
    print("|---" * len(head) + "|")
    for setup in setups:
        cells = [setup]
        for m in columns:
            scale = 1e9 if m == "tcp" else 1
            values = ", ".join(f"{v / scale:.2f}" if m == "tcp" else f"{v / 1e3:.0f}k"
                               for v in runs[setup][m])
            median = f"{med[setup][m] / scale:.2f}" if m == "tcp" else f"{med[setup][m]:,.0f}"
            cells.append(f"**{median}** ({values})")
        for m, ref in ratios:
            cells.append(f"{med[setup][m] / med[ref][m]:.2f}x"
                         if med[ref][m] and med[setup][m] else "-")
        print("| " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "medians": med, "loadavg": loadavg},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
