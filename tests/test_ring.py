"""PacketRing: geometry, zero-copy views, export counting and bounds (no privilege needed)."""

from __future__ import annotations

import gc
import socket

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tapengine import VNET_HDR_DTYPE, PacketRing
from tapengine._ring import (
    FRAME_OFFSET,
    HEADROOM,
    MAX_SLOT_SIZE,
    MIN_SLOT_SIZE,
    PEER_DTYPE,
    TAP_L2_OVERHEAD,
    slot_size_for,
)

WRAP = 1 << 32


def test_geometry_and_alignment() -> None:
    ring = PacketRing(16, 1514)
    assert (ring.nslots, ring.slot_size, ring.mask) == (16, 1514, 15)
    assert ring.stride % 64 == 0 and ring.stride >= FRAME_OFFSET + 1514 + 1
    slots = ring.slots
    assert slots.shape == (16, ring.stride) and slots.strides == (ring.stride, 1)
    assert slots.ctypes.data % 4096 == 0, "the slab is page aligned"
    frames = ring.frames
    assert frames.shape == (16, 1514)
    assert frames.strides == (ring.stride, 1)
    assert frames.ctypes.data == slots.ctypes.data + FRAME_OFFSET
    assert (FRAME_OFFSET, HEADROOM) == (80, 70)
    assert ring.offsets.tolist() == [FRAME_OFFSET] * 16


