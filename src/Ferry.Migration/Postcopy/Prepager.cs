using Ferry.Migration.Memory;

namespace Ferry.Migration.Postcopy;

/// <summary>In what order post-copy's background push sends the pages the destination still lacks.</summary>
public enum PrepagingStrategy
{
    /// <summary>
    /// The pages the guest used last on the source first (when the source says which: its dirty log, and its CPUs'
    /// translations where it tracks them); around each fault, in both directions, widening while faults keep landing
    /// nearby (Hines et al., VEE'09, "bubbling" with several pivots); a plain sweep once neither has pages left.
    /// </summary>
    Bubble = 1,

    /// <summary>QEMU's way: one sweep through memory that jumps to just after each faulted page and goes on forward.</summary>
    Forward = 2,

    /// <summary>Cloud Hypervisor's way: one sweep from the first page to the last; faults do not move it.</summary>
    Linear = 3,
}

/// <summary>
/// The source's post-copy push order: which pages go next, over all page channels. Each page is handed out once
/// (the to-send bitmap is cleared as pages are taken), whether by <see cref="Take"/> for the bulk push or by
/// <see cref="Claim"/> for a page the destination asked for on the urgent channel.
/// </summary>
/// <remarks>
/// <para><b>Bubbling.</b> A fault at page f says the guest works near f. Pages on both sides of it are pushed first, in
/// steps alternating forward and backward from f (a stack grows down, an array is walked either way, a process's pages
/// sit around the fault in both directions), each step twice the last up to 1 MiB, for a budget of pages after which
/// the pivot retires. A fault that lands inside or next to a live pivot's area widens it (its budget grows) instead
/// of opening a new one: the guest is working through that area. Up to <see cref="MaxPivots"/> pivots live at once;
/// the newest is served first. With no live pivot, a sweep cursor sends what is left in address order.</para>
/// <para><b>Lone faults.</b> Only a fault in or next to a 2 MiB block where one of the last <see cref="FaultHistory"/>
/// faults landed opens a pivot with the full budget; any other opens a small one (<see cref="LoneStep"/> pages each
/// side). A guest touching pages at random (the cold part of a hot-set workload) faults far from all the others, and
/// 8 MiB pushed around each such fault only delays the pages it will touch next. In the deterministic model
/// (<see cref="PrepagingSimulation"/>, 1 GiB, hot set, mean of seeds 1-5) faults fell from 1,277 to 1,180 with it
/// (1,306 to 1,200 with the hot tenth in the middle of memory), QEMU's forward scan faults 1,263 (1,313), and pushing
/// the hot tenth first, knowing where it is, 1,160.</para>
/// <para><b>Hot pages.</b> Bubbling starts with the pages the source saw the guest use last (written since the last
/// dirty-log harvest, and read or executed where the source tracks it), which it would otherwise fault on one round trip
/// each. The part its operating system used (code, page tables, kernel stacks and data, where the source tells them
/// apart) goes before everything, pivots included: until those are in, each fault stops the kernel, its timer interrupt
/// and scheduler with it, so the whole guest (traced on the demo VM: some 60 faults back to back in the first 30 ms,
/// the guest's clock interrupt 30 ms late). So do the pages the guest used in every recent interval, user pages
/// included (see <see cref="Precopy.OutgoingMigration.SteadyIntervals"/>). The rest go in address order after any live
/// pivot's pages and before the sweep.</para>
/// <para><b>Threads.</b> Every page channel's sender takes from one instance under one lock (a take hands out up to
/// 1 MiB, so about a thousand times a second at full speed). The urgent path never takes it: the return path's thread
/// claims a page with one atomic bit clear and queues the fault for the next take, so it never waits for a push thread
/// that a busy host has preempted while holding the lock.</para>
/// </remarks>
internal sealed class Prepager
{
    /// <summary>Live pivots at most.</summary>
    public const int MaxPivots = 4;

    /// <summary>First step around a new pivot, pages (256 KiB): small enough to reach both sides of the fault at once, large
    /// enough that a batch is not mostly overhead.</summary>
    public const int FirstStep = 64;

    /// <summary>Largest step, pages (1 MiB, one batch).</summary>
    public const int MaxStep = 256;

    /// <summary>Pages a new pivot may push before it retires (8 MiB); a fault nearby adds as much again.</summary>
    public const long PivotBudget = 2048;

    /// <summary>First step, and budget each side, of a pivot opened by a lone fault (32 KiB).</summary>
    public const int LoneStep = 8;

    /// <summary>Pages of a block (2 MiB), the unit in which faults count as near each other.</summary>
    public const ulong BlockPages = 512;

