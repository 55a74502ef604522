using System.Diagnostics;
using Ferry.Migration.Transport;
using Microsoft.Extensions.Time.Testing;

// Channels are blocking by design (one thread per channel), so these tests drive them from plain threads and
// wait on them with bounded timeouts; async test methods would add nothing but noise.
#pragma warning disable xUnit1031, xUnit1051

namespace Ferry.Migration.Tests.Transport;

public class BandwidthLimiterTests
{
    private const int MiB = 1 << 20;

    [Fact]
    public void ALoneBatchLeavesAtOnceAndTheNextWaitsOutItsDebt()
    {
        var time = new FakeTimeProvider();
        var limiter = new BandwidthLimiter(MiB, time); // 1 MiB/s; burst is 64 KiB
        limiter.Acquire(MiB); // not delayed: the bucket was not in debt
        var second = Task.Run(() => limiter.Acquire(MiB));
        Assert.False(second.Wait(100));
        time.Advance(TimeSpan.FromMilliseconds(900)); // debt is 1 MiB - 64 KiB ≈ 0.94 s of the rate
        Assert.False(second.Wait(100));
        time.Advance(TimeSpan.FromMilliseconds(100));
        Assert.True(second.Wait(5000));
    }

    [Fact]
    public void RaisingTheRateReleasesAWaiterSooner()
    {
        var time = new FakeTimeProvider();
        var limiter = new BandwidthLimiter(1024, time); // 1 KiB/s: 1 MiB of debt would take 17 minutes
        limiter.Acquire(MiB);
        var waiter = Task.Run(() => limiter.Acquire(1));
        Assert.False(waiter.Wait(100));
        limiter.BytesPerSecond = 100L * MiB; // debt now takes ~10 ms
        Assert.False(waiter.Wait(50));
        time.Advance(TimeSpan.FromMilliseconds(20));
        Assert.True(waiter.Wait(5000));
    }

    [Fact]
    public void ZeroMeansUnlimitedAndReleasesWaitersAtOnce()
    {
        var time = new FakeTimeProvider();
        var limiter = new BandwidthLimiter(1024, time);
        limiter.Acquire(MiB);
        var waiter = Task.Run(() => limiter.Acquire(MiB));
        Assert.False(waiter.Wait(100));
        limiter.BytesPerSecond = 0;
        Assert.True(waiter.Wait(5000));
        for (int i = 0; i < 100; i++) limiter.Acquire(MiB); // never waits again
    }

    [Fact]
    public void CancellationReleasesAWaiter()
    {
        var limiter = new BandwidthLimiter(1024, new FakeTimeProvider());
        limiter.Acquire(MiB);
        using var cts = new CancellationTokenSource();
        var waiter = Task.Run(() => limiter.Acquire(1, cts.Token));
        Assert.False(waiter.Wait(50));
        cts.Cancel();
        Assert.ThrowsAny<OperationCanceledException>(() => waiter.GetAwaiter().GetResult());
    }

    [Fact]
    public void ChannelsSharingALimiterTogetherStayNearTheRateInRealTime()
    {
        // 16 MiB/s shared by two channels sending 4 MiB each in 64 KiB batches: ideal 0.5 s (less one burst).
        var limiter = new BandwidthLimiter(16 * MiB);
        var pairs = Enumerable.Range(0, 2).Select(k => InMemoryTransport.CreatePair($"pages-{k}", capacity: 8 * MiB)).ToArray();
        var chunk = new byte[64 << 10];
        var watch = Stopwatch.StartNew();
        Parallel.For(0, 2, k =>
        {
            using var limited = new RateLimitedChannel(pairs[k].A, limiter);
            for (int i = 0; i < 64; i++) limited.Send(chunk);
            Assert.Equal(4 * MiB, limited.BytesSent);
        });
        var elapsed = watch.Elapsed;
        Assert.InRange(elapsed, TimeSpan.FromSeconds(0.45), TimeSpan.FromSeconds(3)); // rate is a cap: never faster
    }

    [Fact]
    public void ARuntimeRateChangeTakesEffectOnTheNextSend()
    {
        var limiter = new BandwidthLimiter(MiB); // 1 MiB/s real time
        var (a, _) = InMemoryTransport.CreatePair("pages-0", capacity: 16 * MiB);
        using var limited = new RateLimitedChannel(a, limiter);
        limited.Send(new byte[MiB]); // now ~1 s in debt
        limiter.BytesPerSecond = 64L * MiB; // the debt is now worth ~15 ms
        var watch = Stopwatch.StartNew();
        limited.Send(new byte[MiB]);
        Assert.True(watch.Elapsed < TimeSpan.FromMilliseconds(600), $"{watch.Elapsed}");
    }

    [Fact]
    public void AbortReleasesASenderWaitingForBandwidth()
    {
        var limiter = new BandwidthLimiter(1024, new FakeTimeProvider());
        var (a, _) = InMemoryTransport.CreatePair("pages-0", capacity: 4 * MiB);
        var limited = new RateLimitedChannel(a, limiter);
        limited.Send(new byte[MiB]);
        var blocked = Task.Run(() => limited.Send(new byte[1]));
        Assert.False(blocked.Wait(50));
        limited.Abort();
        Assert.Equal("pages-0: channel aborted while waiting for bandwidth", Assert.Throws<MigrationTransportException>(() => blocked.GetAwaiter().GetResult()).Message);
    }
}
