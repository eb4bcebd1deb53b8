"""``tapengine forward A B`` (a wire between two taps) and ``tapengine switch P1 P2 ...``.

Both check every argument, open the devices (creating any that do not exist; those vanish again
on exit), start the engine, print one line once it forwards, and run until a stop signal
(SIGINT, SIGTERM, SIGHUP or SIGQUIT), then print final stats. SIGUSR1 prints a snapshot of the
stats on stderr and forwarding goes on (as ``dd`` does). A failure before forwarding starts gives
every device back the txqueuelen it had.

``--stage PATH.py:NAME`` (or ``MODULE:NAME``) runs a Python stage on every batch before the wire or
switch decides (tapengine.Stage). A stage that cannot be loaded is one line and exit code 1; a
stage that raises stops forwarding with exit code STAGE_FAILED_EXIT (3): one line when it raised
on its first batch, else the stage's traceback, then the line.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tapengine.cli.capture import add_pcap_options, close_engine_capture, open_engine_capture
from tapengine.cli.common import (
    ArgType,
    CommandError,
    FloatArg,
    IfnameArg,
    IntArg,
    add_io_option,
    add_json_option,
    add_user_option,
    become,
    example_epilog,
)
from tapengine.cli.metrics_option import add_metrics_option, check_metrics, serving_metrics
from tapengine.cli.udp_option import add_udp_options, check_udp_options, open_forward_ports
from tapengine.cli.vxlan_option import add_vxlan_options, check_vxlan_options, open_vxlan_ports
from tapengine.engine import (
    DEFAULT_COALESCE_USECS,
    DEFAULT_TXQUEUELEN,
    MAX_AGEING,
    MAX_BUDGET,
    MAX_COALESCE_USECS,
    MAX_SWITCH_PORTS,
    MAX_TABLE_SIZE,
    MIN_TABLE_SIZE,
    Engine,
    EngineMode,
    EngineStats,
    Port,
    StuckWorkerError,
    close_ports,
    offload_names,
)
from tapengine.errors import InvalidValueError, StageError
from tapengine.metrics import EngineCollector
from tapengine.pcap import CaptureStage
from tapengine.privileges import Identity
from tapengine.signals import on_signal, signal_name, stop_signals
from tapengine.validate import MAX_TXQUEUELEN

if TYPE_CHECKING:
    from tapengine.metrics import MetricsServer

#: Most queues per device the engine serves (one worker thread each).
MAX_QUEUES = 64
#: Longest --stats-interval: a day.
MAX_STATS_INTERVAL = 86400.0
#: The exit code when a stage raised and stopped forwarding.
STAGE_FAILED_EXIT = 3

SIGNALS_HELP = ("\n\nSIGINT (Ctrl-C), SIGTERM, SIGHUP or SIGQUIT stops it and prints the final "
                "stats;\nSIGUSR1 prints a snapshot of the stats on stderr and forwarding goes on."
                "\nA --stage that raises stops it with exit code "
                f"{STAGE_FAILED_EXIT} (and its traceback).")


class StageArg(ArgType):
    """``PATH.py:NAME`` or ``MODULE:NAME``: its form is checked here, the stage loaded later."""

    kind = "stage"

    def convert(self, text: str) -> str:
        from tapengine.stages import StageLoadError, split_spec

        try:
            split_spec(text)
        except StageLoadError as err:
            raise InvalidValueError(str(err)) from None
        return text


def register(subparsers: argparse._SubParsersAction) -> None:
    forward = subparsers.add_parser(
        "forward", help="forward between two taps, or a tap and a UDP socket (a wire)",
        description="Forward every frame between two tun/tap devices, or between one and a UDP "
                    "socket (--udp), until stopped.\nDevices that do not exist are created, and "
                    "removed again on exit." + SIGNALS_HELP,
        epilog=example_epilog("tapengine forward tap0 tap1 --stats-interval 1",
                              "tapengine forward tun0 tun1 --tun --queues 2 --json",
                              "tapengine forward tun0 --tun --udp 10.77.0.1:4789 "
                              "--peer 10.77.0.2:4789",

"tapengine forward tap0 tap1 --stage "
                              "examples/stages/drop_port.py:stage"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    forward.add_argument("ports", nargs="+", metavar="DEVICE", type=IfnameArg(),
                         help="the two devices to join (one with --udp)")
    _add_common(forward)
    add_udp_options(forward)
    forward.set_defaults(func=run, command_name="forward", mode="wire")

    switch = subparsers.add_parser(
        "switch", help=f"a learning switch between taps (2 to {MAX_SWITCH_PORTS})",
        description="A learning Ethernet switch between two or more taps (at most "
                    f"{MAX_SWITCH_PORTS}):\nknown unicast goes to its port, unknown unicast, "
                    "broadcast and multicast to all others." + SIGNALS_HELP,
        epilog=example_epilog("tapengine switch tap0 tap1 tap2 tap3 --stats-interval 2"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    switch.add_argument("ports", nargs="+", metavar="TAP", type=IfnameArg(),
                        help=f"the taps to switch between (2 to {MAX_SWITCH_PORTS})")
    _add_common(switch)
    switch.add_argument("--ageing", type=FloatArg("ageing time", high=MAX_AGEING), default=300.0,
                        metavar="S", help="forget a MAC not seen for S seconds (default: 300)")
    switch.add_argument("--table-size", type=IntArg("MAC table size", MIN_TABLE_SIZE,
                                                    MAX_TABLE_SIZE),
                        default=4096, metavar="N",
                        help="most MAC addresses the table holds (default: 4096, "
                             f"{MIN_TABLE_SIZE} to {MAX_TABLE_SIZE})")
    switch.set_defaults(func=run, command_name="switch", mode="switch")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queues", type=IntArg("number of queues", 1, MAX_QUEUES), default=1,
                        metavar="N", help="open N queues per device, one worker thread per "
                        f"queue (default: 1, at most {MAX_QUEUES})")
    parser.add_argument("--tun", action="store_true", help="tun devices (IP packets), not taps")
    parser.add_argument("--no-offload", action="store_true",
                        help="no virtio-net header: plain MTU frames instead of 64 KiB superframes")
    parser.add_argument("--txqueuelen", type=IntArg("txqueuelen", 0, MAX_TXQUEUELEN),
                        default=DEFAULT_TXQUEUELEN, metavar="N",
                        help="raise each device's txqueuelen to at least N, so bursts toward "
                             f"the engine are queued, not dropped (default: {DEFAULT_TXQUEUELEN}; "
                             "0: leave it)")
    parser.add_argument("--stats-interval", default=0.0, metavar="S",
                        type=FloatArg("stats interval", high=MAX_STATS_INTERVAL,
                                      low_inclusive=True),
                        help="print live rates on stderr every S seconds (0, the default: none)")
    parser.add_argument("--budget", type=IntArg("budget", 1, MAX_BUDGET), default=64,
                        metavar="N", help="most packets read from one port per pass "
                        f"(default: 64, at most {MAX_BUDGET})")
    add_user_option(parser)
    parser.add_argument("--share-queues", action="store_true",
                        help="attach to multi-queue devices whose queues another process already "
                             "holds (refused by default: the kernel would split the traffic)")
    parser.add_argument("--coalesce-usecs", default=DEFAULT_COALESCE_USECS, metavar="US",
                        type=IntArg("coalesce time (microseconds)", 0, MAX_COALESCE_USECS),
                        help="after a wakeup that found only a few packets, wait US "
                             "microseconds for a batch before looking again: less CPU per "
                             "frame at moderate rates, at most US of added latency (default: "
                             f"{DEFAULT_COALESCE_USECS}; 0: off; at most {MAX_COALESCE_USECS})")
    add_io_option(parser, auto=True)
    add_metrics_option(parser)
    parser.add_argument("--stage", action="append", type=StageArg(), default=[],
                        metavar="PATH.py:NAME|MODULE:NAME",
                        help="run this Python stage on every batch before the built-in "
                             "wire/switch decides (repeat for several, run in order)")
    add_pcap_options(parser)
    add_vxlan_options(parser)
    add_json_option(parser, "final stats as JSON")


def format_rates(stats: EngineStats, earlier: EngineStats) -> str:
    """One line of live rates: per port its state, rx/tx packets and bits per second, and drops
    per second (every column a rate over the same span)."""
    parts = []
    rates = stats.rates(earlier)
    for port in stats.ports:
        rate = rates[port.name]
        state = "" if port.operstate == "UP" else " DOWN"
        parts.append(f"{port.name}{state} rx {rate['rx_pps']:,.0f} pps "
                     f"{rate['rx_bps'] / 1e6:,.1f} Mbit/s tx {rate['tx_pps']:,.0f} pps "
                     f"{rate['tx_bps'] / 1e6:,.1f} Mbit/s")  # fmt: skip
    dropped = sum(rate["dropped_pps"] for rate in rates.values())
    return f"[{stats.elapsed:7.1f}s] " + " | ".join(parts) + f" | dropped {dropped:,.0f}/s"


def run(args: argparse.Namespace) -> int:
    # Everything is checked before a device is opened, created or changed.
    check_vxlan_options(args)
    if (args.mode == "switch" and args.vxlan is None
            and not 2 <= len(args.ports) <= MAX_SWITCH_PORTS):
        raise CommandError(f"a switch takes 2 to {MAX_SWITCH_PORTS} taps, not {len(args.ports)}")
    if args.mode == "switch" and args.tun:
        raise CommandError("a switch forwards Ethernet frames: --tun is not possible here")
    if len(set(args.ports)) != len(args.ports):
        raise CommandError(f"a device is listed twice: {' '.join(args.ports)}")
    stages = []
    if args.stage:
        from tapengine.stages import load_stage

        stages = [load_stage(spec) for spec in args.stage]
    check_udp_options(args)
    check_metrics(args)
    with serving_metrics(args, EngineCollector()) as metrics:  # bound before any device opens
        opener = open_forward_ports if args.vxlan is None else open_vxlan_ports
        ports, label = opener(args, mode="tun" if args.tun else "tap",
                              queues=args.queues, offload=not args.no_offload,
                              txqueuelen=args.txqueuelen, share=args.share_queues)
        switch_options = {"table_size": args.table_size, "ageing": args.ageing} \
            if args.mode == "switch" else {}
        try:
            capture = open_engine_capture(args, ports)
        except BaseException:
            close_ports(ports, restore=True)
            raise
        if capture is not None:         # first: it sees every frame as it arrived
            stages = [capture, *stages]
        return serve(ports, args.mode, command=args.command_name, label=label, capture=capture,
                     budget=args.budget, io=args.io, coalesce_usecs=args.coalesce_usecs,
                     stats_interval=args.stats_interval, as_json=args.json, user=args.user,
                     metrics=metrics, stages=stages,
                     **switch_options)  # fmt: skip


def serve(ports: list[Port], mode: EngineMode, *, command: str, label: str, budget: int = 64,
          io: str = "auto", coalesce_usecs: int = DEFAULT_COALESCE_USECS,
          stats_interval: float = 0.0, as_json: bool = False,
          user: Identity | None = None, metrics: MetricsServer | None = None,
          stages: Sequence[Any] = (), capture: CaptureStage | None = None,
          **switch_options: Any) -> int:  # fmt: skip
    """Forward between open ``ports`` until a stop signal, then print the final stats; the
    ports are closed on the way out (a failure gives back the txqueuelen they raised).
    ``command`` and ``label`` make the ready line: ``forwarding tap0 <-> tap1: ...``. With
    ``user`` the process drops every privilege before the workers start. ``metrics`` (the
    server of an ``EngineCollector``) is given the engine; its URL goes in the ready line. A
    worker that failed (and stopped the engine) or did not stop is a one-line error; in the
    second case the ports stay open, since the worker may still use them. A stage that raised:
    its traceback (unless on its first batch), the final stats, one line, and
    STAGE_FAILED_EXIT. ``capture`` (``--pcap``, also one of ``stages``) is closed once the
    engine stopped, each port's final counts in its statistics block."""
    done = False
    engine: Engine | None = None
    failed: StageError | None = None
    try:
        engine = Engine(ports, mode, budget=budget, io=io, coalesce_usecs=coalesce_usecs,
                        stages=stages, **switch_options)
        if metrics is not None:
            metrics.collector.engine = engine
        become(user)
        with stop_signals("flag") as caught, on_signal(signal.SIGUSR1) as snapshot:
            engine.start()
            try:
                offload = "+".join(offload_names(ports[0].offload)) or "off"
                verb = "switching" if mode == "switch" else "forwarding"
                served = f"; metrics at {metrics.url}" if metrics is not None else ""
                print(f"{verb} {label}: {ports[0].mode}, {ports[0].nqueues} queue(s), "
                      f"offload {offload}{served}; Ctrl-C or SIGTERM stops", flush=True)
                _watch(engine, caught.event, snapshot, stats_interval)
            finally:
                failed = _close(engine)
        final = engine.stats()
        done = True
    finally:
        if engine is None or not engine.running:    # a stuck worker may still use them
            close_ports(ports, restore=not done)  # a failure gives back the txqueuelen it raised
            if capture is not None:     # (one of the stages): the engine no longer uses it
                close_engine_capture(capture, final if done else None, command)
    if caught.first is not None:
        print(f"tapengine {command}: stopped by {signal_name(caught.first)}",
              file=sys.stderr, flush=True)  # fmt: skip
    if failed is not None and not failed.first_batch and failed.__cause__ is not None:
        traceback.print_exception(failed.__cause__, file=sys.stderr)
    if as_json:
        print(json.dumps(final.as_json(), indent=2))
    else:
        print(final.format())
    if failed is not None:
        when = "on its first batch" if failed.first_batch else "while forwarding"
        print(f"tapengine {command}: {failed} ({when}); forwarding stopped",
              file=sys.stderr, flush=True)  # fmt: skip
        return STAGE_FAILED_EXIT
    return 0


