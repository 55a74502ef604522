using System.Diagnostics;
using Ferry.Migration.Postcopy;

namespace Ferry.Migration.Tests.Postcopy;

public class FaultLatencyTests
{
    private static long Ticks(int microseconds) => microseconds * Stopwatch.Frequency / 1_000_000;

    [Fact]
    public void PercentilesOfShuffledSamplesAreTheNearestRanks()
    {
        // 1..200 µs in a scrambled order (enough to take the sort's partitioning path, not only insertion sort).
        var samples = Enumerable.Range(0, 200).Select(i => Ticks(1 + (i * 77 % 200))).ToArray();
        var (p50, p99, max) = PostcopyIncoming.Percentiles(samples);
        Assert.Equal(100u, p50);
        Assert.Equal(198u, p99);
        Assert.Equal(200u, max);
    }

    [Fact]
    public void PercentilesOfNoSamplesAreZeroAndOfOneAreThatSample()
    {
        Assert.Equal((0u, 0u, 0u), PostcopyIncoming.Percentiles([]));
        Assert.Equal((7u, 7u, 7u), PostcopyIncoming.Percentiles([Ticks(7)]));
    }
}
