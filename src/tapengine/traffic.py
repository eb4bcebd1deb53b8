"""Traffic generation and sinking around ``tapengine._pktgen``: parsing, configuration, results.

Sizes are **Ethernet frame sizes including the 4-byte FCS**, as RFC 2544 and IMIX count them: a
"64-byte frame" is 60 bytes written to a tap, and a 46-byte IP packet written to a tun (no
Ethernet header, no FCS). Bit rates count the bytes actually written (what the kernel's own
``tx_bytes``/``rx_bytes`` count), not preamble, FCS or inter-frame gap.

``imix`` is the simple IMIX: 64, 570 and 1518-byte frames in the ratio 7:4:1, interleaved
smoothly. UDP over IPv6 with the probe header needs at least 84 bytes; ``imix`` over IPv6 raises
its 64-byte frames to 84 (an explicit size that is too small is an error instead).
"""

from __future__ import annotations

import errno
import ipaddress
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from tapengine import _pktgen, validate
from tapengine._pktgen import Generator, Sink
from tapengine.errors import InvalidValueError
from tapengine.tun import TunQueue, open_queue
from tapengine.validate import check_int, parse_mac, quote

FCS_LEN = 4
ETH_HLEN = 14
PROBE_LEN: int = _pktgen.PROBE_SIZE
MAX_SIZE: int = _pktgen.MAX_FRAME + FCS_LEN
IMIX: tuple[tuple[int, int], ...] = ((64, 7), (570, 4), (1518, 1))

Mode = Literal["tap", "tun"]

# -- rates -------------------------------------------------------------------------------------

_PREFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
MAX_RATE = 10**12  # packets or bits per second
#: Ports per generator: UDP source ports SRC_PORT .. SRC_PORT+FLOWS-1 (the sink tracks as many).
MAX_FLOWS = 65536
MAX_BATCH = 256
#: Longest run (seconds) of the generator or the sink: 116 days; NaN and infinity are refused.
MAX_DURATION = 1e7
MAX_BURST = validate.MAX_U32
MAX_COUNT = 2**63 - 1  # packets in one run: the counters are 64 bits wide
_RATE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(pps|bit|bit/s|bps)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Rate:
    """A sending rate: ``value`` packets per second (``unit="pps"``) or bits per second."""

    value: int
    unit: Literal["pps", "bit"]

    @property
    def bits(self) -> bool:
        return self.unit == "bit"

    def __str__(self) -> str:
        return format_pps(self.value) if self.unit == "pps" else format_bits(self.value)


def parse_rate(text: str) -> Rate | None:
    """``100kpps``, ``1.5Mpps``, ``20000`` (packets/s), ``1gbit``, ``500mbit``, ``10Gbit/s``.

    ``max``, ``unlimited`` and ``0`` mean as fast as possible (``None``). Prefixes are decimal
    (k = 1000) and case-insensitive. ``bps`` is refused: tc reads it as bytes, others as bits.
    """
    if text.strip().lower() in ("max", "unlimited", "0"):
        return None
    match = _RATE.match(text)
    if not match:
        raise ValueError(
            f"invalid rate {quote(text)}: use packets per second (100kpps, 1.5Mpps, 20000) or bits "
            "per second (500mbit, 1gbit), or 'max'"
        )
    number, prefix, unit = match.groups()
    unit = (unit or "pps").lower()
    if unit == "bps":
        raise ValueError(f"ambiguous rate {quote(text)}: write bits as a number and 'bit', "
                         "like 500mbit")  # fmt: skip
    scaled = float(number) * _PREFIX[prefix.lower()]  # 400 digits: inf, refused just below
    if not scaled <= MAX_RATE:
        raise ValueError(f"rate {quote(text)} is beyond anything a tap can take (limit 1 Tbit/s)")
    value = round(scaled)
    if value <= 0:
        raise ValueError(f"invalid rate {quote(text)}: it must be above zero (or 'max')")
    return Rate(value, "pps" if unit == "pps" else "bit")


