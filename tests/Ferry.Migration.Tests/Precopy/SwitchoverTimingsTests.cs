using Ferry.Migration.InProcess;
using Ferry.Migration.Precopy;
using Ferry.Migration.Transport;
using static Ferry.Migration.Tests.Precopy.MigrationHarness;

namespace Ferry.Migration.Tests.Precopy;

[Collection(MigrationCollection.Name)]
public class SwitchoverTimingsTests
{
    private static (MigrationOutcome Outcome, OutgoingMigration Source) Run(InProcessGuest guest, TimeSpan? stateTime = null)
    {
        using var transport = new InMemoryTransport();
        OutgoingMigration? source = null;
        var outcome = Migrate(guest, transport.Connector, transport.Listener, Options(), duringRun: s => source = s, stateTimeEstimate: stateTime);
        Assert.True(outcome.Stats.Status == MigrationStatus.Completed, $"{outcome.Stats.Status}: {outcome.Stats.Error}");
        return (outcome, source!);
    }

    [Fact]
    public void TheSwitchoverTimingsAddUpToTheDowntimeBreakdown()
    {
        using var guest = NewGuest(16, pagesPerSecond: 2000, pattern: DirtyPattern.Hotset);
        var (outcome, source) = Run(guest);
        using var _ = outcome.Target;
        var t = source.Switchover;
        Assert.NotNull(t);
        var b = outcome.Stats.DowntimeBreakdownMs;
        Assert.Equal(b.Pause, t.Pause, 6);
        // Pages the destination still drained after Complete are final-page time, not device-state time.
        Assert.Equal(b.FinalPages, t.FinalHarvest + t.FinalPagesSend + t.DestDrain, 6);
        Assert.Equal(b.DeviceState, t.Save + t.SendState + t.ReadyWait - t.DestDrain - t.DestDigest, 3);
        Assert.Equal(b.Resume, t.CommitToResumed, 6);
        Assert.True(t.DestDigest > 0, "verify was on: the destination digest time must be reported");
        Assert.True(t.DestLoad > 0 && t.DestLoad <= t.ReadyWait, $"load {t.DestLoad} ms within the Ready wait {t.ReadyWait} ms");
        Assert.Equal(guest.SaveState().Sum(s => (long)s.Data.Length), t.StateBytes);
        Assert.Equal(t.StateTime, b.DeviceState + b.Resume, 3);
    }

    [Fact]
    public void WithoutAnEstimateTheStateTimeComesFromTheMeasuredHandshakeRoundTripPlusTheGuestsShare()
    {
        using var guest = NewGuest(4, fill: MemoryFill.Zero);
        var (outcome, source) = Run(guest);
        using var _ = outcome.Target;
        Assert.True(source.EffectiveStateTimeEstimate > OutgoingMigration.DefaultGuestSwitchoverCost,
            $"{source.EffectiveStateTimeEstimate.TotalMilliseconds} ms must add a measured, non-zero round trip to {OutgoingMigration.DefaultGuestSwitchoverCost.TotalMilliseconds} ms");
        Assert.True(source.EffectiveStateTimeEstimate < outcome.Stats.TotalMs * TimeSpan.FromMilliseconds(1) + OutgoingMigration.DefaultGuestSwitchoverCost);
    }

    [Fact]
    public void AGivenStateTimeEstimateIsUsedAsIs()
    {
        using var guest = NewGuest(4, fill: MemoryFill.Zero);
        var (outcome, source) = Run(guest, TimeSpan.FromMilliseconds(17));
        using var _ = outcome.Target;
        Assert.Equal(TimeSpan.FromMilliseconds(17), source.EffectiveStateTimeEstimate);
    }
}
