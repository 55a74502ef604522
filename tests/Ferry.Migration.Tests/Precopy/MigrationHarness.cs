using Ferry.Migration.Guest;
using Ferry.Migration.InProcess;
using Ferry.Migration.Precopy;
using Ferry.Migration.Protocol;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Tests.Precopy;

/// <summary>Records what the engine did to each destination guest: was it started, was it disposed.</summary>
internal sealed class RecordingTargetFactory(IMigrationTargetFactory inner) : IMigrationTargetFactory
{
    private readonly List<RecordingTarget> _created = [];

    public IReadOnlyList<RecordingTarget> Created
    {
        get { lock (_created) return [.. _created]; }
    }

    /// <summary>When set, LoadState of every target created throws this (a destination that rejects the state).</summary>
    public bool RejectState { get; init; }

    /// <summary>Run by every target created before it forwards a landed sync, or null.</summary>
    public Action? OnSyncLanded { get; init; }

    public IMigrationTarget Create(Guid vmId, IReadOnlyList<(ulong GuestPhysicalAddress, ulong Size)> regions)
    {
        var created = inner.Create(vmId, regions);
        var t = created is IPostcopyTarget ? new RecordingPostcopyTarget(created, RejectState) : new RecordingTarget(created, RejectState);
        t.OnSyncLanded = OnSyncLanded;
        lock (_created) _created.Add(t);
        return t;
    }
}

/// <summary>A recording target over one that can run post-copy, so the engine sees that it can.</summary>
internal sealed class RecordingPostcopyTarget(IMigrationTarget inner, bool rejectState) : RecordingTarget(inner, rejectState), IPostcopyTarget
{
    /// <summary>Pages missing per region when post-copy began (null before).</summary>
    public ulong[]? MissingPerRegion { get; private set; }

    /// <summary>Where the destination's guest reports the pages it waits for (null before post-copy began).</summary>
    public IPageFaultSink? Sink { get; private set; }

    public IPostcopyMemory BeginPostcopy(IReadOnlyList<Ferry.Migration.Memory.DirtyBitmap> missing, IPageFaultSink sink)
    {
        MissingPerRegion = [.. missing.Select(m => m.Count())];
        Sink = sink;
        return ((IPostcopyTarget)Inner).BeginPostcopy(missing, sink);
    }

    public void PreparePostcopy(TimeSpan budget, IReadOnlyList<Ferry.Migration.Memory.DirtyBitmap>? holdsData, CancellationToken stop) =>
        ((IPostcopyTarget)Inner).PreparePostcopy(budget, holdsData, stop);
}

/// <summary>An in-process guest seen through a wrapper, for tests that change one of its answers.</summary>
internal class DelegatingSource(InProcessGuest inner) : IMigrationSource
{
    public InProcessGuest Inner => inner;
    public virtual IReadOnlyList<MemoryRegion> Regions => inner.Regions;
    public ulong TotalPages => inner.TotalPages;
    public bool IsRunning => inner.IsRunning;
    public void StartDirtyLog() => inner.StartDirtyLog();
    public virtual void HarvestDirtyLog(Span<ulong> bitmap) => inner.HarvestDirtyLog(bitmap);
    public void GetPopulatedPages(Span<ulong> bitmap) => inner.GetPopulatedPages(bitmap);
    public void StopDirtyLog() => inner.StopDirtyLog();
    public void SetThrottle(int percent) => inner.SetThrottle(percent);
    public virtual void Pause() => inner.Pause();
    public void Resume() => inner.Resume();
    public IReadOnlyList<StateSection> SaveState() => inner.SaveState();
}

/// <summary>
/// A two-region in-process guest whose second region is pre-copy only (<see cref="MemoryRegion.PrecopyOnly"/>, as Ferry's
/// machine marks a copied disk), and whose every harvest reports the first <see cref="LastMinute"/> pages of that region
/// dirty (they are unchanged, so they still verify): the switchover always has pages of that region to carry. Given a
/// <paramref name="reader"/>, the engine reads that region through it, as the machine reads a copied disk's image, and
/// sees no mapping of it (host address 0). <paramref name="alsoDirty"/>: more pages of that region every harvest reports.
/// </summary>
internal sealed class SecondRegionPrecopyOnly(InProcessGuest inner, IRegionReader? reader = null, Func<ulong, bool>? alsoDirty = null) : DelegatingSource(inner)
{
    public const int LastMinute = 50;
    private readonly IReadOnlyList<MemoryRegion> _regions =
    [
        inner.Regions[0],
        inner.Regions[1] with { PrecopyOnly = true, Reader = reader, HostAddress = reader is null ? inner.Regions[1].HostAddress : 0 },
    ];

