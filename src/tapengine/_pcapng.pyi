from collections.abc import Iterator, Mapping
from os import PathLike
from typing import Any, Literal, Protocol, Self, final

import numpy as np
from typing_extensions import disjoint_base

from tapengine._batchio import BatchIO
from tapengine._ring import PacketRing
from tapengine._stage import Stage

CAPTURE_COUNTERS_DTYPE: np.dtype[np.void]
REPLAY_COUNTERS_DTYPE: np.dtype[np.void]
LINKTYPE_ETHERNET: int
LINKTYPE_RAW: int
LINKTYPE_IPV4: int
LINKTYPE_IPV6: int
RAW_IP_LINKTYPES: frozenset[int]
INBOUND: int
OUTBOUND: int
MAX_CAPLEN: int
DEFAULT_BUFFER: int
MIN_BUFFER: int
MAX_BUFFER: int

class _HasFileno(Protocol):
    def fileno(self) -> int: ...

_Fd = int | _HasFileno
_Path = str | PathLike[str]

def realtime() -> int: ...
def section_header(comment: str | None = None, application: str = "tapengine") -> bytes: ...
def interface_description(name: str, linktype: int, snaplen: int) -> bytes: ...
def interface_statistics(
    ifidx: int,
    ts_ns: int,
    *,
    start_ns: int | None = None,
    received: int | None = None,
    if_dropped: int | None = None,
    os_dropped: int | None = None,
    delivered: int | None = None,
    comment: str | None = None,
) -> bytes: ...
def rotated_name(path: _Path, index: int) -> str: ...

@final
class PcapngWriter:
    buffer_size: int
    snaplen: int
    ninterfaces: int
    segment: bool
    path: str
    comment: str | None
    interfaces: list[tuple[str, int]]
    files: list[str]
    error: OSError | None
    started_ns: int
    def __new__(
        cls,
        path: _Path,
        interfaces: Any,
        *,
        snaplen: int = 262144,
        segment: bool = True,
        rotate_bytes: int = 0,
        buffer_size: int = ...,
        comment: str | None = None,
    ) -> Self: ...
    @property
    def counters(self) -> np.ndarray: ...
    @property
    def buffered(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    def capture(
        self,
        ring: PacketRing,
        first: int,
        count: int,
        *,
        interface: int = 0,
        flags: int = ...,
        ts_ns: int | None = None,
    ) -> int: ...
    def run(
        self,
        fd: _Fd,
        ring: PacketRing,
        *,
        interface: int = 0,
        count: int | None = None,
        duration: float | None = None,
        vnet_hdr: bool | None = None,
        io: BatchIO | None = None,
        budget: int = 64,
    ) -> int: ...
    def stop(self) -> None: ...
    def close(self, stats: Mapping[int, Mapping[str, int]] | None = None) -> list[str]: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc_info: object) -> None: ...

@disjoint_base
class CaptureStage(Stage):
    @property
    def writer(self) -> PcapngWriter: ...
    @property
    def directions(self) -> int: ...
    def __init__(self, writer: PcapngWriter, name: str = "pcap",
                 direction: Literal["in", "out", "both"] = "both") -> None: ...
    def close(self, stats: Mapping[int, Mapping[str, int]] | None = None) -> list[str]: ...

@final
class PcapReader:
    size: int
    pcapng: bool
    error: int
    error_offset: int
    path: str
    def __new__(cls, path: _Path) -> Self: ...
    def rewind(self) -> None: ...
    def scan(self) -> dict[str, Any]: ...
    def __iter__(self) -> Iterator[tuple[int, int, bytes, int]]: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc_info: object) -> None: ...

@final
class Replayer:
    reader: PcapReader
    ring: PacketRing
    speed: float
    loops: int
    batch: int
    l2: bool
    summary: dict[str, Any]
    def __new__(
        cls,
        reader: PcapReader,
        *,
        l2: bool,
        rate: int = 0,
        bits: bool = False,
        speed: float = 1.0,
        loops: int = 1,
        batch: int = 32,
        slot_size: int = ...,
    ) -> Self: ...
    @property
    def counters(self) -> np.ndarray: ...
    def run(self, fd: _Fd, *, vnet_hdr: bool | None = None, io: BatchIO | None = None) -> int: ...
    def stop(self) -> None: ...
