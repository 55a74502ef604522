namespace Ferry.Migration.Policy;

/// <summary>
/// Smoothed page-channel throughput for the convergence policy. Each sample is one round's bytes over its wall time;
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

    private readonly TimeProvider _time;

    /// <summary>Timestamp at which the pending sample started.</summary>
    private long _start;

    /// <summary>Bytes accumulated into the pending sample.</summary>
    private long _pendingBytes;

    public BandwidthMeter(TimeProvider time)
    {
        _time = time;
        _start = time.GetTimestamp();
    }

    /// <summary>Smoothed bytes per second; 0 until the first sample.</summary>
    public double BytesPerSecond { get; private set; }

    /// <summary>Bytes per second of the latest complete sample; 0 until the first.</summary>
    public double LastSampleBytesPerSecond { get; private set; }

    /// <summary>Start timing a sample now (e.g. at the start of round 0), discarding anything pending.</summary>
    public void Restart()
    {
        _start = _time.GetTimestamp();
        _pendingBytes = 0;
    }

    /// <summary>Account <paramref name="bytes"/> sent since the last call and close the sample if long enough.</summary>
    public void AddSample(long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        _pendingBytes += bytes;
        if (_pendingBytes == 0)
        {
            // Nothing sent (an idle round): idle time is not link time.
            _start = _time.GetTimestamp();
            return;
        }
        var elapsed = _time.GetElapsedTime(_start);
        if (elapsed < MinSample) return;
        double rate = _pendingBytes / elapsed.TotalSeconds;
        LastSampleBytesPerSecond = rate;
        BytesPerSecond = BytesPerSecond == 0 ? rate : NewSampleWeight * rate + (1 - NewSampleWeight) * BytesPerSecond;
        _start = _time.GetTimestamp();
        _pendingBytes = 0;
    }
}
