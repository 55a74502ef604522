using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Ferry.Linux;

/// <summary>
/// A userfaultfd (Documentation/admin-guide/mm/userfaultfd.rst), the destination side of post-copy migration. Guest
/// memory is registered in MISSING mode (<see cref="RegisterMissing"/>), so the first access to a page that has not
/// arrived does not map a fresh zero page: the accessing thread sleeps in the kernel and a message names the page.
/// A fault thread reads those (<see cref="ReadFaults"/>), asks the source for the pages and installs each with
/// <see cref="Copy"/>, which maps it atomically and wakes its waiters. The background stream of the remaining pages
/// goes through <see cref="Copy"/> too; when both deliver a page, the later one finds it already present and leaves it.
/// </summary>
/// <remarks>
/// <para><b>Threading.</b> <see cref="ReadFaults"/> from one thread at a time (it owns the message buffer). The other
/// members from any thread, concurrently with it and each other: the kernel serializes installs per page.
/// <see cref="Dispose"/> may run while the fault thread waits in <see cref="ReadFaults"/>, which then returns 0 at once;
/// the fd itself is closed when the last call in flight returns (a SafeHandle reference each), never under a call.</para>
/// <para><b>Closing</b> (Dispose, or finalization of a lost reference) makes the kernel wake every thread blocked on a
/// fault in a registered range, and each retries its access as if no userfaultfd existed: a missing page becomes a zero
/// page. Mid-migration that silently corrupts the guest, so close only once every page is installed, or when the guest
/// will never run again. The same holds for <see cref="Unregister"/>.</para>
/// <para><b>Who may touch registered memory.</b> vCPUs inside KVM_RUN (KVM reaches guest memory with get_user_pages,
/// a fault taken in kernel mode, so it needs a fd that is not <see cref="UserModeOnly"/>) and native code. Not managed
/// code: a managed thread blocked on a missing page is in cooperative GC mode, so a GC waits for it, while the fault
/// thread, returning from poll or an ioctl into the runtime, waits for the GC: the process can hang. Managed readers of
/// guest memory must check that a page has arrived first (STYLE.md 19: missing post-copy pages live behind the slow
/// path).</para>
/// </remarks>
public sealed class Userfaultfd : IDisposable
{
    /// <summary>
    /// Messages one read(2) takes at most. Each blocked thread has one fault outstanding, so a guest's vCPUs plus its
    /// device threads rarely reach 16; the rest wait in the kernel for the next call. 16 × 32 B = 512 B.
    /// </summary>
    private const int MessagesPerRead = 16;

    /// <summary>
    /// Tries of a COPY or ZEROPAGE that fails with EAGAIN and installs nothing. That happens only while the address
    /// space changes under a non-cooperative userfaultfd (fork, mremap, MADV_REMOVE events, none of which is asked for
    /// here), so a persistent EAGAIN is a bug to report, not a state to spin in.
    /// </summary>
    private const int MaxTriesWithoutProgress = 100;

    /// <summary>
    /// Most bytes one COPY or ZEROPAGE call installs; a longer range takes several calls. The kernel installs a range
    /// without a preemption point on a PREEMPT_NONE kernel (most cloud and distribution kernels), and each page's
    /// mapping is slow where page tables are virtualised: measured with perf sched on this host (a PVM guest), a
    /// 1 MiB UFFDIO_COPY held its CPU for ~3 ms, and a real-time thread woken on that CPU (the one serving a faulted
    /// page) waited for all of it. 64 KiB bounds that to ~0.2 ms for ~1 µs more per call.
    /// </summary>
    public const int MaxBytesPerCall = 64 << 10;

    /// <summary>The kernel's page size: the unit of registration, faults, installs and "already present".</summary>
    private static readonly nuint PageSize = (nuint)Environment.SystemPageSize;

    /// <summary>The userfaultfd, non-blocking.</summary>
    private readonly SafeFileHandle _fd;

    /// <summary>An eventfd that <see cref="Dispose"/> signals to end a <see cref="ReadFaults"/> poll. Closing a fd
    /// does not wake a poll on it in another thread, and the SafeHandle defers the close until that poll returns.</summary>
    private readonly SafeFileHandle _wake;

