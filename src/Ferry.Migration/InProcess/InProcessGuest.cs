using System.Diagnostics;
using System.Runtime.CompilerServices;
using Ferry.Linux;
using Ferry.Migration.Guest;

namespace Ferry.Migration.InProcess;

/// <summary>Where and why <see cref="InProcessGuest.SelfCheck"/> found memory disagreeing with the workload.</summary>
public sealed record SelfCheckFailure(ulong Page, string Reason)
{
    /// <inheritdoc/>
    public override string ToString() => $"page {Page}: {Reason}";
}

/// <summary>
/// A guest without KVM: writer threads dirty real anonymous memory at a set rate and pattern, so the engine can be
/// tested and benchmarked against a workload whose every page can be verified afterwards (the idea of QEMU's
/// migration test guest, tests/qtest/migration/framework.c, where every page must agree after migration).
/// </summary>
/// <remarks>
/// <para><b>Writes.</b> Logical writer <c>w</c> of <c>L</c> owns working-set pages <c>p % L == w</c>. A write bumps
/// the page's sequence number, writes the page (<see cref="PageFormat"/>), stores the new number in the page's u32
/// counter in the counter pages at the end of guest memory (<see cref="InProcessGuestOptions.CounterPages"/>: the
/// workload's expectations are guest state, so they live in guest memory and migrate as pages), and only then sets
/// the dirty bits of both pages with <see cref="Interlocked.Or(ref ulong, ulong)"/>: a harvest that clears a bit after
/// that point also sees the new bytes, so no write is ever missed.</para>
/// <para><b>Pacing.</b> Each writer earns credit at its share of <see cref="InProcessGuestOptions.DirtyRatePagesPerSecond"/>
/// from a monotonic clock, writes what it has earned in ~1 ms batches and sleeps between them, so 1k pages/s costs
/// almost no CPU and 1M pages/s is accurate; credit is capped at 50 ms so a writer descheduled on a busy host does not
/// burst much afterwards. At <see cref="InProcessGuestOptions.FullSpeed"/> it never sleeps.</para>
/// <para><b>Throttle</b> (auto-converge): each writer sleeps p% of every 10 ms slice, as QEMU's cpu-throttle does
/// to vCPUs, and earns no credit while asleep, so the write rate falls to (100 - p)%.</para>
/// <para><b>Pause</b> parks every writer at a safe point between two page writes and returns once all are parked.</para>
/// </remarks>
public sealed class InProcessGuest : IMigrationSource, IDisposable
{
    /// <summary>Throttle time slice: 10 ms, as QEMU's cpu-throttle (CPU_THROTTLE_TIMESLICE_NS).</summary>
    private static readonly long SliceTicks = Stopwatch.Frequency / 100;

    /// <summary>
    /// Credit cap: 50 ms of writes (see remarks). At 20 ms a loaded 2-core box (load average 13) lost 15% of the
    /// asked rate to writers descheduled longer than that; 50 ms bounds the catch-up burst to 25k pages at 1M pages/s.
    /// </summary>
    private const double MaxCreditSeconds = 0.050;

    /// <summary>Most writes between two clock reads: bounds a full-speed batch to well under a millisecond.</summary>
    private const int MaxBatch = 1024;

    private readonly GuestMemoryMapping[] _mappings;
    private readonly MemoryRegion[] _regions;

    /// <summary>Pages in region 0 (the split point for a two-region guest).</summary>
    private readonly ulong _firstRegionPages;

    /// <summary>Host address of the first counter page; the counters are contiguous (all in the last region).</summary>
    private readonly nint _counters;

    /// <summary>Global index of the first counter page.</summary>
    private readonly ulong _firstCounterPage;

    private readonly WorkloadSnapshot _state;
    private readonly byte[] _device;

    /// <summary>The dirty log: one bit per page, set by writers (Interlocked.Or), taken by harvest (Interlocked.Exchange).</summary>
    private readonly ulong[] _dirty;

    private readonly Thread[] _threads;

    /// <summary>Guards run-state changes; writers wait on it while parked or sleeping.</summary>
    private readonly object _gate = new();

    /// <summary>Writers must park at their next safe point (set by Pause and Dispose).</summary>
    private volatile bool _pauseRequested;

