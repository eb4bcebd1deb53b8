"""VXLAN side by side: tapengine's VXLAN port, the same with UDP GSO/GRO and coalescing off, a
naive Python encapsulator (bench/baselines/naive_vxlan.py), and the kernel's own vxlan device.

The namespaces are those of the interop tests (tests/vxlannet.py): container a behind host a,
container b behind host b, hosts on an underlay bridge (IPv4, MTU 1500, VNI 42, port 4789).
Host b is always the kernel (a vxlan device in a bridge); only host a differs:

- ``kernel``: container a's veth in a bridge with a kernel vxlan device on host a;
- ``tapengine``: ``tapengine switch tap0 --vxlan 42 ...`` (UDP GSO, UDP GRO and TCP coalescing
  when the kernel has them: the default);
- ``tapengine-no-offload``: the same with ``--no-vxlan-offload`` (one datagram per frame and
  per send, one frame per tap write);
- ``naive``: the Python encapsulator (``os.read``/``sendto``, ``recvfrom``/``os.write``).

Two measurements per setup and round: TCP throughput (iperf3, one stream, container a -> b) and
the rate of 60-byte frames (an experimental ethertype, 64 bytes with the FCS) that ``trafgen``
sends flat out from container a, counted by the kernel vxlan device on host b (``rx_packets``).
Rounds interleave the setups (the order rotates); medians and ratios come out as a Markdown table,
/proc/loadavg per round on stderr. Needs root, iperf3 and trafgen.

    .venv/bin/python bench/vxlan.py --rounds 5
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
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))    # the interop tests' namespaces (tests/vxlannet.py)

from compare_forward import trafgen  # noqa: E402
from fwdnet import Host, kernel_stats  # noqa: E402
from tapengine.nsexec import nsexec_argv  # noqa: E402
from vxlannet import Net, built, ip, underlay_addr  # noqa: E402

SETUPS = ("kernel", "tapengine", "tapengine-no-offload", "naive")
VNI = 42


def popen(netns: str, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(nsexec_argv(netns, list(argv)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@contextlib.contextmanager
def host_a(net: Net, setup: str) -> Iterator[Host]:
    """Host a as ``setup`` does it; yields container a's interface."""
    a_addr, b_addr = underlay_addr("a", 4), underlay_addr("b", 4)
    if setup == "kernel":
        try:
            yield static_neighbors(net, net.kernel_host_a(VNI, 4, 4789, [b_addr]))
        finally:
            net.engine_host_a()
        return
    if setup == "naive":
        argv = [sys.executable, str(ROOT / "bench/baselines/naive_vxlan.py"), "tap0", str(VNI),
                a_addr, b_addr, "4789", net.ns("a")]
    else:
        argv = [sys.executable, "-m", "tapengine", "switch", "tap0", "--vxlan", str(VNI),
                "--local", a_addr, "--remote", b_addr, "--underlay-netns", net.ns("a"),
                *(["--no-vxlan-offload"] if setup == "tapengine-no-offload" else [])]
    proc = popen(net.ns("ca"), *argv)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{setup} did not start: {proc.communicate()[1]}")
        print(f"  {setup}: {line.strip()}", file=sys.stderr, flush=True)
        yield static_neighbors(net, net.host("a"))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def static_neighbors(net: Net, a: Host) -> Host:
    """Static ARP both ways (as the forwarding benchmarks do): a flood of the previous setup
    must not leave a failed neighbour entry behind."""
    b = net.host("b")
    for me, other in ((a, b), (b, a)):
        ip("neigh", "replace", other.ip, "lladdr", other.mac, "dev", me.ifname, "nud",
           "permanent", netns=me.netns)
    return a


def tcp_throughput(a: Host, b: Host, seconds: float) -> float:
    """Bits per second received by iperf3 in container b from one TCP stream from a."""
    server = popen(b.netns, "iperf3", "-s", "-1", "-B", b.ip)
    try:
        time.sleep(0.3)
        try:
            out = subprocess.run(nsexec_argv(a.netns, ["iperf3", "-c", b.ip, "-t",
                                                       f"{seconds:g}", "-J"]),
                                 capture_output=True, text=True, timeout=seconds + 30).stdout
        except subprocess.TimeoutExpired:
            print("  iperf3: no result (timed out)", file=sys.stderr, flush=True)
            return 0.0
        result = json.loads(out)
        if "error" in result:
            print(f"  iperf3: {result['error']}", file=sys.stderr, flush=True)
            return 0.0
        return float(result["end"]["sum_received"]["bits_per_second"])
    finally:
        server.kill()
        server.wait(10)


