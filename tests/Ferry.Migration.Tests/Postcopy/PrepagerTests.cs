using Ferry.Migration.Memory;
using Ferry.Migration.Postcopy;

namespace Ferry.Migration.Tests.Postcopy;

public class PrepagerTests
{
    private static Prepager Make(PrepagingStrategy strategy, params ulong[] regionPages)
    {
        ulong total = 0;
        foreach (var p in regionPages) total += p;
        var toSend = new DirtyBitmap(total);
        toSend.SetAll();
        return new Prepager(toSend, regionPages, strategy);
    }

    /// <summary>Take until empty; returns the pages in the order handed out.</summary>
    private static List<ulong> Drain(Prepager prepager, Action<int, Prepager>? beforeTake = null)
    {
        var order = new List<ulong>();
        var runs = new DirtyRun[512];
        for (int take = 0; ; take++)
        {
            beforeTake?.Invoke(take, prepager);
            int n = prepager.Take(runs, 256, out int region);
            if (n == 0) break;
            int pages = 0;
            for (int i = 0; i < n; i++)
            {
                Assert.Equal(region, prepager.RegionOf(runs[i].Start));
                Assert.Equal(region, prepager.RegionOf(runs[i].End - 1));
                for (ulong p = runs[i].Start; p < runs[i].End; p++) order.Add(p);
                pages += (int)runs[i].Length;
            }
            Assert.InRange(pages, 1, 256);
        }
        return order;
    }

    [Theory]
    [InlineData(PrepagingStrategy.Bubble)]
    [InlineData(PrepagingStrategy.Forward)]
    [InlineData(PrepagingStrategy.Linear)]
    public void EveryPageIsHandedOutExactlyOnceWhateverTheFaults(PrepagingStrategy strategy)
    {
        var prepager = Make(strategy, 3000, 5000);
        var random = new Random(7);
        var claimed = new List<ulong>();
        var order = Drain(prepager, (take, p) =>
        {
            if (take % 3 != 0) return;
            ulong page = (ulong)random.Next(8000);
            if (p.Claim(page)) claimed.Add(page);
            p.OnFault(page);
        });
        order.AddRange(claimed);
        order.Sort();
        Assert.Equal(Enumerable.Range(0, 8000).Select(i => (ulong)i), order);
        Assert.Equal(0, prepager.Remaining);
    }

    [Fact]
    public void ATakeRacingTheUrgentPathToARegionsLastPagesGoesOnToTheNextRegion()
    {
        // The push sweeps region 0 one page at a time while the urgent path claims the same region's pages from its end
        // down; where they meet, a page the sweep found can be claimed before the take collects it. The take must then
        // look further (region 1), not end the push with pages left: a push that ends early leaves the destination
        // waiting for pages nobody sends.
        var runs = new DirtyRun[512];
        for (int round = 0; round < 3000; round++)
        {
            var prepager = Make(PrepagingStrategy.Linear, 16, 64);
            using var go = new Barrier(2);
            var claimer = new Thread(() =>
            {
                go.SignalAndWait(TestContext.Current.CancellationToken);
                for (ulong page = 15; page < 16; page--) prepager.Claim(page);
            });
            claimer.Start();
            go.SignalAndWait(TestContext.Current.CancellationToken);
            while (prepager.Take(runs, 1, out _) > 0)
            {
            }
            claimer.Join();
            Assert.True(prepager.Remaining == 0, $"round {round}: the push ended with {prepager.Remaining} pages left");
        }
    }

    [Fact]
    public void BubblePushesBothSidesOfAFaultNearARecentOneFirstAndWidens()
    {
        var prepager = Make(PrepagingStrategy.Bubble, 100_000);
        // Two faults in one 2 MiB block: the guest works there.
        Assert.True(prepager.Claim(49_900));
        prepager.OnFault(49_900);
        Assert.True(prepager.Claim(50_000));
        prepager.OnFault(50_000);
        var runs = new DirtyRun[512];
        var first = new List<ulong>();
        for (int i = 0; i < 4; i++)
        {
            int n = prepager.Take(runs, 256, out _);
            for (int k = 0; k < n; k++)
                for (ulong p = runs[k].Start; p < runs[k].End; p++) first.Add(p);
        }
        // The first 1,024 pages handed out surround the fault on both sides, nothing from the start of memory.
        Assert.Equal(1024, first.Count);
        Assert.Contains(first, p => p < 49_900);
        Assert.Contains(first, p => p > 50_000);
        Assert.All(first, p => Assert.InRange(p, 50_000UL - 1024, 50_000UL + 1024));
        // A further fault next to the area widens the same pivot instead of opening another.
        prepager.OnFault(first.Max() + 10);
        Assert.Equal(2, prepager.PivotsOpened);
        Assert.Equal(1, prepager.FaultsNearPivot);
    }

