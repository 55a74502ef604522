namespace Ferry.Migration.Policy;

/// <summary>What the source does after a pre-copy round.</summary>
public enum ConvergenceAction
{
    /// <summary>Run another round: the rest does not fit the downtime limit yet and no limit was hit.</summary>
    ContinueRound = 1,

    /// <summary>Pause the guest and stop-and-copy (see <see cref="SwitchOverReason"/>).</summary>
    SwitchOver = 2,

    /// <summary>Give up: the source keeps running, the migration fails with <see cref="ConvergenceDecision.Reason"/>.</summary>
    Abort = 3,
}

/// <summary>Why the policy chose <see cref="ConvergenceAction.SwitchOver"/>.</summary>
public enum SwitchOverReason
{
    /// <summary>Not a switch-over.</summary>
    None = 0,

    /// <summary>The estimated downtime fits the limit.</summary>
    Converged = 1,

    /// <summary>The pre-copy timeout elapsed and the strategy is <see cref="TimeoutStrategy.Force"/>.</summary>
    ForcedByTimeout = 2,

    /// <summary>The round limit was reached and the strategy is <see cref="TimeoutStrategy.Force"/>.</summary>
    ForcedByMaxRounds = 3,
}

/// <summary>
/// Everything the convergence decision depends on, measured by the engine after a round (STYLE.md 6: the decision is
/// a pure function of this, with time already turned into durations by the caller's <see cref="TimeProvider"/>).
/// </summary>
/// <param name="RemainingBytes">Bytes still dirty (to be sent in stop-and-copy if we switched now).</param>
/// <param name="BandwidthBytesPerSecond">Smoothed page-channel throughput measured so far; 0 = not measured yet.</param>
/// <param name="StateSaveTime">Measured (or estimated) time to save, send and load the device state.</param>
/// <param name="DowntimeLimit">Largest acceptable downtime.</param>
/// <param name="Round">The round just finished (0 = the first full pass).</param>
/// <param name="Elapsed">Time since the pre-copy phase started.</param>
/// <param name="MaxRounds">Most rounds before <paramref name="Strategy"/> applies.</param>
/// <param name="Timeout">Longest pre-copy phase before <paramref name="Strategy"/> applies.</param>
/// <param name="Strategy">What to do at a limit without convergence.</param>
/// <param name="PreviousRemainingBytes">Bytes that were dirty after the round before this one; -1 = none (round 0).</param>
/// <param name="FittedEarlier">An earlier round's rest already fitted the limit and the policy ran one more round for
/// headroom (<see cref="ConvergencePolicy.HeadroomShare"/>): this decision switches over, whatever the rest is now.</param>
public readonly record struct ConvergenceInput(
    long RemainingBytes,
    double BandwidthBytesPerSecond,
    TimeSpan StateSaveTime,
    TimeSpan DowntimeLimit,
    int Round,
    TimeSpan Elapsed,
    int MaxRounds,
    TimeSpan Timeout,
    TimeoutStrategy Strategy,
    long PreviousRemainingBytes = -1,
    bool FittedEarlier = false);

/// <summary>The policy's answer, with the estimate it was based on (for logs and statistics).</summary>
/// <param name="Action">What to do.</param>
/// <param name="SwitchOver">Why, when <paramref name="Action"/> is <see cref="ConvergenceAction.SwitchOver"/>.</param>
/// <param name="ExpectedDowntime">remaining / bandwidth + state time; <see cref="TimeSpan.MaxValue"/> if bandwidth is unknown.</param>
/// <param name="Reason">A human sentence with the figures (always set for <see cref="ConvergenceAction.Abort"/>).</param>
public readonly record struct ConvergenceDecision(
    ConvergenceAction Action,
    SwitchOverReason SwitchOver,
    TimeSpan ExpectedDowntime,
    string? Reason);

/// <summary>
/// Decides after each pre-copy round whether to go on, switch over, or give up. Like Cloud Hypervisor's
/// <c>is_precopy_converged</c> and QEMU's <c>migration_iteration_run</c>: switch when the pages still dirty can be
/// sent within the downtime limit at the measured bandwidth, with the device-state time included in the estimate
/// (DESIGN.md: "with the device-state time included"), because the guest is paused for both.
/// <para>Unlike them, a rest that fits but leaves the page transfer more than <see cref="HeadroomShare"/> of what the
/// limit allows it, while the last round still cut the rest by <see cref="ConvergingShrink"/> or more, gets one more
/// round, once per migration: the estimate is a forecast (measured here within about ±30% of the downtime it got), so
/// switching at 48 ms of a 50 ms limit misses it about as often as not, while the next round, shorter than the last,
/// brings the rest down. The decision after that round switches over whatever the rest is then, so a fit once seen
/// is never lost to a burst, an oscillating rest or a limit. A rest that has stopped shrinking (the working set), a
/// round limit one round away or an elapsed timeout switch at once, as before.</para>
/// </summary>
public static class ConvergencePolicy
{
    /// <summary>A page transfer estimated within this share of what the limit leaves it (limit less state time)
    /// switches over at once.</summary>
    public const double HeadroomShare = 0.5;