    public override IReadOnlyList<MemoryRegion> Regions => _regions;

    public override void HarvestDirtyLog(Span<ulong> bitmap)
    {
        base.HarvestDirtyLog(bitmap);
        ulong first = _regions[0].Pages;
        for (ulong p = first; p < first + LastMinute; p++) bitmap[(int)(p >> 6)] |= 1UL << (int)p;
        for (ulong p = 0; alsoDirty is not null && p < _regions[1].Pages; p++)
        {
            if (alsoDirty(p)) bitmap[(int)((first + p) >> 6)] |= 1UL << (int)(first + p);
        }
    }
}

/// <summary>
/// Reads a mapped region as a source reads an unmapped one (a disk image): copies of its pages, or, where
/// <see cref="Fails"/> says so for a read's first page, the error a bad sector gives.
/// </summary>
internal sealed class CopyingRegionReader(MemoryRegion memory) : IRegionReader
{
    private long _pagesRead;

    public Func<ulong, bool>? Fails { get; init; }

    /// <summary>Pages that read as zeros whatever the memory holds (an image's blocks of zeros, or never written).</summary>
    public Func<ulong, bool>? ReadsAsZero { get; init; }

    public long PagesRead => Interlocked.Read(ref _pagesRead);

    public unsafe void Read(ulong firstPage, int pages, nint destination)
    {
        if (Fails?.Invoke(firstPage) == true)
            throw new IOException($"test.img: cannot read the disk image at offset {firstPage * MemoryRegion.PageSize}: Input/output error (errno 5)");
        long bytes = (long)pages * MemoryRegion.PageSize;
        Buffer.MemoryCopy((void*)memory.PageAddress(firstPage), (void*)destination, bytes, bytes);
        for (int i = 0; ReadsAsZero is not null && i < pages; i++)
        {
            if (ReadsAsZero(firstPage + (ulong)i)) new Span<byte>((void*)(destination + ((nint)i << MemoryRegion.PageShift)), MemoryRegion.PageSize).Clear();
        }
        Interlocked.Add(ref _pagesRead, pages);
    }
}

internal class RecordingTarget(IMigrationTarget inner, bool rejectState) : IMigrationTarget, IShapedMigrationTarget
{
    private int _started;
    private int _disposed;

    public IMigrationTarget Inner => inner;
    public bool Started => Volatile.Read(ref _started) != 0;
    public bool Disposed => Volatile.Read(ref _disposed) != 0;
    public IReadOnlyList<MemoryRegion> Regions => inner.Regions;
    // Forwarded explicitly: the interface's default (false) would turn the destination's huge-page handling off in
    // every migration these tests run, leaving the split and collapse paths untested end to end.
    public bool TransparentHugePages => inner.TransparentHugePages;

    public void LoadState(IReadOnlyList<StateSection> sections)
    {
        if (rejectState) throw new InvalidDataException("test: state rejected by the destination");
        inner.LoadState(sections);
    }

    /// <summary>Forwarded to a target that takes a shape; for any other, what the engine does: nothing.</summary>
    public void Reshape(StateSection shape) => (inner as IShapedMigrationTarget)?.Reshape(shape);

    public void Start()
    {
        Interlocked.Exchange(ref _started, 1);
        inner.Start();
    }

    /// <summary>Landed syncs the engine asked for so far.</summary>
    public int SyncLandedCalls => Volatile.Read(ref _syncLanded);
    private int _syncLanded;

    /// <summary>Run before each landed sync is forwarded (a target whose sync takes time), or null.</summary>
    public Action? OnSyncLanded { get; set; }

    public void SyncLanded()
    {
        Interlocked.Increment(ref _syncLanded);
        OnSyncLanded?.Invoke();
        inner.SyncLanded();
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0) inner.Dispose();
    }
}

/// <summary>IProgress that reports on the caller's thread (Progress&lt;T&gt; would post to the thread pool, out of order).</summary>
internal sealed class SynchronousProgress(Action<MigrationProgress> report) : IProgress<MigrationProgress>
{
    public void Report(MigrationProgress value) => report(value);
}

/// <summary>The outcome of one migration run by <see cref="MigrationHarness.Migrate"/>.</summary>
internal sealed record MigrationOutcome(MigrationStatistics Stats, RecordingTarget? Target, Exception? DestinationError, TimeSpan Elapsed)
{
    /// <summary>The destination engine's page map (whether it handled the memory as huge pages, what it split).</summary>
    public ReceivedPageMap? ReceivedPages { get; init; }
}