# -- sizes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SizeMix:
    """Frame sizes (Ethernet, FCS included) and their weights, sent interleaved."""

    sizes: tuple[tuple[int, int], ...]
    name: str | None = None  # "imix" when it came from the keyword

    @classmethod
    def fixed(cls, size: int) -> SizeMix:
        return cls(((size, 1),))

    def __str__(self) -> str:
        if self.name:
            return self.name
        if len(self.sizes) == 1:
            return str(self.sizes[0][0])
        return ",".join(f"{size}:{weight}" for size, weight in self.sizes)

    def pattern(self) -> list[int]:
        """One period of sizes in sending order, spread out smoothly (64,570,64,64,1518,...)."""
        total = sum(weight for _, weight in self.sizes)
        credit = [0] * len(self.sizes)
        order = []
        for _ in range(total):
            for i, (_, weight) in enumerate(self.sizes):
                credit[i] += weight
            best = max(range(len(self.sizes)), key=lambda i: credit[i])
            credit[best] -= total
            order.append(self.sizes[best][0])
        return order

    def mean(self) -> float:
        total = sum(weight for _, weight in self.sizes)
        return sum(size * weight for size, weight in self.sizes) / total


def min_size(*, ipv6: bool) -> int:
    """Smallest frame size (FCS included) that carries UDP and the probe header."""
    return ETH_HLEN + (40 if ipv6 else 20) + 8 + PROBE_LEN + FCS_LEN


def parse_size(text: str) -> SizeMix:
    """``64``, ``imix``, ``64,1518`` (equal shares) or ``64:7,570:4,1518:1`` (weights)."""
    spec = text.strip().lower()
    if spec == "imix":
        return SizeMix(IMIX, "imix")
    sizes: list[tuple[int, int]] = []
    for part in spec.split(","):
        size_text, _, weight_text = part.partition(":")
        try:
            size = int(size_text)
            weight = int(weight_text) if weight_text else 1
        except ValueError:
            raise ValueError(
                f"invalid size {text!r}: use a frame size in bytes (64), 'imix', a list (64,1518) "
                "or weights (64:7,570:4,1518:1)"
            ) from None
        if not min_size(ipv6=False) <= size <= MAX_SIZE:
            raise ValueError(
                f"invalid frame size {size}: frames are {min_size(ipv6=False)}..{MAX_SIZE} bytes "
                "(Ethernet size with FCS)"
            )
        if not 1 <= weight <= 1000:
            raise ValueError(f"invalid weight {weight} for size {size}: use 1..1000")
        sizes.append((size, weight))
    if sum(weight for _, weight in sizes) > 1024:
        raise ValueError(f"size mix {text!r} is too long: the weights add up to more than 1024")
    return SizeMix(tuple(sizes))


def written_lengths(mix: SizeMix, *, mode: Mode, ipv6: bool) -> list[int]:
    """Bytes written per frame (one period of the mix) on a tap or a tun."""
    lowest = min_size(ipv6=ipv6)
    lengths = []
    for size in mix.pattern():
        if size < lowest:
            if mix.name != "imix":
                raise ValueError(
                    f"frame size {size} is too small for UDP over IPv{6 if ipv6 else 4} with the "
                    f"{PROBE_LEN}-byte probe header: the minimum is {lowest}"
                )
            size = lowest
        lengths.append(size - FCS_LEN - (ETH_HLEN if mode == "tun" else 0))
    return lengths


# -- addresses ---------------------------------------------------------------------------------


def parse_ip(text: str, *, ipv6: bool) -> bytes:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"invalid IP address {text!r}") from None
    if (address.version == 6) != ipv6:
        raise ValueError(
            f"{text} is an IPv{address.version} address but the traffic is IPv{6 if ipv6 else 4}"
            + ("" if ipv6 else " (add --ipv6)")
        )
    return address.packed


# -- configuration -----------------------------------------------------------------------------


