namespace Ferry.Linux;

/// <summary>
/// Scheduling for the threads whose wake-up latency the guest feels: the switchover on both sides (its every
/// millisecond is downtime), post-copy's fault path (a page the guest waits for crosses the source's return path
/// and the destination's urgent receiver), and a guest thread (a hart) while it waits for a missing page. On a small
/// host the guest's own threads and the bulk push keep every core busy, and a normal thread that wakes waits for a
/// slice (1-5 ms measured) at each hop.
/// </summary>
/// <remarks>
/// Real-time (SCHED_FIFO, the lowest priority, 1) where the process may (root or CAP_SYS_NICE), else a 100 µs scheduler
/// slice (Linux 6.12+, no privilege), else nothing. Every such thread blocks on a socket or an event between short
/// pieces of work; none spins.
/// </remarks>
public static class LatencyPriority
{
    /// <summary>Slice asked for when real-time is refused.</summary>
    public static readonly TimeSpan Slice = TimeSpan.FromMicroseconds(100);

    // Set once the kernel refused real-time: later raises go straight to the slice (a raise may come per page fault).
    private static volatile bool realtimeRefused;

    /// <summary>Raise the calling thread; dispose the result (on the same thread) to undo it.</summary>
    public static Raised Raise()
    {
        if (!realtimeRefused)
        {
            if (Libc.SetCurrentThreadRealtime(1)) return new Raised(realtime: true, slice: false);
            realtimeRefused = true;
        }
        return new Raised(realtime: false, slice: Libc.SetCurrentThreadSlice(Slice));
    }

    /// <summary>
    /// Raise the calling thread for hand-offs: a thread that one of this process's threads wakes and then blocks for
    /// (the in-process guest's fault thread, woken by the faulting writer's userfaultfd event). A normal thread at the
    /// highest weight (nice -20, where allowed) with <see cref="Slice"/>: it preempts the bulk push and the guest's own
    /// threads as it wakes, as a real-time one does, and the kernel wakes it on its waker's CPU (wake-affine), where a
    /// real-time thread is woken on the CPU it last ran on, or the other one when a real-time thread runs there (its
    /// waker, still running). Dispose the result on the same thread to undo it.
    /// </summary>
    /// <remarks>
    /// A wake-up across CPUs costs an inter-processor interrupt, which a paravirtualised host makes dear. Measured here
    /// (2-core PVM guest, a C ping-pong over loopback TCP, two nice-10 CPU hogs): a round trip 20-23 µs with both
    /// sides normal threads or both real-time on one CPU, 66-80 µs real-time unpinned or split across the CPUs. In the
    /// post-copy engine bench (1 GiB, hot set 20k pages/s, two sets of 10 alternated runs) the fault thread raised this
    /// way instead of real-time: faulted share median 12.0 and 13.5 % against 16.8 and 16.1 %, post-copy 773 against
    /// 902 ms; fault latency unchanged within the noise (p50 121-135 against 130-132 µs, p99 0.6 ms).
    /// Not for threads another process or the network wakes: there is no waker's CPU to share, and real-time keeps
    /// their tail short (the source's return path this way, in the VM demo: p99 0.6-3.1 ms against 0.5-0.8 ms).
    /// </remarks>
    public static Raised RaiseHandoff()
    {
        bool niced = Libc.SetCurrentThreadNice(-20);
        return new Raised(realtime: false, slice: Libc.SetCurrentThreadSlice(Slice), niced);
    }

    /// <summary>
    /// Lower the calling thread to SCHED_IDLE for work nobody waits for while the guest runs (a migration's teardown
    /// once the guest has started on the destination); dispose the result, on the same thread, to go back to a normal
    /// thread where the kernel allows it (it may not without privilege: the thread then stays idle, which suits a thread
    /// that only waits afterwards).
    /// </summary>
    /// <remarks>
    /// Measured on a 2-core host, right after a pre-copy resume: the destination's teardown (closing the channels, which
    /// JIT-compiles the code that closes them) took 5-7 ms of CPU, on a core one of the guest's harts then waited for.
    /// </remarks>
    public static Background Lower() => new(Libc.SetCurrentThreadIdle());

    /// <summary>What <see cref="Lower"/> changed.</summary>
    public readonly struct Background(bool idle) : IDisposable
    {
        /// <summary>Back to a normal thread (SCHED_OTHER), if the kernel lets us.</summary>
        public void Dispose()
        {
            if (idle) Libc.SetCurrentThreadRealtime(0);
        }
    }

    /// <summary>What <see cref="Raise"/> changed.</summary>
    public readonly struct Raised(bool realtime, bool slice, bool niced = false) : IDisposable
    {
        /// <summary>True if the thread runs real-time.</summary>
        public bool Realtime => realtime;

        /// <summary>Back to a normal thread with the default slice and nice 0.</summary>
        public void Dispose()
        {
            if (realtime) Libc.SetCurrentThreadRealtime(0);
            if (slice) Libc.SetCurrentThreadSlice(null);
            if (niced) Libc.SetCurrentThreadNice(0);
        }
    }
}
