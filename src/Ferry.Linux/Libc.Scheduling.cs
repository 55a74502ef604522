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
    /// Post-copy uses it for the destination's populate of guest memory before the switchover, which on a host shared
    /// with other guests (or the source, in a migration within one host) would otherwise take their CPU.
    /// </remarks>
    public static bool SetCurrentThreadNice(int nice) => setpriority(PRIO_PROCESS, gettid(), Math.Clamp(nice, -20, 19)) == 0;
}

// Per-thread scheduler slice: sched_setattr(2) / sched_getattr(2), called through syscall(2) (glibc 2.36 has no
// wrappers). On Linux 6.12+ (EEVDF) a normal thread's sched_runtime is its slice, and a thread with a shorter slice than
// the one running preempts it when it wakes (the kernel's PREEMPT_SHORT); no privilege needed. Older kernels accept the
// call and ignore the value, which the read-back shows.
public static partial class Libc
{
    private const uint SchedAttrSize = 56; // SCHED_ATTR_SIZE_VER1

    [StructLayout(LayoutKind.Sequential)]
    private struct SchedAttr
    {
        public uint Size;
        public uint Policy;
        public ulong Flags;
        public int Nice;
        public uint Priority;
        public ulong Runtime;
        public ulong Deadline;
        public ulong Period;
        public uint UtilMin;
        public uint UtilMax;
    }

    [LibraryImport(LibraryName, SetLastError = true)]
    private static partial long syscall(long number, int pid, ref SchedAttr attr, uint sizeOrFlags, uint flags);

    private static long SysSchedSetattr => RuntimeInformation.ProcessArchitecture == Architecture.Arm64 ? 274 : 314;
    private static long SysSchedGetattr => RuntimeInformation.ProcessArchitecture == Architecture.Arm64 ? 275 : 315;

    /// <summary>
    /// Ask for a scheduler slice of <paramref name="slice"/> for the calling thread (null: the kernel's default), keeping
    /// its policy and nice value. Returns true if the kernel took it (Linux 6.12+ with EEVDF); false if it refused or
    /// ignores slices (an older kernel: nothing changed that matters).
    /// </summary>
    /// <remarks>
    /// For threads on a latency path that sleep most of the time: woken, a thread with a short slice preempts a
    /// CPU-bound one at once instead of queueing behind it for up to its slice (2.8-4 ms), which on a small host is what
    /// a post-copy page fault otherwise waits at each of its hops. The slice bounds how long such a thread runs before
    /// others get a turn, so it costs nothing while the thread does little.
    /// </remarks>
    public static bool SetCurrentThreadSlice(TimeSpan? slice)
    {
        if (!OperatingSystem.IsLinux()) return false;
        var attr = new SchedAttr();
        if (syscall(SysSchedGetattr, 0, ref attr, SchedAttrSize, 0) != 0) return false;
        // Only normal (SCHED_OTHER) and batch threads have a slice to set; a real-time one is left alone.
        if (attr.Policy is not (0 or 3)) return false;
        // 0.1-100 ms is what the kernel accepts.
        ulong ns = slice is { } s ? (ulong)Math.Clamp(s.Ticks * 100, 100_000, 100_000_000) : 0;
        attr.Size = SchedAttrSize;
        attr.Flags = 0;
        attr.Runtime = ns;
        attr.Deadline = 0;
        attr.Period = 0;
        if (syscall(SysSchedSetattr, 0, ref attr, 0, 0) != 0) return false;
        var check = new SchedAttr();
        return syscall(SysSchedGetattr, 0, ref check, SchedAttrSize, 0) == 0 && (ns == 0 || check.Runtime == ns);
    }
}

// Real-time scheduling for a thread: sched_setscheduler(2) with pid 0 (the calling thread on Linux).
public static partial class Libc
{
    private const int SCHED_OTHER = 0;
    private const int SCHED_FIFO = 1;
    private const int SCHED_BATCH = 3;
    private const int SCHED_IDLE = 5;

    /// <summary>
    /// Put the calling thread in SCHED_BATCH (<paramref name="batch"/>) or back in SCHED_OTHER, its nice value kept.
    /// A batch thread keeps a normal thread's share of the CPU, but a thread that wakes preempts it at once, and it
    /// never preempts another on its own wake-up. No privilege needed either way; returns false if refused.
    /// </summary>
    public static bool SetCurrentThreadBatch(bool batch)
    {
        if (!OperatingSystem.IsLinux()) return false;
        int p = 0;
        return sched_setscheduler(0, batch ? SCHED_BATCH : SCHED_OTHER, ref p) == 0;
    }

    [LibraryImport(LibraryName, SetLastError = true)]
    private static partial int sched_setscheduler(int pid, int policy, ref int priority);

