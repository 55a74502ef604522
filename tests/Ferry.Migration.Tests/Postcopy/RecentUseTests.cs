using Ferry.Migration.Guest;
using Ferry.Migration.Memory;
using Ferry.Migration.Postcopy;
using Microsoft.Extensions.Time.Testing;

namespace Ferry.Migration.Tests.Postcopy;

public class RecentUseTests
{
    private static readonly TimeSpan Interval = TimeSpan.FromMilliseconds(100);

    [Fact]
    public void AHarvestBeforeTheIntervalIsDueCountsTowardItWithoutEndingIt()
    {
        var clock = new FakeTimeProvider();
        var guest = new ScriptedSource(256);
        var use = new RecentUse(guest, intervals: 2, Interval, clock);
        var log = new DirtyBitmap(guest.TotalPages);
        var populated = new DirtyBitmap(guest.TotalPages);

        // Interval 1: page 5 written early (a round's own harvest, 30 ms in), page 9 read at its end.
        clock.Advance(TimeSpan.FromMilliseconds(30));
        guest.Written.Add(5);
        use.Harvest(log, populated);
        Assert.True(log.Test(5));
        Assert.Equal(0, use.Closed);
        Assert.Equal(TimeSpan.FromMilliseconds(70), use.UntilDue);
        clock.Advance(TimeSpan.FromMilliseconds(70));
        guest.Used.Add(9);
        use.Harvest(log, populated);
        Assert.False(log.Test(5)); // the log is the last harvest's only
        Assert.Equal(1, use.Closed);
        Assert.Null(use.Steady());

        // Interval 2: both again, in one harvest.
        clock.Advance(Interval);
        guest.Written.Add(5);
        guest.Used.Add(9);
        use.Harvest(log, populated);
        Assert.Equal(2, use.Closed);
        var steady = use.Steady();
        Assert.NotNull(steady);
        Assert.Equal([5UL, 9UL], SetBits(steady));
        Assert.Equal([5UL, 9UL], SetBits(use.Used));
        Assert.Equal([5UL], SetBits(populated)); // written pages hold data; read ones did already
    }

    [Fact]
    public void SteadyPagesAreThoseUsedInEachOfTheLastIntervalsOnly()
    {
        var clock = new FakeTimeProvider();
        var guest = new ScriptedSource(256);
        var use = new RecentUse(guest, intervals: 3, Interval, clock);
        var log = new DirtyBitmap(guest.TotalPages);
        var populated = new DirtyBitmap(guest.TotalPages);
        // Page 1 in the first three intervals only; page 2 in all five; page 3 in the last three; page 4 in all but the
        // fourth; page 7 is the system side's, in the first.
        int[][] perInterval = [[1, 2, 4, 7], [1, 2, 4], [1, 2, 3, 4], [2, 3], [2, 3, 4]];
        foreach (var pages in perInterval)
        {
            clock.Advance(Interval);
            foreach (var p in pages) guest.Used.Add((ulong)p);
            if (pages.Contains(7)) guest.System.Add(7);
            use.Harvest(log, populated);
        }
        Assert.Equal(5, use.Closed);
        Assert.Equal([2UL, 3UL], SetBits(use.Steady()!));
        Assert.Equal([1UL, 2UL, 3UL, 4UL, 7UL], SetBits(use.Used));
        Assert.Equal([7UL], SetBits(use.System!));
    }

    private static List<ulong> SetBits(DirtyBitmap bitmap)
    {
        var bits = new List<ulong>();
        for (ulong p = 0; p < bitmap.BitCount; p++) if (bitmap.Test(p)) bits.Add(p);
        return bits;
    }

    /// <summary>A source whose next harvests report the pages named (dirty log: Written; accessed: Used, System), once each.</summary>
    private sealed class ScriptedSource(ulong pages) : IMigrationSource, IAccessTrackingSource
    {
        public readonly HashSet<ulong> Written = [], Used = [], System = [];

        public IReadOnlyList<MemoryRegion> Regions { get; } = [new MemoryRegion(0, pages * MemoryRegion.PageSize, 0)];
        public ulong TotalPages => pages;
        public bool IsRunning => true;
        public void StartDirtyLog() { }
        public void GetPopulatedPages(Span<ulong> bitmap) { }
        public void StopDirtyLog() { }
        public void SetThrottle(int percent) { }
        public void Pause() { }
        public void Resume() { }
        public IReadOnlyList<StateSection> SaveState() => [];

        public void HarvestDirtyLog(Span<ulong> bitmap) => Drain(Written, bitmap);

        public void HarvestAccessedPages(Span<ulong> bitmap) => Drain(Used, bitmap);

        public void HarvestAccessedPages(Span<ulong> bitmap, Span<ulong> system)
        {
            Drain(System, system);
            Drain(Used, bitmap);
        }

        private static void Drain(HashSet<ulong> pages, Span<ulong> bitmap)
        {
            foreach (var p in pages) bitmap[(int)(p >> 6)] |= 1UL << (int)p;
            pages.Clear();
        }
    }
}
