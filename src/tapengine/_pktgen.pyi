from typing import Any, Protocol, Self

import numpy as np
import numpy.typing as npt
from typing_extensions import disjoint_base

from tapengine._batchio import BatchIO
from tapengine._ring import PacketRing

MAGIC: int
PROBE_SIZE: int
HISTOGRAM_BUCKETS: int
HISTOGRAM_SUB_BITS: int
HISTOGRAM_SUB_BUCKETS: int
MAX_FRAME: int
GEN_COUNTERS_DTYPE: np.dtype[np.void]
SINK_COUNTERS_DTYPE: np.dtype[np.void]
FLOW_DTYPE: np.dtype[np.void]

class _HasFileno(Protocol):
    def fileno(self) -> int: ...

_Fd = int | _HasFileno

def monotonic() -> int: ...
def bucket_bounds() -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]: ...
def histogram_index(ns: int) -> int: ...

@disjoint_base
class Generator:
    ring: PacketRing
    flows: int
    nused: int
    batch: int
    ipv6: bool
    tun: bool
    def __new__(
        cls,
        lengths: Any,
        *,
        tun: bool = False,
        ipv6: bool = False,
        src_mac: bytes = ...,
        dst_mac: bytes = ...,
        src_ip: bytes | None = None,
        dst_ip: bytes | None = None,
        src_port: int = 10000,
        dst_port: int = 9,
        flows: int = 1,
        rate: int = 0,
        rate_bits: bool = False,
        burst: int | None = None,
        batch: int = 32,
    ) -> Self: ...
    @property
    def rate(self) -> int: ...
    @property
    def rate_bits(self) -> bool: ...
    @property
    def burst(self) -> int: ...
    @property
    def lengths(self) -> npt.NDArray[np.uint32]: ...
    @property
    def counters(self) -> npt.NDArray[np.void]: ...
    @property
    def flow_seq(self) -> npt.NDArray[np.uint32]: ...
    def send(
        self,
        fd: _Fd,
        *,
        count: int | None = None,
        duration: float | None = None,
        vnet_hdr: bool | None = None,
        io: BatchIO | None = None,
    ) -> int: ...
    def fill(self, ring: PacketRing, count: int) -> int: ...
    def stop(self) -> None: ...

@disjoint_base
class Sink:
    ring: PacketRing
    max_flows: int
    window: int
    tun: bool
    def __new__(
        cls,
        *,
        tun: bool = False,
        max_flows: int = 1024,
        window: int = 1024,
        nslots: int = 256,
        slot_size: int = 16384,
    ) -> Self: ...
    def close(self) -> None: ...
    def __enter__(self) -> Sink: ...
    def __exit__(self, *exc_info: object) -> None: ...
    def reset(self) -> None: ...
    def consume(
        self, ring: PacketRing, first: int, count: int, now_ns: int | None = None
    ) -> int: ...
    def run(
        self,
        fd: _Fd,
        *,
        count: int | None = None,
        duration: float | None = None,
        idle: float | None = None,
        vnet_hdr: bool | None = None,
        budget: int = 64,
        io: BatchIO | None = None,
    ) -> int: ...
    def stop(self) -> None: ...
    @property
    def counters(self) -> npt.NDArray[np.void]: ...
    @property
    def flows(self) -> npt.NDArray[np.void]: ...
    @property
    def histogram(self) -> npt.NDArray[np.uint64]: ...
