namespace Ferry.Migration.Policy;

/// <summary>
/// Smoothed page-channel throughput for the convergence policy. Each sample is one round's bytes over that round's
/// own duration (not the time between calls: the dirty-log harvest and the decision between rounds are not link time);
/// the estimate is an exponentially weighted mean so one slow round (a GC pause, a burst of competing traffic) does
/// not make the policy give up on a link that is usually fast, while a link that really slowed down is followed
/// within two or three rounds.
/// </summary>
/// <remarks>
/// Weight 0.5 for the newest round: with rounds of ~50..500 ms that tracks a halved link within 3 rounds
/// (0.5^3 = 12.5% of the old figure left), which is what QEMU's per-iteration bandwidth (no smoothing) gets in 1
/// round but without its swings. Rounds shorter than <see cref="MinSample"/> are folded into the next: a 40 KiB round
/// over 50 µs says nothing about the link. Not thread-safe (migration thread only).
/// </remarks>
public sealed class BandwidthMeter
{
    /// <summary>Weight of the newest sample in the mean.</summary>
    public const double NewSampleWeight = 0.5;

    /// <summary>Shortest span that counts as a sample (shorter ones are accumulated into the next).</summary>
    public static readonly TimeSpan MinSample = TimeSpan.FromMilliseconds(5);

    // Bytes and link time accumulated into the pending sample.
    private long _pendingBytes;
    private TimeSpan _pendingTime;

    /// <summary>Smoothed bytes per second; 0 until the first sample.</summary>
    public double BytesPerSecond { get; private set; }

    /// <summary>Bytes per second of the latest complete sample; 0 until the first.</summary>
    public double LastSampleBytesPerSecond { get; private set; }

    /// <summary>
    /// Bytes per second of the rounds accumulated towards the next sample, too short yet to close it; 0 when none.
    /// Rounds that short carry their fixed cost (the landed-sync round trip) over few bytes, so this errs low.
    /// </summary>
    public double PendingBytesPerSecond => _pendingTime > TimeSpan.Zero ? _pendingBytes / _pendingTime.TotalSeconds : 0;

    /// <summary>
    /// Account <paramref name="bytes"/> sent over <paramref name="elapsed"/> of link time (one round's own duration),
    /// closing the sample once the accumulated time reaches <see cref="MinSample"/>. A round that sent nothing is
    /// ignored: idle time is not link time.
    /// </summary>
    public void AddSample(long bytes, TimeSpan elapsed)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        ArgumentOutOfRangeException.ThrowIfLessThan(elapsed, TimeSpan.Zero);
        if (bytes == 0) return;
        _pendingBytes += bytes;
        _pendingTime += elapsed;
        if (_pendingTime < MinSample) return;
        double rate = _pendingBytes / _pendingTime.TotalSeconds;
        LastSampleBytesPerSecond = rate;
        BytesPerSecond = BytesPerSecond == 0 ? rate : NewSampleWeight * rate + (1 - NewSampleWeight) * BytesPerSecond;
        _pendingBytes = 0;
        _pendingTime = TimeSpan.Zero;
    }
}
