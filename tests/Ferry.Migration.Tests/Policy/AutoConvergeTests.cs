using Ferry.Migration.Policy;

namespace Ferry.Migration.Tests.Policy;

public class AutoConvergeTests
{
    private static AutoConverge Qemu() => AutoConverge.FromOptions(new MigrationOptions());

    [Fact]
    public void OneHighRoundDoesNotThrottleButTwoConsecutiveDo()
    {
        var ac = Qemu();
        Assert.Equal(0, ac.OnRoundEnd(bytesDirtied: 60, bytesTransferred: 100));
        Assert.Equal(20, ac.OnRoundEnd(60, 100));
    }

    [Fact]
    public void DirtyingExactlyHalfIsNotHigh()
    {
        var ac = Qemu();
        ac.OnRoundEnd(50, 100);
        Assert.Equal(0, ac.OnRoundEnd(50, 100));
    }

    [Fact]
    public void ACalmRoundResetsTheCount()
    {
        var ac = Qemu();
        ac.OnRoundEnd(90, 100);
        ac.OnRoundEnd(10, 100);
        Assert.Equal(0, ac.OnRoundEnd(90, 100));
        Assert.Equal(20, ac.OnRoundEnd(90, 100));
    }

    [Fact]
    public void ARoundWhoseRestFitsCountsAsCalm()
    {
        // High, then a round after which the rest fits the limit (the policy went on for headroom), then high: the two
        // high rounds are not consecutive, so no step.
        var ac = Qemu();
        ac.OnRoundEnd(90, 100);
        ac.OnRoundThatFits();
        Assert.Equal(0, ac.OnRoundEnd(90, 100));
        Assert.Equal(20, ac.OnRoundEnd(90, 100));
    }

    [Fact]
    public void StepsByTheIncrementEveryTwoHighRoundsUpToTheCap()
    {
        var ac = Qemu();
        var seen = new List<int>();
        for (int i = 0; i < 40; i++) seen.Add(ac.OnRoundEnd(1000, 100));
        // Steps land on every second round: 20, 30, ... 90, then 99 (cap), and stay there.
        Assert.Equal([0, 20, 20, 30, 30, 40], seen.Take(6));
        Assert.Equal(90, seen[15]);
        Assert.Equal(99, seen[17]);
        Assert.Equal(99, seen[^1]);
        Assert.Equal(99, ac.ThrottlePercent);
    }

    [Fact]
    public void KnobsFromOptionsAreUsed()
    {
        var ac = AutoConverge.FromOptions(new MigrationOptions { ThrottleInitial = 5, ThrottleIncrement = 7, ThrottleMax = 15 });
        int[] steps = [.. Enumerable.Range(0, 8).Select(_ => ac.OnRoundEnd(1, 0))];
        Assert.Equal([0, 5, 5, 12, 12, 15, 15, 15], steps);
    }

    [Fact]
    public void InvalidKnobsAreRejected()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new AutoConverge(20, 10, 100));
        Assert.Throws<ArgumentOutOfRangeException>(() => new AutoConverge(0, 10, 99));
        Assert.Throws<ArgumentOutOfRangeException>(() => new AutoConverge(50, 10, 40));
    }
}
