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
        // The identities hold exactly up to the destination's figures being whole microseconds on the wire.
        Near(b.Pause, t.Pause);
        // Final pages count until they landed at the destination, and not before our own sends returned.
        Near(b.FinalPages, t.FinalHarvest + t.FinalPagesLanded);
        Assert.True(t.FinalPagesLanded >= t.FinalPagesSend, $"landed {t.FinalPagesLanded} ms before the sends returned ({t.FinalPagesSend} ms)");
        Near(b.DeviceState, t.FinalPagesSend + t.Save + t.SendState + t.ReadyWait + t.ReadyToCommit - t.FinalPagesLanded - t.DestDigest);
        Near(b.Resume, t.CommitToResumed);
        Assert.True(t.DestDigest > 0, "verify was on: the destination digest time must be reported");
        Assert.True(t.DestLoad > 0 && t.DestLoad <= t.ReadyWait, $"load {t.DestLoad} ms within the Ready wait {t.ReadyWait} ms");
        Assert.Equal(guest.SaveState().Sum(s => (long)s.Data.Length), t.StateBytes);
        Near(t.StateTime, b.DeviceState + b.Resume);
    }

    private static void Near(double expected, double actual) => Assert.InRange(actual, expected - 0.01, expected + 0.01);

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
    public void TheRoundTripComesFromEchoedKeepalivesNotFromASlowHandshake()
    {
        // The source's first control read (Welcome) is held back 400 ms, so the handshake alone would put the round
        // trip at >= 400 ms; the echo of the Keepalive sent after setup must bring the estimate far below that.
        using var guest = NewGuest(4, fill: MemoryFill.Zero);
        using var transport = new InMemoryTransport();
        OutgoingMigration? source = null;
        var outcome = Migrate(guest, new SlowFirstReadConnector(transport.Connector, TimeSpan.FromMilliseconds(400)), transport.Listener,
            Options(), duringRun: s => source = s);
        using var _ = outcome.Target;
        Assert.True(outcome.Stats.Status == MigrationStatus.Completed, $"{outcome.Stats.Status}: {outcome.Stats.Error}");
        Assert.True(source!.EffectiveStateTimeEstimate < OutgoingMigration.DefaultGuestSwitchoverCost + TimeSpan.FromMilliseconds(400),
            $"estimate {source.EffectiveStateTimeEstimate.TotalMilliseconds} ms still carries the 400 ms handshake");
    }

    private sealed class SlowFirstReadConnector(IMigrationConnector inner, TimeSpan delay) : IMigrationConnector
    {
        public MigrationConnection Connect(int pageChannels, CancellationToken cancellationToken)
        {
            var c = inner.Connect(pageChannels, cancellationToken);
            return new MigrationConnection(new SlowFirstRead(c.Control, delay), c.Pages);
        }
    }

    private sealed class SlowFirstRead(IMigrationChannel inner, TimeSpan delay) : IMigrationChannel
    {
        private int _reads;
        public string Name => inner.Name;
        public void Send(ReadOnlySpan<byte> data) => inner.Send(data);
        public void SendGather(ReadOnlySpan<IoSegment> segments) => inner.SendGather(segments);

        public bool ReceiveExactly(Span<byte> buffer)
        {
            if (Interlocked.Increment(ref _reads) == 1) Thread.Sleep(delay);
            return inner.ReceiveExactly(buffer);
        }

        public void Abort() => inner.Abort();
        public void Dispose() => inner.Dispose();
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