    [Fact]
    public void ALoneFaultGetsOnlyAFewPagesAroundItAndTheSweepGoesOn()
    {
        var prepager = Make(PrepagingStrategy.Bubble, 100_000);
        Assert.True(prepager.Claim(50_000));
        prepager.OnFault(50_000);
        var runs = new DirtyRun[512];
        int n = prepager.Take(runs, 256, out _);
        var taken = new List<ulong>();
        for (int k = 0; k < n; k++)
            for (ulong p = runs[k].Start; p < runs[k].End; p++) taken.Add(p);
        var around = taken.Where(p => p >= 40_000).ToList();
        // Both sides of the fault, a few pages each, then the batch is filled from the start of memory.
        Assert.Contains(around, p => p < 50_000);
        Assert.Contains(around, p => p > 50_000);
        Assert.InRange(around.Count, 2, 4 * Prepager.LoneStep);
        Assert.All(around, p => Assert.InRange(p, 50_000UL - (4 * Prepager.LoneStep), 50_000UL + (4 * Prepager.LoneStep)));
        Assert.Equal(Enumerable.Range(0, 256 - around.Count).Select(i => (ulong)i), taken.Where(p => p < 40_000));
    }

    [Fact]
    public void AFaultFarFromTheRecentOnesIsLoneEvenAfterManyFaults()
    {
        var prepager = Make(PrepagingStrategy.Bubble, 1_000_000);
        // A cluster of faults in one area, then one far away: its pivot is small.
        for (ulong p = 0; p < 8; p++)
        {
            Assert.True(prepager.Claim(100_000 + (p * 100)));
            prepager.OnFault(100_000 + (p * 100));
        }
        Assert.True(prepager.Claim(700_000));
        prepager.OnFault(700_000);
        var runs = new DirtyRun[512];
        int n = prepager.Take(runs, 256, out _);
        ulong nearLone = 0;
        for (int k = 0; k < n; k++)
            for (ulong p = runs[k].Start; p < runs[k].End; p++) if (p >= 600_000) nearLone++;
        Assert.InRange(nearLone, 2UL, 4UL * Prepager.LoneStep);
    }

    [Fact]
    public void ForwardJumpsToTheFaultAndGoesOnForwardOnly()
    {
        var prepager = Make(PrepagingStrategy.Forward, 10_000);
        prepager.OnFault(6_000);
        var runs = new DirtyRun[512];
        int n = prepager.Take(runs, 256, out _);
        Assert.Equal(6_001UL, runs[0].Start);
        Assert.True(runs[n - 1].End <= 6_001 + 256);
    }

    [Fact]
    public void LinearIgnoresFaults()
    {
        var prepager = Make(PrepagingStrategy.Linear, 10_000);
        prepager.OnFault(6_000);
        var order = Drain(prepager);
        Assert.Equal(Enumerable.Range(0, 10_000).Select(i => (ulong)i), order);
    }

    private static DirtyBitmap Hot(ulong total, params (ulong From, ulong To)[] ranges)
    {
        var hot = new DirtyBitmap(total);
        foreach (var (from, to) in ranges) hot.SetRange(from, to);
        return hot;
    }

    [Fact]
    public void BubblingSendsTheHotPagesFirstInAddressOrderAcrossRegions()
    {
        var toSend = new DirtyBitmap(8000);
        toSend.SetAll();
        toSend.Clear(5001); // sent already: hot, but not to send again
        var prepager = new Prepager(toSend, [3000UL, 5000UL], PrepagingStrategy.Bubble, Hot(8000, (100, 110), (2990, 3010), (5000, 5003)));
        var order = Drain(prepager);
        ulong[] expected = [.. Enumerable.Range(100, 10).Select(i => (ulong)i), .. Enumerable.Range(2990, 20).Select(i => (ulong)i), 5000, 5002];
        Assert.Equal(expected, order.Take(expected.Length));
        Assert.Equal(7999, order.Count);
        Assert.Equal(order.Count, order.Distinct().Count());
    }

    [Fact]
    public void SmallHolesBetweenHotRunsGoWithThemAndWiderGapsDoNot()
    {
        Assert.Equal(4UL, Prepager.HoleFill); // the gaps below are 2, 4 and 5 pages
        var toSend = new DirtyBitmap(4000);
        toSend.SetAll();
        toSend.Clear(110); // in a hole, but sent already
        var prepager = new Prepager(toSend, [4000UL], PrepagingStrategy.Bubble, Hot(4000, (100, 102), (104, 108), (112, 115), (120, 122)));
        var runs = new DirtyRun[512];
        int n = prepager.Take(runs, 256, out _);
        Assert.True(n >= 3);
        Assert.Equal(new DirtyRun(100, 10), runs[0]); // 100..109: both holes up to 111 filled, 110 skipped
        Assert.Equal(new DirtyRun(111, 4), runs[1]);
        Assert.Equal(new DirtyRun(120, 2), runs[2]); // 115..119, five pages, are not filled: the sweep's
        Assert.Equal(new DirtyRun(0, 100), runs[3]);
    }