    /// <summary>
    /// Widest gap between two runs of the hot pages (not the system ones) that a take fills, pages. The hot pages the
    /// source saw the guest use are scattered (the in-process hot-set bench's first batches: 179-251 runs of 256
    /// pages, each its own install on the destination, 2-4 µs for a lone page against 0.5 µs a page in a long run);
    /// with the holes filled, 1-4 runs, and the pages between two the guest used go early too.
    /// </summary>
    public const ulong HoleFill = 4;

    /// <summary>Recent faults whose blocks are remembered.</summary>
    public const int FaultHistory = 64;

    // Faults queued by the urgent path (one writer: the return path's thread) for the next take: global page + 1, 0 =
    // slot not written yet. A ring: faults beyond its size between two takes overwrite the oldest (a lost hint only).
    private const int FaultRingSize = 64;
    private readonly ulong[] _faultRing = new ulong[FaultRingSize];
    private long _faultHead; // next slot to write
    private long _faultTail; // next slot to read (under the lock)

    private readonly Lock _lock = new();
    private readonly DirtyBitmap _toSend;
    private HotPages _system; // the guest's system pages: before everything
    private HotPages _steady; // the pages it used in every recent interval: right after them
    private HotPages _hot;    // the other pages it used last: after the pivots
    private readonly ulong[] _regionFirst;
    private readonly ulong[] _regionEnd;
    private readonly PrepagingStrategy _strategy;
    private readonly Pivot[] _pivots = new Pivot[MaxPivots];
    private int _pivotCount;
    private readonly ulong[] _recentBlocks = new ulong[FaultHistory]; // block + 1 of the last faults (0: none yet), a ring
    private int _recentNext;
    private ulong _sweep;
    private long _remaining;
    private long _faultsNearPivot;
    private long _pivotsOpened;

    // Pages to send in address order from a cursor; Bits is dropped once the cursor is through.
    private struct HotPages
    {
        public DirtyBitmap? Bits;
        public ulong Cursor;
    }

    private struct Pivot
    {
        public int Region;
        public ulong Lo;    // next backward window ends here (exclusive)
        public ulong Hi;    // next forward window starts here
        public int Step;
        public long Budget;
        public bool Backward; // direction of the next take
    }

    /// <param name="toSend">Pages still to send, one bit per page over all regions (global page index); taken over:
    /// the prepager clears bits as it hands pages out.</param>
    /// <param name="regionPages">Pages of each region, in order (region r's first bit is the sum of those before).</param>
    /// <param name="strategy">The order.</param>
    /// <param name="hot">Pages the guest used last (global index), sent by <see cref="PrepagingStrategy.Bubble"/>
    /// (those still to send) after its pivots' pages and before the sweep; taken over, or null.</param>
    /// <param name="system">Pages the guest's operating system used last (see
    /// <see cref="Guest.IAccessTrackingSource.HarvestAccessedPages(Span{ulong}, Span{ulong})"/>), sent by
    /// <see cref="PrepagingStrategy.Bubble"/> before everything else; taken over, or null.</param>
    /// <param name="steady">Pages the guest used in each of its last intervals (its user side included), sent by
    /// <see cref="PrepagingStrategy.Bubble"/> right after the system pages; taken over, or null.</param>
    public Prepager(DirtyBitmap toSend, IReadOnlyList<ulong> regionPages, PrepagingStrategy strategy, DirtyBitmap? hot = null,
        DirtyBitmap? system = null, DirtyBitmap? steady = null)
    {
        ArgumentNullException.ThrowIfNull(toSend);
        ArgumentNullException.ThrowIfNull(regionPages);
        _toSend = toSend;
        _strategy = strategy;
        _regionFirst = new ulong[regionPages.Count];
        _regionEnd = new ulong[regionPages.Count];
        ulong bit = 0;
        for (int r = 0; r < regionPages.Count; r++)
        {
            _regionFirst[r] = bit;
            bit += regionPages[r];
            _regionEnd[r] = bit;
        }
        if (bit > toSend.BitCount) throw new ArgumentException("the bitmap is shorter than the regions", nameof(toSend));
        if (hot is not null && hot.BitCount < bit) throw new ArgumentException("the bitmap is shorter than the regions", nameof(hot));
        if (system is not null && system.BitCount < bit) throw new ArgumentException("the bitmap is shorter than the regions", nameof(system));
        if (steady is not null && steady.BitCount < bit) throw new ArgumentException("the bitmap is shorter than the regions", nameof(steady));
        _remaining = (long)toSend.Count();
        if (strategy == PrepagingStrategy.Bubble)
        {
            _hot.Bits = hot;
            _system.Bits = system;
            _steady.Bits = steady;
        }
    }

