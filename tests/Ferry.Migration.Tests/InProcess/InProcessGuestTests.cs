using System.Diagnostics;
using Ferry.Migration.InProcess;
using Ferry.Migration.Memory;
using Ferry.Migration.Tests.Memory;
using static Ferry.Migration.Tests.InProcess.GuestMemoryHelpers;

namespace Ferry.Migration.Tests.InProcess;

public class InProcessGuestTests
{
    private const ulong MiB = 1 << 20;

    [Fact]
    public void PauseStopsEveryWriteUntilResume()
    {
        using var guest = new InProcessGuest(new() { MemoryBytes = 8 * MiB, WriterThreads = 2, DirtyRatePagesPerSecond = InProcessGuestOptions.FullSpeed });
        Assert.True(WaitUntil(() => guest.PagesWritten > 1000), "writers never wrote");

        guest.Pause();
        Assert.False(guest.IsRunning);
        long written = guest.PagesWritten;
        UInt128 before = MemoryDigest.Compute(guest.Regions);
        Thread.Sleep(50);
        Assert.Equal(before, MemoryDigest.Compute(guest.Regions));
        Assert.Equal(written, guest.PagesWritten);
        Assert.Null(guest.SelfCheck());

        guest.Resume();
        Assert.True(guest.IsRunning);
        Assert.True(WaitUntil(() => guest.PagesWritten > written), "writers did not resume");
    }

    [Fact]
    public void PauseOfAnIdleOrSleepingGuestReturnsPromptly()
    {
        using var idle = new InProcessGuest(new() { MemoryBytes = MiB, DirtyRatePagesPerSecond = 0 });
        using var slow = new InProcessGuest(new() { MemoryBytes = MiB, DirtyRatePagesPerSecond = 100 });
        slow.SetThrottle(99);
        Thread.Sleep(20);
        var sw = Stopwatch.StartNew();
        idle.Pause();
        slow.Pause();
        // Sleepers wake on the pause signal instead of finishing a 10 ms throttle slice or an idle wait.
        Assert.True(sw.ElapsedMilliseconds < 1000, $"pause took {sw.ElapsedMilliseconds} ms");
        Assert.Equal(0, idle.PagesWritten);
    }

    [Fact]
    public void FirstHarvestAfterStartDirtyLogReportsEveryPageAndTheNextOnlyNewWrites()
    {
        using var guest = new InProcessGuest(new() { MemoryBytes = 100 * 4096, WriterThreads = 0, SplitRegions = true });
        var bitmap = new DirtyBitmap(guest.TotalPages);
        guest.Step(5); // before logging: must not leak into anything but the all-dirty first harvest
        guest.StartDirtyLog();
        guest.HarvestDirtyLog(bitmap.Words);
        Assert.Equal(100UL, bitmap.Count());

        bitmap.ClearAll();
        guest.HarvestDirtyLog(bitmap.Words);
        Assert.Equal(0UL, bitmap.Count());
    }

    [Theory]
    [InlineData(DirtyPattern.Uniform, false)]
    [InlineData(DirtyPattern.Hotset, true)]
    [InlineData(DirtyPattern.Sequential, true)]
    public void HarvestReportsExactlyThePagesWhoseBytesChanged(DirtyPattern pattern, bool split)
    {
        using var guest = new InProcessGuest(new()
        {
            MemoryBytes = 300 * 4096, WriterThreads = 0, Pattern = pattern, SplitRegions = split, Fill = MemoryFill.Random, Seed = 5,
        });
        var bitmap = new DirtyBitmap(guest.TotalPages);
        guest.StartDirtyLog();
        guest.HarvestDirtyLog(bitmap.Words);

        for (int round = 0; round < 3; round++)
        {
            byte[][] before = Snapshot(guest.Regions);
            guest.Step(120);
            byte[][] after = Snapshot(guest.Regions);
            bitmap.ClearAll();
            guest.HarvestDirtyLog(bitmap.Words);

            ulong changed = 0;
            for (ulong p = 0; p < guest.TotalPages; p++)
            {
                bool differs = !before[p].AsSpan().SequenceEqual(after[p]);
                Assert.True(differs == bitmap.Test(p), $"round {round} page {p}: changed {differs}, dirty {bitmap.Test(p)}");
                changed += differs ? 1UL : 0;
            }

            Assert.True(changed > 0);
        }
    }

