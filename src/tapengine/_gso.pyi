import enum
from typing import Literal, TypedDict, overload

from tapengine._ring import PacketRing

_Buffer = bytes | bytearray | memoryview

REASONS: tuple[str, ...]
NEEDS_CSUM: int
DATA_VALID: int
GSO_NONE: int
GSO_TCPV4: int
GSO_TCPV6: int
GSO_UDP_L4: int
GSO_ECN: int

class GsoReason(enum.IntEnum):
    GSO_OK = 0
    GSO_TOO_SHORT = 1
    GSO_BAD_FLAGS = 2
    GSO_BAD_GSO_TYPE = 3
    GSO_GSO_SIZE_ZERO = 4
    GSO_GSO_SIZE_TOO_LARGE = 5
    GSO_CSUM_OUTSIDE_FRAME = 6
    GSO_CSUM_NOT_AT_L4 = 7
    GSO_BAD_CSUM_OFFSET = 8
    GSO_BAD_IP_HEADER = 9
    GSO_BAD_IP_LENGTH = 10
    GSO_BAD_L4_HEADER = 11
    GSO_UNSUPPORTED_PROTOCOL = 12
    GSO_PROTOCOL_MISMATCH = 13
    GSO_NO_ROOM = 14
    GSO_SLOT_TOO_SMALL = 15
    GSO_LENGTH_OVER_SLOT = 16
    GSO_REASON_COUNT = 17

class _BatchStats(TypedDict):
    consumed: int
    packets: int
    superframes: int
    segments: int
    bytes: int
    drops: dict[str, int]

def reason_name(code: int) -> str: ...
def validate(header: _Buffer, frame: _Buffer, *, l2: bool = True) -> tuple[str | None, int]: ...
def complete_checksum(header: _Buffer, frame: _Buffer, *, l2: bool = True) -> bytes: ...
@overload
def segment(
    header: _Buffer,
    frame: _Buffer,
    *,
    l2: bool = True,
    partial_csum: bool = False,
    with_headers: Literal[False] = False,
) -> list[bytes]: ...
@overload
def segment(
    header: _Buffer,
    frame: _Buffer,
    *,
    l2: bool = True,
    partial_csum: bool = False,
    with_headers: Literal[True],
) -> list[tuple[bytes, bytes]]: ...
def segment_batch(
    src: PacketRing,
    first: int,
    count: int,
    dst: PacketRing,
    *,
    l2: bool = True,
    partial_csum: bool = False,
) -> _BatchStats: ...
