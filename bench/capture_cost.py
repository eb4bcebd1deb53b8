"""What capturing costs (issue 12): pcapng capture against tcpdump, and inside the forwarder.

    .venv/bin/python bench/capture_cost.py [--rounds 5] [--seconds 5] [--parts tcpdump,forward]
                                           [--io readv|uring] [--json FILE]

Every capture file goes to tmpfs (``/dev/shm``), so the figures are the capture path, not a disk.

``tcpdump``: the same tap captured by ``tapengine capture DEV -w FILE`` and by ``tcpdump -i DEV
-w FILE`` (tcpdump's defaults: a 2 MiB kernel buffer, full snaplen). In a private namespace a
bridge joins tap SRC and tap DST; ``tapengine gen SRC`` writes 64-byte frames (60 bytes written)
flat out for ``--seconds``; the bridge floods them out of DST. ``capture`` reads DST's queue
itself; tcpdump needs someone to hold DST's queue (``tapengine sink DST``, which reads and counts)
and captures through its packet socket. The figure is the frames *in the file* per second of the
generator's run (tapengine: the summary's ``captured``; tcpdump: the file's packet count, read
by tapengine.pcap.PcapReader). Rounds alternate A B A B (the order rotates); medians and the
ratio capture/tcpdump are printed.

``forward``: ``tapengine forward ta tb`` against ``tapengine forward ta tb --pcap FILE`` in
bench/compare_forward.py's topology (namespaces A and B, one tap each), 60-byte frames (64 on a
wire) sent flat out by trafgen from A and counted by the kernel on B (``rx_packets``), and the
frames forwarded per CPU-second of the forwarder process (which, on a machine whose cores are
shared, says more than the rate); the cost is 1 - (with capture / without).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from compare_forward import cpu_seconds, netns_run, quiet, small_frame_rate, topology
from tapengine.devices import create_bridge, create_tap, get_link
from tapengine.netns import create_netns
from tapengine.pcap import PcapReader

SHM = Path("/dev/shm")


def tapengine_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "tapengine", *args]


@contextlib.contextmanager
def lab() -> Iterator[tuple[str, str, str]]:
    """A namespace with a bridge joining taps SRC and DST (persistent, up, IPv6 off)."""
    prefix = "te" + secrets.token_hex(3)
    with create_netns(prefix + "n") as ns:
        quiet(ns.name)
        netns_run(ns.name, "sysctl", "-qw", "net.ipv4.igmp_link_local_mcast_reports=0")
        bridge = create_bridge(prefix + "br", netns=ns.name)
        for name in (prefix + "s", prefix + "d"):
            create_tap(name, netns=ns.name)
            bridge.attach(name)
            get_link(name, ns.name).up()
        bridge.up()
        yield ns.name, prefix + "s", prefix + "d"


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


def generate(netns: str, src: str, seconds: float) -> int:
    """``tapengine gen SRC`` flat out for ``seconds`` (64-byte frames); returns frames written.
    (trafgen cannot be the source: tcpdump does not see what a packet socket sends.)"""
    out = subprocess.run(tapengine_argv("gen", src, "--netns", netns, "--duration", f"{seconds:g}",
                                        "--size", "64", "--json", "--quiet"),
                         capture_output=True, text=True, check=True).stdout
    return int(json.loads(out)["packets"])


def wait_ready(proc: subprocess.Popen[str], stream: str, words: str) -> None:
    pipe = proc.stdout if stream == "stdout" else proc.stderr
    assert pipe is not None
    line = pipe.readline()
    if words not in line:
        raise RuntimeError(f"not ready: {line!r} {stop(proc)}")


def run_capture(netns: str, src: str, dst: str, seconds: float,
                io: str = "readv") -> dict[str, float]:
    path = SHM / f"{dst}.pcapng"
    proc = subprocess.Popen(tapengine_argv("capture", dst, "--netns", netns, "-w", str(path),
                                           "--json", "--quiet", "--io", io),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(proc, "stdout", "capturing on")
        cpu0 = cpu_seconds(proc.pid)
        sent = generate(netns, src, seconds)
        time.sleep(0.5)                 # what is still queued toward the capture
        cpu = cpu_seconds(proc.pid) - cpu0
    finally:
        out, _ = stop(proc)
    try:
        result = json.loads(out)
    finally:
        path.unlink(missing_ok=True)
    return {"sent": sent, "in_file": result["captured"], "dropped": result["dropped"],
            "pps": result["captured"] / seconds, "per_cpu_s": result["captured"] / cpu}


def run_tcpdump(netns: str, src: str, dst: str, seconds: float) -> dict[str, float]:
    path = SHM / f"{dst}.pcap"
    sink = subprocess.Popen(tapengine_argv("sink", dst, "--netns", netns, "--json", "--quiet"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dump = subprocess.Popen(["ip", "netns", "exec", netns, "tcpdump", "-i", dst, "-n", "-w",
                             str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(dump, "stderr", "listening on")
        time.sleep(0.5)                 # the sink has the tap open
        cpu0 = cpu_seconds(dump.pid)
        sent = generate(netns, src, seconds)
        time.sleep(0.5)
        cpu = cpu_seconds(dump.pid) - cpu0
    finally:
        _, dump_err = stop(dump)
        stop(sink)
    try:
        with PcapReader(path) as reader:
            in_file = reader.scan()["packets"]
    finally:
        path.unlink(missing_ok=True)
    dropped = next((int(line.split()[0]) for line in dump_err.splitlines()
                    if "dropped by kernel" in line), -1)
    return {"sent": sent, "in_file": in_file, "dropped": dropped, "pps": in_file / seconds,
            "per_cpu_s": in_file / cpu}


def interleave(rounds: int, sides: dict[str, Callable[[], dict[str, float]]]
               ) -> dict[str, list[dict[str, float]]]:
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    names = list(sides)
    for index in range(rounds):
        order = names[index % len(names):] + names[:index % len(names)]
        for name in order:
            load = Path("/proc/loadavg").read_text().split()[0]
            result = sides[name]()
            result["load"] = float(load)
            runs[name].append(result)
            print(f"round {index + 1} {name}: {result}", file=sys.stderr, flush=True)
    return runs


def median(runs: list[dict[str, float]], key: str = "pps") -> float:
    return statistics.median(run[key] for run in runs)


def part_tcpdump(rounds: int, seconds: float, io: str = "readv") -> dict[str, object]:
    with lab() as (netns, src, dst):
        runs = interleave(rounds, {
            "tapengine capture": lambda: run_capture(netns, src, dst, seconds, io),
            "tcpdump -w": lambda: run_tcpdump(netns, src, dst, seconds),
        })
    rows = []
    for key, what in (("pps", "frames/s written to the file"),
                      ("per_cpu_s", "frames per CPU-second of the capturing process")):
        ours, theirs = median(runs["tapengine capture"], key), median(runs["tcpdump -w"], key)
        rows.append(f"| {what} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.2f}x |")
    print(f"\n| 64-byte frames, {seconds:g} s, tmpfs, median of {rounds} | tapengine capture | "
          "tcpdump -w | ratio |\n|---|---|---|---|\n" + "\n".join(rows))
    return {"runs": runs}


def forward_rate(seconds: float, pcap: bool) -> dict[str, float]:
    path = SHM / f"fwd-{secrets.token_hex(3)}.pcapng"
    extra = ["--pcap", str(path)] if pcap else []
    try:
        with topology("tapengine", extra_args=extra) as (a, b):
            rate, offered, per_cpu = small_frame_rate(a, b, seconds, "raw")
        return {"pps": rate, "offered": offered, "per_cpu": per_cpu,
                "file_bytes": path.stat().st_size if pcap else 0}
    finally:
        for name in SHM.glob(path.name + "*"):
            name.unlink()


def part_forward(rounds: int, seconds: float, io: str = "readv") -> dict[str, object]:
    runs = interleave(rounds, {
        "forward": lambda: forward_rate(seconds, False),
        "forward --pcap": lambda: forward_rate(seconds, True),
    })
    rows = []
    for key, what in (("pps", "60-byte frames/s counted on B"),
                      ("per_cpu", "frames per CPU-second of the forwarder")):
        plain, captured = median(runs["forward"], key), median(runs["forward --pcap"], key)
        rows.append(f"| {what} | {plain:,.0f} | {captured:,.0f} | {1 - captured / plain:.1%} |")
    print(f"\n| trafgen flat out, {seconds:g} s, tmpfs, median of {rounds} | forward | "
          "forward --pcap | cost |\n|---|---|---|---|\n" + "\n".join(rows))
    return {"runs": runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--parts", default="tcpdump,forward")
    parser.add_argument("--io", choices=("readv", "uring"), default="readv",
                        help="tapengine capture's --io (the tcpdump part)")
    parser.add_argument("--json", type=Path, help="also write every run to this file")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root (namespaces and taps)")
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}; "
          f"load {Path('/proc/loadavg').read_text().strip()}", file=sys.stderr)
    out: dict[str, object] = {}
    for part in args.parts.split(","):
        out[part] = {"tcpdump": part_tcpdump, "forward": part_forward}[part](
            args.rounds, args.seconds, args.io)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
