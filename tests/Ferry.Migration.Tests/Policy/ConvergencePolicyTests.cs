using Ferry.Migration.Policy;
using Microsoft.Extensions.Time.Testing;

namespace Ferry.Migration.Tests.Policy;

public class ConvergencePolicyTests
{
    private static ConvergenceInput Input(long remaining, double bandwidth, int round = 1, double elapsedMs = 1000,
        TimeoutStrategy strategy = TimeoutStrategy.Cancel, double stateMs = 5, long previous = -1, bool fittedEarlier = false) =>
        new(remaining, bandwidth, TimeSpan.FromMilliseconds(stateMs), TimeSpan.FromMilliseconds(50), round,
            TimeSpan.FromMilliseconds(elapsedMs), MaxRounds: 30, Timeout: TimeSpan.FromSeconds(60), strategy, previous, fittedEarlier);

    [Theory]
    // 4 MiB at 100 MB/s + 5 ms = 46.9 ms: fits the 50 ms limit, but with under half of it to spare.
    [InlineData(8L << 20, ConvergenceAction.ContinueRound)]  // the last round halved the rest: one more round
    [InlineData(5L << 20, ConvergenceAction.SwitchOver)]     // cut by a fifth: the rest has stopped shrinking
    [InlineData(4L << 20, ConvergenceAction.SwitchOver)]     // the guest's working set: as low as it goes
    [InlineData(-1L, ConvergenceAction.SwitchOver)]          // no earlier figure (round 0)
    public void AFitThatLeavesLittleHeadroomGetsAnotherRoundOnlyWhileTheRestStillShrinks(long previous, ConvergenceAction action)
    {
        var d = ConvergencePolicy.Decide(Input(4 << 20, 100e6, previous: previous));
        Assert.Equal(action, d.Action);
        Assert.InRange(d.ExpectedDowntime.TotalMilliseconds, 46.9, 47.0);
        if (action == ConvergenceAction.ContinueRound)
        {
            Assert.Equal(SwitchOverReason.None, d.SwitchOver);
            Assert.Contains("little headroom", d.Reason, StringComparison.Ordinal);
        }
        else
        {
            Assert.Equal(SwitchOverReason.Converged, d.SwitchOver);
        }
    }

    [Theory]
    [InlineData(3L << 20, true)]    // 31.5 ms: fits, still shrinking; the headroom round was spent
    [InlineData(8L << 20, false)]   // 88.9 ms: a burst grew the rest past the limit; chasing it could lose the fit
    public void AfterTheRoundForHeadroomItSwitchesOverWhateverTheRestIs(long remaining, bool fits)
    {
        var d = ConvergencePolicy.Decide(Input(remaining, 100e6, previous: 4L << 20, fittedEarlier: true));
        Assert.Equal(ConvergenceAction.SwitchOver, d.Action);
        Assert.Equal(SwitchOverReason.Converged, d.SwitchOver);
        Assert.Contains(fits ? "fits" : "exceeds", d.Reason, StringComparison.Ordinal);
        // Even at a limit, with strategy cancel: a fit once seen is not given up.
        var atLimit = ConvergencePolicy.Decide(Input(remaining, 100e6, round: 29, elapsedMs: 60_000, previous: 4L << 20, fittedEarlier: true));
        Assert.Equal(ConvergenceAction.SwitchOver, atLimit.Action);
    }

    [Fact]
    public void HeadroomIsJudgedOnThePageTransferNotOnTheStateTime()
    {
        // 30 ms of state leaves the pages 20 ms of the 50 ms limit; 0.75 MiB at 100 MB/s is 7.9 ms, under half of
        // that, so it switches although the whole estimate (37.9 ms) is over half the limit.
        var d = ConvergencePolicy.Decide(Input(3L << 18, 100e6, stateMs: 30, previous: 4L << 20));
        Assert.Equal(ConvergenceAction.SwitchOver, d.Action);
        // 1.5 MiB is 15.7 ms, over half of the pages' 20 ms: one more round.
        Assert.Equal(ConvergenceAction.ContinueRound, ConvergencePolicy.Decide(Input(3L << 19, 100e6, stateMs: 30, previous: 4L << 20)).Action);
    }

    [Fact]
    public void AFitWithinHalfTheLimitSwitchesAtOnceEvenWhileShrinking()
    {
        // 1.5 MiB at 100 MB/s = 15.7 ms, under half of the 45 ms the state leaves, the rest under a fifth of the last round's.
        var d = ConvergencePolicy.Decide(Input(3 << 19, 100e6, previous: 8L << 20));
        Assert.Equal(ConvergenceAction.SwitchOver, d.Action);
        Assert.Equal(SwitchOverReason.Converged, d.SwitchOver);
    }

