"""The kernel's own counters of a link (``IFLA_STATS64``) as typed snapshots, and rates between two.

These are the counters ``ip -s link`` shows; tapengine compares its own per-port counters with them.
``as_ip_json`` renders a snapshot the way ``ip -j -s -s link`` does, so scripts written for ``ip``
read ours unchanged.
"""

from __future__ import annotations

import dataclasses
import struct
import time
from dataclasses import dataclass
from typing import Any

from tapengine.netlink import find_link, flag_names, netlink_errors, rtnl

#: ``struct rtnl_link_stats64`` field order (include/uapi/linux/if_link.h); newer kernels append.
STATS64_FIELDS = (
    "rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "rx_errors", "tx_errors",
    "rx_dropped", "tx_dropped", "multicast", "collisions", "rx_length_errors", "rx_over_errors",
    "rx_crc_errors", "rx_frame_errors", "rx_fifo_errors", "rx_missed_errors",
    "tx_aborted_errors", "tx_carrier_errors", "tx_fifo_errors", "tx_heartbeat_errors",
    "tx_window_errors", "rx_compressed", "tx_compressed", "rx_nohandler", "rx_otherhost_dropped",
)  # fmt: skip


@dataclass(frozen=True)
class LinkStats:
    """One reading of a link's ``IFLA_STATS64`` counters, taken at ``timestamp`` (monotonic)."""

    name: str
    netns: str | None
    timestamp: float
    ifindex: int = 0
    flags: tuple[str, ...] = ()
    mtu: int = 0
    operstate: str = ""
    carrier_changes: int | None = None
    rx_packets: int = 0
    tx_packets: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_errors: int = 0
    tx_errors: int = 0
    rx_dropped: int = 0
    tx_dropped: int = 0
    multicast: int = 0
    collisions: int = 0
    rx_length_errors: int = 0
    rx_over_errors: int = 0
    rx_crc_errors: int = 0
    rx_frame_errors: int = 0
    rx_fifo_errors: int = 0
    rx_missed_errors: int = 0
    tx_aborted_errors: int = 0
    tx_carrier_errors: int = 0
    tx_fifo_errors: int = 0
    tx_heartbeat_errors: int = 0
    tx_window_errors: int = 0
    rx_compressed: int = 0
    tx_compressed: int = 0
    rx_nohandler: int = 0
    rx_otherhost_dropped: int = 0

    def counters(self) -> dict[str, int]:
        """The ``IFLA_STATS64`` counters only, by kernel name."""
        return {field: getattr(self, field) for field in STATS64_FIELDS}

    def as_ip_json(self) -> dict[str, Any]:
        """This snapshot shaped like one element of ``ip -j -s -s link`` output."""
        rx: dict[str, int] = {
            "bytes": self.rx_bytes,
            "packets": self.rx_packets,
            "errors": self.rx_errors,
            "dropped": self.rx_dropped,
            "over_errors": self.rx_over_errors,
            "multicast": self.multicast,
        }
        if self.rx_compressed:
            rx["compressed"] = self.rx_compressed
        rx |= {
            "length_errors": self.rx_length_errors,
            "crc_errors": self.rx_crc_errors,
            "frame_errors": self.rx_frame_errors,
            "fifo_errors": self.rx_fifo_errors,
            "missed_errors": self.rx_missed_errors,
        }
        # ip prints these two only when non-zero
        if self.rx_nohandler:
            rx["nohandler"] = self.rx_nohandler
        if self.rx_otherhost_dropped:
            rx["otherhost"] = self.rx_otherhost_dropped
        tx: dict[str, int] = {
            "bytes": self.tx_bytes,
            "packets": self.tx_packets,
            "errors": self.tx_errors,
            "dropped": self.tx_dropped,
            "carrier_errors": self.tx_carrier_errors,
            "collisions": self.collisions,
        }
        if self.tx_compressed:
            tx["compressed"] = self.tx_compressed
        tx |= {
            "aborted_errors": self.tx_aborted_errors,
            "fifo_errors": self.tx_fifo_errors,
            "window_errors": self.tx_window_errors,
            "heartbeat_errors": self.tx_heartbeat_errors,
        }
        if self.carrier_changes is not None:
            tx["carrier_changes"] = self.carrier_changes
        return {
            "ifindex": self.ifindex,
            "ifname": self.name,
            "flags": list(self.flags),
            "mtu": self.mtu,
            "operstate": self.operstate,
            "stats64": {"rx": rx, "tx": tx},
        }


