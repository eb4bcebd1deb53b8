"""``tapengine forward A B`` (a wire between two taps) and ``tapengine switch P1 P2 ...``.

Both open the devices (creating any that do not exist; those vanish again on exit), start the
engine, print one line once it forwards, run until SIGINT or SIGTERM, then print final stats.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

from tapengine.cli import CommandError, example_epilog
from tapengine.engine import (
    DEFAULT_TXQUEUELEN,
    Engine,
    EngineStats,
    Port,
    offload_names,
    open_ports,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    forward = subparsers.add_parser(
        "forward", help="forward between two taps (a wire)",
        description="Forward every frame between two tun/tap devices until SIGINT or SIGTERM. "
                    "Devices that do not exist are created, and removed again on exit.",
        epilog=example_epilog("tapengine forward tap0 tap1 --stats-interval 1",
                              "tapengine forward tun0 tun1 --tun --queues 2 --json"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    forward.add_argument("ports", nargs=2, metavar="DEVICE", help="the two devices to join")
    _add_common(forward)
    forward.set_defaults(func=run, command_name="forward", mode="wire")

    switch = subparsers.add_parser(
        "switch", help="a learning switch between taps",
        description="A learning Ethernet switch between two or more taps: known unicast goes to "
                    "its port, unknown unicast, broadcast and multicast to all others.",
        epilog=example_epilog("tapengine switch tap0 tap1 tap2 tap3 --stats-interval 2"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    switch.add_argument("ports", nargs="+", metavar="TAP", help="the taps to switch between")
    _add_common(switch)
    switch.add_argument("--ageing", type=float, default=300.0, metavar="S",
                        help="forget a MAC not seen for S seconds (default: 300)")
    switch.add_argument("--table-size", type=int, default=4096, metavar="N",
                        help="most MAC addresses the table holds (default: 4096)")
    switch.set_defaults(func=run, command_name="switch", mode="switch")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queues", type=int, default=1, metavar="N",
                        help="open N queues per device, one worker thread per queue (default: 1)")
    parser.add_argument("--tun", action="store_true", help="tun devices (IP packets), not taps")
    parser.add_argument("--no-offload", action="store_true",
                        help="no virtio-net header: plain MTU frames instead of 64 KiB superframes")
    parser.add_argument("--txqueuelen", type=int, default=DEFAULT_TXQUEUELEN, metavar="N",
                        help="raise each device's txqueuelen to at least N, so bursts toward "
                             f"the engine are queued, not dropped (default: {DEFAULT_TXQUEUELEN}; "
                             "0: leave it)")
    parser.add_argument("--stats-interval", type=float, default=0.0, metavar="S",
                        help="print live rates on stderr every S seconds")
    parser.add_argument("--budget", type=int, default=64, metavar="N",
                        help="most packets read from one port per pass (default: 64)")
    parser.add_argument("--io", choices=("readv", "uring"), default="readv",
                        help="system calls per packet (readv/writev, the default) or io_uring "
                             "submissions per batch")
    parser.add_argument("--json", action="store_true", help="final stats as JSON")


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM while the block runs; the old handlers come back after."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def format_rates(stats: EngineStats, earlier: EngineStats) -> str:
    parts = []
    for name, rate in stats.rates(earlier).items():
        parts.append(f"{name} rx {rate['rx_pps']:,.0f} pps {rate['rx_bps'] / 1e6:,.1f} Mbit/s "
                     f"tx {rate['tx_pps']:,.0f} pps {rate['tx_bps'] / 1e6:,.1f} Mbit/s")
    drops = sum(port.rx_dropped + port.tx_dropped for port in stats.ports)
    return f"[{stats.elapsed:7.1f}s] " + " | ".join(parts) + f" | dropped {drops}"


def run(args: argparse.Namespace) -> int:
    if args.mode == "switch" and len(args.ports) < 2:
        raise CommandError("a switch needs at least two taps")
    if args.mode == "switch" and args.tun:
        raise CommandError("a switch forwards Ethernet frames: --tun is not possible here")
    if len(set(args.ports)) != len(args.ports):
        raise CommandError(f"a device is listed twice: {' '.join(args.ports)}")
    if not 1 <= args.queues <= 64:
        raise CommandError(f"--queues must be between 1 and 64, not {args.queues}")
    if not 1 <= args.budget <= 256:
        raise CommandError(f"--budget must be between 1 and 256, not {args.budget}")
    if args.txqueuelen < 0:
        raise CommandError(f"--txqueuelen must be >= 0, not {args.txqueuelen}")
    if args.stats_interval < 0:
        raise CommandError("--stats-interval must be >= 0")
    ports: list[Port] = open_ports(args.ports, mode="tun" if args.tun else "tap",
                                   queues=args.queues, offload=not args.no_offload,
                                   txqueuelen=args.txqueuelen)
    try:
        kwargs = {"table_size": args.table_size, "ageing": args.ageing} \
            if args.mode == "switch" else {}
        engine = Engine(ports, args.mode, budget=args.budget, io=args.io, **kwargs)
        with stop_on_signals() as stop:
            engine.start()
            try:
                offload = "+".join(offload_names(ports[0].offload)) or "off"
                joiner = " <-> " if args.mode == "wire" else ", "
                print(f"{args.command_name}ing {joiner.join(args.ports)}: "
                      f"{'tun' if args.tun else 'tap'}, {args.queues} queue(s), "
                      f"offload {offload}; Ctrl-C or SIGTERM stops", flush=True)
                _watch(engine, stop, args.stats_interval)
            finally:
                engine.close()
        final = engine.stats()
    finally:
        for port in ports:
            port.close()
    if args.json:
        print(json.dumps(final.as_json(), indent=2))
    else:
        print(final.format())
    return 0


def _watch(engine: Engine, stop: threading.Event, interval: float) -> None:
    """Until ``stop`` is set: report ports that go down and, every ``interval`` s, live rates."""
    earlier = engine.stats()
    tick = min(interval, 0.5) if interval > 0 else 0.5
    while not stop.wait(tick):
        for event in engine.events():
            print(f"tapengine: {event}", file=sys.stderr, flush=True)
        if not engine.running:
            raise CommandError("the forwarding workers stopped unexpectedly")
        if interval > 0:
            now = engine.stats()
            if now.timestamp - earlier.timestamp >= interval:
                print(format_rates(now, earlier), file=sys.stderr, flush=True)
                earlier = now
    for event in engine.events():
        print(f"tapengine: {event}", file=sys.stderr, flush=True)
