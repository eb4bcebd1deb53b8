# The one syscall pattern of the data plane: the one helper every errno other than EINTR/EAGAIN
# goes through on its way to Python, and the check of a descriptor coming from Python. The libc
# calls themselves are declared in tapengine.includes.system.
#
# Convention: C-level functions return -1 and leave the error in errno; callers copy errno at once,
# retry EINTR, treat EAGAIN as "nothing now" and pass anything else to raise_errno().

from libc.errno cimport EAGAIN


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
