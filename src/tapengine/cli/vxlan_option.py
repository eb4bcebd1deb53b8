"""``--vxlan VNI --local ADDR [--remote ADDR]... [--dstport PORT] [--fdb MAC=ADDR]...
[--underlay-netns NS]`` on ``tapengine switch`` and ``tapengine forward``: a VXLAN tunnel
endpoint (``tapengine.vxlan``) as one more port of the switch, or as the far end of a wire with
one tap.

Every value is checked before anything is opened. The taps open in the namespace the command
runs in (a host's namespace, when started inside it), the VXLAN sockets there too or in
``--underlay-netns``. A tap whose MTU does not fit the underlay once encapsulated is refused with
the command that fixes it; a tap the command creates itself gets the largest MTU that fits.
"""

from __future__ import annotations

import argparse
from typing import Any

from tapengine import validate
from tapengine.cli.common import ArgType, CommandError, IntArg, NetnsArg, ParsedArg, StoreOnce
from tapengine.engine import close_ports, open_ports
from tapengine.errors import DeviceNotFoundError
from tapengine.netlink import find_link, netlink_errors, rtnl
from tapengine.netns import netns_exists
from tapengine.vxlan import (
    DEFAULT_POOL,
    IANA_PORT,
    KERNEL_PORT,
    MAX_POOL,
    MAX_VNI,
    MIN_POOL,
    VxlanPort,
    check_tap_mtu,
    open_vxlan_port,
    parse_fdb,
)

#: The options that mean nothing without --vxlan.
VXLAN_ONLY = ("local", "remote", "fdb", "underlay_netns", "source_ports", "no_vxlan_offload")


class IpArg(ArgType):
    """An IPv4 or IPv6 address, without a scope (``validate.check_ip``)."""

    kind = "ip"

    def convert(self, text: str) -> str:
        return str(validate.check_ip(text))


def add_vxlan_options(parser: argparse.ArgumentParser) -> None:
    """The VXLAN options, in their own group of ``--help``."""
    group = parser.add_argument_group(
        "VXLAN: taps on other hosts, through the overlay the Linux kernel speaks (RFC 7348)",
        f"--dstport {KERNEL_PORT} joins kernel vxlan devices left at the kernel's default port\n"
        "(and flannel's vxlan backend)",
    )  # fmt: skip
    group.add_argument("--vxlan", action=StoreOnce, type=IntArg("VNI", 0, MAX_VNI), metavar="VNI",
                       help=f"add a VXLAN port with this VNI (0 to {MAX_VNI})")
    group.add_argument("--local", action=StoreOnce, type=IpArg(), metavar="ADDR",
                       help="the underlay address to bind (IPv4 or IPv6), an address of this "
                            "host (or of --underlay-netns)")
    group.add_argument("--remote", type=IpArg(), metavar="ADDR", action="append", default=[],
                       help="a remote VTEP; repeat it: broadcast, multicast and unknown unicast "
                            "go to every one (head-end replication)")
    group.add_argument("--dstport", action=StoreOnce,
                       type=IntArg("VXLAN port", 1, validate.MAX_PORT),
                       metavar="PORT", default=IANA_PORT,
                       help=f"the UDP port of every VTEP (default: {IANA_PORT}, the IANA port; "
                            f"the Linux kernel's own default is {KERNEL_PORT})")
    group.add_argument("--fdb", type=ParsedArg("fdb", parse_fdb), metavar="MAC=ADDR",
                       action="append", default=[],
                       help="a static entry: frames to MAC go to VTEP ADDR, for good (as flannel "
                            "programs the kernel); ADDR may talk to us even if not a --remote")
    group.add_argument("--underlay-netns", type=NetnsArg(), metavar="NS",
                       help="open the VXLAN sockets in namespace NS (default: where the command "
                            "runs)")
    group.add_argument("--source-ports", type=IntArg("source port pool", MIN_POOL, MAX_POOL),
                       metavar="N", default=DEFAULT_POOL,
                       help=f"send from N sockets bound to ports 49152-65535, one per inner flow "
                            f"hash (default: {DEFAULT_POOL})")
    group.add_argument("--no-vxlan-offload", action="store_true",
                       help="no UDP GSO, UDP GRO nor TCP coalescing: one datagram per frame and "
                            "per send (they are probed and used when the kernel has them)")


