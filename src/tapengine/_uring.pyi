from collections.abc import Iterable
from typing import Literal, Protocol

from typing_extensions import disjoint_base

from tapengine._batchio import BatchIO, ReadvIO
from tapengine._ring import PacketRing

class _HasFileno(Protocol):
    def fileno(self) -> int: ...

MAX_ENTRIES: int

@disjoint_base
class UringIO(BatchIO):
    entries: int
    setup_flags: int
    features: int
    enters: int
    submitted: int
    empty_reads: int
    moved: int
    reordered: int
    fixed_ops: int
    direct: int
    register_error: str
    def __init__(self, entries: int = 256, *, linked_writes: bool = True,
                 direct_small: bool = False) -> None: ...
    def register(self, fds: Iterable[int | _HasFileno] = (),
                 rings: Iterable[PacketRing] = ()) -> dict[str, int | str]: ...
    def unregister(self) -> None: ...
    @property
    def backend(self) -> Literal["io_uring"]: ...
    @property
    def flags(self) -> list[str]: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None: ...
    def __enter__(self) -> UringIO: ...
    def stats(self) -> dict[str, int]: ...

def available() -> bool: ...
def unavailable_reason() -> str: ...
def open_batch_io(entries: int = 256) -> UringIO | ReadvIO: ...
