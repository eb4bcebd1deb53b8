"""pcapng capture and pcap/pcapng replay around ``tapengine._pcapng``.

What the ``capture`` and ``replay`` commands and ``forward|switch --pcap`` share: the link type of
a device, the file's comment (it says how superframes are written), the checks of the user's
values, and opening a capture with them. The data path (blocks written from ring slots, the
drain thread, the reader and the paced replay loop) is C in ``tapengine._pcapng``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from tapengine import validate
from tapengine._pcapng import (
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    MAX_CAPLEN,
    CaptureStage,
    PcapngWriter,
    PcapReader,
    Replayer,
)
from tapengine.errors import PcapFormatError

#: Default --snaplen: whole frames, superframes included (libpcap's largest).
DEFAULT_SNAPLEN = MAX_CAPLEN
#: Largest --pcap-size: a terabyte per file.
MAX_FILE_MB = 10**6


def linktype_of(mode: Literal["tap", "tun"]) -> int:
    """The pcap link type of a device: Ethernet for a tap, raw IP for a tun."""
    return LINKTYPE_ETHERNET if mode == "tap" else LINKTYPE_RAW


#: What an engine capture records, by ``--pcap-direction``: said in the file's comment.
ENGINE_DIRECTIONS = {
    "in": "frames the engine received (inbound, on their ingress port)",
    "out": "frames the engine sent (outbound, on their egress port, as sent)",
    "both": "frames the engine received (inbound, on their ingress port) and sent (outbound, "
            "on their egress port, as sent)",
}


def capture_comment(*, segment: bool, command: str, direction: str | None = None) -> str:
    """The section comment: who wrote the file, what an engine capture records (``direction``,
    a key of ENGINE_DIRECTIONS), and how GSO superframes appear in it."""
    how = ("written as the segments a wire would carry (checksums completed)" if segment
           else "written as they are, up to 64 KiB (--pcap-superframes)")
    what = "" if direction is None else f"; {ENGINE_DIRECTIONS[direction]}"
    return f"tapengine {command}{what}; GSO superframes {how}"


@dataclass(frozen=True)
class CaptureOptions:
    """What a capture writes: the file, the snapshot length, rotation and superframes."""

    path: str
    snaplen: int = DEFAULT_SNAPLEN
    size_mb: float = 0.0        # rotate after this many megabytes (10**6 bytes); 0: one file
    superframes: bool = False   # write GSO superframes whole instead of segmenting them

    def __post_init__(self) -> None:
        validate.check_int(self.snaplen, "snaplen", 1, MAX_CAPLEN)
        validate.check_float(self.size_mb, "file size (MB)", low=0.0, high=MAX_FILE_MB,
                             low_inclusive=True)  # fmt: skip

    def open(self, interfaces: Sequence[tuple[str, int, bool]], *, command: str,
             direction: str | None = None) -> PcapngWriter:
        """Create the file (the first of a rotation) with one interface block per
        ``(name, linktype, vnet_hdr)``, and start the drain thread. ``direction``: what an
        engine capture records (for the file's comment)."""
        segment = not self.superframes
        return PcapngWriter(self.path, interfaces, snaplen=self.snaplen, segment=segment,
                            rotate_bytes=int(self.size_mb * 1_000_000),
                            comment=capture_comment(segment=segment, command=command,
                                                    direction=direction))


def open_replay(path: str, *, mode: Literal["tap", "tun"], rate: int = 0, bits: bool = False,
                speed: float = 1.0, loops: int = 1, batch: int = 32) -> Replayer:
    """Open and check ``path`` for a replay into a device of ``mode``: ``PcapFormatError`` for a
    file that is not pcap/pcapng, is truncated or corrupt, or whose link type does not fit."""
    reader = PcapReader(path)
    try:
        return Replayer(reader, l2=mode == "tap", rate=rate, bits=bits, speed=speed,
                        loops=loops, batch=batch)
    except BaseException:
        reader.close()
        raise


__all__ = [
    "DEFAULT_SNAPLEN",
    "ENGINE_DIRECTIONS",
    "LINKTYPE_ETHERNET",
    "LINKTYPE_RAW",
    "CaptureOptions",
    "CaptureStage",
    "PcapFormatError",
    "PcapReader",
    "PcapngWriter",
    "Replayer",
    "capture_comment",
    "linktype_of",
    "open_replay",
]
