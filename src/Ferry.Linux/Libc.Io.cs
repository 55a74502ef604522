using System.Runtime.InteropServices;

namespace Ferry.Linux;

// Kernel struct names kept exactly (STYLE.md 8).
#pragma warning disable CS8981

/// <summary>One element of a <c>writev</c> vector (struct iovec, &lt;sys/uio.h&gt;).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct iovec
{
    /// <summary>Start of the bytes.</summary>
    public nint iov_base;

    /// <summary>Number of bytes.</summary>
    public nuint iov_len;
}

/// <summary>One element of a <c>poll</c> set (struct pollfd, &lt;poll.h&gt;).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct pollfd
{
    public int fd;
    public short events;
    public short revents;
}

#pragma warning restore CS8981

public static partial class Libc
{
    /// <summary>Most iovecs one writev accepts (IOV_MAX on Linux).</summary>
    public const int IOV_MAX = 1024;

    /// <summary>poll event: there is data to read.</summary>
    public const short POLLIN = 0x001;

    /// <summary>poll event: writing will not block.</summary>
    public const short POLLOUT = 0x004;

    /// <summary>poll event: error condition.</summary>
    public const short POLLERR = 0x008;

    /// <summary>poll event: peer hung up.</summary>
    public const short POLLHUP = 0x010;

    /// <summary>errno value: broken pipe (peer closed).</summary>
    public const int EPIPE = 32;

    /// <summary>errno value: connection reset by peer.</summary>
    public const int ECONNRESET = 104;

    [LibraryImport(LibraryName, EntryPoint = "writev", SetLastError = true)]
    public static unsafe partial nint writev(int fd, iovec* iov, int iovcnt);

    [LibraryImport(LibraryName, EntryPoint = "readv", SetLastError = true)]
    public static unsafe partial nint readv(int fd, iovec* iov, int iovcnt);

    [LibraryImport(LibraryName, EntryPoint = "fcntl", SetLastError = true)]
    private static partial int fcntl(int fd, int cmd);

    [LibraryImport(LibraryName, EntryPoint = "fcntl", SetLastError = true)]
    private static partial int fcntl(int fd, int cmd, int arg);

    private const int F_GETFL = 3;
    private const int F_SETFL = 4;
    private const int F_DUPFD_CLOEXEC = 1030;

    /// <summary>
    /// A second descriptor for <paramref name="fd"/>'s open file (<c>F_DUPFD_CLOEXEC</c>): it shares the file's offset,
    /// flags and <c>flock</c>, which stays held until the last of them is closed. Throws <see cref="LinuxException"/>.
    /// </summary>
    public static int DuplicateCloseOnExec(int fd)
    {
        int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
        if (copy < 0) throw new LinuxException("fcntl(F_DUPFD_CLOEXEC)", Marshal.GetLastPInvokeError());
        return copy;
    }

    /// <summary>
    /// Clear O_NONBLOCK on <paramref name="fd"/>: its reads and writes then wait in the kernel, and a thread blocked in
    /// one is woken by the kernel itself when data or room arrives. Throws <see cref="LinuxException"/>.
    /// </summary>
    public static void ClearNonBlocking(int fd)
    {
        int flags = fcntl(fd, F_GETFL);
        if (flags < 0) throw new LinuxException("fcntl(F_GETFL)", Marshal.GetLastPInvokeError());
        if ((flags & O_NONBLOCK) == 0) return;
        if (fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0) throw new LinuxException("fcntl(F_SETFL)", Marshal.GetLastPInvokeError());
    }

    /// <summary>open/eventfd/userfaultfd flag: calls that would block fail with EAGAIN instead.</summary>
    public const int O_NONBLOCK = 0x800;

    /// <summary>eventfd flag: close across execve (same value as <see cref="O_CLOEXEC"/>).</summary>
    public const int EFD_CLOEXEC = O_CLOEXEC;

    /// <summary>eventfd flag: read of a zero counter fails with EAGAIN (same value as <see cref="O_NONBLOCK"/>).</summary>
    public const int EFD_NONBLOCK = O_NONBLOCK;

    /// <summary>errno value: bad address (the kernel could not touch a user buffer).</summary>
    public const int EFAULT = 14;

    /// <summary>read(2). Returns the bytes read (0 at end of file), or -1 and sets errno.</summary>
    [LibraryImport(LibraryName, EntryPoint = "read", SetLastError = true)]
    public static unsafe partial nint read(int fd, void* buf, nuint count);

    /// <summary>write(2). Returns the bytes written, or -1 and sets errno.</summary>
    [LibraryImport(LibraryName, EntryPoint = "write", SetLastError = true)]
    public static unsafe partial nint write(int fd, void* buf, nuint count);

    /// <summary>eventfd(2): a counter fd that poll reports readable while non-zero; for waking a thread out of poll.</summary>
    [LibraryImport(LibraryName, EntryPoint = "eventfd", SetLastError = true)]
    public static partial int eventfd(uint initval, int flags);

    [LibraryImport(LibraryName, EntryPoint = "poll", SetLastError = true)]
    public static unsafe partial int poll(pollfd* fds, nuint nfds, int timeout);