    [Fact]
    public void WritesBetweenHarvestsFromRunningThreadsAreNeverMissed()
    {
        // Harvest while writers run at full speed; after pause, a final harvest. Every page whose sequence number
        // moved since the initial copy must be in the union of harvests: the dirty bit follows the write.
        using var guest = new InProcessGuest(new() { MemoryBytes = 2 * MiB, WriterThreads = 2, DirtyRatePagesPerSecond = InProcessGuestOptions.FullSpeed });
        var union = new DirtyBitmap(guest.TotalPages);
        var scratch = new DirtyBitmap(guest.TotalPages);
        guest.StartDirtyLog();
        guest.HarvestDirtyLog(scratch.Words); // all pages: the "first pass"
        var seqAfterFirstPass = new ulong[guest.TotalPages];
        for (ulong p = 0; p < guest.TotalPages; p++)
        {
            seqAfterFirstPass[p] = Seq(guest.Regions, p);
        }

        for (int i = 0; i < 20; i++)
        {
            scratch.ClearAll();
            guest.HarvestDirtyLog(scratch.Words);
            union.OrFrom(scratch);
            Thread.Sleep(1);
        }

        guest.Pause();
        scratch.ClearAll();
        guest.HarvestDirtyLog(scratch.Words);
        union.OrFrom(scratch);

        ulong moved = 0;
        for (ulong p = 0; p < guest.TotalPages; p++)
        {
            if (Seq(guest.Regions, p) != seqAfterFirstPass[p])
            {
                moved++;
                Assert.True(union.Test(p), $"page {p} was written but never reported dirty");
            }
        }

        Assert.True(moved > 0);
    }

    [Fact]
    public void ThrottleReducesTheWriteRate()
    {
        using var guest = new InProcessGuest(new() { MemoryBytes = 4 * MiB, WriterThreads = 2, DirtyRatePagesPerSecond = 20_000 });
        double free = MeasureRate(guest, 300);
        guest.SetThrottle(80);
        Assert.Equal(80, guest.ThrottlePercent);
        double throttled = MeasureRate(guest, 300);
        guest.SetThrottle(0);
        // 80% throttle should leave ~20%: assert well under half, loose for a loaded 2-core machine.
        Assert.True(throttled < free * 0.5, $"unthrottled {free:F0}/s, throttled {throttled:F0}/s");
        Assert.True(throttled > 0, "a throttled guest still makes progress");
    }

    [Fact]
    public void HeavilyThrottledFullSpeedWritersKeepWriting()
    {
        using var guest = new InProcessGuest(new() { MemoryBytes = 4 * MiB, WriterThreads = 2, DirtyRatePagesPerSecond = InProcessGuestOptions.FullSpeed });
        // Many slices at each setting: a pacing bug that wedges a writer (it once did, after a zero-length
        // interval at full speed) shows up only after some slices.
        foreach (int percent in new[] { 30, 60, 90, 99 })
        {
            guest.SetThrottle(percent);
            Thread.Sleep(150);
            long start = guest.PagesWritten;
            Assert.True(WaitUntil(() => guest.PagesWritten > start + 1_000), $"writers stalled at {percent}% throttle");
        }
    }

    [Theory]
    [InlineData(2_000)]
    [InlineData(200_000)]
    public void WriteRateIsRoughlyTheOneAsked(long rate)
    {
        using var guest = new InProcessGuest(new() { MemoryBytes = 8 * MiB, WriterThreads = 2, DirtyRatePagesPerSecond = rate });
        double measured = MeasureRate(guest, 400);
        // Never faster than asked (credit is capped) and not far slower; the lower bound allows for a busy host.
        Assert.InRange(measured, rate * 0.4, rate * 1.15);
    }