    /// <summary>Receive buffer of <see cref="ReadFaults"/>, kept so the fault thread allocates nothing per fault.</summary>
    private readonly uffd_msg[] _messages = new uffd_msg[MessagesPerRead];

    /// <summary>1 once <see cref="Dispose"/> has started.</summary>
    private int _disposed;

    private Userfaultfd(SafeFileHandle fd, SafeFileHandle wake, bool userModeOnly)
    {
        _fd = fd;
        _wake = wake;
        UserModeOnly = userModeOnly;
    }

    /// <summary>
    /// Only faults taken in user mode are reported: the fd came from the last fallback of <see cref="Open"/>. The
    /// kernel's own accesses to missing pages then fail with EFAULT, which rules out KVM (KVM_RUN fails) and syscalls
    /// reading guest memory (write(2) from it fails) until the page is installed.
    /// </summary>
    public bool UserModeOnly { get; }

    /// <summary>The result of <see cref="Copy"/> or <see cref="Zero"/>: bytes this call installed, and bytes skipped
    /// because a page was already there (installed by an earlier call, or present before registration). They add up
    /// to the length asked for.</summary>
    public readonly record struct CopyResult(nuint Installed, nuint AlreadyPresent);

    /// <summary>
    /// Create a non-blocking, close-on-exec userfaultfd and do the UFFDIO_API handshake (no optional features).
    /// Tried in order: /dev/userfaultfd with USERFAULTFD_IOC_NEW (Linux 6.1+; access is the device node's mode, so
    /// no capability is needed); userfaultfd(2) (needs CAP_SYS_PTRACE unless vm.unprivileged_userfaultfd is 1);
    /// userfaultfd(2) with UFFD_USER_MODE_ONLY (Linux 5.11+, open to anyone, but see <see cref="UserModeOnly"/>).
    /// Throws <see cref="UserfaultfdUnavailableException"/> naming each attempt's errno when none works.
    /// </summary>
    public static unsafe Userfaultfd Open()
    {
        const int flags = Libc.O_CLOEXEC | Libc.O_NONBLOCK;
        bool userModeOnly = false;
        int fd = NewFromDevice(flags, out int deviceErrno);
        int syscallErrno = 0, userOnlyErrno = 0;
        if (fd < 0)
        {
            fd = (int)Libc.syscall(Libc.SYS_userfaultfd, flags);
            syscallErrno = fd < 0 ? Marshal.GetLastPInvokeError() : 0;
        }

        if (fd < 0)
        {
            fd = (int)Libc.syscall(Libc.SYS_userfaultfd, flags | Libc.UFFD_USER_MODE_ONLY);
            userOnlyErrno = fd < 0 ? Marshal.GetLastPInvokeError() : 0;
            userModeOnly = true;
        }

        if (fd < 0)
        {
            throw new UserfaultfdUnavailableException(
                "userfaultfd unavailable: " +
                $"/dev/userfaultfd: {Describe(deviceErrno)}; " +
                $"userfaultfd(2): {Describe(syscallErrno)}; " +
                $"userfaultfd(2) with UFFD_USER_MODE_ONLY: {Describe(userOnlyErrno)}",
                userOnlyErrno);
        }

        var handle = new SafeFileHandle(fd, ownsHandle: true);
        try
        {
            // SAFETY: api is a live local of the layout UFFDIO_API's size encodes; the kernel writes back within it.
            var api = new uffdio_api { api = Libc.UFFD_API };
            if (Libc.ioctl(fd, Libc.UFFDIO_API, &api) < 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                throw new UserfaultfdUnavailableException($"userfaultfd unavailable: UFFDIO_API: {Describe(errno)}", errno);
            }

            const ulong needed = (1UL << Libc._UFFDIO_REGISTER) | (1UL << Libc._UFFDIO_UNREGISTER);
            if (api.api != Libc.UFFD_API || (api.ioctls & needed) != needed)
            {
                throw new UserfaultfdUnavailableException(
                    $"userfaultfd unavailable: UFFDIO_API answered api 0x{api.api:x}, ioctls 0x{api.ioctls:x}", Libc.EINVAL);
            }

            int wake = Libc.eventfd(0, Libc.EFD_CLOEXEC | Libc.EFD_NONBLOCK);
            if (wake < 0)
            {
                throw Libc.LastError("eventfd");
            }

            return new Userfaultfd(handle, new SafeFileHandle(wake, ownsHandle: true), userModeOnly);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Report accesses to missing pages of [<paramref name="address"/>, +<paramref name="length"/>) (page aligned;
    /// anonymous private or shmem memory) from now on. Pages already present stay as they are and never fault; drop
    /// them with MADV_DONTNEED to make them missing again. <see cref="Copy"/> installs 4 KiB pages even in a
    /// MADV_HUGEPAGE range; once every page has arrived, khugepaged or MADV_COLLAPSE can merge them back.
    /// Throws <see cref="LinuxException"/> (EINVAL for memory that cannot be registered, EBUSY if another
    /// userfaultfd has it).
    /// </summary>
    public unsafe void RegisterMissing(nint address, nuint length)
    {
        CheckRange(address, length, nameof(address));
        var register = new uffdio_register
        {
            range = new uffdio_range { start = (ulong)address, len = length },
            mode = Libc.UFFDIO_REGISTER_MODE_MISSING,
        };
        // SAFETY: a live local of UFFDIO_REGISTER's size; the kernel writes only its ioctls field back.
        ThrowOnError(Ioctl(Libc.UFFDIO_REGISTER, &register), "UFFDIO_REGISTER");
    }

    /// <summary>
    /// Stop reporting faults in the page-aligned range. Threads blocked on it are woken and see zero pages where
    /// nothing was installed (see the remarks on <see cref="Userfaultfd"/>).
    /// </summary>
    public unsafe void Unregister(nint address, nuint length)
    {
        CheckRange(address, length, nameof(address));
        var range = new uffdio_range { start = (ulong)address, len = length };
        // SAFETY: a live local of UFFDIO_UNREGISTER's size, only read by the kernel.
        ThrowOnError(Ioctl(Libc.UFFDIO_UNREGISTER, &range), "UFFDIO_UNREGISTER");
    }

    /// <summary>
    /// Wait up to <paramref name="timeoutMilliseconds"/> (-1: forever; 0: just look) for faults, and write the address
    /// of each into <paramref name="addresses"/>, rounded down to its page by the kernel. Returns how many; 0 when the
    /// time passed, or when <see cref="Dispose"/> ran meanwhile: a fault thread loops over this with a short timeout and
    /// checks its stop flag in between. Never reads more messages than <paramref name="addresses"/> holds, as a message
    /// read is gone from the kernel and a fault dropped here would leave its thread asleep.
    /// </summary>
    /// <remarks>
    /// The same page may come more than once (two threads touched it, or a signal woke a waiter that then faulted
    /// again), and may have been installed by the background stream since; both are harmless, as <see cref="Copy"/>
    /// then reports it already present and the installer has woken its waiters. Allocates nothing. Throws
    /// <see cref="ObjectDisposedException"/> when called after Dispose, <see cref="LinuxException"/> if poll or read fail.
    /// </remarks>
    public unsafe int ReadFaults(Span<nint> addresses, int timeoutMilliseconds)
    {
        if (addresses.IsEmpty)
        {
            ThrowArgument("room for at least one address is needed", nameof(addresses));
        }

        ArgumentOutOfRangeException.ThrowIfLessThan(timeoutMilliseconds, -1);
        int max = Math.Min(addresses.Length, MessagesPerRead);
        long deadline = timeoutMilliseconds < 0 ? long.MaxValue : Environment.TickCount64 + timeoutMilliseconds;
        bool fdAdded = false, wakeAdded = false;
        try
        {
            _fd.DangerousAddRef(ref fdAdded);
            _wake.DangerousAddRef(ref wakeAdded);
            int fd = (int)_fd.DangerousGetHandle();
            pollfd* set = stackalloc pollfd[2];
            while (true)
            {
                set[0] = new pollfd { fd = fd, events = Libc.POLLIN };
                set[1] = new pollfd { fd = (int)_wake.DangerousGetHandle(), events = Libc.POLLIN };
                // SAFETY: set is two initialized pollfds on this stack frame.
                int ready = Libc.PollUntil(set, 2, deadline);
                if (ready == 0 || set[1].revents != 0)
                {
                    return 0;
                }

                int count = ReadMessages(fd, addresses, max);
                if (count > 0)
                {
                    return count;
                }
            }
        }
        finally
        {
            if (wakeAdded) _wake.DangerousRelease();
            if (fdAdded) _fd.DangerousRelease();
        }
    }

    /// <summary>
    /// UFFDIO_COPY: install <paramref name="length"/> bytes from <paramref name="source"/> (page aligned, any memory
    /// but the destination range) as the pages at <paramref name="destination"/>, each atomically (no thread ever sees
    /// a half-copied page), and wake the threads waiting for them. Pages already present are left alone and counted
    /// in <see cref="CopyResult.AlreadyPresent"/>: the page arrived first from the other path (fault or background),
    /// or the guest has written it since, and either way what is mapped is newer than what is being installed.
    /// Allocates nothing. Throws <see cref="LinuxException"/> for anything else (ENOENT: range not registered;
    /// ESRCH: the address space is gone).
    /// </summary>
    public CopyResult Copy(nint destination, nint source, nuint length)
    {
        if (((nuint)source & (PageSize - 1)) != 0)
        {
            ThrowArgument($"source 0x{source:x} is not page aligned", nameof(source));
        }

        return Install(zero: false, destination, source, length);
    }

    /// <summary>
    /// UFFDIO_ZEROPAGE: map the shared zero page at the missing pages of the range and wake their waiters; a page the
    /// source reported as all zeros costs no copy and no memory until written (the write is an ordinary copy-on-write
    /// fault, not reported here). Already present pages as in <see cref="Copy"/>. Allocates nothing.
    /// </summary>
    public CopyResult Zero(nint destination, nuint length) => Install(zero: true, destination, 0, length);

    /// <summary>
    /// UFFDIO_WAKE: wake threads waiting on faults in the page-aligned range, which retry their access. Copy and Zero
    /// wake by themselves; this is for a page that became present some other way.
    /// </summary>
    public unsafe void Wake(nint address, nuint length)
    {
        CheckRange(address, length, nameof(address));
        var range = new uffdio_range { start = (ulong)address, len = length };
        // SAFETY: a live local of UFFDIO_WAKE's size, only read by the kernel.
        ThrowOnError(Ioctl(Libc.UFFDIO_WAKE, &range), "UFFDIO_WAKE");
    }

    /// <summary>
    /// Wake a <see cref="ReadFaults"/> in progress (it returns 0), then close both fds once no call is using them.
    /// Threads blocked on faults are released with zero pages where nothing was installed (see the remarks on
    /// <see cref="Userfaultfd"/>).
    /// </summary>
    public unsafe void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        bool added = false;
        try
        {
            _wake.DangerousAddRef(ref added);
            ulong one = 1;
            // SAFETY: eventfd reads exactly the 8 bytes of a live local. Cannot fail short of the counter overflowing,
            // and it is written once.
            _ = Libc.write((int)_wake.DangerousGetHandle(), &one, sizeof(ulong));
        }
        finally
        {
            if (added) _wake.DangerousRelease();
        }

        _fd.Dispose();
        _wake.Dispose();
    }

    /// <summary>The loop of <see cref="Copy"/> and <see cref="Zero"/>.</summary>
    private unsafe CopyResult Install(bool zero, nint destination, nint source, nuint length)
    {
        CheckRange(destination, length, nameof(destination));
        nuint installed = 0, present = 0;
        int tries = 0;
        while (installed + present < length)
        {
            nuint done = installed + present;
            nuint remaining = Math.Min(length - done, (nuint)MaxBytesPerCall);
            long result; // the kernel's count of bytes installed, or -errno
            int errno;
            if (zero)
            {
                var request = new uffdio_zeropage { range = new uffdio_range { start = (ulong)destination + done, len = remaining } };
                // SAFETY: a live local of UFFDIO_ZEROPAGE's size; the kernel writes back only its zeropage field.
                errno = Ioctl(Libc.UFFDIO_ZEROPAGE, &request);
                result = request.zeropage;
            }
            else
            {
                var request = new uffdio_copy { dst = (ulong)destination + done, src = (ulong)source + done, len = remaining };
                // SAFETY: a live local of UFFDIO_COPY's size; the kernel writes back only its copy field. It reads
                // src with copy_from_user, so a bad source is EFAULT, never a crash.
                errno = Ioctl(Libc.UFFDIO_COPY, &request);
                result = request.copy;
            }

            if (errno == 0)
            {
                installed += remaining;
                tries = 0;
                continue;
            }

            if (result > 0)
            {
                // Stopped short, typically at a present page: the kernel reports the bytes it did install with EAGAIN.
                installed += (nuint)result;
                tries = 0;
            }
            else if (errno == Libc.EEXIST)
            {
                // Nothing installed: the first remaining page is present. Step over it and go on.
                present += PageSize;
                tries = 0;
            }
            else if (errno != Libc.EAGAIN || ++tries >= MaxTriesWithoutProgress)
            {
                throw new LinuxException(zero ? "UFFDIO_ZEROPAGE" : "UFFDIO_COPY", errno);
            }
        }

        return new CopyResult(installed, present);
    }

    /// <summary>read(2) up to <paramref name="max"/> messages and keep the page faults' addresses; 0 if there were none.</summary>
    private unsafe int ReadMessages(int fd, Span<nint> addresses, int max)
    {
        nint bytes;
        fixed (uffd_msg* messages = _messages)
        {
            // SAFETY: the buffer is pinned and holds MessagesPerRead >= max messages; the kernel writes whole ones.
            bytes = Libc.read(fd, messages, (nuint)(max * sizeof(uffd_msg)));
        }

        if (bytes < 0)
        {
            // EAGAIN: poll said readable, but the fault was resolved before the read (its page installed by another
            // thread, whose wake withdrew the message); look again.
            int errno = Marshal.GetLastPInvokeError();
            return errno is Libc.EAGAIN or Libc.EINTR ? 0 : throw new LinuxException("read", errno);
        }

        int count = 0;
        int n = (int)(bytes / sizeof(uffd_msg));
        for (int i = 0; i < n; i++)
        {
            // Only page faults can come: the events of other kinds need features not asked for.
            ref readonly uffd_msg message = ref _messages[i];
            if (message.@event == Libc.UFFD_EVENT_PAGEFAULT)
            {
                addresses[count++] = (nint)message.arg.pagefault.address;
            }
        }

        return count;
    }

    /// <summary>ioctl on the userfaultfd, holding a reference so a concurrent Dispose cannot close it (and let the
    /// number be reused) mid-call. Returns 0, or the errno.</summary>
    private unsafe int Ioctl(uint request, void* arg)
    {
        bool added = false;
        try
        {
            _fd.DangerousAddRef(ref added);
            return Libc.ioctl((int)_fd.DangerousGetHandle(), request, arg) < 0 ? Marshal.GetLastPInvokeError() : 0;
        }
        finally
        {
            if (added) _fd.DangerousRelease();
        }
    }

    private static void ThrowOnError(int errno, string call)
    {
        if (errno != 0)
        {
            throw new LinuxException(call, errno);
        }
    }

    private static void CheckRange(nint address, nuint length, string name)
    {
        if (((nuint)address & (PageSize - 1)) != 0 || length == 0 || (length & (PageSize - 1)) != 0)
        {
            ThrowArgument($"range 0x{address:x}+0x{length:x} is not a non-empty run of whole pages", name);
        }
    }

    [DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowArgument(string message, string name) => throw new ArgumentException(message, name);

    private static string Describe(int errno) => $"{Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})";

    /// <summary>USERFAULTFD_IOC_NEW on /dev/userfaultfd: a new userfaultfd, or -1 and the errno.</summary>
    private static int NewFromDevice(int flags, out int errno)
    {
        int device = Libc.open("/dev/userfaultfd", Libc.O_RDWR | Libc.O_CLOEXEC);
        if (device < 0)
        {
            errno = Marshal.GetLastPInvokeError();
            return -1;
        }

        int fd = Libc.ioctl(device, Libc.USERFAULTFD_IOC_NEW, (nuint)flags);
        errno = fd < 0 ? Marshal.GetLastPInvokeError() : 0;
        _ = Libc.close(device); // the new fd does not depend on the device fd staying open
        return fd;
    }
}