    /// <summary>Pages not yet handed out.</summary>
    public long Remaining => Interlocked.Read(ref _remaining);

    /// <summary>Faults that widened a live pivot instead of opening a new one.</summary>
    public long FaultsNearPivot
    {
        get
        {
            lock (_lock) DrainFaults();
            return _faultsNearPivot;
        }
    }

    /// <summary>Pivots opened (faults far from every live one).</summary>
    public long PivotsOpened
    {
        get
        {
            lock (_lock) DrainFaults();
            return _pivotsOpened;
        }
    }

    /// <summary>
    /// Take page <paramref name="bit"/> for the urgent channel. True if it was still to send (the push will not send it);
    /// false if it was handed out already (pushed, in flight or landed: sending it again is a duplicate).
    /// </summary>
    public bool Claim(ulong bit)
    {
        if (!_toSend.TestAndClearAtomic(bit)) return false;
        Interlocked.Decrement(ref _remaining);
        return true;
    }

    /// <summary>
    /// The destination faulted on page <paramref name="bit"/> (global index): reorder around it from the next take on.
    /// Never blocks; one thread at a time (the return path's).
    /// </summary>
    public void OnFault(ulong bit)
    {
        if (RegionOf(bit) < 0) return;
        long slot = Interlocked.Increment(ref _faultHead) - 1;
        Volatile.Write(ref _faultRing[slot & (FaultRingSize - 1)], bit + 1);
    }

    // Under the lock: apply the queued faults, oldest first.
    private void DrainFaults()
    {
        long head = Interlocked.Read(ref _faultHead);
        if (head - _faultTail > FaultRingSize) _faultTail = head - FaultRingSize; // overwritten: the newest are kept
        while (_faultTail < head)
        {
            ref ulong entry = ref _faultRing[_faultTail & (FaultRingSize - 1)];
            ulong value = Volatile.Read(ref entry);
            if (value == 0) break; // reserved, not yet written: next take
            entry = 0;
            _faultTail++;
            ApplyFault(value - 1);
        }
    }

    private void ApplyFault(ulong bit)
    {
        int region = RegionOf(bit);
        switch (_strategy)
        {
            case PrepagingStrategy.Forward:
                _sweep = bit + 1;
                return;
            case PrepagingStrategy.Linear:
                return;
        }
        bool local = NearRecentFault(bit);
        for (int i = 0; i < _pivotCount; i++)
        {
            ref var p = ref _pivots[i];
            ulong reach = (ulong)p.Step * 2;
            if (p.Region == region && bit + reach >= p.Lo && bit < p.Hi + reach)
            {
                // The guest works through this area: keep pushing around it, further and faster.
                p.Budget += PivotBudget;
                p.Step = Math.Min(MaxStep, p.Step * 2);
                _faultsNearPivot++;
                // Served first from now on.
                var hot = p;
                for (int j = i; j < _pivotCount - 1; j++) _pivots[j] = _pivots[j + 1];
                _pivots[_pivotCount - 1] = hot;
                return;
            }
        }
        if (_pivotCount == MaxPivots)
        {
            for (int j = 0; j < _pivotCount - 1; j++) _pivots[j] = _pivots[j + 1];
            _pivotCount--;
        }
        int step = local ? FirstStep : LoneStep;
        _pivots[_pivotCount++] = new Pivot { Region = region, Lo = bit, Hi = bit + 1, Step = step, Budget = local ? PivotBudget : 2 * step };
        _pivotsOpened++;
    }

    // Whether one of the last faults landed in bit's 2 MiB block or a block next to it; bit's block joins them.
    private bool NearRecentFault(ulong bit)
    {
        ulong block = (bit / BlockPages) + 1;
        bool near = false;
        foreach (ulong recent in _recentBlocks)
            near |= recent != 0 && recent + 1 >= block && recent <= block + 1;
        _recentBlocks[_recentNext] = block;
        _recentNext = (_recentNext + 1) % FaultHistory;
        return near;
    }