@dataclass
class GenConfig:
    """Everything the generator needs; ``generator()`` builds it (validating first)."""

    mode: Mode = "tap"
    ipv6: bool = False
    sizes: SizeMix = field(default_factory=lambda: SizeMix.fixed(64))
    flows: int = 1
    rate: Rate | None = None
    burst: int | None = None
    src_mac: str = "02:77:00:00:00:01"
    dst_mac: str = "02:77:00:00:00:02"
    src_ip: str | None = None
    dst_ip: str | None = None
    src_port: int = 10000
    dst_port: int = 9
    batch: int = 32

    @property
    def addresses(self) -> tuple[str, str]:
        default = ("fd77::1", "fd77::2") if self.ipv6 else ("10.77.0.1", "10.77.0.2")
        return (self.src_ip or default[0], self.dst_ip or default[1])

    def lengths(self) -> list[int]:
        return written_lengths(self.sizes, mode=self.mode, ipv6=self.ipv6)

    def check(self) -> None:
        """Refuse numbers the generator cannot take, naming the setting (before any syscall)."""
        check_int(self.flows, "number of flows", 1, MAX_FLOWS)
        check_int(self.batch, "batch size", 1, MAX_BATCH)
        check_int(self.src_port, "UDP source port", 0, 65535)
        check_int(self.dst_port, "UDP destination port", 0, 65535)
        if self.src_port + self.flows - 1 > 65535:
            raise InvalidValueError(
                f"UDP source ports {self.src_port}..{self.src_port + self.flows - 1} do not fit "
                "0..65535: lower the source port or the number of flows"
            )
        if self.burst is not None:
            check_int(self.burst, "burst", 1, MAX_BURST)

    def generator(self) -> Generator:
        self.check()
        src_ip, dst_ip = self.addresses
        return Generator(
            self.lengths(),
            tun=self.mode == "tun",
            ipv6=self.ipv6,
            src_mac=parse_mac(self.src_mac),
            dst_mac=parse_mac(self.dst_mac),
            src_ip=parse_ip(src_ip, ipv6=self.ipv6),
            dst_ip=parse_ip(dst_ip, ipv6=self.ipv6),
            src_port=self.src_port,
            dst_port=self.dst_port,
            flows=self.flows,
            rate=self.rate.value if self.rate else 0,
            rate_bits=bool(self.rate and self.rate.bits),
            burst=self.burst,
            batch=self.batch,
        )


# -- results -----------------------------------------------------------------------------------


@dataclass
class GenResult:
    packets: int
    bytes: int
    elapsed_s: float  # first packet to last packet
    pps: float
    bits_per_s: float
    would_block: int
    per_flow: list[int]  # packets sent per flow

    @classmethod
    def of(cls, gen: Generator) -> GenResult:
        c = gen.counters[0]
        packets, nbytes = int(c["packets"]), int(c["bytes"])
        elapsed = (int(c["last_ns"]) - int(c["first_ns"])) / 1e9 if packets else 0.0
        pps = packets / elapsed if elapsed > 0 else 0.0
        bits = nbytes * 8 / elapsed if elapsed > 0 else 0.0
        return cls(packets, nbytes, elapsed, pps, bits, int(c["would_block"]),
                   [int(seq) for seq in gen.flow_seq])

    def as_dict(self, *, per_flow: bool = False) -> dict[str, Any]:
        out = asdict(self)
        if not per_flow:
            del out["per_flow"]
        return out


@dataclass
class LatencyStats:
    """One-way latency in nanoseconds; percentiles are histogram bucket midpoints (±1.6%)."""

    count: int
    min_ns: int
    mean_ns: float
    p50_ns: int
    p90_ns: int
    p99_ns: int
    max_ns: int

    @classmethod
    def from_histogram(cls, hist: np.ndarray, *, min_ns: int, max_ns: int,
                       sum_ns: int) -> LatencyStats | None:
        count = int(hist.sum())
        if count == 0:
            return None
        return cls(
            count, min_ns, sum_ns / count,
            *(percentile(hist, q, min_ns=min_ns, max_ns=max_ns) for q in (50, 90, 99)),
            max_ns,
        )


_BOUNDS: tuple[np.ndarray, np.ndarray] | None = None


def percentile(hist: np.ndarray, q: float, *, min_ns: int = 0, max_ns: int | None = None) -> int:
    """Nearest-rank ``q``-th percentile of a latency histogram, as the bucket's midpoint.

    Clamped to the exact ``min_ns``/``max_ns`` when given. Raises ``ValueError`` when empty.
    """
    global _BOUNDS
    if _BOUNDS is None:
        _BOUNDS = _pktgen.bucket_bounds()
    low, high = _BOUNDS
    cumulative = np.cumsum(hist, dtype=np.uint64)
    total = int(cumulative[-1])
    if total == 0:
        raise ValueError("no latency samples")
    rank = max(1, math.ceil(q / 100 * total))
    index = int(np.searchsorted(cumulative, rank))
    value = int(low[index]) + (int(high[index]) - int(low[index])) // 2
    if max_ns is not None:
        value = min(value, max_ns)
    return max(value, min_ns)


@dataclass
class FlowResult:
    flow: int
    received: int
    lost: int
    duplicates: int
    reordered: int
    highest_seq: int


