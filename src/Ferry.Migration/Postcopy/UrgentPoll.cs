using System.Diagnostics;
using Ferry.Linux;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Postcopy;

/// <summary>
/// How the destination's urgent receiver waits for its next record when <see cref="Precopy.IncomingOptions.FaultPoll"/>
/// is set: asleep while no guest thread waits for a page, and, while one does, polling the socket without sleeping
/// (for up to that long a record). The thread that asks for a page nudges a sleeping receiver right after its request
/// has gone, so the receiver's wake-up overlaps the source's work, and the reply finds it polling: the source's send
/// wakes nobody.
/// </summary>
/// <remarks>
/// <para>Why: a wake-up on the other CPU is the dearest step of a fault here (an inter-processor interrupt, which a
/// paravirtualised host makes a VM exit on both sides: ~25 µs per hop measured, docs/BENCH-POSTCOPY.md), and the
/// reply's was one of three on the fault's path. KVM polls a halted vCPU's wake-up the same way (halt-polling), QEMU
/// its event loop (poll-max-ns).</para>
/// <para>Cost: the receiver is real-time (<see cref="LatencyPriority"/>), so while it polls the threads of normal
/// priority on its CPU wait; it yields to real-time ones (the source's return path, on one host) between polls. It
/// polls only while a fault is outstanding, for at most the budget before it sleeps in the read. That CPU is what
/// decides whether polling pays (see <see cref="Precopy.IncomingOptions.FaultPoll"/>).</para>
/// </remarks>
internal sealed class UrgentPoll : IDisposable
{
    private readonly IPollableChannel _channel;
    // Longest poll for one record, in Stopwatch ticks.
    private readonly long _budgetTicks;
    private readonly Func<long> _awaited;
    private readonly ReadinessWait _wait = new();
    // 1 while the receiver sleeps in WaitForData (a request then nudges it).
    private int _sleeping;
    private long _foundPolling;
    private long _nudges;

    /// <param name="awaited">Faults outstanding now (page requests whose page has not landed); 0 before post-copy.</param>
    /// <param name="budget">Longest poll for one record before the receiver sleeps in the read.</param>
    public UrgentPoll(IPollableChannel channel, Func<long> awaited, TimeSpan budget)
    {
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(budget, TimeSpan.Zero);
        _channel = channel;
        _awaited = awaited;
        _budgetTicks = (long)(budget.TotalSeconds * Stopwatch.Frequency);
    }

    /// <summary>Records whose first byte the receiver found while polling (it was not woken for them).</summary>
    public long FoundPolling => Interlocked.Read(ref _foundPolling);

    /// <summary>Times a request woke the sleeping receiver.</summary>
    public long Nudges => Interlocked.Read(ref _nudges);

    /// <summary>
    /// A page request has gone to the source (any thread, after the fault was counted as awaited): wake the receiver
    /// if it sleeps, so that it polls for the reply.
    /// </summary>
    public void RequestSent()
    {
        // After the fault's count went up (an interlocked add, a full fence): either the receiver sees the count, or
        // this sees it asleep (it stores the flag, fences, then reads the count).
        if (Volatile.Read(ref _sleeping) == 0) return;
        Interlocked.Increment(ref _nudges);
        _wait.Nudge();
    }

    /// <summary>
    /// Before the receiver reads its next record: return once there is data, or a read is the right place to wait
    /// (the poll budget ran out). Throws as the read would when the channel's receive timeout passes.
    /// </summary>
    public void BeforeRead()
    {
        while (true)
        {
            if (_awaited() > 0)
            {
                long end = Stopwatch.GetTimestamp() + _budgetTicks;
                while (true)
                {
                    if (_channel.HasData())
                    {
                        Interlocked.Increment(ref _foundPolling);
                        return;
                    }
                    if (_awaited() == 0) break;                  // it came by the push: sleep again
                    if (Stopwatch.GetTimestamp() >= end) return; // late: the read sleeps until it comes
                    Thread.Yield();
                }
            }
            Volatile.Write(ref _sleeping, 1);
            Interlocked.MemoryBarrier();
            if (_awaited() > 0)
            {
                Volatile.Write(ref _sleeping, 0);
                continue;
            }
            ReadinessWait.Result woke = _channel.WaitForData(_wait);
            Volatile.Write(ref _sleeping, 0);
            if (woke != ReadinessWait.Result.Nudged) return;
        }
    }

    public void Dispose() => _wait.Dispose();
}