    /// <summary>
    /// Hand out up to <paramref name="maxPages"/> pages, all of one region, as runs of global page indices written to
    /// <paramref name="runs"/> (at most its length). Returns the number of runs (0: nothing left) and the region.
    /// </summary>
    public int Take(Span<DirtyRun> runs, int maxPages, out int region)
    {
        region = -1;
        if (runs.IsEmpty || maxPages <= 0) return 0;
        lock (_lock)
        {
            DrainFaults();
            if (Interlocked.Read(ref _remaining) == 0) return 0;
            // The system pages first; then the pivots, newest first; then the hot pages; then the sweep fills what is
            // left of the batch. A batch is filled from several sources rather than ended where one runs dry: around a
            // fault in an area pushed already, a pivot finds only a few pages, and batches of a few pages would cut the
            // push's throughput several times. Pages of one source left in another region go in the next batch, not
            // after less urgent ones of this region.
            int count = 0, pages = 0;
            bool elsewhere = false;
            pages += TakeSystemPages(runs, ref count, maxPages, ref region, steady: true, out elsewhere);
            if (elsewhere) return count;
            for (int i = _pivotCount - 1; i >= 0 && pages < maxPages && count < runs.Length; i--)
            {
                ref var p = ref _pivots[i];
                if (region >= 0 && p.Region != region) continue;
                int before = count;
                pages += TakeAroundPivot(ref p, runs, ref count, maxPages - pages);
                if (count > before) region = p.Region;
                if (Exhausted(p))
                {
                    for (int j = i; j < _pivotCount - 1; j++) _pivots[j] = _pivots[j + 1];
                    _pivotCount--;
                }
            }
            if (_hot.Bits is not null && pages < maxPages && count < runs.Length) pages += TakeHot(ref _hot, runs, ref count, maxPages - pages, ref region, out elsewhere, fillHoles: true);
            if (!elsewhere && pages < maxPages && count < runs.Length) TakeSweep(runs, ref count, maxPages - pages, ref region);
            return count;
        }
    }

    /// <summary>
    /// Hand out up to <paramref name="maxPages"/> of the system pages still to send (see the constructor), then (with
    /// <paramref name="steady"/>) of the steady ones, all of one region, as <see cref="Take"/> does; 0 once none is left
    /// (or the strategy has none).
    /// </summary>
    public int TakeSystem(Span<DirtyRun> runs, int maxPages, out int region, bool steady = true)
    {
        region = -1;
        if (runs.IsEmpty || maxPages <= 0) return 0;
        lock (_lock)
        {
            int count = 0;
            TakeSystemPages(runs, ref count, maxPages, ref region, steady, out _);
            return count;
        }
    }

    // The system pages, then the steady ones: the kernel's first, since every thread the guest runs goes through it.
    private int TakeSystemPages(Span<DirtyRun> runs, ref int count, int maxPages, ref int region, bool steady, out bool elsewhere)
    {
        elsewhere = false;
        int pages = 0;
        if (_system.Bits is not null) pages += TakeHot(ref _system, runs, ref count, maxPages, ref region, out elsewhere, fillHoles: false);
        if (steady && !elsewhere && _system.Bits is null && _steady.Bits is not null && pages < maxPages && count < runs.Length)
            pages += TakeHot(ref _steady, runs, ref count, maxPages - pages, ref region, out elsewhere, fillHoles: false);
        return pages;
    }

    private bool Exhausted(in Pivot p) => p.Budget <= 0 || (p.Lo <= _regionFirst[p.Region] && p.Hi >= _regionEnd[p.Region]);

    private int TakeAroundPivot(ref Pivot p, Span<DirtyRun> runs, ref int count, int maxPages)
    {
        ulong first = _regionFirst[p.Region], end = _regionEnd[p.Region];
        int pages = 0;
        // Alternate directions step by step until this take is full or the pivot has nothing left in reach.
        while (pages < maxPages && count < runs.Length && !Exhausted(p))
        {
            bool backward = p.Backward ? p.Lo > first : p.Hi >= end;
            p.Backward = !p.Backward;
            ulong step = (ulong)Math.Min(p.Step, maxPages - pages);
            ulong lo, hi;
            if (backward)
            {
                lo = p.Lo - Math.Min(step, p.Lo - first);
                hi = p.Lo;
                p.Lo = lo;
            }
            else
            {
                lo = p.Hi;
                hi = Math.Min(end, p.Hi + step);
                p.Hi = hi;
            }
            pages += Collect(lo, hi, runs, ref count, maxPages - pages);
            p.Budget -= (long)(hi - lo);
            // Each window a pivot covers grows the next one: the further from the fault, the less any single page
            // matters and the more a larger batch saves.
            if (p.Step < MaxStep && p.Backward) p.Step = Math.Min(MaxStep, p.Step * 2);
        }
        return pages;
    }

