"""``tapengine capture DEV -w FILE``: capture one tap or tun into a pcapng file, like tcpdump -i.

The frames are read from the device's own queue (what the kernel sends into the tap or tun, which
nothing else then reads), written in batches into a bounded buffer and from there to the file by
a thread of their own: if the disk cannot keep up, frames are dropped from the capture and counted
(the summary and the file's Interface Statistics Block say how many).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from tapengine._ring import PacketRing
from tapengine.cli.common import (
    FloatArg,
    IfnameArg,
    IntArg,
    PathArg,
    add_io_option,
    add_json_option,
    add_netns_option,
    example_epilog,
    open_io,
    run_with_progress,
)
from tapengine.engine import DEFAULT_TXQUEUELEN, EngineStats, raise_txqueuelen
from tapengine.kstats import LinkStats, read_stats
from tapengine.netns import inside_netns
from tapengine.pcap import (
    DEFAULT_SNAPLEN,
    ENGINE_DIRECTIONS,
    MAX_CAPLEN,
    MAX_FILE_MB,
    CaptureOptions,
    CaptureStage,
    linktype_of,
)
from tapengine.traffic import MAX_COUNT, MAX_DURATION, format_pps, open_device, probe_device
from tapengine.validate import MAX_TXQUEUELEN

#: Frames read per batch, and the slots of the receive ring (each holds a 64 KiB frame).
BUDGET = 64
SLOT_SIZE = 65536 + 128


def add_capture_file_options(parser: argparse.ArgumentParser, *, prefix: str = "") -> None:
    """``--snaplen`` and ``--pcap-size`` (and ``--pcap-superframes``): shared with ``forward
    --pcap``."""
    parser.add_argument("--snaplen", type=IntArg("snaplen", 1, MAX_CAPLEN),
                        default=DEFAULT_SNAPLEN, metavar="N",
                        help=f"keep at most N bytes of each frame (default: {DEFAULT_SNAPLEN})")
    parser.add_argument("--pcap-size", type=FloatArg("file size (MB)", high=MAX_FILE_MB),
                        metavar="MB", default=0.0,
                        help="start a new file (FILE1, FILE2, ...) once one holds MB million "
                             "bytes, like tcpdump -C")
    parser.add_argument("--pcap-superframes", action="store_true",
                        help="write GSO superframes as they are (up to 64 KiB) instead of the "
                             "segments a wire would carry")


def add_pcap_options(parser: argparse.ArgumentParser) -> None:
    """``--pcap FILE`` and its file options, for ``forward`` and ``switch``."""
    parser.add_argument("--pcap", type=PathArg("capture"), metavar="FILE",
                        help="capture every frame the engine receives and sends into FILE "
                             "(pcapng: an interface per port, each frame inbound on its ingress "
                             "port and outbound on its egress port)")
    parser.add_argument("--pcap-direction", choices=tuple(ENGINE_DIRECTIONS), default="both",
                        help="record frames received (in), sent (out) or both (default)")
    add_capture_file_options(parser)


def open_engine_capture(args: argparse.Namespace, ports: Sequence[Any]) -> CaptureStage | None:
    """The capture stage ``--pcap`` asks for (None without it): an interface per port, in the
    engine's port order, the link type of the ports' devices."""
    if not args.pcap:
        return None
    options = CaptureOptions(args.pcap, snaplen=args.snaplen, size_mb=args.pcap_size,
                             superframes=args.pcap_superframes)
    linktype = linktype_of("tun" if args.tun else "tap")
    writer = options.open([(port.name, linktype, port.vnet_hdr) for port in ports],
                          command=args.command_name, direction=args.pcap_direction)
    return CaptureStage(writer, direction=args.pcap_direction)


def close_engine_capture(capture: CaptureStage, final: EngineStats | None, command: str) -> None:
    """Close the capture once the engine stopped: each port's received packets and drops go
    in its Interface Statistics Block; one line on stderr says what was written."""
    stats = None if final is None else {
        index: {"received": port.counters["rx_packets"], "if_dropped": sum(port.drops.values())}
        for index, port in enumerate(final.ports)}
    files = capture.close(stats)
    counters = capture.writer.counters
    print(f"tapengine {command}: captured {int(counters['packets'].sum()):,} frames into "
          f"{', '.join(files)}; {int(counters['dropped'].sum()):,} dropped by the capture buffer",
          file=sys.stderr, flush=True)  # fmt: skip


def _tx_dropped_since(before: LinkStats) -> int | None:
    """Frames the kernel dropped at the device's queue (toward us) since ``before``; None if
    the device is gone."""
    try:
        return read_stats(before.name, before.netns).tx_dropped - before.tx_dropped
    except OSError:
        return None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "capture", help="capture a tap or tun into a pcapng file (like tcpdump -i DEV -w FILE)",
        description="Read every frame the kernel sends into the tap or tun DEV and write it to "
        "FILE as pcapng: one interface block named DEV, nanosecond timestamps taken when each "
        "batch was read, the direction (inbound), and the counts in an interface statistics "
        "block at the end. Runs until -c COUNT frames, --duration, or Ctrl-C/SIGTERM.",
        epilog=example_epilog(
            "tapengine capture tap0 -w tap0.pcapng -c 1000",
            "tapengine capture tun0 --netns lab -w tun0.pcapng --duration 10 --pcap-size 100",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("device", metavar="DEV", type=IfnameArg(), help="an existing tap or tun")
    add_netns_option(parser, "the namespace DEV lives in")
    parser.add_argument("-w", "--write", dest="file", required=True, type=PathArg("capture"),
                        metavar="FILE", help="the pcapng file to write")
    parser.add_argument("-c", "--count", type=IntArg("count", 1, MAX_COUNT),
                        help="stop after this many frames")
    parser.add_argument("--duration", type=FloatArg("duration", high=MAX_DURATION),
                        metavar="SECONDS", help="stop after this long")
    add_capture_file_options(parser)
    parser.add_argument("--txqueuelen", type=IntArg("txqueuelen", 0, MAX_TXQUEUELEN),
                        default=DEFAULT_TXQUEUELEN, metavar="N",
                        help="raise DEV's txqueuelen to at least N, so that bursts wait in its "
                             f"queue instead of being dropped (default: {DEFAULT_TXQUEUELEN}; "
                             "0: leave it)")
    add_io_option(parser)
    add_json_option(parser, "print the summary as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.set_defaults(func=run, command_name="capture")


def run(args: argparse.Namespace) -> int:
    options = CaptureOptions(args.file, snaplen=args.snaplen, size_mb=args.pcap_size,
                             superframes=args.pcap_superframes)
    info = probe_device(args.device, args.netns)
    ring = PacketRing(BUDGET, SLOT_SIZE)
    with open_device(info) as queue, open_io(args.io) as io:
        if args.txqueuelen:
            with inside_netns(info.netns):
                raise_txqueuelen(info.name, args.txqueuelen)
        writer = options.open([(info.name, linktype_of(info.mode), queue.vnet_hdr)],
                              command="capture")
        started = time.monotonic()
        before = read_stats(info.name, info.netns)

        def progress() -> str:
            c = writer.counters[0]
            rate = format_pps(int(c["packets"]) / max(time.monotonic() - started, 1e-9))
            return (f"capture {info.name}: {int(c['packets']):,} frames ({rate}), "
                    f"{int(c['dropped']):,} dropped")  # fmt: skip

        print(f"capturing on {info.name} ({info.mode}) into {args.file}; Ctrl-C or SIGTERM "
              "stops", flush=True)  # fmt: skip
        try:
            got, interrupted = run_with_progress(
                lambda: writer.run(queue, ring, count=args.count, duration=args.duration, io=io),
                writer.stop, progress,
                show=sys.stderr.isatty() and not args.quiet and not args.json,
            )
        finally:
            c = writer.counters[0]
            kernel_dropped = _tx_dropped_since(before)
            files = writer.close({0: {"received": int(c["packets"]) + int(c["dropped"]),
                                      "if_dropped": kernel_dropped}})
    elapsed = time.monotonic() - started
    c = writer.counters[0]
    result = {"device": info.name, "netns": info.netns, "mode": info.mode, "files": files,
              "received": int(got or 0), "captured": int(c["packets"]),
              "bytes": int(c["bytes"]), "dropped": int(c["dropped"]),
              "kernel_dropped": kernel_dropped,
              "superframes": int(c["superframes"]), "elapsed_s": round(elapsed, 6),
              "interrupted": interrupted}  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"capture {info.name}: {result['captured']:,} frames ({result['bytes']:,} bytes) "
              f"written to {', '.join(files)}; {result['dropped']:,} dropped by the capture "
              f"buffer, {kernel_dropped if kernel_dropped is not None else '?'} by the kernel "
              f"(the device's queue); {elapsed:.3f} s")  # fmt: skip
    return 0