    [Fact]
    public void TheSystemPagesHolesAreNotFilled()
    {
        static Prepager WithSystemPages()
        {
            var toSend = new DirtyBitmap(4000);
            toSend.SetAll();
            return new Prepager(toSend, [4000UL], PrepagingStrategy.Bubble, hot: null, system: Hot(4000, (10, 12), (13, 15)));
        }
        var runs = new DirtyRun[512];
        Assert.Equal(2, WithSystemPages().TakeSystem(runs, 64, out _));
        Assert.Equal(new DirtyRun(10, 2), runs[0]);
        Assert.Equal(new DirtyRun(13, 2), runs[1]);

        // Nor in a bulk take, where the system pages come first too.
        Assert.True(WithSystemPages().Take(runs, 256, out _) >= 2);
        Assert.Equal(new DirtyRun(10, 2), runs[0]);
        Assert.Equal(new DirtyRun(13, 2), runs[1]);
    }

    [Theory]
    [InlineData(PrepagingStrategy.Forward)]
    [InlineData(PrepagingStrategy.Linear)]
    public void OnlyBubblingUsesTheHotPages(PrepagingStrategy strategy)
    {
        var toSend = new DirtyBitmap(4000);
        toSend.SetAll();
        var prepager = new Prepager(toSend, [4000UL], strategy, Hot(4000, (3000, 3100)));
        Assert.Equal(Enumerable.Range(0, 4000).Select(i => (ulong)i), Drain(prepager));
    }

    [Fact]
    public void AFaultGoesBeforeTheHotPagesOnceQueued()
    {
        var toSend = new DirtyBitmap(100_000);
        toSend.SetAll();
        var prepager = new Prepager(toSend, [100_000UL], PrepagingStrategy.Bubble, Hot(100_000, (0, 2000)));
        prepager.OnFault(50_000);
        var runs = new DirtyRun[512];
        int n = prepager.Take(runs, 256, out _);
        Assert.True(n > 0);
        Assert.InRange(runs[0].Start, 50_000UL - Prepager.FirstStep, 50_000UL + 1);
        Assert.Equal(1, prepager.PivotsOpened);
    }

    [Fact]
    public void TheSystemPagesGoBeforeAFaultsPivotAndTheHotPagesAndOnlyOnce()
    {
        var toSend = new DirtyBitmap(8000);
        toSend.SetAll();
        toSend.Clear(7001); // sent already: a system page, but not to send again
        var prepager = new Prepager(toSend, [3000UL, 5000UL], PrepagingStrategy.Bubble,
            hot: Hot(8000, (100, 110)), system: Hot(8000, (2990, 3005), (7000, 7003)));
        prepager.OnFault(5000);
        var order = Drain(prepager);
        // Region by region (a batch is of one region), in address order, before the pivot opened at 5000 and the hot
        // pages; then the pivot, then the hot pages.
        ulong[] system = [.. Enumerable.Range(2990, 15).Select(i => (ulong)i), 7000, 7002];
        Assert.Equal(system, order.Take(system.Length));
        Assert.InRange(order[system.Length], 5000UL - Prepager.FirstStep, 5000UL + Prepager.FirstStep);
        Assert.Equal(7999, order.Count);
        Assert.Equal(order.Count, order.Distinct().Count());
    }

    [Fact]
    public void TakeSystemHandsOutOnlyTheSystemPagesAndTheRestIsLeftToTake()
    {
        var toSend = new DirtyBitmap(4000);
        toSend.SetAll();
        var prepager = new Prepager(toSend, [4000UL], PrepagingStrategy.Bubble, hot: null, system: Hot(4000, (10, 20), (3000, 3100)));
        var runs = new DirtyRun[512];
        var taken = new List<ulong>();
        while (prepager.TakeSystem(runs, 64, out int region) is var n && n > 0)
        {
            Assert.Equal(0, region);
            int pages = 0;
            for (int i = 0; i < n; i++)
            {
                pages += (int)runs[i].Length;
                for (ulong p = runs[i].Start; p < runs[i].End; p++) taken.Add(p);
            }
            Assert.InRange(pages, 1, 64);
        }
        Assert.Equal([.. Enumerable.Range(10, 10).Select(i => (ulong)i), .. Enumerable.Range(3000, 100).Select(i => (ulong)i)], taken);
        Assert.Equal(4000 - 110, prepager.Remaining);
        var rest = Drain(prepager);
        Assert.Equal(4000 - 110, rest.Count);
        Assert.Empty(rest.Intersect(taken));
    }