    // Pages of a hot list still to send, in address order from its cursor; the bitmap is dropped once the cursor is through.
    // fillHoles: gaps of up to HoleFill pages between the list's runs go too (not for the system pages, which go inside
    // the downtime, before Ready: nothing but them there).
    private int TakeHot(ref HotPages list, Span<DirtyRun> runs, ref int count, int maxPages, ref int region, out bool elsewhere, bool fillHoles)
    {
        elsewhere = false;
        if (maxPages <= 0 || count >= runs.Length) return 0;
        var hot = list.Bits!;
        ulong total = _regionEnd[^1];
        int pages = 0;
        while (pages < maxPages && count < runs.Length)
        {
            bool found = false;
            foreach (var run in hot.Runs(list.Cursor, total))
            {
                int r = RegionOf(run.Start);
                if (region >= 0 && r != region)
                {
                    elsewhere = true; // the batch is of another region: the next take
                    return pages;
                }
                found = true;
                ulong end = Math.Min(run.End, _regionEnd[r]);
                // Holes of up to HoleFill pages between hot runs go with them (those still to send): one run on the
                // wire and one install where there were several, and a page between two the guest used is likely its too.
                if (fillHoles)
                {
                    foreach (var next in hot.Runs(end, _regionEnd[r]))
                    {
                        if (next.Start - end > HoleFill) break;
                        end = Math.Min(next.End, _regionEnd[r]);
                    }
                }
                int before = count;
                int taken = Collect(run.Start, end, runs, ref count, maxPages - pages);
                pages += taken;
                if (count > before) region = r;
                // Collect stops early only when the batch is full: resume there next time.
                list.Cursor = taken > 0 && (count == runs.Length || pages == maxPages) ? runs[count - 1].End : end;
                break;
            }
            if (!found)
            {
                list.Bits = null;
                break;
            }
        }
        return pages;
    }

    private void TakeSweep(Span<DirtyRun> runs, ref int count, int maxPages, ref int region)
    {
        ulong total = _regionEnd[^1];
        // From the cursor to the end, then wrapping once (the forward strategy jumps over pages it must come back for).
        for (int pass = 0; pass < 2 && maxPages > 0 && count < runs.Length; pass++)
        {
            ulong from = pass == 0 ? _sweep : 0;
            ulong to = pass == 0 ? total : Math.Min(_sweep, total);
            if (region >= 0)
            {
                // Same region as what the batch holds already.
                from = Math.Max(from, _regionFirst[region]);
                to = Math.Min(to, _regionEnd[region]);
            }
            while (from < to)
            {
                ulong next = to;
                foreach (var run in _toSend.Runs(from, to))
                {
                    // Up to maxPages set pages of one region (the gaps pivots left are skipped, not a take's end).
                    int r = region < 0 ? RegionOf(run.Start) : region;
                    int before = count;
                    int taken = Collect(run.Start, Math.Min(to, _regionEnd[r]), runs, ref count, maxPages);
                    if (count > before)
                    {
                        region = r;
                        _sweep = runs[count - 1].End;
                        maxPages -= taken;
                    }
                    else
                    {
                        // Nothing: the urgent path claimed the rest of that region's pages between the scan and the
                        // collect (it takes no lock). Look on from the next region rather than end the take empty with
                        // pages left there, which the push would read as the end of its work.
                        next = _regionEnd[r];
                    }
                    break;
                }
                from = next;
            }
        }
    }

    /// <summary>Append the to-send runs of [lo, hi) to <paramref name="runs"/>, up to <paramref name="maxPages"/>; clears them.</summary>
    private int Collect(ulong lo, ulong hi, Span<DirtyRun> runs, ref int count, int maxPages)
    {
        int pages = 0;
        foreach (var run in _toSend.Runs(lo, hi))
        {
            if (count == runs.Length || pages == maxPages) break;
            ulong length = Math.Min(run.Length, (ulong)(maxPages - pages));
            runs[count++] = new DirtyRun(run.Start, length);
            // Atomically: the urgent path may claim a page of this run meanwhile. It then goes twice (the destination
            // drops the second copy), but is counted once.
            Interlocked.Add(ref _remaining, -(long)_toSend.ClearRangeAtomic(run.Start, run.Start + length));
            pages += (int)length;
        }
        return pages;
    }

    /// <summary>The region of global page <paramref name="bit"/>, or -1 past the end.</summary>
    public int RegionOf(ulong bit)
    {
        for (int r = 0; r < _regionEnd.Length; r++)
            if (bit < _regionEnd[r]) return r;
        return -1;
    }

    /// <summary>Global index of page 0 of region <paramref name="region"/>.</summary>
    public ulong RegionFirst(int region) => _regionFirst[region];
}
