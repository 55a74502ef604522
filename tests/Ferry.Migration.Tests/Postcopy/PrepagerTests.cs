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
    public void BubblePushesBothSidesOfAFaultFirstAndWidens()
    {
        var prepager = Make(PrepagingStrategy.Bubble, 100_000);
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
        Assert.Contains(first, p => p < 50_000);
        Assert.Contains(first, p => p > 50_000);
        Assert.All(first, p => Assert.InRange(p, 50_000UL - 1024, 50_000UL + 1024));
        // A second fault next to the area widens the same pivot instead of opening another.
        prepager.OnFault(first.Max() + 10);
        Assert.Equal(1, prepager.PivotsOpened);
        Assert.Equal(1, prepager.FaultsNearPivot);
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
}