@pytest.mark.parametrize("nslots", [0, 3, 12, -4, 1 << 21])
def test_nslots_must_be_a_power_of_two_in_range(nslots: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        PacketRing(nslots, 2048)


@pytest.mark.parametrize("slot_size", [0, 63, 65536 + 129])
def test_slot_size_bounds(slot_size: int) -> None:
    with pytest.raises(ValueError, match="slot_size"):
        PacketRing(8, slot_size)


@pytest.mark.parametrize("bad", [8.0, "8", None, True])
def test_geometry_must_be_int(bad: object) -> None:
    with pytest.raises(TypeError):
        PacketRing(bad, 2048)  # type: ignore[arg-type]


def test_views_share_memory_with_the_ring() -> None:
    ring = PacketRing(8, 128)
    index = ring.push(b"\x01\x02\x03")
    frames, lengths = ring.frames, ring.lengths
    assert lengths[index] == 3
    assert bytes(frames[index, :3]) == b"\x01\x02\x03"
    frames[index, :3] = [9, 8, 7]  # writing through the view changes the ring
    lengths[index] = 2
    assert ring.packet(index) == b"\x09\x08"


def test_free_running_indices_wrap_onto_slots() -> None:
    ring = PacketRing(4, 64)
    for round_ in range(3):
        for i in range(4):
            ring.push(bytes([round_, i]))
        assert ring.pending == 4 and ring.free == 0
        with pytest.raises(BufferError, match="full"):
            ring.push(b"x")
        held = [ring.packet(ring.head + i) for i in range(4)]
        assert held == [bytes([round_, i]) for i in range(4)]
        ring.consume(4)
    assert ring.head == ring.tail == 12
    assert ring.packet(12) == ring.packet(0) == bytes([2, 0])


def test_consume_more_than_pending_is_refused() -> None:
    ring = PacketRing(4, 64)
    ring.push(b"a")
    with pytest.raises(ValueError, match="1 pending"):
        ring.consume(2)
    assert ring.pending == 1


def test_headers_view_is_the_virtio_net_hdr_layout() -> None:
    ring = PacketRing(4, 64)
    header = bytes([1, 3]) + (54).to_bytes(2, "little") + (1448).to_bytes(2, "little") \
        + (34).to_bytes(2, "little") + (16).to_bytes(2, "little")
    index = ring.push(b"frame", header)
    view = ring.headers
    assert view.dtype == VNET_HDR_DTYPE and view.shape == (4,)
    assert view[index].tolist() == (1, 3, 54, 1448, 34, 16)
    view[index]["gso_size"] = 1200
    assert ring.header(index)[4:6] == (1200).to_bytes(2, "little")


def test_oversize_frame_and_bad_header_are_refused_without_moving_tail() -> None:
    ring = PacketRing(4, 64)
    with pytest.raises(ValueError, match="does not fit"):
        ring.push(b"x" * 65)
    with pytest.raises(ValueError, match="10 bytes"):
        ring.push(b"x", b"short")
    with pytest.raises(TypeError, match="not str"):
        ring.push("text")  # type: ignore[arg-type]
    assert ring.tail == 0


def test_exports_are_counted_and_block_close_and_resize() -> None:
    ring = PacketRing(8, 64)
    frames = ring.frames
    derived = frames[2:4]  # a view of a view still pins the ring
    lengths = ring.lengths
    assert ring.exports == 2
    del frames
    gc.collect()
    with pytest.raises(BufferError, match="2 view"):
        ring.close()
    with pytest.raises(BufferError):
        ring.resize(16)
    assert not ring.closed
    del derived, lengths
    gc.collect()
    assert ring.exports == 0
    ring.resize(16, 256)
    assert (ring.nslots, ring.slot_size, ring.pending) == (16, 256, 0)
    ring.close()
    assert ring.closed
    ring.close()  # idempotent


def test_memoryview_exports_count_too() -> None:
    ring = PacketRing(2, 64)
    mv = memoryview(np.asarray(ring.frames))
    with pytest.raises(BufferError):
        ring.close()
    mv.release()
    gc.collect()
    ring.close()


def test_closed_ring_refuses_use() -> None:
    ring = PacketRing(2, 64)
    ring.close()
    for action in (lambda: ring.frames, lambda: ring.push(b"x"), lambda: ring.packet(0)):
        with pytest.raises(ValueError, match="closed"):
            action()


def test_context_manager_closes() -> None:
    with PacketRing(2, 64) as ring:
        ring.push(b"x")
    assert ring.closed


# -- the safety boundary: lengths, wrapping indices ---------------------------------------------

def test_a_length_past_the_slot_is_refused_not_read() -> None:
    ring = PacketRing(4, 2048)
    index = ring.push(b"\x01" * 60)
    ring.lengths[index] = 60014  # what a Python hook may write; the slab ends 6 KiB later
    with pytest.raises(ValueError, match=f"slot {index} holds a length of 60014 bytes"):
        ring.packet(index)
    ring.lengths[index] = 2048  # a whole slot is fine
    assert len(ring.packet(index)) == 2048


def test_every_slot_has_a_spare_byte_for_oversize_detection() -> None:
    for slot_size in (64, 1514, 2048, 2049, MAX_SLOT_SIZE):
        ring = PacketRing(2, slot_size)
        assert ring.stride % 64 == 0 and ring.stride >= FRAME_OFFSET + slot_size + 1
        assert ring.truncated == 0
        ring.close()


def test_head_and_tail_wrap_at_2_to_the_32_like_the_c_code() -> None:
    ring = PacketRing(8, 64)
    ring.head = ring.tail = WRAP - 3
    for i in range(6):
        assert ring.push(bytes([i])) == (WRAP - 3 + i) % WRAP
    assert (ring.pending, len(ring), ring.tail) == (6, 6, 3)
    assert [ring.packet(ring.head + k) for k in range(6)] == [bytes([i]) for i in range(6)]
    ring.consume(4)  # head passes 2**32 here
    assert (ring.head, ring.pending) == (1, 2)
    ring.head = ring.head + WRAP  # what `head + n` computed in Python gives
    assert ring.head == 1
    ring.tail = -1  # modulo 2**32, as in C
    assert ring.tail == WRAP - 1


def test_index_arguments_take_any_int_modulo_2_to_the_32() -> None:
    ring = PacketRing(4, 64)
    ring.store(WRAP + 5, b"frame", b"H" * 10)  # slot 5 & 3 == 1
    for alias in (1, 5, WRAP + 1, 3 * WRAP + 5, -3, np.uint64(WRAP + 1)):
        assert ring.packet(alias) == b"frame"
        assert ring.header(alias) == b"H" * 10
    with pytest.raises(TypeError):
        ring.packet(1.0)  # type: ignore[arg-type]


@settings(max_examples=200)
@given(start=st.integers(0, WRAP - 1), steps=st.lists(st.integers(0, 8), max_size=40))
def test_push_and_consume_agree_with_indices_modulo_2_to_the_32(start: int,
                                                                steps: list[int]) -> None:
    ring = PacketRing(8, 64)
    ring.head = ring.tail = start
    model: list[bytes] = []
    seq = 0
    for step in steps:
        for _ in range(min(step, ring.free)):
            assert ring.push(seq.to_bytes(4, "big")) == (start + seq) % WRAP
            model.append(seq.to_bytes(4, "big"))
            seq += 1
        assert [ring.packet(ring.head + k) for k in range(ring.pending)] == model
        eaten = min(step // 2 + 1, ring.pending)
        ring.consume(eaten)
        del model[:eaten]
        assert ring.head == (start + seq - len(model)) % WRAP
    ring.close()


# -- slot sizes from what can arrive ------------------------------------------------------------

def test_slot_size_for_covers_the_largest_frame_and_no_more() -> None:
    assert slot_size_for(1500, False, "tap") == 1500 + TAP_L2_OVERHEAD == 1522
    assert slot_size_for(9000, False, "tap") == 9022
    assert slot_size_for(1500, False, "tun") == 1500
    assert slot_size_for(68, mode="tun") == 68 >= MIN_SLOT_SIZE
    for mode in ("tap", "tun"):
        assert slot_size_for(1500, True, mode) == MAX_SLOT_SIZE  # 64 KiB superframes
        assert slot_size_for(65535, False, mode) <= MAX_SLOT_SIZE
        PacketRing(2, slot_size_for(65535, False, mode)).close()  # always a valid geometry


@pytest.mark.parametrize(("args", "error"), [
    ((67, False, "tap"), ValueError), ((65536, False, "tap"), ValueError),
    ((1500, False, "eth"), ValueError), ((1500.0, False, "tap"), TypeError),
    ((True, False, "tap"), TypeError),
])
def test_slot_size_for_refuses_impossible_devices(args: tuple[object, bool, str],
                                                  error: type[Exception]) -> None:
    with pytest.raises(error):
        slot_size_for(*args)  # type: ignore[arg-type]


# -- ring v2: the header in front of the frame, offsets, peers ------------------------------------

def test_the_header_sits_right_in_front_of_the_frame() -> None:
    ring = PacketRing(4, 256)
    index = ring.push(b"frame", b"0123456789")
    assert bytes(ring.slots[index, FRAME_OFFSET - 10:FRAME_OFFSET + 5]) == b"0123456789frame"
    assert ring.headers.strides == (ring.stride,)
    assert ring.headers[index].tobytes() == b"0123456789"


def test_an_offset_moves_the_frame_and_its_header_without_a_copy() -> None:
    ring = PacketRing(4, 256)
    index = ring.push(b"payload", b"H" * 10)
    ring.slots[index, FRAME_OFFSET - 8 - 10:FRAME_OFFSET - 8] = np.frombuffer(b"h" * 10, np.uint8)
    ring.slots[index, FRAME_OFFSET - 8:FRAME_OFFSET] = np.frombuffer(b"ENCAPHDR", np.uint8)
    ring.offsets[index] -= 8        # prepend: off -= h, len += h
    ring.lengths[index] += 8
    assert ring.packet(index) == b"ENCAPHDRpayload"
    assert ring.header(index) == b"h" * 10
    ring.offsets[index] += 8 + 3    # strip 8 + 3
    ring.lengths[index] -= 8 + 3
    assert ring.packet(index) == b"load"
    ring.store(index, b"new")       # a new frame goes back to FRAME_OFFSET
    assert ring.offsets[index] == FRAME_OFFSET and ring.packet(index) == b"new"


@pytest.mark.parametrize(("offset", "length"), [
    (9, 10),                        # the header would start before the slot
    (0, 0),
    (FRAME_OFFSET + 1, 256),        # one byte past the frame area
    (FRAME_OFFSET + 256, 1),
    (10, 257),                      # inside the slot, but longer than slot_size
    (65535, 0),
])
def test_an_offset_or_length_outside_the_slot_is_refused(offset: int, length: int) -> None:
    ring = PacketRing(4, 256)
    index = ring.push(b"x")
    ring.offsets[index] = offset
    ring.lengths[index] = length
    with pytest.raises(ValueError, match=f"slot {index} holds a length of {length} bytes at "
                                         f"offset {offset}"):
        ring.packet(index)
    with pytest.raises(ValueError, match="does not fit the slot"):
        ring.header(index)


@pytest.mark.parametrize(("offset", "length"), [
    (10, 0), (10, 256), (FRAME_OFFSET + 256, 0), (FRAME_OFFSET, 256), (20, 256 + 60),
])
def test_an_offset_and_length_inside_the_slot_are_taken(offset: int, length: int) -> None:
    ring = PacketRing(4, 256)
    index = ring.push(b"x")
    ring.offsets[index] = offset
    ring.lengths[index] = length if length <= 256 else 256
    assert len(ring.packet(index)) == min(length, 256)


def test_peers_round_trip_through_the_view_and_the_helpers() -> None:
    ring = PacketRing(4, 256)
    assert ring.peers.dtype == PEER_DTYPE and PEER_DTYPE.itemsize == 28
    assert ring.peer(0) is None
    ring.set_peer(0, ("192.0.2.7", 4789))
    ring.set_peer(1, ("2001:db8::1", 53, 0, 7))
    assert ring.peer(0) == ("192.0.2.7", 4789)
    assert ring.peer(1) == ("2001:db8::1", 53)
    peers = ring.peers
    assert peers[0]["family"] == socket.AF_INET and peers[0]["port"] == 4789
    assert bytes(peers[0]["addr4"]) == socket.inet_pton(socket.AF_INET, "192.0.2.7")
    assert peers[1]["family"] == socket.AF_INET6 and peers[1]["scope_id"] == 7
    assert bytes(peers[1]["addr6"]) == socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    peers[2]["family"] = socket.AF_INET
    peers[2]["port"] = 9
    peers[2]["addr4"] = [127, 0, 0, 1]
    assert ring.peer(2) == ("127.0.0.1", 9)
    ring.set_peer(0, None)
    assert ring.peer(0) is None
    peers[3]["family"] = 1      # AF_UNIX: not a peer a UDP port takes
    with pytest.raises(ValueError, match="address family 1"):
        ring.peer(3)
    del peers


@pytest.mark.parametrize("bad", [("host.example", 1), ("10.0.0.1", 65536), ("10.0.0.1", -1),
                                 ("10.0.0.1",), "10.0.0.1:53", ("::1", 1, -1, 0)])
def test_set_peer_refuses_what_is_not_a_numeric_address(bad: object) -> None:
    ring = PacketRing(2, 64)
    with pytest.raises((ValueError, TypeError)):
        ring.set_peer(0, bad)
    assert ring.peer(0) is None
