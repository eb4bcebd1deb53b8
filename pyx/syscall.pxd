# The one syscall pattern of the data plane: declarations of the libc calls we make, and the one
# helper every errno other than EINTR/EAGAIN goes through on its way to Python.
#
# Convention: C-level functions return -1 and leave the error in errno; callers copy errno at once,
# retry EINTR, treat EAGAIN as "nothing now" and pass anything else to raise_errno().

from libc.errno cimport EAGAIN, EINTR, errno


cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t readv(int fd, const iovec *iov, int iovcnt)
    ssize_t writev(int fd, const iovec *iov, int iovcnt)


cdef extern from "<stdlib.h>" nogil:
    int posix_memalign(void **memptr, size_t alignment, size_t size)


cdef extern from "<unistd.h>" nogil:
    ssize_t read(int fd, void *buf, size_t count)
    ssize_t write(int fd, const void *buf, size_t count)
    long sysconf(int name)
    int _SC_PAGESIZE


cdef inline bint would_block(int err) noexcept nogil:
    return err == EAGAIN      # == EWOULDBLOCK on Linux


cdef inline int raise_errno(int err, str what, Py_ssize_t completed=-1) except -1:
    """Raise the precise OSError subclass for ``err``; ``completed`` packets went through first.

    Always raises; returns -1 only to satisfy the ``except -1`` convention.
    """
    from tapengine.errors import oserror
    raise oserror(err, what, completed=None if completed < 0 else completed)


cdef inline int fd_of(fd) except -1:
    """The descriptor number of an int or of an object with ``fileno()``; raises if negative."""
    if not isinstance(fd, int):
        fd = fd.fileno()
    if fd < 0:
        raise ValueError(f"invalid file descriptor {fd}")
    return fd