    /// <summary>Writers must exit.</summary>
    private volatile bool _stopping;

    /// <summary>Writers currently parked; guarded by <see cref="_gate"/>.</summary>
    private int _parked;

    private bool _running;
    private volatile int _throttlePercent;
    private volatile bool _logging;

    /// <summary>Set by StartDirtyLog: the next harvest reports every page (contract: all dirty until first harvest).</summary>
    private volatile bool _reportAllOnHarvest;
    private bool _disposed;

    /// <summary>Reserve memory, fill it as <paramref name="options"/> say, and start the workload (running).</summary>
    public InProcessGuest(InProcessGuestOptions options)
        : this(Validated(options), MapLayout(options.Layout(), options.TransparentHugePages), WorkloadSnapshot.Initial(options), DeviceState.Create(options.Seed), fill: true)
    {
    }

    /// <summary>Resume a migrated workload on memory that already holds its pages (the destination's Start).</summary>
    internal InProcessGuest(InProcessGuestOptions options, GuestMemoryMapping[] mappings, WorkloadSnapshot state, byte[] device, bool fill, bool touchNatively = false)
    {
        TouchNatively = touchNatively;
        Options = options;
        _mappings = mappings;
        TotalPages = options.TotalPages;
        _state = state;
        _device = device;
        _dirty = new ulong[(TotalPages + 63) / 64];
        try
        {
            _regions = RegionsOf(options, mappings);
            _firstRegionPages = _regions[0].Pages;
            _firstCounterPage = options.FirstCounterPage;
            _counters = CounterPageAddress(_regions, options);
            if (fill && options.Fill == MemoryFill.Random)
            {
                ulong first = 0;
                for (int r = 0; r < _regions.Length; r++)
                {
                    // Fill only the pages before the counters, which get their own initial contents below.
                    ulong pages = Math.Min(_regions[r].Pages, _firstCounterPage - Math.Min(first, _firstCounterPage));
                    if (pages != 0)
                    {
                        mappings[r].Populate(0, pages << MemoryRegion.PageShift);
                        PageFormat.FillRandom(_regions[r].HostAddress, pages << MemoryRegion.PageShift, first, options.Seed ^ (ulong)(r + 1));
                    }

                    first += _regions[r].Pages;
                }

                InitializeRandomCounters(mappings[^1], _regions[^1], options);
            }
        }
        catch
        {
            foreach (var m in mappings)
            {
                m.Dispose();
            }

            throw;
        }

        _running = true;
        _threads = new Thread[options.WriterThreads];
        for (int i = 0; i < _threads.Length; i++)
        {
            _threads[i] = new Thread(WriterLoop) { IsBackground = true, Name = $"guest-writer-{i}" };
            _threads[i].Start(i);
        }
    }

    /// <summary>The options this guest runs with (for a migrated guest: the source's).</summary>
    public InProcessGuestOptions Options { get; }

    /// <inheritdoc/>
    public IReadOnlyList<MemoryRegion> Regions => _regions;

    /// <inheritdoc/>
    public ulong TotalPages { get; }

    /// <inheritdoc/>
    public bool IsRunning
    {
        get
        {
            lock (_gate)
            {
                return _running;
            }
        }
    }

    /// <summary>Pages written since the workload first started (carried across migrations).</summary>
    public long PagesWritten
    {
        get
        {
            long n = 0;
            foreach (var w in _state.Writers)
            {
                n += Volatile.Read(ref w.Written);
            }

            return n;
        }
    }

    /// <summary>Current throttle, percent of each 10 ms slice the writers sleep.</summary>
    public int ThrottlePercent => _throttlePercent;