def check_vxlan_options(args: argparse.Namespace) -> None:
    """Refuse, before anything is opened, VXLAN options that do not fit the command."""
    if args.vxlan is None:
        given = [name for name in VXLAN_ONLY
                 if getattr(args, name) not in (None, [], DEFAULT_POOL, False)]
        if given or args.dstport != IANA_PORT:
            name = (given or ["dstport"])[0].replace("_", "-")
            raise CommandError(f"--{name} needs --vxlan VNI: it configures the VXLAN port")
        return
    if args.local is None:
        raise CommandError("--vxlan needs --local ADDR: the underlay address to bind")
    if not args.remote and not args.fdb:
        raise CommandError("--vxlan needs at least one --remote ADDR (or --fdb MAC=ADDR): the "
                           "VTEPs to talk to")
    if args.mode == "wire" and len(args.ports) != 1:
        raise CommandError(f"with --vxlan, forward takes one tap (the VXLAN port is the other "
                           f"end), not {len(args.ports)}")
    if args.mode == "wire" and len(args.remote) != 1:
        raise CommandError("forward --vxlan is a wire to one remote VTEP: give exactly one "
                           "--remote (use switch for several)")
    if args.mode == "switch" and not 1 <= len(args.ports) < 64:
        raise CommandError(f"a switch with --vxlan takes 1 to 63 taps, not {len(args.ports)}")
    if args.tun:
        raise CommandError("VXLAN carries Ethernet frames: --tun is not possible with --vxlan")
    if args.queues != 1:
        raise CommandError("a VXLAN port serves one worker: --queues must be 1 with --vxlan")
    if getattr(args, "udp", None) is not None:
        raise CommandError("--udp and --vxlan are two kinds of second port: give one")
    if args.underlay_netns is not None and not netns_exists(args.underlay_netns):
        raise CommandError(f"network namespace {args.underlay_netns!r} does not exist")


def _exists(name: str) -> bool:
    try:
        with rtnl() as ipr:
            find_link(ipr, name, None)
    except DeviceNotFoundError:
        return False
    return True


def _set_mtu(name: str, mtu: int) -> None:
    with rtnl() as ipr, netlink_errors(f"cannot set the MTU of {name!r} to {mtu}"):
        ipr.link("set", index=find_link(ipr, name, None)["index"], mtu=mtu)


def open_vxlan_ports(args: argparse.Namespace, **options: Any) -> tuple[list[Any], str]:
    """Open the taps (``open_ports(**options)``), then the VXLAN port; all or none. A tap the
    command created gets the MTU the underlay allows; an existing one above it is refused.
    Returns the ports and the label of the ready line."""
    created = [name for name in args.ports if not _exists(name)]
    vxlan: VxlanPort = open_vxlan_port(
        args.vxlan, args.local, args.remote, dstport=args.dstport, fdb=args.fdb,
        netns=args.underlay_netns, pool=args.source_ports, offload=not args.no_vxlan_offload,
        ageing=getattr(args, "ageing", 300.0),
    )  # fmt: skip
    try:
        ports: list[Any] = open_ports(args.ports, **options)
    except BaseException:
        vxlan.close()
        raise
    try:
        for port in ports:
            if port.mtu is not None and port.mtu > vxlan.max_frame_mtu:
                if port.name in created:
                    _set_mtu(port.name, vxlan.max_frame_mtu)
                    port.mtu = vxlan.max_frame_mtu
                else:
                    check_tap_mtu(vxlan, port.name, port.mtu)
    except BaseException:
        close_ports(ports, restore=True)
        vxlan.close()
        raise
    vxlan.coalesce_toward(ports)
    ports.append(vxlan)
    remotes = ", ".join(vxlan.remotes) or "static entries only"
    joiner = " <-> " if args.mode == "wire" else ", "
    label = (joiner.join(args.ports) + joiner + f"{vxlan.name} (VNI {vxlan.vni}, "
             f"{_endpoint(vxlan.local, vxlan.dstport)} -> {remotes}, "
             f"{len(vxlan.io.source_ports())} source ports, MTU {vxlan.max_frame_mtu}, "
             + ", ".join(f"{FEATURES[name]} {state}" for name, state in vxlan.features.items())
             + ")")
    return ports, label


FEATURES = {"gso": "UDP GSO", "coalesce": "TCP coalescing"}


def _endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
