using System.Runtime.InteropServices;

namespace Ferry.Linux;

// futex(2) through syscall(2) (glibc has no wrapper): a wait on a 32-bit word with an absolute CLOCK_MONOTONIC
// deadline in nanoseconds, where .NET's own waits take whole milliseconds.
public static unsafe partial class Libc
{
    private const int FUTEX_WAKE = 1;
    private const int FUTEX_WAIT_BITSET = 9;
    private const int FUTEX_PRIVATE_FLAG = 128;
    private const uint FUTEX_BITSET_MATCH_ANY = 0xffff_ffff;

    /// <summary>errno value: the deadline passed.</summary>
    public const int ETIMEDOUT = 110;

    [StructLayout(LayoutKind.Sequential)]
    private struct Timespec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    [LibraryImport(LibraryName, EntryPoint = "syscall", SetLastError = true)]
    private static partial long futex(long number, int* word, int op, int value, Timespec* timeout, int* word2, uint value3);

    private static long SysFutex => RuntimeInformation.ProcessArchitecture == Architecture.Arm64 ? 98 : 202;

    /// <summary>
    /// Sleep while <c>*word == expected</c>, until a <see cref="FutexWake"/> on it or <paramref name="deadlineNs"/>
    /// (CLOCK_MONOTONIC nanoseconds, the clock of <see cref="System.Diagnostics.Stopwatch"/> on Linux; negative: no
    /// deadline). Returns 0 when woken or when the word did not hold <paramref name="expected"/>, else the errno
    /// (<see cref="ETIMEDOUT"/>, <see cref="EINTR"/>). Spurious returns happen: callers recheck their condition.
    /// </summary>
    public static int FutexWait(int* word, int expected, long deadlineNs)
    {
        Timespec ts;
        Timespec* timeout = null;
        if (deadlineNs >= 0)
        {
            ts.Seconds = deadlineNs / 1_000_000_000;
            ts.Nanoseconds = deadlineNs % 1_000_000_000;
            timeout = &ts;
        }
        if (futex(SysFutex, word, FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG, expected, timeout, null, FUTEX_BITSET_MATCH_ANY) == 0) return 0;
        int errno = Marshal.GetLastPInvokeError();
        return errno == EAGAIN ? 0 : errno;
    }

    /// <summary>Wake up to <paramref name="count"/> threads sleeping in <see cref="FutexWait"/> on <paramref name="word"/>.</summary>
    public static void FutexWake(int* word, int count) =>
        futex(SysFutex, word, FUTEX_WAKE | FUTEX_PRIVATE_FLAG, count, null, null, 0);
}
