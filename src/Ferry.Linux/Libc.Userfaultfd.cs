using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Ferry.Linux;

// Kernel struct names kept exactly (STYLE.md 8).
#pragma warning disable CS8981

/// <summary>UFFDIO_API's argument: the API version asked for, then the features and ioctls the kernel offers.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct uffdio_api
{
    /// <summary>In: <see cref="Libc.UFFD_API"/>. Out: the same, or the call fails with EINVAL.</summary>
    public ulong api;

    /// <summary>In: UFFD_FEATURE_* wanted (0: plain MISSING faults). Out: every feature this kernel has.</summary>
    public ulong features;

    /// <summary>Out: bit <c>_UFFDIO_x</c> set for each fd-wide ioctl available.</summary>
    public ulong ioctls;
}

/// <summary>A page-aligned range of this process's addresses (UFFDIO_UNREGISTER, UFFDIO_WAKE, inside the others).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct uffdio_range
{
    public ulong start;
    public ulong len;
}

/// <summary>UFFDIO_REGISTER's argument.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct uffdio_register
{
    public uffdio_range range;

    /// <summary>UFFDIO_REGISTER_MODE_* bits.</summary>
    public ulong mode;

    /// <summary>Out: bit <c>_UFFDIO_x</c> set for each range ioctl (COPY, ZEROPAGE, ...) the registered memory supports.</summary>
    public ulong ioctls;
}

/// <summary>UFFDIO_COPY's argument: install <c>len</c> bytes from <c>src</c> at the missing pages at <c>dst</c>.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct uffdio_copy
{
    public ulong dst;
    public ulong src;
    public ulong len;

    /// <summary>UFFDIO_COPY_MODE_* bits.</summary>
    public ulong mode;

    /// <summary>Out: bytes installed (a short count comes with EAGAIN), or -errno when none were.</summary>
    public long copy;
}

/// <summary>UFFDIO_ZEROPAGE's argument: map the zero page at the missing pages of <c>range</c>.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct uffdio_zeropage
{
    public uffdio_range range;

    /// <summary>UFFDIO_ZEROPAGE_MODE_* bits.</summary>
    public ulong mode;

    /// <summary>Out: bytes installed (a short count comes with EAGAIN), or -errno when none were.</summary>
    public long zeropage;
}

/// <summary>
/// One message read(2) from a userfaultfd: 32 bytes, packed in C. Only the pagefault member of the <c>arg</c> union is
/// declared: the others (fork, remap, remove) come only with UFFD_FEATURE_EVENT_* features, which Ferry does not ask for.
/// </summary>
[StructLayout(LayoutKind.Explicit, Size = 32)]
public struct uffd_msg
{
    /// <summary>UFFD_EVENT_*.</summary>
    [FieldOffset(0)] public byte @event;
    [FieldOffset(1)] public byte reserved1;
    [FieldOffset(2)] public ushort reserved2;
    [FieldOffset(4)] public uint reserved3;
    [FieldOffset(8)] public Arg arg;

    /// <summary>The event's payload (a union in C).</summary>
    [StructLayout(LayoutKind.Explicit, Size = 24)]
    public struct Arg
    {
        [FieldOffset(0)] public Pagefault pagefault;
    }

    /// <summary>UFFD_EVENT_PAGEFAULT: which address faulted, and how.</summary>
    [StructLayout(LayoutKind.Explicit, Size = 24)]
    public struct Pagefault
    {
        /// <summary>UFFD_PAGEFAULT_FLAG_* bits.</summary>
        [FieldOffset(0)] public ulong flags;

        /// <summary>The faulting address, rounded down to its page unless UFFD_FEATURE_EXACT_ADDRESS was asked for.</summary>
        [FieldOffset(8)] public ulong address;

        /// <summary>C's <c>feat.ptid</c>: the faulting thread, with UFFD_FEATURE_THREAD_ID only.</summary>
        [FieldOffset(16)] public uint ptid;
    }
}

#pragma warning restore CS8981

// userfaultfd(2), /dev/userfaultfd and the UFFDIO_* ioctls of <linux/userfaultfd.h>; numbers checked against the header
// with gcc (tests/Ferry.Linux.Tests/UserfaultfdTests.cs holds the values it printed).
public static partial class Libc
{
    /// <summary>The ioctl type byte of /dev/userfaultfd.</summary>
    public const uint USERFAULTFD_IOC = 0xAA;

