using Ferry.Linux;
using Ferry.Migration.Guest;
using static Ferry.Migration.Tests.Precopy.MigrationHarness;

namespace Ferry.Migration.Tests.Precopy;

/// <summary>
/// Round 0 must not read memory the guest never populated, and the destination must not touch pages that only ever
/// receive Zero runs: on this host a read of untouched memory allocates a page (~3 s per GiB). The proof is the MMU:
/// those pages are mapped PROT_NONE on both sides, so any read or write by the engine kills the test process.
/// </summary>
[Collection(MigrationCollection.Name)]
public class PopulatedPagesTests
{
    // Region 0: 3 chunks of 2 MiB so both page channels get some; region 1 a separate 2 MiB region.
    private static readonly (ulong Gpa, ulong Pages)[] Layout = [(0, 1536), (1UL << 32, 512)];

    // Pages holding data, and pages populated but all zero (read by the zero check, sent as Zero).
    private static readonly (int Region, ulong First, ulong Count)[] DataPages = [(0, 0, 10), (0, 700, 2), (0, 1535, 1), (1, 5, 1)];
    private static readonly (int Region, ulong First, ulong Count)[] ZeroPopulated = [(0, 10, 10), (1, 6, 3)];

    [Fact]
    public void RoundZeroSendsUnpopulatedPagesAsZeroWithoutReadingThemAndTheDestinationNeverTouchesThem()
    {
        using var source = new SparseSource(Layout, DataPages, ZeroPopulated);
        var factory = new RecordingTargetFactory(new SparseTargetFactory(DataPages));
        using var transport = new Ferry.Migration.Transport.InMemoryTransport();
        var outcome = Migrate(source, transport.Connector, transport.Listener, Options(verify: false), factory);
        using var target = outcome.Target;

        Assert.True(outcome.Stats.Status == MigrationStatus.Completed, $"{outcome.Stats.Status}: {outcome.Stats.Error} / {outcome.DestinationError}");
        Assert.Equal(1, source.PopulatedCalls);
        long data = DataPages.Sum(d => (long)d.Count);
        long total = Layout.Sum(l => (long)l.Pages);
        Assert.Equal(data, outcome.Stats.Pages.Normal);
        Assert.Equal(total - data, outcome.Stats.Pages.Zero);
        // Descriptors only for the zero runs: far below one page of wire per 100 pages.
        Assert.True(outcome.Stats.BytesSent < (data * 4096) + (total * 4096 / 100), $"bytes_sent {outcome.Stats.BytesSent}");

        var dest = (SparseTarget)target!.Inner;
        Assert.True(dest.Started);
        source.Unprotect();
        dest.Unprotect();
        for (int r = 0; r < Layout.Length; r++)
            Assert.True(source.Bytes(r).SequenceEqual(dest.Bytes(r)), $"region {r} differs");
    }

    [Fact]
    public void APageFirstWrittenRightAfterThePopulatedQueryArrivesThroughTheDirtyLog()
    {
        // Page 900 is untouched when the engine asks which pages are populated, and written the moment after: only
        // the dirty log can bring it across, so the engine must not drain the log after asking.
        (int Region, ulong First, ulong Count) late = (0, 900, 1);
        using var source = new SparseSource(Layout, DataPages, ZeroPopulated) { WriteAfterPopulatedQuery = late };
        var factory = new RecordingTargetFactory(new SparseTargetFactory([.. DataPages, late]));
        using var transport = new Ferry.Migration.Transport.InMemoryTransport();
        var outcome = Migrate(source, transport.Connector, transport.Listener, Options(verify: false), factory);
        using var target = outcome.Target;

        Assert.True(outcome.Stats.Status == MigrationStatus.Completed, $"{outcome.Stats.Status}: {outcome.Stats.Error} / {outcome.DestinationError}");
        Assert.Equal(1, outcome.Stats.Rounds[1].Pages); // round 1 re-sent exactly the late page
        var dest = (SparseTarget)target!.Inner;
        source.Unprotect();
        dest.Unprotect();
        Assert.NotEqual(0, source.Bytes(0)[900 * 4096]);
        Assert.True(source.Bytes(0).SequenceEqual(dest.Bytes(0)), "region 0 differs");
    }

    private static void Protect(MemoryRegion region, ulong first, ulong count, int prot)
    {
        if (count == 0) return;
        if (Libc.mprotect(region.PageAddress(first), (nuint)(count << MemoryRegion.PageShift), prot) != 0)
            throw Libc.LastError("mprotect");
    }

    /// <summary>Every page not listed in <paramref name="touchable"/> of region r is made PROT_NONE.</summary>
    private static void ProtectAllBut(MemoryRegion region, int r, (int Region, ulong First, ulong Count)[] touchable)
    {
        ulong next = 0;
        foreach (var (_, first, count) in touchable.Where(t => t.Region == r).OrderBy(t => t.First))
        {
            Protect(region, next, first - next, Libc.PROT_NONE);
            next = first + count;
        }
        Protect(region, next, region.Pages - next, Libc.PROT_NONE);
    }

    private static unsafe Span<byte> BytesOf(MemoryRegion region) => new((void*)region.HostAddress, (int)region.Size);

    /// <summary>A paused-by-nobody guest with a fixed content and nothing written during the migration.</summary>
    private sealed class SparseSource : IMigrationSource, IDisposable
    {
        private readonly GuestMemoryMapping[] _maps;
        private readonly MemoryRegion[] _regions;
        private readonly ulong[] _populated;
        private readonly ulong[] _firstBit;