    [Fact]
    public void TheSteadyPagesGoRightAfterTheSystemPagesAndOnlyWhenAskedFor()
    {
        static Prepager Make()
        {
            var toSend = new DirtyBitmap(8000);
            toSend.SetAll();
            // The steady pages lie below the system ones, and one is a system page too: the kernel's come first
            // whatever their address, and a page goes once.
            return new Prepager(toSend, [8000UL], PrepagingStrategy.Bubble, hot: Hot(8000, (6000, 6010)),
                system: Hot(8000, (5000, 5020)), steady: Hot(8000, (100, 150), (5010, 5011)));
        }
        ulong[] system = [.. Enumerable.Range(5000, 20).Select(i => (ulong)i)];
        ulong[] steady = [.. Enumerable.Range(100, 50).Select(i => (ulong)i)];

        // The switchover's push after the resume: the system pages only.
        var prepager = Make();
        Assert.Equal(system, TakeAllSystem(prepager, steady: false));
        Assert.Empty(TakeAllSystem(prepager, steady: false));
        // The push threads then begin with the steady pages, before the hot ones.
        var rest = Drain(prepager);
        Assert.Equal(steady, rest.Take(steady.Length));
        Assert.Equal(Enumerable.Range(6000, 10).Select(i => (ulong)i), rest.Skip(steady.Length).Take(10));

        // Before Ready: the system pages, then the steady ones.
        Assert.Equal([.. system, .. steady], TakeAllSystem(Make(), steady: true));
        // A bulk take alone: the same order.
        Assert.Equal([.. system, .. steady], Drain(Make()).Take(system.Length + steady.Length));
    }

    private static List<ulong> TakeAllSystem(Prepager prepager, bool steady)
    {
        var runs = new DirtyRun[512];
        var taken = new List<ulong>();
        while (prepager.TakeSystem(runs, 64, out _, steady) is var n && n > 0)
        {
            for (int i = 0; i < n; i++)
            {
                for (ulong p = runs[i].Start; p < runs[i].End; p++) taken.Add(p);
            }
        }
        return taken;
    }

    [Theory]
    [InlineData(PrepagingStrategy.Forward)]
    [InlineData(PrepagingStrategy.Linear)]
    public void OnlyBubblingHasSystemPages(PrepagingStrategy strategy)
    {
        var toSend = new DirtyBitmap(4000);
        toSend.SetAll();
        var prepager = new Prepager(toSend, [4000UL], strategy, hot: null, system: Hot(4000, (3000, 3100)));
        Assert.Equal(0, prepager.TakeSystem(new DirtyRun[512], 64, out _));
        Assert.Equal(Enumerable.Range(0, 4000).Select(i => (ulong)i), Drain(prepager));
    }

    [Fact]
    public async Task ClaimsRacingTakesHandEveryPageOutAndCountThemOnce()
    {
        // The urgent path claims without the lock while senders take: no page is lost, Remaining reaches exactly 0,
        // and a page may go both ways (a duplicate the destination drops) but is counted once.
        const ulong Total = 200_000;
        var toSend = new DirtyBitmap(Total);
        toSend.SetAll();
        var prepager = new Prepager(toSend, [Total], PrepagingStrategy.Bubble, Hot(Total, (1000, 9000)));
        var seen = new int[Total];
        using var stop = new CancellationTokenSource();
        var claimer = Task.Run(() =>
        {
            var random = new Random(3);
            while (!stop.IsCancellationRequested)
            {
                ulong page = (ulong)random.NextInt64((long)Total);
                if (prepager.Claim(page)) Interlocked.Increment(ref seen[page]);
                prepager.OnFault(page);
            }
        }, TestContext.Current.CancellationToken);
        var takers = Enumerable.Range(0, 2).Select(_ => Task.Run(() =>
        {
            var runs = new DirtyRun[512];
            while (prepager.Take(runs, 256, out _) is var n && n > 0)
            {
                for (int i = 0; i < n; i++)
                    for (ulong p = runs[i].Start; p < runs[i].End; p++) Interlocked.Increment(ref seen[p]);
            }
        }, TestContext.Current.CancellationToken)).ToArray();
        await Task.WhenAll(takers);
        await stop.CancelAsync();
        await claimer;
        Assert.Equal(0, prepager.Remaining);
        Assert.DoesNotContain(0, seen);
    }
}
