"""``tapengine demo``: the main job on a built-in topology, then everything removed again.

Two network namespaces, each holding one tap; the taps are opened here (in the root namespace)
and their links moved into the namespaces, which a tun fd survives. The engine forwards between
them while the kernel's own stack talks across: ping, then one iperf3 TCP stream, with live
progress. Then a table of what was forwarded, checked against the kernel's counters. Namespaces
and taps are removed on the way out, also on Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import secrets
import shutil
import subprocess
import sys
import time
from typing import Any

from tapengine.cli.common import CommandError, FloatArg, IntArg, add_json_option, example_epilog
from tapengine.cli.forward import MAX_QUEUES
from tapengine.devices import get_link
from tapengine.engine import Engine, EngineStats, offload_names, open_ports
from tapengine.kstats import read_stats
from tapengine.netns import create_netns, inside_netns
from tapengine.signals import stop_signals

ADDRESSES = ("10.77.0.1", "10.77.0.2")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="forward the kernel's traffic between two namespaces (built-in topology)",
        description="Build two namespaces with a tap each, forward between the taps with the "
                    "engine while ping and iperf3 run across, show progress and a table of what "
                    "was forwarded, then remove everything.",
        epilog=example_epilog("tapengine demo", "tapengine demo --seconds 10 --no-offload"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=FloatArg("length", low=1, high=600, low_inclusive=True),
                        default=5.0, metavar="S",
                        help="length of the iperf3 TCP run (default: 5, 1 to 600)")
    parser.add_argument("--no-offload", action="store_true",
                        help="plain MTU frames instead of 64 KiB superframes")
    parser.add_argument("--queues", type=IntArg("number of queues", 1, MAX_QUEUES), default=1,
                        metavar="N", help="queues per tap, one worker each (default: 1, at most "
                        f"{MAX_QUEUES})")
    add_json_option(parser, "the results as JSON")
    parser.set_defaults(func=run, command_name="demo")


def _spawn(netns: str, argv: list[str]) -> subprocess.Popen[str]:
    # A child forked by a thread inside a namespace starts in that namespace.
    with inside_netns(netns):
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(args: argparse.Namespace) -> int:
    missing = [tool for tool in ("ping", "iperf3") if shutil.which(tool) is None]
    if missing:
        raise CommandError(f"the demo needs {' and '.join(missing)}: run 'make system-deps' "
                           "(or apt-get install iputils-ping iperf3)")
    say = (lambda *parts: print(*parts, file=sys.stderr, flush=True)) if args.json else \
        (lambda *parts: print(*parts, flush=True))
    prefix = "te" + secrets.token_hex(3)
    names = [prefix + "t" + side for side in ("a", "b")]
    with stop_signals("raise"), contextlib.ExitStack() as stack:
        namespaces = [stack.enter_context(create_netns(prefix + side)) for side in ("a", "b")]
        ports = open_ports(names, queues=args.queues, offload=not args.no_offload)
        for port in ports:
            stack.callback(port.close)
        for name, namespace, address in zip(names, namespaces, ADDRESSES, strict=True):
            get_link(name).move_to(namespace.name)
            link = get_link(name, namespace.name)
            link.add_address(f"{address}/24")
            link.up()
        offload = "+".join(offload_names(ports[0].offload)) or "off"
        say(f"topology: {namespaces[0].name} [{names[0]} {ADDRESSES[0]}] <-- tapengine wire "
            f"--> [{names[1]} {ADDRESSES[1]}] {namespaces[1].name}")
        say(f"          {args.queues} queue(s) per tap, offload {offload}")
        engine = stack.enter_context(Engine(ports, "wire"))
        say("forwarding.")

        ping = _spawn(namespaces[0].name, ["ping", "-c", "5", "-i", "0.2", "-W", "2",
                                           ADDRESSES[1]])
        stack.callback(_stop, ping)
        ping_out, _ = ping.communicate(timeout=30)
        ping_summary = [line for line in ping_out.splitlines() if "packets transmitted" in line
                        or line.startswith("rtt")]
        say("ping " + ADDRESSES[1] + ": " + " / ".join(ping_summary or ["no output"]))

        server = _spawn(namespaces[1].name, ["iperf3", "-s", "-1", "-B", ADDRESSES[1]])
        stack.callback(_stop, server)
        time.sleep(0.3)
        client = _spawn(namespaces[0].name, ["iperf3", "-c", ADDRESSES[1], "-t",
                                             f"{args.seconds:g}", "-J"])
        stack.callback(_stop, client)
        say(f"iperf3: one TCP stream {ADDRESSES[0]} -> {ADDRESSES[1]} for {args.seconds:g} s")
        earlier = engine.stats()
        while client.poll() is None:
            time.sleep(1.0)
            now = engine.stats()
            rate = now.rates(earlier)[names[0]]
            say(f"  {now.elapsed:5.1f}s  {rate['rx_bps'] / 1e9:6.2f} Gbit/s "
                f"{rate['rx_pps']:>9,.0f} pps   forwarded {now.ports[0].rx_packets:>9,} packets "
                f"{now.ports[0].rx_bytes / 1e9:6.2f} GB")
            earlier = now
        iperf = _iperf_summary(client.communicate()[0])
        time.sleep(0.2)
        engine.stop()
        final = engine.stats()
        # A tap counts tx when we read and rx when we write: with the engine stopped, the
        # kernel's counters must match ours exactly.
        kernel = {name: read_stats(name, namespace.name)
                  for name, namespace in zip(names, namespaces, strict=True)}
        say(_format_result(final, kernel, iperf, ping_summary))
        if args.json:
            print(json.dumps({"engine": final.as_json(), "iperf3": iperf,
                              "ping": ping_summary,
                              "kernel": {name: stats.counters() for name, stats in
                                         kernel.items()}}, indent=2))
    # Said once the ExitStack has removed them (not before).
    say(f"removed namespaces {prefix}a and {prefix}b and taps {names[0]} and {names[1]}")
    return 0


def _iperf_summary(output: str) -> dict[str, Any]:
    try:
        end = json.loads(output)["end"]
        return {"sent_bps": end["sum_sent"]["bits_per_second"],
                "received_bps": end["sum_received"]["bits_per_second"],
                "bytes": end["sum_received"]["bytes"],
                "retransmits": end["sum_sent"].get("retransmits", 0)}
    except (ValueError, KeyError) as err:
        match = re.search(r'"error":\s*"([^"]*)"', output)
        raise CommandError(f"iperf3 failed: {match.group(1) if match else err}") from None


def _format_result(final: EngineStats, kernel: dict[str, Any], iperf: dict[str, Any],
                   ping_summary: list[str]) -> str:
    lines = [
        "",
        f"iperf3: {iperf['received_bps'] / 1e9:.2f} Gbit/s received, "
        f"{iperf['bytes'] / 1e9:.2f} GB, {iperf['retransmits']} retransmits",
        "",
        f"{'':<12}{'tapengine':>40}  {'kernel (inside the namespace)':>40}",
        f"{'port':<12}{'rx packets':>12}{'rx bytes':>14}{'tx packets':>14}  "
        f"{'tx packets':>12}{'tx bytes':>14}{'rx packets':>14}",
    ]
    for port in final.ports:
        k = kernel[port.name]
        lines.append(f"{port.name:<12}{port.rx_packets:>12,}{port.rx_bytes:>14,}"
                     f"{port.tx_packets:>14,}  {k.tx_packets:>12,}{k.tx_bytes:>14,}"
                     f"{k.rx_packets:>14,}")
    drops = {port.name: port.drops for port in final.ports if port.drops}
    mean = final.ports[0].rx_bytes / max(final.ports[0].rx_packets, 1)
    lines += [
        f"mean frame read from {final.ports[0].name}: {mean:,.0f} bytes "
        f"({'superframes passed through' if mean > 1514 else 'MTU frames'})",
        "drops: " + (", ".join(f"{name} {d}" for name, d in drops.items()) if drops else "none"),
        "batch sizes: " + ", ".join(f"{size}: {n:,}" for size, n in final.batch_sizes.items()
                                    if n),
    ]
    return "\n".join(lines)