    [Fact]
    public void IdleGuestWritesNothing()
    {
        using var guest = new InProcessGuest(new() { MemoryBytes = MiB, WriterThreads = 2, DirtyRatePagesPerSecond = 0 });
        Thread.Sleep(50);
        Assert.Equal(0, guest.PagesWritten);
    }

    [Fact]
    public void HotsetPagesReceiveTheConfiguredShareOfWrites()
    {
        const ulong pages = 4000;
        using var guest = new InProcessGuest(new()
        {
            MemoryBytes = pages * 4096, WriterThreads = 0, Pattern = DirtyPattern.Hotset, HotsetFraction = 0.1, HotsetWriteShare = 0.9, Seed = 9,
        });
        guest.Step(40_000);
        ulong workingSet = guest.Options.WorkingSetPages; // 3996: the last 4 pages hold the counters
        ulong hot = 0, all = 0;
        for (ulong p = 0; p < workingSet; p++)
        {
            ulong seq = Seq(guest.Regions, p);
            all += seq;
            hot += p < workingSet / 10 ? seq : 0;
        }

        Assert.Equal(40_000UL, all);
        Assert.InRange(hot / (double)all, 0.88, 0.92); // binomial sd at n=40k is 0.0015
    }

    [Fact]
    public void AHotSetStartingMidMemoryGetsItsShareOfWritesThere()
    {
        const ulong pages = 4000;
        using var guest = new InProcessGuest(new()
        {
            MemoryBytes = pages * 4096, WriterThreads = 0, Pattern = DirtyPattern.Hotset, HotsetStart = 0.5, Seed = 9,
        });
        guest.Step(40_000);
        ulong workingSet = guest.Options.WorkingSetPages;
        ulong hot = 0, first = 0, all = 0;
        for (ulong p = 0; p < workingSet; p++)
        {
            ulong seq = Seq(guest.Regions, p);
            all += seq;
            hot += p >= workingSet / 2 && p < (workingSet / 2) + (workingSet / 10) ? seq : 0;
            first += p < workingSet / 10 ? seq : 0;
        }

        Assert.Equal(40_000UL, all);
        Assert.InRange(hot / (double)all, 0.88, 0.92);
        Assert.InRange(first / (double)all, 0, 0.02); // the first tenth is cold now: ~1 % of the writes
    }

    [Fact]
    public void UniformWritesStayInsideTheWorkingSetAndSpreadOverIt()
    {
        using var guest = new InProcessGuest(new() { MemoryBytes = 2000 * 4096, WorkingSetBytes = 500 * 4096, WriterThreads = 0, SplitRegions = true });
        guest.Step(50_000);
        Assert.Equal(1999UL, guest.Options.FirstCounterPage); // 500 counters fit one page, the last
        for (ulong p = 0; p < guest.Options.FirstCounterPage; p++)
        {
            ulong seq = Seq(guest.Regions, p);
            if (p < 500)
            {
                Assert.InRange(seq, 50UL, 150UL); // mean 100, sd 10
            }
            else
            {
                Assert.Equal(0UL, seq);
            }
        }
    }

    [Fact]
    public void SequentialWritesWalkThePagesInOrderAndWrap()
    {
        using var guest = new InProcessGuest(new() { MemoryBytes = 100 * 4096, WriterThreads = 0, Pattern = DirtyPattern.Sequential });
        Assert.Equal(99UL, guest.Options.WorkingSetPages); // page 99 holds the counters
        guest.Step(150);
        for (ulong p = 0; p < 99; p++)
        {
            Assert.Equal(p < 51 ? 2UL : 1UL, Seq(guest.Regions, p));
        }
    }

    [Fact]
    public void ThreadedWritersShareTheWorkAndNeverCorruptEachOthersPages()
    {
        using var guest = new InProcessGuest(new()
        {
            MemoryBytes = MiB, WriterThreads = 3, DirtyRatePagesPerSecond = InProcessGuestOptions.FullSpeed, Pattern = DirtyPattern.Hotset, SplitRegions = true,
        });
        Assert.True(WaitUntil(() => guest.PagesWritten > 50_000));
        guest.Pause();
        Assert.Null(guest.SelfCheck());
        ulong total = 0;
        for (ulong p = 0; p < guest.Options.WorkingSetPages; p++)
        {
            total += Seq(guest.Regions, p);
        }

        Assert.Equal((ulong)guest.PagesWritten, total);
    }

