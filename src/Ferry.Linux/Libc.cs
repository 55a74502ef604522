using System.Runtime.InteropServices;

namespace Ferry.Linux;

/// <summary>
/// The C library calls Ferry makes, one partial class split by topic (Libc.Memory.cs, Libc.Io.cs, ...), all
/// source-generated <see cref="LibraryImportAttribute"/> stubs with <c>SetLastError</c> (STYLE.md 13).
/// Names are the kernel's and libc's own. Callers use the checked wrappers, which throw <see cref="LinuxException"/>.
/// </summary>
public static partial class Libc
{
    /// <summary>The shared object every libc import binds to.</summary>
    internal const string LibraryName = "libc";

    /// <summary>errno value: interrupted system call.</summary>
    public const int EINTR = 4;

    /// <summary>errno value: try again.</summary>
    public const int EAGAIN = 11;

    /// <summary>Throw a <see cref="LinuxException"/> naming <paramref name="call"/> and the current errno.</summary>
    public static LinuxException LastError(string call) => new(call, Marshal.GetLastPInvokeError());
}

/// <summary>A failed system call: which call, and the errno it set.</summary>
public sealed class LinuxException : IOException
{
    public LinuxException(string call, int errno)
        : base($"{call} failed: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})", errno)
    {
        Call = call;
        Errno = errno;
    }

    /// <summary>The system call or library function that failed, e.g. <c>mmap</c>.</summary>
    public string Call { get; }

    /// <summary>The errno it returned.</summary>
    public int Errno { get; }
}