    [Theory]
    [InlineData(29, 1000.0)]    // the round limit: the last round there is
    [InlineData(3, 60_000.0)]   // the timeout
    public void AtALimitAFitSwitchesOverAsConvergedNotForcedOrAborted(int round, double elapsedMs)
    {
        var d = ConvergencePolicy.Decide(Input(4 << 20, 100e6, round: round, elapsedMs: elapsedMs, previous: 8L << 20));
        Assert.Equal(ConvergenceAction.SwitchOver, d.Action);
        Assert.Equal(SwitchOverReason.Converged, d.SwitchOver);
    }

    [Fact]
    public void SwitchesOverWhenRemainingBytesPlusStateFitTheLimit()
    {
        // 4 MiB at 100 MB/s = 41.9 ms, + 5 ms of state = 46.9 ms <= 50 ms.
        var d = ConvergencePolicy.Decide(Input(4 << 20, 100e6));
        Assert.Equal(ConvergenceAction.SwitchOver, d.Action);
        Assert.Equal(SwitchOverReason.Converged, d.SwitchOver);
        Assert.InRange(d.ExpectedDowntime.TotalMilliseconds, 46.9, 47.0);
    }

    [Fact]
    public void StateTimeIsIncludedSoPagesThatFitAloneDoNotSwitch()
    {
        // 4 MiB at 100 MB/s = 41.9 ms fits 50 ms alone, but + 10 ms of device state it does not.
        var d = ConvergencePolicy.Decide(Input(4 << 20, 100e6, stateMs: 10));
        Assert.Equal(ConvergenceAction.ContinueRound, d.Action);
        Assert.Equal(SwitchOverReason.None, d.SwitchOver);
    }

    [Fact]
    public void ContinuesWhileBandwidthIsUnmeasuredAndBytesRemain()
    {
        var d = ConvergencePolicy.Decide(Input(4096, 0));
        Assert.Equal(ConvergenceAction.ContinueRound, d.Action);
        Assert.Equal(TimeSpan.MaxValue, d.ExpectedDowntime);
    }

    [Fact]
    public void SwitchesOverWithNothingRemainingEvenWithoutBandwidth()
    {
        var d = ConvergencePolicy.Decide(Input(0, 0, round: 0));
        Assert.Equal(ConvergenceAction.SwitchOver, d.Action);
        Assert.Equal(SwitchOverReason.Converged, d.SwitchOver);
        Assert.Equal(TimeSpan.FromMilliseconds(5), d.ExpectedDowntime);
    }