    /// <summary>A round that cut the remaining bytes by at least this share of the previous round's is still converging.</summary>
    public const double ConvergingShrink = 0.25;

    /// <summary>Decide from <paramref name="input"/> alone (no clock, no state).</summary>
    public static ConvergenceDecision Decide(in ConvergenceInput input)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(input.RemainingBytes);
        ArgumentOutOfRangeException.ThrowIfNegative(input.Round);

        var expected = ExpectedDowntime(input.RemainingBytes, input.BandwidthBytesPerSecond, input.StateSaveTime);

        // Timeout is checked before the round limit: when both are hit, the elapsed time is the harder limit a user set.
        bool timedOut = input.Elapsed >= input.Timeout;
        bool roundsOut = input.Round + 1 >= input.MaxRounds;

        // The round bought for headroom is over: switch now, even if a burst grew the rest past the limit (waiting
        // longer could only lose the fit that was seen, to more bursts or to a limit).
        if (input.FittedEarlier)
        {
            return new(ConvergenceAction.SwitchOver, SwitchOverReason.Converged, expected,
                $"converged a round ago; after one more round for headroom, {Describe(input, expected)} " +
                (expected <= input.DowntimeLimit ? "fits" : "exceeds") + $" the {Ms(input.DowntimeLimit)} limit");
        }

        // Nothing left to send: the downtime is the state alone, and no further round can make it smaller. This also
        // covers an idle guest before bandwidth is known (a 0-byte round measures no bandwidth).
        if (input.RemainingBytes == 0 || expected <= input.DowntimeLimit)
        {
            // Headroom is judged on the page transfer alone: the state time is the same whatever the rest.
            var pageTime = expected - input.StateSaveTime;
            var pageBudget = input.DowntimeLimit - input.StateSaveTime;
            bool stillShrinking = input.PreviousRemainingBytes > 0
                && input.RemainingBytes <= input.PreviousRemainingBytes * (1 - ConvergingShrink);
            if (input.RemainingBytes > 0 && stillShrinking && !timedOut && !roundsOut && pageTime > pageBudget * HeadroomShare)
            {
                return new(ConvergenceAction.ContinueRound, SwitchOverReason.None, expected,
                    $"{Describe(input, expected)} fits the {Ms(input.DowntimeLimit)} limit with little headroom, and the last " +
                    $"round cut the rest from {input.PreviousRemainingBytes} bytes: one more round, then switch over");
            }
            return new(ConvergenceAction.SwitchOver, SwitchOverReason.Converged, expected,
                $"converged: {Describe(input, expected)} fits the {Ms(input.DowntimeLimit)} limit");
        }

        if (!timedOut && !roundsOut)
            return new(ConvergenceAction.ContinueRound, SwitchOverReason.None, expected, null);

        string limit = timedOut
            ? $"pre-copy timeout {Ms(input.Timeout)} elapsed after {input.Round + 1} rounds"
            : $"round limit {input.MaxRounds} reached after {Ms(input.Elapsed)}";
        string why = $"{limit} without converging: {Describe(input, expected)} exceeds the {Ms(input.DowntimeLimit)} limit";
        return input.Strategy == TimeoutStrategy.Force
            ? new(ConvergenceAction.SwitchOver, timedOut ? SwitchOverReason.ForcedByTimeout : SwitchOverReason.ForcedByMaxRounds, expected, why)
            : new(ConvergenceAction.Abort, SwitchOverReason.None, expected, why);
    }

    /// <summary>
    /// remaining / bandwidth + state time. An unmeasured (0) bandwidth with bytes remaining gives
    /// <see cref="TimeSpan.MaxValue"/>: never switch on a guess.
    /// </summary>
    public static TimeSpan ExpectedDowntime(long remainingBytes, double bandwidthBytesPerSecond, TimeSpan stateSaveTime)
    {
        if (remainingBytes == 0) return stateSaveTime;
        if (bandwidthBytesPerSecond <= 0 || double.IsNaN(bandwidthBytesPerSecond)) return TimeSpan.MaxValue;
        double seconds = remainingBytes / bandwidthBytesPerSecond + stateSaveTime.TotalSeconds;
        // TimeSpan overflows above ~29 000 years; anything that large is simply "never".
        return seconds >= TimeSpan.MaxValue.TotalSeconds / 2 ? TimeSpan.MaxValue : TimeSpan.FromSeconds(seconds);
    }

    private static string Describe(in ConvergenceInput input, TimeSpan expected) =>
        expected == TimeSpan.MaxValue
            ? $"{input.RemainingBytes} bytes remaining at an unmeasured bandwidth"
            : $"{input.RemainingBytes} bytes remaining at {input.BandwidthBytesPerSecond / 1e6:F1} MB/s plus {Ms(input.StateSaveTime)} of state = {Ms(expected)}";

    private static string Ms(TimeSpan t) => $"{t.TotalMilliseconds:F1} ms";
}
