# The C library and kernel interfaces the data plane calls, declared in one place (uvloop's
# includes/system.pxd is the model). Declarations Cython ships (libc.*, posix.*) are cimported
# from there by each module; what it lacks, or declares differently, is here.

from libc.stdint cimport uint16_t, uint32_t, uint64_t


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


cdef extern from "<errno.h>" nogil:
    enum: ECANCELED


cdef extern from "<time.h>" nogil:
    enum: CLOCK_MONOTONIC_COARSE


cdef extern from "<arpa/inet.h>" nogil:
    uint16_t htons(uint16_t)


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t
    struct sockaddr:
        sa_family_t sa_family
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    # ``timeout`` is a struct timespec *; the data plane passes NULL (non-blocking calls)
    int recvmmsg(int fd, mmsghdr *msgvec, unsigned int vlen, int flags, void *timeout)
    int sendmmsg(int fd, mmsghdr *msgvec, unsigned int vlen, int flags)
    int getsockopt(int fd, int level, int optname, void *optval, socklen_t *optlen)
    enum:
        AF_UNSPEC
        AF_INET
        AF_INET6
        SOL_SOCKET
        SO_TYPE
        SO_DOMAIN
        SOCK_DGRAM
        MSG_DONTWAIT
        MSG_TRUNC


cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr
    struct in6_addr:
        unsigned char s6_addr[16]
    struct sockaddr_in:
        sa_family_t sin_family
        uint16_t sin_port
        in_addr sin_addr
    struct sockaddr_in6:
        sa_family_t sin6_family
        uint16_t sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id


cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    enum:
        POLLIN
        POLLOUT


cdef extern from "<sys/epoll.h>" nogil:
    union epoll_data_t "epoll_data":
        void *ptr
        int fd
        uint32_t u32
        uint64_t u64
    struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)
    enum:
        EPOLL_CLOEXEC
        EPOLL_CTL_ADD
        EPOLL_CTL_DEL
        EPOLLIN
        EPOLLERR
        EPOLLHUP


cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    enum:
        EFD_CLOEXEC
        EFD_NONBLOCK


cdef extern from "<sys/prctl.h>" nogil:
    # prctl(PR_SET_TIMERSLACK, ns): how late the kernel may fire this thread's timers (50 us by
    # default), so that a coalescing sleep of a few tens of microseconds stays that short.
    int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4,
              unsigned long arg5)
    enum:
        PR_SET_TIMERSLACK
        PR_GET_TIMERSLACK


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_mutex_init(pthread_mutex_t *mutex, const void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *mutex)
    int pthread_mutex_lock(pthread_mutex_t *mutex)
    int pthread_mutex_unlock(pthread_mutex_t *mutex)


cdef extern from *:
    # GCC/Clang builtins: count leading zeros (undefined for 0: callers pass x > 0).
    int __builtin_clz(unsigned int x) nogil
    int __builtin_clzll(unsigned long long x) nogil
