# tapengine._batchio: batched reads and writes between a tun/tap fd and a PacketRing.
#
# C-level API: both return the number of packets moved (>= 0) and store 0 or the errno that
# stopped the batch in *err. EINTR is retried; EAGAIN ends the batch with *err == 0. They run
# without the GIL and never allocate.

from libc.stdint cimport uint32_t

from tapengine._ring cimport PacketRing


cdef uint32_t ring_recv(int fd, PacketRing ring, uint32_t budget, bint vnet_hdr,
                        int *err) noexcept nogil
cdef uint32_t ring_send(int fd, PacketRing ring, uint32_t first, uint32_t count, bint vnet_hdr,
                        int *err) noexcept nogil