internal static class MigrationHarness
{
    /// <summary>Short peer timeout for tests: a hung peer must be found in well under the test budget.</summary>
    public static readonly TimeSpan TestPeerTimeout = TimeSpan.FromSeconds(1.5);

    public static InProcessGuest NewGuest(ulong mib, long pagesPerSecond = 0, DirtyPattern pattern = DirtyPattern.Uniform,
        MemoryFill fill = MemoryFill.Random, int writers = 1, bool split = false) =>
        new(new InProcessGuestOptions
        {
            MemoryBytes = mib << 20,
            WriterThreads = writers,
            DirtyRatePagesPerSecond = pagesPerSecond,
            Pattern = pattern,
            Fill = fill,
            SplitRegions = split,
        });

    public static MigrationOptions Options(bool verify = true) => new()
    {
        Verify = verify,
        PageChannels = 2,
        PeerTimeout = TestPeerTimeout,
        Timeout = TimeSpan.FromSeconds(10),
    };

    /// <summary>
    /// Run a destination on its own thread and the source on this one; return both outcomes. The destination's
    /// target is returned (not disposed) when it completed; the caller disposes it.
    /// </summary>
    public static MigrationOutcome Migrate(IMigrationSource guest, IMigrationConnector connector, IMigrationListener listener,
        MigrationOptions options, RecordingTargetFactory? factory = null, IncomingOptions? incoming = null,
        Action<OutgoingMigration>? duringRun = null, string? token = null, TimeSpan? stateTimeEstimate = null,
        IProgress<MigrationProgress>? progress = null, TimeProvider? time = null, Action<IncomingMigration>? onIncoming = null)
    {
        factory ??= new RecordingTargetFactory(new InProcessTargetFactory());
        incoming ??= new IncomingOptions { PeerTimeout = options.PeerTimeout, MaxMemoryBytes = 1UL << 30 };
        Exception? destError = null;
        IMigrationTarget? destTarget = null;
        var incomingMigration = new IncomingMigration(listener, factory, incoming);
        onIncoming?.Invoke(incomingMigration);
        var dest = new Thread(() =>
        {
            try
            {
                destTarget = incomingMigration.Run();
            }
            catch (Exception e)
            {
                destError = e;
            }
        }) { IsBackground = true, Name = "test-destination" };
        dest.Start();
        var source = new OutgoingMigration(guest, connector, options, time) { Token = token, StateTimeEstimate = stateTimeEstimate };
        var watcher = duringRun is null ? null : new Thread(() => duringRun(source)) { IsBackground = true };
        watcher?.Start();
        var started = DateTime.UtcNow;
        var stats = source.Run(progress);
        var elapsed = DateTime.UtcNow - started;
        Assert.True(dest.Join(TimeSpan.FromSeconds(10)), "destination thread did not end within 10 s of the source");
        watcher?.Join(TimeSpan.FromSeconds(10));
        return new MigrationOutcome(stats, destTarget as RecordingTarget, destError, elapsed) { ReceivedPages = incomingMigration.ReceivedPages };
    }

    /// <summary>
    /// The promises of DESIGN.md for any failure before commit: source running and unchanged by the migration,
    /// status failed/cancelled with a reason, every destination guest discarded and never started.
    /// </summary>
    public static void AssertFailedBeforeCommit(MigrationOutcome outcome, InProcessGuest guest, RecordingTargetFactory factory,
        MigrationStatus expected = MigrationStatus.Failed)
    {
        Assert.Equal(expected, outcome.Stats.Status);
        Assert.False(string.IsNullOrWhiteSpace(outcome.Stats.Error));
        Assert.True(guest.IsRunning, "source guest must be running again");
        Assert.False(guest.IsDirtyLogging, "dirty logging must be stopped");
        Assert.Equal(0, guest.ThrottlePercent);
        Assert.NotNull(outcome.DestinationError);
        Assert.Null(outcome.Target);
        foreach (var t in factory.Created)
        {
            Assert.False(t.Started, "a destination guest was started although the source resumed");
            Assert.True(t.Disposed, "a failed destination guest must be discarded");
        }
    }

    /// <summary>The workload keeps writing: PagesWritten grows over a short wait.</summary>
    public static void AssertWorkloadContinues(InProcessGuest guest)
    {
        long before = guest.PagesWritten;
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(2);
        while (guest.PagesWritten == before && DateTime.UtcNow < deadline) Thread.Sleep(5);
        Assert.True(guest.PagesWritten > before, "the source workload did not continue after the failed migration");
    }
}
