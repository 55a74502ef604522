using System.Diagnostics;
using System.Numerics;
using Ferry.Linux;

namespace Ferry.Machine.Memory;

/// <summary>
/// One post-copy of a <see cref="GuestRam"/>: which pages have not arrived, who waits for them, and the figures the
/// engine reports (working set, time blocked). Made by <see cref="GuestRam.BeginPostcopy"/>; the RAM drops it when
/// the last page is installed, so while no post-copy runs a slow path pays one null test.
/// </summary>
/// <remarks>
/// <para>Ordering: an install copies the page and only then clears its bit with an interlocked AND (a full fence), and
/// readers test the bit with an acquire load, so a thread that sees the bit clear sees the data. A bit is never set
/// again. A thread that found its page missing registers (under <see cref="gate"/>, with an interlocked increment)
/// and then tests the bit again; an installer clears the bit and then reads the waiter count. Each side stores before
/// it loads, with a full fence between, so either the waiter sees the page or the installer sees the waiter.</para>
/// <para>Waking: only the threads registered for the installed page are woken, each through its own event; with
/// nobody waiting an install costs two interlocked operations and a read. At most one waiter per blocked thread, so
/// the list stays as short as the machine has threads.</para>
/// <para>A thread runs with <see cref="LatencyPriority"/> (real-time where allowed) while it is blocked here, and
/// drops back as soon as it is woken: a hart is CPU-bound, so the scheduler woke it, a normal thread with little
/// credit left, only when the thread running there (the bulk push) had used up its slice. Measured with perf sched
/// on this 2-core host: 1-4 ms between the install and the hart running, per fault, in the first tens of ms after
/// the guest started. Two system calls per fault (a few µs) against a fault's 100+ µs.</para>
/// </remarks>
internal sealed class PostcopyPages
{
    // Bit set: the page has not arrived. Cleared by an install after the data; never set again.
    private readonly ulong[] missing;
    // Bit set: an installer claimed the page (so two installs of one page never both copy).
    private readonly ulong[] installing;
    // Bit set: requestPage was called for the page.
    private readonly ulong[] requested;
    // Bit set: a slow path (hart or device) reached the page since post-copy began: the working set.
    private readonly ulong[] touched;
    private readonly Action<ulong> requestPage;
    private long missingCount;
    private long workingSet;
    private long blockedTicks;
    // Set once by Abort: every wait from then on throws.
    private volatile Exception? lost;
    // Guards the waiter list.
    private readonly object gate = new();
    // Threads waiting now: [0, waiterCount). Grows (rarely: once per new blocked thread) under the gate.
    private PageWaiter[] waiters = new PageWaiter[8];
    // Registered waiters; read without the lock by installers.
    private int waiterCount;

    /// <summary>Pages [0, <paramref name="pageCount"/>) whose bit is set in <paramref name="missingBitmap"/> are missing (bits beyond are ignored).</summary>
    public PostcopyPages(int pageCount, ReadOnlySpan<ulong> missingBitmap, Action<ulong> requestPage)
    {
        this.requestPage = requestPage;
        int words = (pageCount + 63) / 64;
        missing = new ulong[words];
        installing = new ulong[words];
        requested = new ulong[words];
        touched = new ulong[words];
        missingBitmap[..words].CopyTo(missing);
        if ((pageCount & 63) != 0) missing[words - 1] &= (1UL << pageCount) - 1;
        long n = 0;
        foreach (ulong w in missing) n += BitOperations.PopCount(w);
        missingCount = n;
    }

    public long MissingPages => Volatile.Read(ref missingCount);

    public long WorkingSetPages => Volatile.Read(ref workingSet);

    public long BlockedTicks => Volatile.Read(ref blockedTicks);

    /// <summary>The reason given to <see cref="Abort"/>, or null.</summary>
    public Exception? Lost => lost;

    public bool IsMissing(int page) => (Volatile.Read(ref missing[page >> 6]) & (1UL << page)) != 0;

    /// <summary>A slow path reached <paramref name="page"/>: count it in the working set; true if it is present.</summary>
    public bool Touch(int page)
    {
        ref ulong word = ref touched[page >> 6];
        ulong bit = 1UL << page;
        if ((Volatile.Read(ref word) & bit) == 0 && (Interlocked.Or(ref word, bit) & bit) == 0)
        {
            Interlocked.Increment(ref workingSet);
        }
        return (Volatile.Read(ref missing[page >> 6]) & bit) == 0;
    }

    /// <summary>Ask the engine for <paramref name="page"/> unless someone already did.</summary>
    public void Request(int page)
    {
        ulong bit = 1UL << page;
        if ((Interlocked.Or(ref requested[page >> 6], bit) & bit) == 0) requestPage((ulong)page);
    }

