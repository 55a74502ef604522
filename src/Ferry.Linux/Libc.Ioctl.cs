using System.Runtime.InteropServices;

namespace Ferry.Linux;

// Device files and ioctl(2): open(2), close(2), ioctl(2) and the request-number encoding of asm-generic/ioctl.h
// (x86-64 and aarch64 use the generic layout: nr 8 bits, type 8 bits, size 14 bits, direction 2 bits).
public static partial class Libc
{
    /// <summary>open flag: read and write.</summary>
    public const int O_RDWR = 0x2;

    /// <summary>open flag: close the fd across execve, so a spawned helper (QEMU, gcc) never inherits /dev/kvm.</summary>
    public const int O_CLOEXEC = 0x80000;

    /// <summary>errno value: operation not permitted.</summary>
    public const int EPERM = 1;

    /// <summary>errno value: no such file or directory.</summary>
    public const int ENOENT = 2;

    /// <summary>errno value: argument list too long; KVM's "your array is too small" for CPUID and MSR lists.</summary>
    public const int E2BIG = 7;

    /// <summary>errno value: permission denied.</summary>
    public const int EACCES = 13;

    /// <summary>errno value: no such device (a device node whose driver is not bound).</summary>
    public const int ENODEV = 19;

    /// <summary>errno value: inappropriate ioctl for device.</summary>
    public const int ENOTTY = 25;

    /// <summary>errno value: no such device or address (character device without a driver behind its number).</summary>
    public const int ENXIO = 6;

    private const int _IOC_NRBITS = 8;
    private const int _IOC_TYPEBITS = 8;
    private const int _IOC_SIZEBITS = 14;
    private const int _IOC_NRSHIFT = 0;
    private const int _IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS;
    private const int _IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS;
    private const int _IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS;

    /// <summary>ioctl direction: no data.</summary>
    public const uint _IOC_NONE = 0;

    /// <summary>ioctl direction: userspace writes, the kernel reads the argument.</summary>
    public const uint _IOC_WRITE = 1;

    /// <summary>ioctl direction: the kernel writes the argument back.</summary>
    public const uint _IOC_READ = 2;

    /// <summary>Encode an ioctl request number (asm-generic/ioctl.h <c>_IOC</c>).</summary>
    public static uint _IOC(uint dir, uint type, uint nr, int size)
    {
        if ((uint)size >= 1u << _IOC_SIZEBITS)
        {
            // The kernel's _IOC_TYPECHECK refuses this at compile time; a struct this large needs a pointer instead.
            throw new ArgumentOutOfRangeException(nameof(size), size, "ioctl argument size does not fit in 14 bits");
        }

        return (dir << _IOC_DIRSHIFT) | (type << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | ((uint)size << _IOC_SIZESHIFT);
    }

    /// <summary>An ioctl without argument data (the argument, if any, is a value).</summary>
    public static uint _IO(uint type, uint nr) => _IOC(_IOC_NONE, type, nr, 0);

    /// <summary>An ioctl where the kernel writes <paramref name="size"/> bytes back to userspace.</summary>
    public static uint _IOR(uint type, uint nr, int size) => _IOC(_IOC_READ, type, nr, size);

    /// <summary>An ioctl where the kernel reads <paramref name="size"/> bytes from userspace.</summary>
    public static uint _IOW(uint type, uint nr, int size) => _IOC(_IOC_WRITE, type, nr, size);

    /// <summary>An ioctl whose argument is read and then written back.</summary>
    public static uint _IOWR(uint type, uint nr, int size) => _IOC(_IOC_READ | _IOC_WRITE, type, nr, size);

    /// <summary>The direction bits of an encoded request.</summary>
    public static uint _IOC_DIR(uint request) => request >> _IOC_DIRSHIFT;

    /// <summary>The type (driver letter) of an encoded request.</summary>
    public static uint _IOC_TYPE(uint request) => (request >> _IOC_TYPESHIFT) & ((1u << _IOC_TYPEBITS) - 1);

    /// <summary>The command number of an encoded request.</summary>
    public static uint _IOC_NR(uint request) => (request >> _IOC_NRSHIFT) & ((1u << _IOC_NRBITS) - 1);

    /// <summary>The argument size of an encoded request.</summary>
    public static uint _IOC_SIZE(uint request) => (request >> _IOC_SIZESHIFT) & ((1u << _IOC_SIZEBITS) - 1);

    /// <summary>open(2) without O_CREAT (so no mode). Returns the fd, or -1 and sets errno.</summary>
    [LibraryImport(LibraryName, EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int open(string pathname, int flags);

    /// <summary>close(2). Returns 0, or -1 and sets errno.</summary>
    [LibraryImport(LibraryName, SetLastError = true)]
    public static partial int close(int fd);

    /// <summary>
    /// ioctl(2) with a pointer argument. glibc declares ioctl variadic; on the x86-64 and aarch64 Linux ABIs a
    /// variadic call with integer/pointer arguments passes them exactly as a fixed-argument call does.
    /// Returns the ioctl's non-negative result, or -1 and sets errno.
    /// </summary>
    [LibraryImport(LibraryName, EntryPoint = "ioctl", SetLastError = true)]
    public static unsafe partial int ioctl(int fd, nuint request, void* arg);

    /// <summary>ioctl(2) with a value argument (KVM_CREATE_VCPU's id, KVM_CHECK_EXTENSION's cap, ...).</summary>
    [LibraryImport(LibraryName, EntryPoint = "ioctl", SetLastError = true)]
    public static partial int ioctl(int fd, nuint request, nuint arg);
}