    [Fact]
    public void StepIsRefusedWhilePausedAndSaveStateWhileRunning()
    {
        using var guest = new InProcessGuest(new() { MemoryBytes = MiB, WriterThreads = 0 });
        Assert.Throws<InvalidOperationException>(() => guest.SaveState());
        guest.Pause();
        Assert.Throws<InvalidOperationException>(() => guest.Step(1));
        Assert.Equal(2, guest.SaveState().Count);
    }

    [Fact]
    public void DisposeStopsFullSpeedWritersPromptly()
    {
        var guest = new InProcessGuest(new() { MemoryBytes = MiB, WriterThreads = 2, DirtyRatePagesPerSecond = InProcessGuestOptions.FullSpeed });
        Assert.True(WaitUntil(() => guest.PagesWritten > 0));
        var sw = Stopwatch.StartNew();
        guest.Dispose();
        Assert.True(sw.ElapsedMilliseconds < 2000);
        Assert.Throws<ObjectDisposedException>(guest.Pause);
    }

    [Fact]
    public void SixteenGiBGuestIsReservedWithoutTouchingItsMemory()
    {
        long before = GuestMemoryMappingTests.ResidentBytes();
        // 4 KiB pages: with huge pages each of 1000 scattered writes would populate its 2 MiB window (2 GB).
        using var guest = new InProcessGuest(new() { MemoryBytes = 16UL << 30, WriterThreads = 0, SplitRegions = true, TransparentHugePages = false });
        guest.Step(1000);
        long grown = GuestMemoryMappingTests.ResidentBytes() - before;
        Assert.Equal(4UL << 20, guest.TotalPages);
        // 1000 touched pages and at most 1000 counter pages (8 MB), 512 KiB of dirty log, runner noise.
        Assert.True(grown < 80L << 20, $"resident set grew by {grown >> 20} MiB");
    }

    [Fact]
    public void AFreshIdleGuestHasNoPopulatedPagesAndWritesPopulateExactlyTheWrittenPagesAndTheirCounters()
    {
        using var guest = new InProcessGuest(new()
        {
            MemoryBytes = 3000 * 4096, WriterThreads = 0, SplitRegions = true, TransparentHugePages = false, Seed = 4,
        });
        var populated = new DirtyBitmap(guest.TotalPages);
        guest.GetPopulatedPages(populated.Words);
        Assert.Equal(0UL, populated.Count());

        guest.Step(200);
        populated.ClearAll();
        guest.GetPopulatedPages(populated.Words);
        for (ulong p = 0; p < guest.TotalPages; p++)
        {
            // Written pages carry a non-zero sequence; the counter pages (the last 3) are written with every write.
            bool written = p >= guest.Options.FirstCounterPage || Seq(guest.Regions, p) != 0;
            Assert.True(written == populated.Test(p), $"page {p}: written {written}, populated {populated.Test(p)}");
        }
    }

    [Fact]
    public void WithHugePagesThePopulatedPagesAreASupersetOfTheWrittenOnes()
    {
        using var guest = new InProcessGuest(new() { MemoryBytes = 8 * MiB, WriterThreads = 0, Seed = 6 });
        guest.Step(50);
        var populated = new DirtyBitmap(guest.TotalPages);
        guest.GetPopulatedPages(populated.Words);
        for (ulong p = 0; p < guest.Options.WorkingSetPages; p++)
        {
            Assert.True(Seq(guest.Regions, p) == 0 || populated.Test(p), $"written page {p} not reported populated");
        }

        Assert.True(populated.Test(guest.Options.FirstCounterPage));
    }

