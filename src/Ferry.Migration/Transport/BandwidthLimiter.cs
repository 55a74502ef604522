namespace Ferry.Migration.Transport;

/// <summary>
/// A token bucket shared by all page channels of a migration (QEMU max-bandwidth). Sends go out at once while the
/// bucket is not in debt and may drive it into debt; the next sender then waits until the debt is repaid. So a 1 MiB
/// batch at 1 MiB/s leaves immediately and the one after waits a second, instead of every batch first waiting for
/// 1 MiB of tokens: the average rate is exact and the latency of a lone batch is zero.
/// </summary>
/// <remarks>
/// Thread-safe. Waiters sleep on the injected <see cref="TimeProvider"/> (no spinning) and wake early when
/// <see cref="BytesPerSecond"/> changes, so a new rate takes effect for the very next send.
/// </remarks>
public sealed class BandwidthLimiter
{
    // Idle credit cap: 10 ms of the rate, at least 64 KiB. Enough to absorb scheduling jitter of a loaded box without
    // letting an idle period turn into a burst far above the cap (at 100 MB/s, 1 MB).
    private const double BurstSeconds = 0.010;
    private const long MinBurstBytes = 64 << 10;

    private readonly TimeProvider _time;
    private readonly Lock _lock = new();
    // Bytes/s; 0 = unlimited.
    private long _rate;
    // Credit in bytes; negative = debt the next sender waits out.
    private double _tokens;
    // Timestamp of the last refill.
    private long _last;
    // Completed and replaced whenever the rate changes, to wake waiters.
    private TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public BandwidthLimiter(long bytesPerSecond, TimeProvider? time = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytesPerSecond);
        _time = time ?? TimeProvider.System;
        _rate = bytesPerSecond;
        _last = _time.GetTimestamp();
    }

    /// <summary>The cap in bytes per second; 0 = unlimited. May be changed at any time from any thread.</summary>
    public long BytesPerSecond
    {
        get => Volatile.Read(ref _rate);
        set
        {
            ArgumentOutOfRangeException.ThrowIfNegative(value);
            TaskCompletionSource wake;
            lock (_lock)
            {
                Refill();
                _rate = value;
                if (value == 0) _tokens = 0;
                else _tokens = Math.Min(_tokens, Burst(value));
                wake = _changed;
                _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
            }
            wake.TrySetResult();
        }
    }

    /// <summary>
    /// Account for <paramref name="bytes"/> about to be sent, first waiting out any debt left by earlier sends.
    /// Throws <see cref="OperationCanceledException"/> if <paramref name="cancellationToken"/> fires while waiting.
    /// </summary>
    public void Acquire(int bytes, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        while (true)
        {
            TimeSpan wait;
            Task changed;
            lock (_lock)
            {
                if (_rate == 0) return;
                Refill();
                if (_tokens >= 0)
                {
                    _tokens -= bytes;
                    return;
                }
                wait = TimeSpan.FromSeconds(-_tokens / _rate);
                changed = _changed.Task;
            }
            cancellationToken.ThrowIfCancellationRequested();
            // Allocates a timer per wait, i.e. per batch at most, never per page.
            using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            var delay = Task.Delay(wait, _time, cts.Token);
            Task.WaitAny([delay, changed], CancellationToken.None); // the delay itself observes the token
            cts.Cancel();
            cancellationToken.ThrowIfCancellationRequested();
        }
    }

    private void Refill()
    {
        long now = _time.GetTimestamp();
        double seconds = (now - _last) / (double)_time.TimestampFrequency;
        _last = now;
        if (_rate > 0) _tokens = Math.Min(_tokens + (seconds * _rate), Burst(_rate));
    }

    private static double Burst(long rate) => Math.Max(rate * BurstSeconds, MinBurstBytes);
}

/// <summary>Applies a shared <see cref="BandwidthLimiter"/> to a channel's sends; receives pass through.</summary>
public sealed class RateLimitedChannel : IMigrationChannel, IByteCounter
{
    private readonly IMigrationChannel _inner;
    private readonly BandwidthLimiter _limiter;
    // Cancelled by Abort so a sender waiting for bandwidth is released.
    private readonly CancellationTokenSource _abort = new();
    private long _sent;
    private long _received;

    public RateLimitedChannel(IMigrationChannel inner, BandwidthLimiter limiter)
    {
        ArgumentNullException.ThrowIfNull(inner);
        ArgumentNullException.ThrowIfNull(limiter);
        _inner = inner;
        _limiter = limiter;
    }

    public string Name => _inner.Name;
    public long BytesSent => Volatile.Read(ref _sent);
    public long BytesReceived => Volatile.Read(ref _received);

    public void Send(ReadOnlySpan<byte> data)
    {
        Acquire(data.Length);
        _inner.Send(data);
        Interlocked.Add(ref _sent, data.Length);
    }

    public void SendGather(ReadOnlySpan<IoSegment> segments)
    {
        long total = 0;
        foreach (var s in segments) total += s.Length;
        Acquire((int)Math.Min(total, int.MaxValue));
        _inner.SendGather(segments);
        Interlocked.Add(ref _sent, total);
    }

    private void Acquire(int bytes)
    {
        try
        {
            _limiter.Acquire(bytes, _abort.Token);
        }
        catch (OperationCanceledException e)
        {
            throw new MigrationTransportException($"{Name}: channel aborted while waiting for bandwidth", e);
        }
    }

    public bool ReceiveExactly(Span<byte> buffer)
    {
        bool ok = _inner.ReceiveExactly(buffer);
        if (ok) Interlocked.Add(ref _received, buffer.Length);
        return ok;
    }

    public void ReceiveWithoutTimeout() => _inner.ReceiveWithoutTimeout();

    public long BytesReadable => _inner.BytesReadable;

    public void Abort()
    {
        try
        {
            _abort.Cancel();
        }
        catch (ObjectDisposedException)
        {
        }
        _inner.Abort();
    }

    public void Dispose()
    {
        _inner.Dispose();
        _abort.Dispose();
    }
}
