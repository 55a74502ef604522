namespace Ferry.Migration.Policy;

/// <summary>
/// Auto-converge, as QEMU's <c>migration_trigger_throttle</c> / <c>mig_throttle_guest_down</c> (migration/ram.c):
/// when in a round the guest dirtied more than <see cref="TriggerThresholdPercent"/>% of the bytes the link moved in
/// that round, the round counts as "dirty rate high"; on the second such round the guest is slowed down: the first
/// step sets the throttle to <c>initial</c> (20%), each later step adds <c>increment</c> (10%), capped at
/// <c>max</c> (99%).
/// </summary>
/// <remarks>
/// One difference from QEMU, on purpose: QEMU never resets <c>dirty_rate_high_cnt</c> on a calm round, so two high
/// rounds any distance apart trigger a step. We count <b>consecutive</b> high rounds (a calm round resets the count),
/// so a single burst in an otherwise converging guest does not cost it 20% of its CPU. After a step the count restarts
/// from 0, as in QEMU, so the next step needs two more high rounds at the new throttle: the guest gets a round to show
/// the effect before being slowed again. A round after which the rest already fits the downtime limit is calm
/// (<see cref="OnRoundThatFits"/>), whatever the guest dirtied in it.
/// Not thread-safe: called by the migration thread once per round.
/// </remarks>
public sealed class AutoConverge
{
    /// <summary>QEMU's throttle-trigger-threshold default: dirtying more than half of what was sent means we lose ground.</summary>
    public const int TriggerThresholdPercent = 50;

    /// <summary>Consecutive high rounds that trigger one throttle step (QEMU: dirty_rate_high_cnt >= 2).</summary>
    public const int HighRoundsPerStep = 2;

    private readonly int _initial;
    private readonly int _increment;
    private readonly int _max;

    /// <summary>Consecutive rounds so far in which dirtying exceeded the threshold.</summary>
    private int _highRounds;

    public AutoConverge(int initialPercent, int incrementPercent, int maxPercent)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(initialPercent, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(maxPercent, 99);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxPercent, initialPercent);
        ArgumentOutOfRangeException.ThrowIfLessThan(incrementPercent, 1);
        _initial = initialPercent;
        _increment = incrementPercent;
        _max = maxPercent;
    }

    /// <summary>Build from the options' knobs (QEMU cpu-throttle-initial/-increment, max-cpu-throttle).</summary>
    public static AutoConverge FromOptions(MigrationOptions options) =>
        new(options.ThrottleInitial, options.ThrottleIncrement, options.ThrottleMax);

    /// <summary>Current throttle, percent (0 = not throttling).</summary>
    public int ThrottlePercent { get; private set; }

    /// <summary>
    /// Account one finished round and return the throttle to apply from now on (unchanged if no step was due).
    /// </summary>
    /// <param name="bytesDirtied">Bytes the guest dirtied during the round (dirty pages harvested after it × page size).</param>
    /// <param name="bytesTransferred">Bytes the page channels sent during the round.</param>
    public int OnRoundEnd(long bytesDirtied, long bytesTransferred)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytesDirtied);
        ArgumentOutOfRangeException.ThrowIfNegative(bytesTransferred);
        // Compare dirtied * 100 > transferred * 50 in integers; both fit: 2^63 / 100 bytes is ~92 PB.
        bool high = bytesDirtied * 100 > bytesTransferred * TriggerThresholdPercent;
        if (!high)
        {
            _highRounds = 0;
            return ThrottlePercent;
        }
        if (++_highRounds >= HighRoundsPerStep)
        {
            _highRounds = 0;
            ThrottlePercent = ThrottlePercent == 0 ? _initial : Math.Min(_max, ThrottlePercent + _increment);
        }
        return ThrottlePercent;
    }

    /// <summary>
    /// Account a round after which the rest already fits the downtime limit (the policy ran another only for
    /// headroom): the guest is not outrunning the link, so it counts as a calm round, whatever it dirtied.
    /// </summary>
    public void OnRoundThatFits() => _highRounds = 0;
}
