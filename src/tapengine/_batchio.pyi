from typing import Protocol

from tapengine._ring import PacketRing
from tapengine._uring import UringIO

class _HasFileno(Protocol):
    def fileno(self) -> int: ...

def recv_batch(
    fd: int | _HasFileno, ring: PacketRing, budget: int = 64, *, vnet_hdr: bool = False,
    io: UringIO | None = None,
) -> int: ...
def send_batch(
    fd: int | _HasFileno, ring: PacketRing, first: int, count: int, *, vnet_hdr: bool = False,
    io: UringIO | None = None,
) -> int: ...
