# tapengine._batchio: batched reads and writes between a tun/tap fd and a PacketRing.
#
# C-level API: both return the number of packets moved (>= 0) and store 0 or the errno that
# stopped the batch in *err. EINTR is retried; EAGAIN ends the batch with *err == 0. They run
# without the GIL and never allocate.
#
# ring_recv_via/ring_send_via are the same with a choice of backend: ``io`` None is the
# readv()/writev() loop above, a tapengine._uring.UringIO submits the batch through io_uring
# (one io_uring_enter per batch; the UringIO belongs to the calling thread).

from libc.stdint cimport uint32_t

from tapengine._ring cimport PacketRing
from tapengine._uring cimport UringIO


cdef uint32_t ring_recv(int fd, PacketRing ring, uint32_t budget, bint vnet_hdr,
                        int *err) noexcept nogil
cdef uint32_t ring_send(int fd, PacketRing ring, uint32_t first, uint32_t count, bint vnet_hdr,
                        int *err) noexcept nogil
cdef uint32_t ring_recv_via(UringIO io, int fd, PacketRing ring, uint32_t budget, bint vnet_hdr,
                            int *err) noexcept nogil
cdef uint32_t ring_send_via(UringIO io, int fd, PacketRing ring, uint32_t first, uint32_t count,
                            bint vnet_hdr, int *err) noexcept nogil
