using System.Runtime.InteropServices;

namespace Ferry.Linux;

// Per-thread scheduling weight: gettid(2), setpriority(2) on a thread id (Linux keeps a nice value per thread).
public static partial class Libc
{
    private const int PRIO_PROCESS = 0;

    [LibraryImport(LibraryName)]
    private static partial int gettid();

    [LibraryImport(LibraryName, SetLastError = true)]
    private static partial int setpriority(int which, int who, int priority);

    /// <summary>
    /// Set the calling thread's nice value (-20..19; larger = less CPU when the cores are contended). Raising it needs no
    /// privilege; lowering it below the current value needs CAP_SYS_NICE. Returns false if the kernel refused.
    /// </summary>
    /// <remarks>
    /// Post-copy uses it to keep its bulk push out of the way of the fault path on a small host: the push threads are
    /// always runnable, and a page the guest waits for crosses four thread wake-ups (fault reader, source return path,
    /// urgent send, urgent receive), each of which otherwise queues behind them for a scheduler slice.
    /// </remarks>
    public static bool SetCurrentThreadNice(int nice) => setpriority(PRIO_PROCESS, gettid(), Math.Clamp(nice, -20, 19)) == 0;
}