    /// <summary>
    /// poll(2) until <paramref name="deadline"/> (<see cref="Environment.TickCount64"/> milliseconds; long.MaxValue:
    /// none): the count of ready fds, 0 when the time is up. EINTR (the runtime's own signals, GC suspension among
    /// them, interrupt poll) waits out the rest of the time; any other error throws <see cref="LinuxException"/>.
    /// </summary>
    public static unsafe int PollUntil(pollfd* fds, nuint nfds, long deadline)
    {
        while (true)
        {
            int wait = deadline == long.MaxValue ? -1 : (int)Math.Clamp(deadline - Environment.TickCount64, 0, int.MaxValue);
            int ready = poll(fds, nfds, wait);
            if (ready >= 0) return ready;
            int errno = Marshal.GetLastPInvokeError();
            if (errno != EINTR) throw new LinuxException("poll", errno);
        }
    }

    /// <summary>
    /// Write every byte described by <paramref name="iov"/> to <paramref name="fd"/>: chunks of at most
    /// <see cref="IOV_MAX"/> vectors, resumes after partial writes (advancing <paramref name="iov"/> in place, so the
    /// caller's vector is consumed), retries on EINTR, and on EAGAIN (a non-blocking fd) waits with <c>poll</c> for at
    /// most <paramref name="timeoutMilliseconds"/> (-1 = forever) without progress. Returns false on that timeout.
    /// Throws <see cref="LinuxException"/> for any other error (EPIPE, ECONNRESET, ...).
    /// </summary>
    /// <remarks>On sockets use MSG_NOSIGNAL semantics: .NET ignores SIGPIPE process-wide, so EPIPE arrives as an errno.</remarks>
    public static bool WriteVectorFully(int fd, Span<iovec> iov, int timeoutMilliseconds)
    {
        TransferVector(fd, iov, read: false, timeoutMilliseconds, out bool timedOut);
        return !timedOut;
    }

    /// <summary>
    /// Fill every byte described by <paramref name="iov"/> from <paramref name="fd"/> (the receive side of
    /// <see cref="WriteVectorFully"/>): chunks of at most <see cref="IOV_MAX"/> vectors, resumes after partial reads
    /// (advancing <paramref name="iov"/> in place), retries on EINTR. EAGAIN on a blocking fd means its SO_RCVTIMEO
    /// elapsed; on a non-blocking one the call waits with <c>poll</c> for at most <paramref name="timeoutMilliseconds"/>
    /// (-1 = forever). Returns the bytes read: all of them, or fewer when the peer closed the stream first (EOF).
    /// <paramref name="timedOut"/> says the read stopped on a timeout instead. Throws <see cref="LinuxException"/> for
    /// any other error (ECONNRESET, ...).
    /// </summary>
    public static long ReadVectorFully(int fd, Span<iovec> iov, int timeoutMilliseconds, out bool timedOut) =>
        TransferVector(fd, iov, read: true, timeoutMilliseconds, out timedOut);

    /// <summary>The loop of <see cref="WriteVectorFully"/> and <see cref="ReadVectorFully"/>.</summary>
    private static unsafe long TransferVector(int fd, Span<iovec> iov, bool read, int timeoutMilliseconds, out bool timedOut)
    {
        timedOut = false;
        long total = 0;
        int first = 0;
        fixed (iovec* v = iov)
        {
            while (first < iov.Length)
            {
                if (v[first].iov_len == 0)
                {
                    first++;
                    continue;
                }
                int count = Math.Min(iov.Length - first, IOV_MAX);
                nint n = read ? readv(fd, v + first, count) : writev(fd, v + first, count);
                if (n < 0)
                {
                    int errno = Marshal.GetLastPInvokeError();
                    if (errno == EINTR) continue;
                    if (errno == EAGAIN)
                    {
                        // A blocking fd's EAGAIN on a read is its SO_RCVTIMEO elapsing; a write polls either way.
                        bool wait = !read || (fcntl(fd, F_GETFL) is var flags && flags >= 0 && (flags & O_NONBLOCK) != 0);
                        if (wait && Wait(fd, read ? POLLIN : POLLOUT, timeoutMilliseconds)) continue;
                        timedOut = true;
                        return total;
                    }
                    throw new LinuxException(read ? "readv" : "writev", errno);
                }
                if (n == 0 && read) return total; // EOF
                total += n;
                Consume(v, ref first, (nuint)n);
            }
        }
        return total;
    }

    /// <summary>Consume <paramref name="n"/> bytes from the front of the vector starting at <paramref name="first"/>.</summary>
    private static unsafe void Consume(iovec* v, ref int first, nuint n)
    {
        while (n > 0)
        {
            if (n >= v[first].iov_len)
            {
                n -= v[first].iov_len;
                v[first].iov_len = 0;
                first++;
            }
            else
            {
                v[first].iov_base += (nint)n;
                v[first].iov_len -= n;
                n = 0;
            }
        }
    }

    /// <summary>Wait until <paramref name="fd"/> has one of <paramref name="events"/> (or an error or EOF, which the
    /// next call reports); false when <paramref name="timeoutMilliseconds"/> passed first.</summary>
    private static unsafe bool Wait(int fd, short events, int timeoutMilliseconds)
    {
        var p = new pollfd { fd = fd, events = events };
        while (true)
        {
            int r = poll(&p, 1, timeoutMilliseconds);
            if (r > 0) return true;
            if (r == 0) return false;
            int errno = Marshal.GetLastPInvokeError();
            if (errno != EINTR) throw new LinuxException("poll", errno);
        }
    }
}