    /// <summary>
    /// Block until <paramref name="page"/> is present (true), or until <paramref name="w"/>'s owner interrupts the wait
    /// (false: its <see cref="PageWaiter.Interrupted"/> said so after a wake-up). Requests the page if nobody has.
    /// Throws <see cref="VmLostException"/> once post-copy is aborted and the page is still missing.
    /// </summary>
    public bool Await(int page, PageWaiter w)
    {
        long start = Stopwatch.GetTimestamp();
        bool blocked = false;
        // Raised while blocked (see the remarks on the class): undone once the wait is over, on this thread.
        LatencyPriority.Raised raised = default;
        try
        {
            while (true)
            {
                w.Event.Reset();
                Register(w, page);
                try
                {
                    if (!IsMissing(page))
                    {
                        // With the engine's marks (serving, sent, applying, landed): where a fault's time goes.
                        if (blocked && TraceLog.Enabled) TraceLog.Mark($"hart: resumed on page {page}");
                        return true;
                    }
                    if (lost is { } reason) throw new VmLostException(reason);
                    if (w.Interrupted?.Invoke() == true)
                    {
                        if (blocked && TraceLog.Enabled) TraceLog.Mark($"hart: interrupted on page {page}");
                        return false;
                    }
                    if (!blocked)
                    {
                        // Raised before the request: two threads faulting at once contend for the control channel's
                        // writer, and the loser, still a normal thread, was woken a scheduler tick (4 ms) late on a
                        // busy host (traced: 3.6-5.7 ms from the fault to the source reading the request).
                        blocked = true;
                        if (TraceLog.Enabled) TraceLog.Mark($"hart: blocked on page {page}");
                        raised = LatencyPriority.Raise();
                        w.Blocking?.Invoke();
                    }
                    Request(page);
                    w.Event.Wait(w.Deadline?.Invoke() ?? long.MaxValue);
                }
                finally
                {
                    Unregister(w);
                }
            }
        }
        finally
        {
            // Traced: how long leaving real-time took, a CPU the woken thread had to wait for again.
            long lowering = TraceLog.Enabled && blocked ? Stopwatch.GetTimestamp() : 0;
            raised.Dispose();
            if (lowering != 0) TraceLog.Mark($"hart: lowered after page {page} in {Stopwatch.GetElapsedTime(lowering).TotalMicroseconds:F0} us");
            if (blocked) w.Unblocked?.Invoke();
            Interlocked.Add(ref blockedTicks, Stopwatch.GetTimestamp() - start);
        }
    }

    /// <summary>
    /// Claim <paramref name="page"/> for an install: true if it is missing and this caller must now fill it and then
    /// call <see cref="Publish"/>. False if it is present, or another thread is installing it (this one then waits the
    /// moment that copy takes, so the page is present whenever this returns false).
    /// </summary>
    public bool Claim(int page)
    {
        int w = page >> 6;
        ulong bit = 1UL << page;
        if ((Volatile.Read(ref missing[w]) & bit) == 0) return false;
        if ((Interlocked.Or(ref installing[w], bit) & bit) == 0) return true;
        var spin = new SpinWait();
        while ((Volatile.Read(ref missing[w]) & bit) != 0) spin.SpinOnce();
        return false;
    }

    /// <summary>The claimed page is filled: make it present (then <see cref="WakeWaiters"/>). Returns the pages still missing.</summary>
    public long Publish(int page)
    {
        Interlocked.And(ref missing[page >> 6], ~(1UL << page)); // a full fence: the bytes are visible before the bit clears
        return Interlocked.Decrement(ref missingCount);
    }

    /// <summary>Wake the threads waiting for <paramref name="page"/>, which <see cref="Publish"/> made present.</summary>
    public void WakeWaiters(int page)
    {
        // Reading the count after Publish's fence: a waiter that registered too late to be seen here sees the bit clear.
        if (Volatile.Read(ref waiterCount) != 0) Wake(page);
    }

    /// <summary>Make every present and future wait for a missing page throw <see cref="VmLostException"/>. First reason wins.</summary>
    public bool Abort(Exception reason)
    {
        if (Interlocked.CompareExchange(ref lost, reason, null) != null) return false;
        lock (gate)
        {
            for (int i = 0; i < waiterCount; i++) waiters[i].Event.Set();
        }
        return true;
    }

    /// <summary>
    /// The pages threads wait for now (each once): after a resumed post-copy, the engine asks for them again, since a
    /// page is requested at most once here (<see cref="Request"/>) and the request may have gone with the old link.
    /// </summary>
    public int[] AwaitedPages()
    {
        lock (gate)
        {
            var pages = new HashSet<int>();
            for (int i = 0; i < waiterCount; i++)
            {
                if (waiters[i].Page >= 0) pages.Add(waiters[i].Page);
            }
            return [.. pages];
        }
    }

    private void Register(PageWaiter w, int page)
    {
        lock (gate)
        {
            if (waiterCount == waiters.Length) Array.Resize(ref waiters, waiters.Length * 2);
            w.Page = page;
            waiters[waiterCount] = w;
            Interlocked.Increment(ref waiterCount);
        }
    }

    private void Unregister(PageWaiter w)
    {
        lock (gate)
        {
            int last = waiterCount - 1;
            for (int i = 0; i <= last; i++)
            {
                if (!ReferenceEquals(waiters[i], w)) continue;
                waiters[i] = waiters[last];
                waiters[last] = null!;
                Interlocked.Decrement(ref waiterCount);
                break;
            }
            w.Page = -1;
        }
    }

    private void Wake(int page)
    {
        lock (gate)
        {
            for (int i = 0; i < waiterCount; i++)
            {
                if (waiters[i].Page == page) waiters[i].Event.Set();
            }
        }
    }
}