    /// <inheritdoc/>
    public void StartDirtyLog()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        _reportAllOnHarvest = true;
        _logging = true;
    }

    /// <inheritdoc/>
    public void HarvestDirtyLog(Span<ulong> bitmap)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (bitmap.Length < _dirty.Length)
        {
            throw new ArgumentException($"bitmap of {bitmap.Length} words, {_dirty.Length} needed", nameof(bitmap));
        }

        bool all = _reportAllOnHarvest;
        _reportAllOnHarvest = false;
        for (int i = 0; i < _dirty.Length; i++)
        {
            // Reading first skips the locked exchange for clean words (most of them in a big, mostly idle guest).
            if (Volatile.Read(ref _dirty[i]) != 0)
            {
                bitmap[i] |= Interlocked.Exchange(ref _dirty[i], 0);
            }
        }

        if (all)
        {
            bitmap[.._dirty.Length].Fill(ulong.MaxValue);
            int tail = (int)(TotalPages & 63);
            if (tail != 0)
            {
                bitmap[_dirty.Length - 1] &= ulong.MaxValue >> (64 - tail);
            }
        }
    }

    /// <inheritdoc/>
    /// <remarks>
    /// From the kernel's page table (<see cref="Pagemap"/>): guest memory is private anonymous, so a page with nothing
    /// behind it reads as zero. 1 Mi pages (4 GiB, idle) take a few ms. With huge pages a write populates its whole
    /// 2 MiB window, so the answer is a superset of the pages written, by up to 511 pages per window.
    /// </remarks>
    public void GetPopulatedPages(Span<ulong> bitmap)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (bitmap.Length < _dirty.Length)
        {
            throw new ArgumentException($"bitmap of {bitmap.Length} words, {_dirty.Length} needed", nameof(bitmap));
        }

        OrPopulated(_regions, bitmap);
    }

    /// <inheritdoc/>
    public void StopDirtyLog() => _logging = false;

    /// <summary>True between <see cref="StartDirtyLog"/> and <see cref="StopDirtyLog"/>.</summary>
    public bool IsDirtyLogging => _logging;

    /// <inheritdoc/>
    public void SetThrottle(int percent)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(percent);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(percent, 99);
        lock (_gate)
        {
            _throttlePercent = percent;
            Monitor.PulseAll(_gate);
        }
    }

    /// <inheritdoc/>
    public void Pause()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        lock (_gate)
        {
            if (!_running)
            {
                return;
            }

            _pauseRequested = true;
            Monitor.PulseAll(_gate);
            while (_parked < _threads.Length)
            {
                Monitor.Wait(_gate);
            }

            _running = false;
        }
    }

    /// <inheritdoc/>
    public void Resume()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        lock (_gate)
        {
            _pauseRequested = false;
            _running = true;
            Monitor.PulseAll(_gate);
        }
    }

    /// <inheritdoc/>
    public IReadOnlyList<StateSection> SaveState()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (IsRunning)
        {
            throw new InvalidOperationException("SaveState needs a paused guest");
        }

        return
        [
            new StateSection(WorkloadSnapshot.SectionName, WorkloadSnapshot.SectionVersion, _state.Serialize()),
            new StateSection(DeviceState.SectionName, DeviceState.SectionVersion, _device.ToArray()),
        ];
    }

    /// <summary>
    /// Deterministic mode (<see cref="InProcessGuestOptions.WriterThreads"/> = 0): perform <paramref name="writes"/>
    /// page writes on the calling thread, exactly as a writer thread would, from the seeded generator.
    /// Refused while paused: a paused guest does not write.
    /// </summary>
    public void Step(long writes)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentOutOfRangeException.ThrowIfNegative(writes);
        if (_threads.Length != 0)
        {
            throw new InvalidOperationException("Step is for guests without writer threads (WriterThreads = 0)");
        }

        if (!IsRunning)
        {
            throw new InvalidOperationException("the guest is paused");
        }

        var writer = _state.Writers[0];
        for (long i = 0; i < writes; i++)
        {
            WriteOne(writer, 0, 1);
        }
    }

    /// <summary>
    /// Verify every page against the workload: each working-set page holds exactly the sequence number its counter
    /// (in the counter pages) says, its own index and the data word for that sequence; pages outside the working set
    /// are never written; and the counters add up to the writes the writers made (so a counter page lost or stale as a
    /// whole is caught too). Returns the first page that disagrees (the first counter page for a bad sum), or null.
    /// Needs a paused guest (or one without threads). Reads only page headers and one word per page, and skips pages
    /// the kernel has never populated (checked as the zero page they read as, without faulting them in).
    /// </summary>
    public SelfCheckFailure? SelfCheck()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_threads.Length != 0 && IsRunning)
        {
            throw new InvalidOperationException("SelfCheck needs a paused guest");
        }

        return CheckPages(_regions, _state, Options);
    }

    /// <summary>Shared by the guest and by a loaded-but-not-started target.</summary>
    internal static unsafe SelfCheckFailure? CheckPages(MemoryRegion[] regions, WorkloadSnapshot state, InProcessGuestOptions options)
    {
        ulong workingSet = options.WorkingSetPages;
        ulong firstCounter = options.FirstCounterPage;
        // SAFETY: the counter pages are inside the last region's live mapping (CounterPageAddress checks the layout).
        uint* counters = (uint*)CounterPageAddress(regions, options);
        var populated = new ulong[(options.TotalPages + 63) / 64];
        OrPopulated(regions, populated);

        ulong index = 0;
        ulong counted = 0;
        foreach (var region in regions)
        {
            for (ulong p = 0; p < region.Pages; p++, index++)
            {
                if (index >= firstCounter)
                {
                    break; // the counters are checked through the pages they describe and by the sum below
                }

                ulong expected = index < workingSet ? counters[index] ^ PageFormat.CounterKey(index, options.Seed, options.Fill) : 0;
                counted += expected;
                bool present = (populated[index >> 6] & (1UL << (int)(index & 63))) != 0;
                string? why = PageFormat.Check(present ? region.PageAddress(p) : PageFormat.ZeroPage, index, expected, options.Fill);
                if (why is not null)
                {
                    return new SelfCheckFailure(index, why);
                }
            }
        }

        long written = 0;
        foreach (var w in state.Writers)
        {
            written += Volatile.Read(ref w.Written);
        }

        return counted == (ulong)written ? null
            : new SelfCheckFailure(firstCounter, $"the page counters add up to {counted} writes but the writers made {written}");
    }

    /// <summary>OR the populated pages of private anonymous <paramref name="regions"/> into <paramref name="bitmap"/>.</summary>
    private static void OrPopulated(MemoryRegion[] regions, Span<ulong> bitmap)
    {
        using var pagemap = Pagemap.OpenSelf();
        ulong first = 0;
        foreach (var region in regions)
        {
            pagemap.OrPopulated(region.HostAddress, region.Size, bitmap, first);
            first += region.Pages;
        }
    }

    /// <summary>Give every counter slot of a Random guest its key: counter 0, but incompressible bytes in memory.</summary>
    private static unsafe void InitializeRandomCounters(GuestMemoryMapping last, MemoryRegion region, InProcessGuestOptions options)
    {
        ulong offset = (options.FirstCounterPage - (options.TotalPages - region.Pages)) << MemoryRegion.PageShift;
        last.Populate(offset, options.CounterPages << MemoryRegion.PageShift);
        // SAFETY: the counter pages are the last CounterPages pages of this live mapping (CounterPageAddress).
        uint* counters = (uint*)(region.HostAddress + (nint)offset);
        for (ulong i = 0; i < options.CounterPages * InProcessGuestOptions.CountersPerPage; i++)
        {
            counters[i] = PageFormat.CounterKey(i, options.Seed, options.Fill);
        }
    }

    /// <summary>Host address of the first counter page, which with all the others lies in the last region.</summary>
    private static nint CounterPageAddress(MemoryRegion[] regions, InProcessGuestOptions options)
    {
        var last = regions[^1];
        ulong lastStart = options.TotalPages - last.Pages;
        // Holds for every valid layout (the counters are at most ~1/1024 of memory, the last region at least half of
        // it); checked because a wrong answer would put the counters outside the mapping.
        if (options.FirstCounterPage < lastStart)
        {
            throw new InvalidOperationException($"counter pages from {options.FirstCounterPage} do not fit in the last region (from {lastStart})");
        }

        return last.PageAddress(options.FirstCounterPage - lastStart);
    }

    /// <summary>Stop the writers, then unmap memory. The engine must no longer touch <see cref="Regions"/>.</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            _stopping = true;
            _pauseRequested = true;
            Monitor.PulseAll(_gate);
        }

        foreach (var t in _threads)
        {
            t.Join();
        }

        foreach (var m in _mappings)
        {
            m.Dispose();
        }
    }

    /// <summary>Validate before anything is mapped (arguments of the chained constructor run left to right).</summary>
    private static InProcessGuestOptions Validated(InProcessGuestOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        return options;
    }

    internal static GuestMemoryMapping[] MapLayout(IReadOnlyList<(ulong GuestPhysicalAddress, ulong Size)> layout, bool transparentHugePages)
    {
        var mappings = new GuestMemoryMapping[layout.Count];
        try
        {
            for (int i = 0; i < mappings.Length; i++)
            {
                mappings[i] = GuestMemoryMapping.Create(layout[i].Size, transparentHugePages);
            }
        }
        catch
        {
            foreach (var m in mappings)
            {
                m?.Dispose();
            }

            throw;
        }

        return mappings;
    }

    private static MemoryRegion[] RegionsOf(InProcessGuestOptions options, GuestMemoryMapping[] mappings)
    {
        var layout = options.Layout();
        if (layout.Count != mappings.Length)
        {
            throw new ArgumentException($"{mappings.Length} mappings for a {layout.Count}-region layout");
        }

        var regions = new MemoryRegion[layout.Count];
        for (int i = 0; i < regions.Length; i++)
        {
            if (mappings[i].Length != layout[i].Size)
            {
                throw new ArgumentException($"mapping {i} is {mappings[i].Length} bytes, layout says {layout[i].Size}");
            }

            regions[i] = new MemoryRegion(layout[i].GuestPhysicalAddress, layout[i].Size, mappings[i].Address);
        }

        return regions;
    }

    private void WriterLoop(object? arg)
    {
        int index = (int)arg!;
        var writer = _state.Writers[index];
        int writers = _threads.Length;
        long rate = Options.DirtyRatePagesPerSecond;
        bool fullSpeed = rate == InProcessGuestOptions.FullSpeed;
        // Pages earned per Stopwatch tick. Kept finite: at full speed credit is simply a full batch every time.
        double perTick = fullSpeed ? 0 : (double)rate / writers / Stopwatch.Frequency;
        double maxCredit = fullSpeed ? MaxBatch : Math.Max(1.0, perTick * Stopwatch.Frequency * MaxCreditSeconds);
        double credit = 0;
        long last = Stopwatch.GetTimestamp();
        long sliceStart = last;

        while (true)
        {
            if (_pauseRequested)
            {
                if (!Park())
                {
                    return;
                }

                last = sliceStart = Stopwatch.GetTimestamp();
                credit = 0;
                continue;
            }

            if (rate == 0)
            {
                Sleep(Timeout.Infinite);
                continue;
            }

            long now = Stopwatch.GetTimestamp();
            int throttle = _throttlePercent;
            if (throttle > 0)
            {
                long runEnd = sliceStart + (SliceTicks * (100 - throttle) / 100);
                if (now >= runEnd)
                {
                    // Earn credit only up to the end of the run phase, then sleep the rest of the slice.
                    if (runEnd > last)
                    {
                        credit = Math.Min(credit + ((runEnd - last) * perTick), maxCredit);
                    }

                    SleepTicks(sliceStart + SliceTicks - now);
                    last = sliceStart = Stopwatch.GetTimestamp();
                    continue;
                }
            }
            else
            {
                sliceStart = now;
            }

            credit = fullSpeed ? MaxBatch : Math.Min(credit + ((now - last) * perTick), maxCredit);
            last = now;
            if (credit < 1)
            {
                // Sleep until the next page is due rather than polling every millisecond: at 1k pages/s per writer
                // that is one wake-up per page instead of up to 1000 empty ones per second.
                SleepTicks((long)((1 - credit) / perTick));
                continue;
            }

            int batch = (int)Math.Min(credit, MaxBatch);
            int done = 0;
            while (done < batch && !_pauseRequested)
            {
                WriteOne(writer, index, writers);
                done++;
            }

            credit -= done;
        }
    }

    /// <summary>Sleep about <paramref name="ticks"/> Stopwatch ticks (at least 1 ms, at most 100 ms), waking early on any state change.</summary>
    private void SleepTicks(long ticks)
    {
        if (ticks > 0)
        {
            Sleep((int)Math.Clamp(Math.Ceiling(ticks * 1000.0 / Stopwatch.Frequency), 1, 100));
        }
    }

    /// <summary>Park at a safe point until resumed; false if the guest is being disposed.</summary>
    private bool Park()
    {
        lock (_gate)
        {
            _parked++;
            Monitor.PulseAll(_gate);
            while (_pauseRequested && !_stopping)
            {
                Monitor.Wait(_gate);
            }

            _parked--;
            return !_stopping;
        }
    }

    /// <summary>Sleep, but wake at once for pause, throttle change or dispose.</summary>
    private void Sleep(int milliseconds)
    {
        lock (_gate)
        {
            if (!_pauseRequested)
            {
                Monitor.Wait(_gate, milliseconds);
            }
        }
    }

    /// <summary>
    /// Post-copy on the destination: touch each page (and its counter) from native code before managed code does, so a
    /// writer that waits for a missing page waits inside a P/Invoke (preemptive GC mode) and a GC meanwhile does not
    /// wait for it (see <see cref="Ferry.Linux.Userfaultfd"/>). Set by the target while pages are missing.
    /// </summary>
    internal volatile bool TouchNatively;

    /// <summary>Pages written since start (or the last harvest): the guest's working set during post-copy.</summary>
    internal long PagesWrittenSinceHarvest()
    {
        long n = 0;
        for (int i = 0; i < _dirty.Length; i++) n += System.Numerics.BitOperations.PopCount(Volatile.Read(ref _dirty[i]));
        return n;
    }

    /// <summary>One page write by logical writer <paramref name="w"/> of <paramref name="count"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private unsafe void WriteOne(WriterState writer, int w, int count)
    {
        ulong page = ChoosePage(writer, (ulong)w, (ulong)count);
        nint address = PageAddress(page);
        if (TouchNatively)
        {
            Ferry.Linux.Libc.TouchForWrite(address, 8);
            Ferry.Linux.Libc.TouchForWrite(_counters + (nint)(page * sizeof(uint)), sizeof(uint));
        }
        // SAFETY: page < WorkingSetPages, so its counter is inside the counter pages of the live last mapping.
        // Only this writer ever writes this counter (it owns the page), so a plain read-increment-store is exact.
        uint* counter = (uint*)_counters + page;
        uint key = PageFormat.CounterKey(page, Options.Seed, Options.Fill);
        uint seq = (*counter ^ key) + 1;
        PageFormat.Write(address, page, seq);
        *counter = seq ^ key;
        Interlocked.Or(ref _dirty[page >> 6], 1UL << (int)(page & 63));

        // The counter's page: skip the locked Or when its bit is already set (most writes: one counter page covers
        // 1024 pages), which keeps writers from fighting over one cache line. Safe because the Or above is a full
        // fence: the counter store is visible before this read, so a harvest that clears the bit after we read it
        // set also sees the new counter.
        ulong counterPage = _firstCounterPage + (page / InProcessGuestOptions.CountersPerPage);
        ulong bit = 1UL << (int)(counterPage & 63);
        ref ulong word = ref _dirty[counterPage >> 6];
        if ((Volatile.Read(ref word) & bit) == 0)
        {
            Interlocked.Or(ref word, bit);
        }

        Volatile.Write(ref writer.Written, writer.Written + 1);
    }

    /// <summary>Global page index of writer <paramref name="w"/>'s next write, per the pattern.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ulong ChoosePage(WriterState writer, ulong w, ulong count)
    {
        ulong workingSet = Options.WorkingSetPages;
        ulong own = (workingSet - w + count - 1) / count; // pages p < workingSet with p % count == w (>= 1: validated)
        ulong k;
        switch (Options.Pattern)
        {
            case DirtyPattern.Sequential:
                k = writer.Cursor % own;
                writer.Cursor = k + 1;
                break;
            case DirtyPattern.Hotset:
                ulong hot = Math.Clamp((ulong)(own * Options.HotsetFraction), 1, own);
                bool toHot = hot == own || writer.NextDouble() < Options.HotsetWriteShare;
                k = toHot ? writer.NextBelow(hot) : hot + writer.NextBelow(own - hot);
                k = (k + (ulong)(own * Options.HotsetStart)) % own; // HotsetStart < 1: the offset is below own
                break;
            default:
                k = writer.NextBelow(own);
                break;
        }

        return (k * count) + w;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private nint PageAddress(ulong page) =>
        page < _firstRegionPages ? _regions[0].PageAddress(page) : _regions[1].PageAddress(page - _firstRegionPages);
}
