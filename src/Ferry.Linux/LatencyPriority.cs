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
    public readonly struct Raised(bool realtime, bool slice) : IDisposable
    {
        /// <summary>True if the thread runs real-time.</summary>
        public bool Realtime => realtime;

        /// <summary>Back to a normal thread with the default slice.</summary>
        public void Dispose()
        {
            if (realtime) Libc.SetCurrentThreadRealtime(0);
            if (slice) Libc.SetCurrentThreadSlice(null);
        }
    }
}