    /// <summary>
    /// Put thread <paramref name="tid"/> of this process (0: the caller) in SCHED_IDLE: it runs only on a CPU nothing
    /// else wants, any other thread that wakes there preempts it at once, and the kernel counts that CPU as idle when it
    /// places a waking thread. No privilege needed; getting out of it again does (sched(7): RLIMIT_NICE). False if
    /// refused or the thread is gone.
    /// </summary>
    public static bool SetThreadIdle(int tid)
    {
        if (!OperatingSystem.IsLinux()) return false;
        int p = 0;
        return sched_setscheduler(tid, SCHED_IDLE, ref p) == 0;
    }

    /// <summary>Nice value of <see cref="SetThreadBackground"/>.</summary>
    public const int BackgroundNice = 10;

    /// <summary>
    /// Put thread <paramref name="tid"/> of this process (0: the caller) in the background: SCHED_BATCH at nice 10
    /// (<see cref="BackgroundNice"/>) with a 100 µs slice (Linux 6.12+; older kernels ignore it). Unlike SCHED_IDLE it
    /// gets a share of a CPU that busy threads keep (~10 % against one normal thread); batch, it never preempts on its
    /// own wake-up, and with the short slice a thread that wakes takes the CPU from it within ~100 µs. From a normal
    /// policy no privilege is needed; from SCHED_IDLE it is. False if refused or the thread is gone.
    /// </summary>
    /// <remarks>
    /// Nice 19 (~1.5 %) was too little: a migrated source's teardown beside the demo VM dirtying 1M pages/s on both CPUs
    /// took 3-33 s (4 alternated pairs: one run past the demo's 30 s), at nice 10 5-9 s, the guest's stalls no worse.
    /// </remarks>
    public static bool SetThreadBackground(int tid)
    {
        if (!OperatingSystem.IsLinux()) return false;
        var attr = new SchedAttr { Size = SchedAttrSize, Policy = SCHED_BATCH, Nice = BackgroundNice, Runtime = 100_000 };
        return syscall(SysSchedSetattr, tid, ref attr, 0, 0) == 0;
    }

    /// <summary>The scheduling policy of thread <paramref name="tid"/> (0: the caller), or null if unknown or gone.</summary>
    public static int? ThreadPolicy(int tid)
    {
        if (!OperatingSystem.IsLinux()) return null;
        var attr = new SchedAttr();
        return syscall(SysSchedGetattr, tid, ref attr, SchedAttrSize, 0) == 0 ? (int)attr.Policy : null;
    }

    /// <summary>SCHED_IDLE's number, as <see cref="ThreadPolicy"/> reports it.</summary>
    public const int SchedIdle = SCHED_IDLE;

    /// <summary>The calling thread's policy, nice value and slice (0: the kernel's default), or null if unknown.</summary>
    public static (int Policy, int Nice, ulong SliceNs)? CurrentThreadScheduling()
    {
        if (!OperatingSystem.IsLinux()) return null;
        var attr = new SchedAttr();
        if (syscall(SysSchedGetattr, 0, ref attr, SchedAttrSize, 0) != 0) return null;
        return ((int)attr.Policy, attr.Nice, attr.Runtime);
    }

    /// <summary>
    /// Give the calling thread a normal policy (SCHED_OTHER or SCHED_BATCH), nice value and slice (0: the default), as
    /// <see cref="CurrentThreadScheduling"/> read them. Lowering the nice value needs privilege; false if refused.
    /// </summary>
    public static bool SetCurrentThreadScheduling(int policy, int nice, ulong sliceNs)
    {
        if (!OperatingSystem.IsLinux() || policy is not (SCHED_OTHER or SCHED_BATCH)) return false;
        var attr = new SchedAttr { Size = SchedAttrSize, Policy = (uint)policy, Nice = nice, Runtime = sliceNs };
        return syscall(SysSchedSetattr, 0, ref attr, 0, 0) == 0;
    }

    /// <summary>The calling thread's kernel id (gettid(2)).</summary>
    public static int CurrentThreadId() => gettid();

    /// <summary>
    /// Put the calling thread in SCHED_FIFO at <paramref name="priority"/> (1-99), or back in SCHED_OTHER with 0 (its nice
    /// value kept). Needs CAP_SYS_NICE (or an RLIMIT_RTPRIO allowance) to raise; returns false if refused.
    /// </summary>
    /// <remarks>
    /// A real-time thread runs as soon as it wakes, ahead of every normal thread (measured on a 2-core VM with two
    /// CPU-bound threads: a pipe round trip p99 70 µs, max 0.25 ms, against 2 ms / 5 ms as a normal thread and
    /// 0.7 ms / 4 ms with a 100 µs slice). Only for threads that sleep most of the time: one that spins starves the
    /// CPU's normal threads until the kernel's real-time throttle (5 % per second by default) lets them in.
    /// </remarks>
    public static bool SetCurrentThreadRealtime(int priority)
    {
        if (!OperatingSystem.IsLinux()) return false;
        int p = Math.Clamp(priority, 0, 99);
        return sched_setscheduler(0, p == 0 ? SCHED_OTHER : SCHED_FIFO, ref p) == 0;
    }
}
