using System.Diagnostics;

namespace Ferry.Linux;

/// <summary>
/// A manual-reset event whose timed wait ends at a <see cref="Stopwatch"/> timestamp with the host timer's precision
/// (tens of microseconds), on a futex. .NET's own waits take whole milliseconds, rounded up: a guest timer due in
/// 100 µs fired up to 1 ms late, and a guest that sleeps to 1 ms deadlines felt that as a millisecond of jitter on
/// every tick (QEMU's TCG: ~0.2 ms).
/// </summary>
/// <remarks>
/// <see cref="Set"/> costs one atomic exchange, plus a futex wake only when a thread sleeps in <see cref="Wait(long)"/>;
/// nothing is allocated after construction. The word lives in a pinned array, so a late <see cref="Set"/> from another
/// thread can never touch freed memory.
/// </remarks>
public sealed unsafe class WakeEvent
{
    private readonly int[] cell = GC.AllocateArray<int>(1, pinned: true);
    private int sleepers;

    public WakeEvent(bool initialState = false)
    {
        if (!OperatingSystem.IsLinux()) throw new PlatformNotSupportedException("WakeEvent needs Linux futexes");
        cell[0] = initialState ? 1 : 0;
    }

    /// <summary>True once <see cref="Set"/> ran and no <see cref="Reset"/> since.</summary>
    public bool IsSet => Volatile.Read(ref cell[0]) != 0;

    /// <summary>Set the event: every waiter wakes, and later waits return at once until <see cref="Reset"/>.</summary>
    public void Set()
    {
        // Both the exchange here and the waiter's increment are full fences: either the waiter's futex sees the word
        // set, or this sees the waiter counted and wakes it.
        if (Interlocked.Exchange(ref cell[0], 1) == 0 && Volatile.Read(ref sleepers) != 0)
        {
            fixed (int* word = cell) Libc.FutexWake(word, int.MaxValue);
        }
    }

    /// <summary>Clear the event.</summary>
    public void Reset() => Volatile.Write(ref cell[0], 0);

    /// <summary>Wait until the event is set.</summary>
    public void Wait() => Wait(long.MaxValue);

    /// <summary>
    /// Wait until the event is set (true) or <paramref name="deadline"/>, a <see cref="Stopwatch.GetTimestamp"/>
    /// value, passes (false; <see cref="long.MaxValue"/>: never). Never returns false before the deadline.
    /// </summary>
    public bool Wait(long deadline)
    {
        while (Volatile.Read(ref cell[0]) == 0)
        {
            long ns = -1;
            if (deadline != long.MaxValue)
            {
                if (Stopwatch.GetTimestamp() >= deadline) return false;
                ns = ToNanoseconds(deadline);
            }
            Interlocked.Increment(ref sleepers);
            fixed (int* word = cell) Libc.FutexWait(word, 0, ns);
            Interlocked.Decrement(ref sleepers);
        }
        return true;
    }

    // Stopwatch on Linux reads CLOCK_MONOTONIC in nanoseconds, the futex's clock; any other frequency is scaled. (No
    // Int128 here: its operators have no precompiled code and would be JIT-compiled on a hart's first wfi.)
    private static long ToNanoseconds(long timestamp) => Stopwatch.Frequency == 1_000_000_000
        ? timestamp
        : (long)Math.Min(timestamp * (1e9 / Stopwatch.Frequency), long.MaxValue);
}