    [Fact]
    public void TheSavedWorkloadStateIsTheSameFewBytesWhateverTheGuestSize()
    {
        int SizeFor(ulong bytes)
        {
            using var guest = new InProcessGuest(new() { MemoryBytes = bytes, WriterThreads = 0 });
            guest.Step(10);
            guest.Pause();
            return guest.SaveState().Single(s => s.Name == "workload").Data.Length;
        }

        int small = SizeFor(MiB);
        // 16 GiB: version 1 of the section carried 3.75 MiB of counters for it; now they are guest pages.
        Assert.Equal(small, SizeFor(16UL << 30));
        Assert.Equal(88 + 48 + 4, small);
    }

    [Fact]
    public void SelfCheckOfABigIdleGuestDoesNotFaultItsMemoryIn()
    {
        using var guest = new InProcessGuest(new() { MemoryBytes = 4UL << 30, WriterThreads = 0, TransparentHugePages = false });
        guest.Step(100);
        guest.Pause();
        long before = GuestMemoryMappingTests.ResidentBytes();
        Assert.Null(guest.SelfCheck());
        long grown = GuestMemoryMappingTests.ResidentBytes() - before;
        // Reading every header would fault in 4 GiB (~12 s here); the counters are 4 MiB, the populated bitmap 128 KiB.
        Assert.True(grown < 64L << 20, $"resident set grew by {grown >> 20} MiB");
    }

    [Fact]
    public void EveryPageOfARandomGuestHoldsDataTheCounterPagesIncluded()
    {
        using var guest = new InProcessGuest(new() { MemoryBytes = 3000 * 4096, WriterThreads = 0, Fill = MemoryFill.Random, SplitRegions = true, Seed = 12 });
        for (ulong p = 0; p < guest.TotalPages; p++)
        {
            Assert.False(ZeroPage.IsZero(PageAddress(guest.Regions, p)), $"page {p} is zero");
        }

        guest.Step(5000);
        guest.Pause();
        Assert.Null(guest.SelfCheck());
    }

    [Fact]
    public void ACounterThatDisagreesWithItsPageIsCaughtAtThatPage()
    {
        using var guest = new InProcessGuest(new() { MemoryBytes = 200 * 4096, WriterThreads = 0, Pattern = DirtyPattern.Sequential });
        guest.Step(30);
        guest.Pause();
        unsafe
        {
            uint* counters = (uint*)PageAddress(guest.Regions, guest.Options.FirstCounterPage);
            Assert.Equal(1u, counters[7]);
            counters[7] = 2; // as if the page's last write had not arrived
            Assert.Equal(7UL, guest.SelfCheck()?.Page);
            counters[7] = 1;
            Assert.Null(guest.SelfCheck());
        }
    }

    [Fact]
    public void InvalidOptionsAreRejectedBeforeAnythingIsMapped()
    {
        Assert.Throws<ArgumentException>(() => new InProcessGuest(new() { MemoryBytes = 4097 }));
        Assert.Throws<ArgumentException>(() => new InProcessGuest(new() { MemoryBytes = MiB, WorkingSetBytes = 2 * MiB }));
        Assert.Throws<ArgumentException>(() => new InProcessGuest(new() { MemoryBytes = MiB, HotsetFraction = 0 }));
        Assert.Throws<ArgumentException>(() => new InProcessGuest(new() { MemoryBytes = MiB, HotsetStart = 1 }));
        Assert.Throws<ArgumentException>(() => new InProcessGuest(new() { MemoryBytes = MiB, HotsetStart = -0.1 }));
        Assert.Throws<ArgumentException>(() => new InProcessGuest(new() { MemoryBytes = MiB, DirtyRatePagesPerSecond = -1 }));
        Assert.Throws<ArgumentException>(() => new InProcessGuest(new() { MemoryBytes = 4096, WriterThreads = 0 })); // no room for the counters
        Assert.Throws<ArgumentException>(() => new InProcessGuest(new() { MemoryBytes = 3 * 4096, WriterThreads = 3 })); // 2 pages to write
    }

    private static double MeasureRate(InProcessGuest guest, int milliseconds)
    {
        long start = guest.PagesWritten;
        var sw = Stopwatch.StartNew();
        Thread.Sleep(milliseconds);
        long end = guest.PagesWritten;
        return (end - start) / sw.Elapsed.TotalSeconds;
    }
}