def small_frame_rate(net: Net, a: Host, b: Host, seconds: float) -> float:
    """60-byte frames per second that reach host b's vxlan device while trafgen sends flat out
    from container a toward container b's MAC."""
    frame = (bytes.fromhex(b.mac.replace(":", "")) + bytes.fromhex(a.mac.replace(":", ""))
             + b"\x88\xb5" + bytes(46))
    vx = Host(net.ns("b"), "vx", "")
    with tempfile.NamedTemporaryFile("w", suffix=".cfg") as conf:
        conf.write("{ " + ", ".join(f"0x{byte:02x}" for byte in frame) + " }\n")
        conf.flush()
        # trafgen and the worker it forks end together (compare_forward.trafgen says why)
        with trafgen(a.netns, "-o", a.ifname, "-i", conf.name, "-P", "1", "--no-sock-mem",
                     "-Q", "-C"):  # fmt: skip
            time.sleep(1.0)                                 # warm up
            t0, rx0 = time.monotonic(), kernel_stats(vx)["rx_packets"]
            time.sleep(seconds)
            t1, rx1 = time.monotonic(), kernel_stats(vx)["rx_packets"]
    return (rx1 - rx0) / (t1 - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tcp-seconds", type=float, default=5.0)
    parser.add_argument("--frame-seconds", type=float, default=3.0)
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--json", type=Path, help="also write every run to this file")
    args = parser.parse_args()
    setups = args.setups.split(",")
    runs: dict[str, dict[str, list[float]]] = {s: {"tcp": [], "pps": []} for s in setups}
    with built("te" + secrets.token_hex(3)) as net:
        net.kernel_vtep("b", VNI, 4, 4789, [underlay_addr("a", 4)])
        b = net.host("b")
        for round_ in range(args.rounds):
            load0 = Path("/proc/loadavg").read_text().strip()
            order = setups[round_ % len(setups):] + setups[:round_ % len(setups)]
            for setup in order:
                with host_a(net, setup) as a:
                    runs[setup]["tcp"].append(tcp_throughput(a, b, args.tcp_seconds))
                    runs[setup]["pps"].append(small_frame_rate(net, a, b, args.frame_seconds))
                print(f"round {round_ + 1} {setup:<22} tcp {runs[setup]['tcp'][-1] / 1e9:.2f} "
                      f"Gbit/s  64-byte {runs[setup]['pps'][-1]:,.0f}/s", file=sys.stderr,
                      flush=True)  # fmt: skip
            print(f"round {round_ + 1} loadavg before: {load0}  after: "
                  f"{Path('/proc/loadavg').read_text().strip()}", file=sys.stderr, flush=True)
    med = {s: {k: statistics.median(v) for k, v in r.items()} for s, r in runs.items()}
    print(f"\n{args.rounds} interleaved rounds; TCP: iperf3, one stream, {args.tcp_seconds:g} s; "
          f"frames: trafgen, 60 bytes, {args.frame_seconds:g} s, counted on host b's vxlan\n")
    refs = [ref for ref in ("kernel", "tapengine-no-offload", "naive") if ref in setups]
    head = ["setup", "TCP Gbit/s", "64-byte frames/s"] + [
        f"{m} vs {ref}" for ref in refs for m in ("TCP", "frames")]
    print("| " + " | ".join(head) + " |")
    print("|---" * len(head) + "|")
    for setup in setups:
        cells = [setup,
                 f"**{med[setup]['tcp'] / 1e9:.2f}** ("
                 + ", ".join(f"{v / 1e9:.2f}" for v in runs[setup]["tcp"]) + ")",
                 f"**{med[setup]['pps']:,.0f}** ("
                 + ", ".join(f"{v / 1e3:.0f}k" for v in runs[setup]["pps"]) + ")"]
        for ref in refs:
            for m in ("tcp", "pps"):
                cells.append(f"{med[setup][m] / med[ref][m]:.2f}x" if med[ref][m] else "-")
        print("| " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "medians": med}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