def _close(engine: Engine) -> StageError | None:
    """``engine.close()``, a failed or stuck worker said in one line; returns the StageError of
    a stage that stopped the engine."""
    try:
        engine.close()
    except StuckWorkerError as err:
        raise CommandError(f"{err}; its devices stay open until this process exits") from None
    except StageError as err:
        return err
    except Exception as err:
        if engine.failure is None:
            raise
        raise CommandError(f"a forwarding worker failed and stopped the engine: {err}") from None
    return None


def _report(engine: Engine) -> None:
    for event in [*engine.events(), *engine.link_events()]:
        print(f"tapengine: {event}", file=sys.stderr, flush=True)


def _watch(engine: Engine, stop: threading.Event, snapshot: threading.Event,
           interval: float) -> None:  # fmt: skip
    """Until ``stop`` is set: report ports and links that go down and, every ``interval`` s,
    live rates; on ``snapshot`` (SIGUSR1) the stats so far."""
    earlier = engine.stats()
    tick = min(interval, 0.5) if interval > 0 else 0.5
    while not stop.wait(tick):
        _report(engine)
        if not engine.running:
            if engine.failure is None:
                raise CommandError("the forwarding workers stopped unexpectedly")
            break               # a worker failed: _close() says why
        if snapshot.is_set():
            snapshot.clear()
            print(engine.stats().format(), file=sys.stderr, flush=True)
        if interval > 0:
            now = engine.stats()
            if now.timestamp - earlier.timestamp >= interval:
                print(format_rates(now, earlier), file=sys.stderr, flush=True)
                earlier = now
    _report(engine)