@dataclass
class SinkResult:
    packets: int
    bytes: int
    probe_packets: int
    probe_bytes: int
    other_packets: int
    other_bytes: int
    untracked: int
    flows_seen: int
    lost: int
    duplicates: int
    reordered: int
    stale: int
    negative_latency: int
    elapsed_s: float  # first probe frame to last probe frame
    pps: float  # probe frames per second over that time
    latency: LatencyStats | None
    per_flow: list[FlowResult]

    @classmethod
    def of(cls, sink: Sink) -> SinkResult:
        c = sink.counters[0]
        table = sink.flows
        seen = np.flatnonzero(table["seen"])
        per_flow = [
            FlowResult(
                int(i),
                int(table["received"][i]),
                max(0, int(table["highest"][i]) + 1
                    - (int(table["received"][i]) - int(table["duplicates"][i]))),
                int(table["duplicates"][i]),
                int(table["reordered"][i]),
                int(table["highest"][i]),
            )
            for i in seen
        ]
        probes = int(c["probe_packets"])
        elapsed = (int(c["last_ns"]) - int(c["first_ns"])) / 1e9
        latency = LatencyStats.from_histogram(
            sink.histogram, min_ns=int(c["latency_min_ns"]), max_ns=int(c["latency_max_ns"]),
            sum_ns=int(c["latency_sum_ns"]),
        )
        return cls(
            int(c["packets"]), int(c["bytes"]), probes, int(c["probe_bytes"]),
            int(c["other_packets"]), int(c["other_bytes"]), int(c["untracked"]), len(seen),
            sum(flow.lost for flow in per_flow), int(c["duplicates"]), int(c["reordered"]),
            int(c["stale"]), int(c["negative_latency"]), elapsed,
            (probes - 1) / elapsed if probes > 1 and elapsed > 0 else 0.0,
            latency, per_flow,
        )

    def as_dict(self, *, per_flow: bool = False) -> dict[str, Any]:
        out = asdict(self)
        if not per_flow:
            del out["per_flow"]
        return out


# -- devices -----------------------------------------------------------------------------------

_IFF_UP = 0x1


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    netns: str | None
    mode: Mode
    multi_queue: bool
    up: bool


def probe_device(name: str, netns: str | None = None) -> DeviceInfo:
    """What kind of tun/tap ``name`` is (in namespace ``netns``), asked over netlink.

    Raises ``DeviceNotFoundError`` (a ``FileNotFoundError``) if there is no such link and
    ``ValueError`` if it is not a tun or tap. Nothing is opened or changed.
    """
    from tapengine.errors import DeviceNotFoundError
    from tapengine.netlink import find_link, link_kind, rtnl, tun_attrs, where

    try:
        with rtnl(netns) as ipr:
            msg = find_link(ipr, name, netns)
    except DeviceNotFoundError:
        raise DeviceNotFoundError(
            errno.ENODEV,
            f"no device {name!r} in {where(netns)} (create it first, e.g. "
            f"'tapengine tap add {name}', or name its namespace with --netns)",
        ) from None
    attrs = tun_attrs(msg)
    if attrs is None:
        kind = link_kind(msg)
        raise ValueError(f"{name!r} is not a tun or tap device: it is a {kind} link")
    mode: Mode = "tun" if link_kind(msg) == "tun" else "tap"
    return DeviceInfo(name, netns, mode, attrs["multi_queue"], bool(msg["flags"] & _IFF_UP))


def open_device(info: DeviceInfo) -> TunQueue:
    """Open one queue of the probed device, inside its namespace (the fd keeps working outside)."""
    from tapengine.netns import inside_netns

    with inside_netns(info.netns):
        return open_queue(info.name, info.mode, multi_queue=info.multi_queue)


# -- human output ------------------------------------------------------------------------------


def _si(value: float, unit: str) -> str:
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def format_pps(pps: float) -> str:
    return _si(pps, "pps")


def format_bits(bits_per_s: float) -> str:
    return _si(bits_per_s, "bit/s")


def format_ns(ns: float) -> str:
    if ns >= 1e6:
        return f"{ns / 1e6:.3g} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.3g} µs"
    return f"{ns:.0f} ns"


def sizes_of(lengths: Sequence[int]) -> dict[int, int]:
    """How many slots of each written length one period holds (for summaries)."""
    out: dict[int, int] = {}
    for length in lengths:
        out[int(length)] = out.get(int(length), 0) + 1
    return out


__all__ = [
    "IMIX",
    "DeviceInfo",
    "FlowResult",
    "GenConfig",
    "GenResult",
    "Generator",
    "LatencyStats",
    "Rate",
    "Sink",
    "SinkResult",
    "SizeMix",
    "format_bits",
    "format_ns",
    "format_pps",
    "min_size",
    "open_device",
    "parse_ip",
    "parse_mac",
    "parse_rate",
    "parse_size",
    "percentile",
    "probe_device",
    "written_lengths",
]
