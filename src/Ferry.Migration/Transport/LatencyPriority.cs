using Ferry.Linux;

namespace Ferry.Migration.Transport;

/// <summary>
/// Scheduling for the threads whose wake-up latency the guest feels: the switchover on both sides (its every
/// millisecond is downtime) and post-copy's fault path (a page the guest waits for crosses the source's return path
/// and the destination's urgent receiver). On a small host the guest's own threads keep every core busy, and a normal
/// thread that wakes waits for a slice (2-5 ms measured) at each hop.
/// </summary>
/// <remarks>
/// Real-time (SCHED_FIFO, the lowest priority, 1) where the process may (root or CAP_SYS_NICE), else a 100 µs scheduler
/// slice (Linux 6.12+, no privilege), else nothing. Every such thread blocks on a socket or an event between short
/// pieces of work; none spins.
/// </remarks>
internal static class LatencyPriority
{
    /// <summary>Slice asked for when real-time is refused.</summary>
    public static readonly TimeSpan Slice = TimeSpan.FromMicroseconds(100);

    /// <summary>Raise the calling thread; dispose the result (on the same thread) to undo it.</summary>
    public static Raised Raise()
    {
        if (Libc.SetCurrentThreadRealtime(1)) return new Raised(realtime: true, slice: false);
        return new Raised(realtime: false, slice: Libc.SetCurrentThreadSlice(Slice));
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
