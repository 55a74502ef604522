using Ferry.Migration.Postcopy;

namespace Ferry.Migration.Tests.Postcopy;

/// <summary>
/// The push orders compared on the deterministic model (1 GiB, 20k writes/s, this host's push rate and fault cost):
/// the same writes for every order, so the comparisons are exact where the loopback benchmark's vary by half.
/// </summary>
public class PrepagingSimulationTests
{
    private static long Faults(PrepagingStrategy order, SimulatedPattern pattern, double hotStart = 0) =>
        Enumerable.Range(1, 3).Sum(seed => PrepagingSimulation.Run(order, pattern, (ulong)seed, hotStart: hotStart).Faults);

    [Theory]
    [InlineData(0.0)]  // the hot tenth at the start of memory, where a first-to-last sweep begins
    [InlineData(0.45)] // in the middle
    public void OnAHotSetBubblingFaultsLessThanQemusForwardScanAndWithinATenthOfTheHotSetFirst(double hotStart)
    {
        long bubble = Faults(PrepagingStrategy.Bubble, SimulatedPattern.Hotset, hotStart);
        long forward = Faults(PrepagingStrategy.Forward, SimulatedPattern.Hotset, hotStart);
        // The best any order can do here: the hot pages first, which a first-to-last sweep does when they come first.
        long hotFirst = Faults(PrepagingStrategy.Linear, SimulatedPattern.Hotset, hotStart: 0);
        Assert.True(bubble < forward, $"bubble {bubble} faults, forward {forward}");
        Assert.True(bubble <= hotFirst * 1.1, $"bubble {bubble} faults, hot set first {hotFirst}");
    }

    [Fact]
    public void AFirstToLastSweepFaultsOnMostOfAHotSetInTheMiddleOfMemory()
    {
        var linear = PrepagingSimulation.Run(PrepagingStrategy.Linear, SimulatedPattern.Hotset, 1, hotStart: 0.45);
        var bubble = PrepagingSimulation.Run(PrepagingStrategy.Bubble, SimulatedPattern.Hotset, 1, hotStart: 0.45);
        Assert.True(linear.FaultedShare > 0.5, $"linear {linear.FaultedShare:P1}");
        Assert.True(bubble.FaultedShare < 0.2, $"bubble {bubble.FaultedShare:P1}");
    }

    [Fact]
    public void OnASequentialWalkBubblingFaultsOnlyAtTheStart()
    {
        var bubble = PrepagingSimulation.Run(PrepagingStrategy.Bubble, SimulatedPattern.Sequential, 1);
        var linear = PrepagingSimulation.Run(PrepagingStrategy.Linear, SimulatedPattern.Sequential, 1);
        Assert.True(bubble.FaultedShare < 0.01, $"bubble {bubble.FaultedShare:P1} ({bubble.Faults} faults)");
        Assert.True(linear.Faults > 50 * bubble.Faults, $"linear {linear.Faults}, bubble {bubble.Faults}");
    }

    [Fact]
    public void APushFarFasterThanTheWritesLeavesNothingToFaultOn()
    {
        // A check of the model itself: every page pushed before the second write is due.
        var run = PrepagingSimulation.Run(PrepagingStrategy.Linear, SimulatedPattern.Hotset, 1, pushPagesPerSecond: 1e12);
        Assert.Equal(0, run.Faults);
        Assert.True(run.Milliseconds < 0.01, $"{run.Milliseconds} ms");
    }

    [Fact]
    public void TheSameSeedGivesTheSameRun()
    {
        var a = PrepagingSimulation.Run(PrepagingStrategy.Bubble, SimulatedPattern.Hotset, 7);
        var b = PrepagingSimulation.Run(PrepagingStrategy.Bubble, SimulatedPattern.Hotset, 7);
        Assert.Equal(a, b);
    }
}