@dataclass(frozen=True)
class LinkRates:
    """Per-second rates between two snapshots of one link."""

    name: str
    netns: str | None
    interval: float
    rx_packets: float
    rx_bytes: float
    rx_bits: float
    rx_dropped: float
    tx_packets: float
    tx_bytes: float
    tx_bits: float
    tx_dropped: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _decode_stats64(nla: Any) -> dict[str, int]:
    """All counters of an ``IFLA_STATS64`` attribute, including those pyroute2 does not name.

    pyroute2 decodes the first 23 fields; the kernel sends 25 today (``rx_nohandler``,
    ``rx_otherhost_dropped``). Read the raw attribute when it is available, else fall back.
    """
    try:
        raw = bytes(nla.data[nla.offset + 4 : nla.offset + nla.length])
    except (AttributeError, TypeError):
        raw = b""
    count = min(len(raw) // 8, len(STATS64_FIELDS))
    if count >= 23:
        return dict(zip(STATS64_FIELDS, struct.unpack_from(f"={count}Q", raw), strict=False))
    return {field: int(nla.get(field, 0)) for field in STATS64_FIELDS[:23]}


def _snapshot(msg: Any, netns: str | None, timestamp: float) -> LinkStats:
    stats = msg.get_attr("IFLA_STATS64")
    counters = _decode_stats64(stats) if stats is not None else {}
    return LinkStats(
        name=msg.get_attr("IFLA_IFNAME"),
        netns=netns,
        timestamp=timestamp,
        ifindex=msg["index"],
        flags=tuple(flag_names(msg["flags"])),
        mtu=msg.get_attr("IFLA_MTU") or 0,
        operstate=msg.get_attr("IFLA_OPERSTATE") or "",
        carrier_changes=msg.get_attr("IFLA_CARRIER_CHANGES"),
        **counters,
    )


def read_stats(name: str, netns: str | None = None) -> LinkStats:
    """A snapshot of link ``name``'s counters; ``DeviceNotFoundError`` if it does not exist."""
    with rtnl(netns) as ipr:
        msg = find_link(ipr, name, netns)
        return _snapshot(msg, netns, time.monotonic())


def read_all_stats(netns: str | None = None) -> list[LinkStats]:
    """Snapshots of every link in ``netns``, in index order, from one netlink dump."""
    with rtnl(netns) as ipr, netlink_errors("cannot read link counters"):
        msgs = list(ipr.get_links())
        now = time.monotonic()
        return [_snapshot(msg, netns, now) for msg in msgs]


def rates(before: LinkStats, after: LinkStats) -> LinkRates:
    """Per-second rates from ``before`` to ``after`` (two snapshots of the same link)."""
    if (before.name, before.netns) != (after.name, after.netns):
        raise ValueError(
            f"cannot compute rates between different links {before.name!r} and {after.name!r}"
        )
    interval = after.timestamp - before.timestamp
    if interval <= 0:
        raise ValueError("the second snapshot must be taken after the first")
    if after.rx_packets < before.rx_packets or after.tx_packets < before.tx_packets:
        raise ValueError(
            f"the counters of {after.name!r} went backwards: was the link deleted and recreated?"
        )

    def per_second(field: str) -> float:
        return (getattr(after, field) - getattr(before, field)) / interval

    return LinkRates(
        name=after.name,
        netns=after.netns,
        interval=interval,
        rx_packets=per_second("rx_packets"),
        rx_bytes=per_second("rx_bytes"),
        rx_bits=per_second("rx_bytes") * 8,
        rx_dropped=per_second("rx_dropped"),
        tx_packets=per_second("tx_packets"),
        tx_bytes=per_second("tx_bytes"),
        tx_bits=per_second("tx_bytes") * 8,
        tx_dropped=per_second("tx_dropped"),
    )


def format_ip_style(stats: LinkStats) -> str:
    """Human-readable lines in the style of ``ip -s link``."""
    flags = ",".join(stats.flags)
    where = f" netns {stats.netns}" if stats.netns else ""
    rx_values = (stats.rx_bytes, stats.rx_packets, stats.rx_errors, stats.rx_dropped,
                 stats.rx_missed_errors, stats.multicast)  # fmt: skip
    tx_values = (stats.tx_bytes, stats.tx_packets, stats.tx_errors, stats.tx_dropped,
                 stats.tx_carrier_errors, stats.collisions)  # fmt: skip
    width = max(7, *(len(str(v)) for v in rx_values + tx_values))

    def row(values: tuple[int, ...]) -> str:
        return "        " + " ".join(f"{v:>{width}}" for v in values)

    def header(label: str, names: tuple[str, ...]) -> str:
        return f"    {label:<4}" + " ".join(f"{n:>{width}}" for n in names)

    return "\n".join([
        f"{stats.ifindex}: {stats.name}: <{flags}> mtu {stats.mtu} state {stats.operstate}{where}",
        header("RX:", ("bytes", "packets", "errors", "dropped", "missed", "mcast")),
        row(rx_values),
        header("TX:", ("bytes", "packets", "errors", "dropped", "carrier", "collsns")),
        row(tx_values),
    ])  # fmt: skip
