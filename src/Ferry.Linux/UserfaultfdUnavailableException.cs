namespace Ferry.Linux;

/// <summary>
/// This host cannot give Ferry a userfaultfd (<see cref="Userfaultfd.Open"/>): the kernel lacks it, or this process
/// may not have one. A type of its own because the answer differs from other I/O failures: the migration falls back
/// to pre-copy, and a test skips (STYLE.md 10). The message names every way that was tried and its errno.
/// </summary>
public sealed class UserfaultfdUnavailableException : IOException
{
    public UserfaultfdUnavailableException(string message, int errno)
        : base(message, errno)
    {
        Errno = errno;
    }

    /// <summary>The errno of the last attempt.</summary>
    public int Errno { get; }
}