        public SparseSource((ulong Gpa, ulong Pages)[] layout, (int Region, ulong First, ulong Count)[] data, (int Region, ulong First, ulong Count)[] zero)
        {
            _maps = [.. layout.Select(l => GuestMemoryMapping.Create(l.Pages << MemoryRegion.PageShift))];
            _regions = [.. layout.Select((l, i) => new MemoryRegion(l.Gpa, l.Pages << MemoryRegion.PageShift, _maps[i].Address))];
            _firstBit = new ulong[layout.Length];
            for (int r = 1; r < layout.Length; r++) _firstBit[r] = _firstBit[r - 1] + layout[r - 1].Pages;
            TotalPages = (ulong)layout.Sum(l => (long)l.Pages);
            _populated = new ulong[(TotalPages + 63) / 64];
            var random = new Random(7);
            foreach (var (r, first, count) in data)
            {
                var bytes = BytesOf(_regions[r]).Slice((int)(first << MemoryRegion.PageShift), (int)(count << MemoryRegion.PageShift));
                random.NextBytes(bytes);
                bytes[0] = 1; // never an all-zero page by chance
                MarkPopulated(r, first, count);
            }
            foreach (var (r, first, count) in zero)
            {
                BytesOf(_regions[r]).Slice((int)(first << MemoryRegion.PageShift), (int)(count << MemoryRegion.PageShift)).Clear();
                MarkPopulated(r, first, count);
            }
            for (int r = 0; r < _regions.Length; r++) ProtectAllBut(_regions[r], r, [.. data, .. zero]);
        }

        public int PopulatedCalls { get; private set; }
        public IReadOnlyList<MemoryRegion> Regions => _regions;
        public ulong TotalPages { get; }
        public bool IsRunning { get; private set; } = true;

        /// <summary>A page the "guest" writes right after answering <see cref="GetPopulatedPages"/>, logged as dirty.</summary>
        public (int Region, ulong First, ulong Count)? WriteAfterPopulatedQuery { get; init; }

        // Dirty log: pages written since the last harvest.
        private readonly List<ulong> _dirtyBits = [];

        public void StartDirtyLog() { }

        public void HarvestDirtyLog(Span<ulong> bitmap)
        {
            foreach (ulong bit in _dirtyBits) bitmap[(int)(bit >> 6)] |= 1UL << (int)(bit & 63);
            _dirtyBits.Clear();
        }

        public void StopDirtyLog() { }
        public void SetThrottle(int percent) { }
        public void Pause() => IsRunning = false;
        public void Resume() => IsRunning = true;
        public IReadOnlyList<StateSection> SaveState() => [new StateSection("sparse", 1, new byte[] { 1, 2, 3 })];

        public void GetPopulatedPages(Span<ulong> bitmap)
        {
            PopulatedCalls++;
            for (int i = 0; i < _populated.Length; i++) bitmap[i] |= _populated[i];
            if (WriteAfterPopulatedQuery is var (r, first, count))
            {
                Protect(_regions[r], first, count, Libc.PROT_READ | Libc.PROT_WRITE);
                BytesOf(_regions[r]).Slice((int)(first << MemoryRegion.PageShift), (int)(count << MemoryRegion.PageShift)).Fill(0x77);
                MarkPopulated(r, first, count);
                for (ulong p = 0; p < count; p++) _dirtyBits.Add(_firstBit[r] + first + p);
            }
        }

        public Span<byte> Bytes(int r) => BytesOf(_regions[r]);

        public void Unprotect()
        {
            foreach (var region in _regions) Protect(region, 0, region.Pages, Libc.PROT_READ | Libc.PROT_WRITE);
        }

        public void Dispose()
        {
            foreach (var m in _maps) m.Dispose();
        }

        private void MarkPopulated(int r, ulong first, ulong count)
        {
            for (ulong p = _firstBit[r] + first; p < _firstBit[r] + first + count; p++) _populated[p >> 6] |= 1UL << (int)(p & 63);
        }
    }

    /// <summary>Fresh anonymous memory where only the pages that will receive data are accessible.</summary>
    private sealed class SparseTargetFactory((int Region, ulong First, ulong Count)[] data) : IMigrationTargetFactory
    {
        public IMigrationTarget Create(Guid vmId, IReadOnlyList<(ulong GuestPhysicalAddress, ulong Size)> regions) => new SparseTarget(regions, data);
    }

    private sealed class SparseTarget : IMigrationTarget
    {
        private readonly GuestMemoryMapping[] _maps;
        private readonly MemoryRegion[] _regions;

        public SparseTarget(IReadOnlyList<(ulong GuestPhysicalAddress, ulong Size)> layout, (int Region, ulong First, ulong Count)[] data)
        {
            _maps = [.. layout.Select(l => GuestMemoryMapping.Create(l.Size))];
            _regions = [.. layout.Select((l, i) => new MemoryRegion(l.GuestPhysicalAddress, l.Size, _maps[i].Address))];
            for (int r = 0; r < _regions.Length; r++) ProtectAllBut(_regions[r], r, data);
        }

        public bool Started { get; private set; }
        public IReadOnlyList<MemoryRegion> Regions => _regions;
        public void LoadState(IReadOnlyList<StateSection> sections) => Assert.Equal("sparse", Assert.Single(sections).Name);
        public void Start() => Started = true;
        public Span<byte> Bytes(int r) => BytesOf(_regions[r]);

        public void Unprotect()
        {
            foreach (var region in _regions) Protect(region, 0, region.Pages, Libc.PROT_READ | Libc.PROT_WRITE);
        }

        public void Dispose()
        {
            foreach (var m in _maps) m.Dispose();
        }
    }
}