    [Fact]
    public void AbortsAtTheTimeoutWithStrategyCancelAndSaysWhy()
    {
        var d = ConvergencePolicy.Decide(Input(1L << 30, 100e6, round: 4, elapsedMs: 60_000));
        Assert.Equal(ConvergenceAction.Abort, d.Action);
        Assert.Contains("timeout", d.Reason, StringComparison.Ordinal);
        Assert.Contains("1073741824 bytes", d.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public void ForcesSwitchOverAtTheTimeoutWithStrategyForce()
    {
        var d = ConvergencePolicy.Decide(Input(1L << 30, 100e6, round: 4, elapsedMs: 60_001, strategy: TimeoutStrategy.Force));
        Assert.Equal(ConvergenceAction.SwitchOver, d.Action);
        Assert.Equal(SwitchOverReason.ForcedByTimeout, d.SwitchOver);
        Assert.NotNull(d.Reason);
    }

    [Fact]
    public void ForcesSwitchOverAtTheRoundLimitWithStrategyForce()
    {
        // Round 29 is the 30th round: MaxRounds = 30 is reached.
        var d = ConvergencePolicy.Decide(Input(1L << 30, 100e6, round: 29, strategy: TimeoutStrategy.Force));
        Assert.Equal(SwitchOverReason.ForcedByMaxRounds, d.SwitchOver);
        var before = ConvergencePolicy.Decide(Input(1L << 30, 100e6, round: 28, strategy: TimeoutStrategy.Force));
        Assert.Equal(ConvergenceAction.ContinueRound, before.Action);
    }

    [Fact]
    public void AbortsAtTheRoundLimitWithStrategyCancel()
    {
        var d = ConvergencePolicy.Decide(Input(1L << 30, 100e6, round: 29));
        Assert.Equal(ConvergenceAction.Abort, d.Action);
        Assert.Contains("round limit 30", d.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public void ConvergingAtTheLimitIsAConvergedSwitchNotAForcedOne()
    {
        var d = ConvergencePolicy.Decide(Input(4096, 100e6, round: 29, elapsedMs: 90_000, strategy: TimeoutStrategy.Force));
        Assert.Equal(SwitchOverReason.Converged, d.SwitchOver);
    }

    [Fact]
    public void DecisionFollowsTheFakeClockAcrossRounds()
    {
        // Drive the inputs as the engine does: elapsed from a TimeProvider, bandwidth from the meter.
        var clock = new FakeTimeProvider();
        var meter = new BandwidthMeter();
        long start = clock.GetTimestamp();
        var options = new MigrationOptions { Timeout = TimeSpan.FromSeconds(2), TimeoutStrategy = TimeoutStrategy.Cancel };
        var decisions = new List<ConvergenceAction>();
        for (int round = 0; round < 10; round++)
        {
            clock.Advance(TimeSpan.FromMilliseconds(500));
            meter.AddSample(50_000_000, TimeSpan.FromMilliseconds(500)); // 100 MB/s
            var d = ConvergencePolicy.Decide(new ConvergenceInput(64L << 20, meter.BytesPerSecond, TimeSpan.FromMilliseconds(1),
                options.DowntimeLimit, round, clock.GetElapsedTime(start), options.MaxRounds, options.Timeout, options.TimeoutStrategy));
            decisions.Add(d.Action);
            if (d.Action != ConvergenceAction.ContinueRound) break;
        }
        // 64 MiB at 100 MB/s never fits 50 ms; the 2 s timeout is reached at the end of the 4th round (4 x 500 ms).
        Assert.Equal([ConvergenceAction.ContinueRound, ConvergenceAction.ContinueRound, ConvergenceAction.ContinueRound, ConvergenceAction.Abort], decisions);
    }
}

public class BandwidthMeterTests
{
    [Fact]
    public void FirstSampleIsTheRateAndLaterSamplesAreSmoothedByHalf()
    {
        var meter = new BandwidthMeter();
        meter.AddSample(10_000_000, TimeSpan.FromMilliseconds(100)); // 100 MB/s
        Assert.Equal(100e6, meter.BytesPerSecond, 1e-3);
        meter.AddSample(5_000_000, TimeSpan.FromMilliseconds(100)); // 50 MB/s
        Assert.Equal(75e6, meter.BytesPerSecond, 1e-3);
        Assert.Equal(50e6, meter.LastSampleBytesPerSecond, 1e-3);
    }

    [Fact]
    public void ShortSpansAccumulateIntoTheNextSample()
    {
        var meter = new BandwidthMeter();
        meter.AddSample(1000, TimeSpan.FromMilliseconds(1));
        Assert.Equal(0, meter.BytesPerSecond);
        meter.AddSample(9000, TimeSpan.FromMilliseconds(9));
        Assert.Equal(1e6, meter.BytesPerSecond, 1e-3); // 10 000 bytes over 10 ms
    }

    [Fact]
    public void RoundsTooShortForASampleStillShowTheirRateAsPending()
    {
        var meter = new BandwidthMeter();
        Assert.Equal(0, meter.PendingBytesPerSecond);
        meter.AddSample(1000, TimeSpan.FromMilliseconds(1));
        meter.AddSample(1000, TimeSpan.FromMilliseconds(1));
        Assert.Equal(0, meter.BytesPerSecond);
        Assert.Equal(1e6, meter.PendingBytesPerSecond, 1e-3);
        meter.AddSample(8000, TimeSpan.FromMilliseconds(3));
        Assert.Equal(2e6, meter.BytesPerSecond, 1e-3);
        Assert.Equal(0, meter.PendingBytesPerSecond);
    }

    [Fact]
    public void IdleRoundsDoNotDiluteTheRate()
    {
        var meter = new BandwidthMeter();
        meter.AddSample(0, TimeSpan.FromSeconds(5));
        meter.AddSample(1_000_000, TimeSpan.FromMilliseconds(10));
        Assert.Equal(100e6, meter.BytesPerSecond, 1e-3);
    }

    [Fact]
    public void NegativeInputIsRefused()
    {
        var meter = new BandwidthMeter();
        Assert.Throws<ArgumentOutOfRangeException>(() => meter.AddSample(-1, TimeSpan.FromMilliseconds(10)));
        Assert.Throws<ArgumentOutOfRangeException>(() => meter.AddSample(1, TimeSpan.FromMilliseconds(-10)));
    }
}
