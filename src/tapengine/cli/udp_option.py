"""``tapengine forward DEVICE --udp LOCAL_ADDR:PORT [--peer ADDR:PORT] [--netns NAME]``: a wire
between one tun/tap and a UDP socket port (``tapengine.udpport``).

Every packet DEVICE hands over leaves as the payload of one datagram to the peer, and every
datagram received is written to DEVICE: with a second ``tapengine forward`` at the peer, a
flannel-UDP-style tunnel. ``--netns`` opens the devices and the socket inside a namespace.
Everything is checked before a device is opened.
"""

from __future__ import annotations

import argparse
from typing import Any

from tapengine.cli.common import CommandError, EndpointArg, NetnsArg, StoreOnce
from tapengine.engine import close_ports, open_ports
from tapengine.netns import netns_exists, run_in_netns
from tapengine.udpport import open_udp_port
from tapengine.validate import format_endpoint


def add_udp_options(parser: argparse.ArgumentParser) -> None:
    """``--udp``, ``--peer`` and ``--netns`` (of ``forward``)."""
    group = parser.add_argument_group(
        "a UDP socket as the second port",
        "each packet of DEVICE is one datagram; IPv6 addresses in brackets: [fd77::1]:4789",
    )  # fmt: skip
    group.add_argument("--udp", action=StoreOnce, metavar="LOCAL_ADDR:PORT",
                       type=EndpointArg("local address", allow_zero_port=True),
                       help="join DEVICE with a UDP socket bound to this address (port 0: the "
                            "kernel picks one, the ready line says which)")  # fmt: skip
    group.add_argument("--peer", action=StoreOnce, metavar="ADDR:PORT",
                       type=EndpointArg("peer address"),
                       help="connect the UDP socket to this address: packets of DEVICE go there, "
                            "and only its datagrams are taken (without it datagrams from anyone "
                            "are taken, and a packet leaves only if a stage gives it an address)")
    group.add_argument("--netns", type=NetnsArg(), metavar="NAME",
                       help="open the devices and the UDP socket inside network namespace NAME")


def check_udp_options(args: argparse.Namespace) -> None:
    """Refuse, before anything is opened, a device count or option that does not fit."""
    if args.mode != "wire":
        return
    if getattr(args, "vxlan", None) is not None:    # the other kind of second port
        given = [flag for flag, value in (("--peer", args.peer), ("--netns", args.netns))
                 if value is not None]
        if given:
            raise CommandError(f"{' and '.join(given)}: only with --udp, not with --vxlan "
                               "(--underlay-netns NS opens the VXLAN sockets in NS)")
        return
    count = len(args.ports)
    if args.udp is None:
        if args.peer is not None:
            raise CommandError("--peer needs --udp: it is the address the UDP socket sends to")
        if count != 2:
            raise CommandError(f"forward joins two devices, or one device and --udp; {count} "
                               "given")  # fmt: skip
    else:
        if count != 1:
            raise CommandError(f"with --udp, forward takes one device (the UDP socket is the "
                               f"other port), not {count}")  # fmt: skip
        if args.queues != 1:
            raise CommandError("a UDP port serves one worker: --queues must be 1 with --udp")
        if args.peer is not None and (":" in args.peer[0]) != (":" in args.udp[0]):
            raise CommandError(f"--udp {format_endpoint(args.udp)} and --peer "
                               f"{format_endpoint(args.peer)}: both must be IPv4 or both IPv6")
    if args.netns is not None and not netns_exists(args.netns):
        raise CommandError(f"network namespace {args.netns!r} does not exist (create it with "
                           f"'tapengine netns add {args.netns}')")  # fmt: skip


def open_forward_ports(args: argparse.Namespace, **options: Any) -> tuple[list[Any], str]:
    """Open the devices (inside ``--netns``) with ``open_ports(**options)``, then the UDP socket
    of ``--udp``; all or none. Returns the ports and the label of the ready line."""
    netns = getattr(args, "netns", None)
    ports: list[Any] = run_in_netns(netns, open_ports, args.ports, **options)
    udp = getattr(args, "udp", None)
    if udp is None:
        return ports, (" <-> " if args.mode == "wire" else ", ").join(args.ports)
    try:
        port = open_udp_port(udp, args.peer, netns=netns)
    except BaseException:
        close_ports(ports, restore=True)
        raise
    ports.append(port)
    peer = f"peer {format_endpoint(port.remote)}" if port.remote else "no peer"
    return ports, f"{args.ports[0]} <-> {port.name} ({peer})"