    /// <summary>The ioctl type byte of a userfaultfd.</summary>
    public const uint UFFDIO = 0xAA;

    /// <summary>The only API version there is; UFFDIO_API must ask for it.</summary>
    public const ulong UFFD_API = 0xAA;

    public const int _UFFDIO_REGISTER = 0x00;
    public const int _UFFDIO_UNREGISTER = 0x01;
    public const int _UFFDIO_WAKE = 0x02;
    public const int _UFFDIO_COPY = 0x03;
    public const int _UFFDIO_ZEROPAGE = 0x04;
    public const int _UFFDIO_API = 0x3F;

    /// <summary>/dev/userfaultfd (Linux 6.1+): make a userfaultfd; the argument is its flags (O_CLOEXEC, O_NONBLOCK, UFFD_USER_MODE_ONLY).</summary>
    public static readonly uint USERFAULTFD_IOC_NEW = _IO(USERFAULTFD_IOC, 0x00);

    public static readonly uint UFFDIO_API = _IOWR(UFFDIO, _UFFDIO_API, Unsafe.SizeOf<uffdio_api>());
    public static readonly uint UFFDIO_REGISTER = _IOWR(UFFDIO, _UFFDIO_REGISTER, Unsafe.SizeOf<uffdio_register>());

    /// <summary>_IOR although userspace writes: a mistake the ABI keeps (the header says so).</summary>
    public static readonly uint UFFDIO_UNREGISTER = _IOR(UFFDIO, _UFFDIO_UNREGISTER, Unsafe.SizeOf<uffdio_range>());

    /// <summary>_IOR although userspace writes, as <see cref="UFFDIO_UNREGISTER"/>.</summary>
    public static readonly uint UFFDIO_WAKE = _IOR(UFFDIO, _UFFDIO_WAKE, Unsafe.SizeOf<uffdio_range>());
    public static readonly uint UFFDIO_COPY = _IOWR(UFFDIO, _UFFDIO_COPY, Unsafe.SizeOf<uffdio_copy>());
    public static readonly uint UFFDIO_ZEROPAGE = _IOWR(UFFDIO, _UFFDIO_ZEROPAGE, Unsafe.SizeOf<uffdio_zeropage>());

    /// <summary>uffd_msg.event: a thread touched a missing (or write-protected) page and waits.</summary>
    public const byte UFFD_EVENT_PAGEFAULT = 0x12;

    /// <summary>uffd_msg.arg.pagefault.flags: the access was a write.</summary>
    public const ulong UFFD_PAGEFAULT_FLAG_WRITE = 1 << 0;

    /// <summary>Register mode: report accesses to pages with nothing mapped.</summary>
    public const ulong UFFDIO_REGISTER_MODE_MISSING = 1 << 0;

    /// <summary>userfaultfd(2) flag: only faults taken in user mode are reported; the kernel's own accesses (a syscall's
    /// copy_from_user, KVM's get_user_pages) fail with EFAULT instead. What an unprivileged process may still create.</summary>
    public const int UFFD_USER_MODE_ONLY = 1;

    /// <summary>errno value: file exists; from UFFDIO_COPY/ZEROPAGE, "the page is already mapped".</summary>
    public const int EEXIST = 17;

    /// <summary>errno value: function not implemented (a kernel built without the syscall).</summary>
    public const int ENOSYS = 38;

    /// <summary>
    /// The userfaultfd(2) syscall number: glibc 2.36 has no wrapper. 323 on x86-64, 282 on arm64 (the generic table);
    /// -1 elsewhere, which the kernel answers with ENOSYS.
    /// </summary>
    public static readonly nint SYS_userfaultfd = RuntimeInformation.ProcessArchitecture switch
    {
        Architecture.X64 => 323,
        Architecture.Arm64 => 282,
        _ => -1,
    };

    /// <summary>
    /// syscall(2) with one integer argument. Variadic in glibc; on the x86-64 and aarch64 Linux ABIs integer arguments
    /// travel as in a fixed-argument call (as for <see cref="ioctl(int, nuint, nuint)"/>).
    /// Returns the syscall's result, or -1 and sets errno.
    /// </summary>
    [LibraryImport(LibraryName, EntryPoint = "syscall", SetLastError = true)]
    public static partial nint syscall(nint number, nint arg);
}
