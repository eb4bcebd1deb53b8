from types import TracebackType
from typing import Literal, Protocol

from typing_extensions import disjoint_base

from tapengine._ring import PacketRing

class _HasFileno(Protocol):
    def fileno(self) -> int: ...

@disjoint_base
class BatchIO:
    def recv_batch(
        self, fd: int | _HasFileno, ring: PacketRing, budget: int = 64, *, vnet_hdr: bool = False
    ) -> int: ...
    def send_batch(
        self, fd: int | _HasFileno, ring: PacketRing, first: int, count: int, *,
        vnet_hdr: bool = False,
    ) -> int: ...
    def close(self) -> None: ...
    def __enter__(self) -> BatchIO: ...
    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

class ReadvIO(BatchIO):
    def __init__(self) -> None: ...
    @property
    def backend(self) -> Literal["readv"]: ...
    def __enter__(self) -> ReadvIO: ...

def recv_batch(
    fd: int | _HasFileno, ring: PacketRing, budget: int = 64, *, vnet_hdr: bool = False,
    io: BatchIO | None = None,
) -> int: ...
def send_batch(
    fd: int | _HasFileno, ring: PacketRing, first: int, count: int, *, vnet_hdr: bool = False,
    io: BatchIO | None = None,
) -> int: ...
