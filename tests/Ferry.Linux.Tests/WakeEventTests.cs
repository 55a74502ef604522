using System.Diagnostics;

namespace Ferry.Linux.Tests;

/// <summary>The futex-backed event the machine's harts and timer sleep on (WakeEvent.cs).</summary>
public class WakeEventTests
{
    private static long In(TimeSpan span) => Stopwatch.GetTimestamp() + (long)(span.TotalSeconds * Stopwatch.Frequency);

    [Fact]
    public void AWaitAfterSetReturnsTrueAtOnceUntilReset()
    {
        var e = new WakeEvent();
        Assert.False(e.IsSet);
        e.Set();
        Assert.True(e.IsSet);
        Assert.True(e.Wait(0));
        Assert.True(e.Wait(long.MaxValue));
        e.Reset();
        Assert.False(e.IsSet);
        Assert.False(e.Wait(0));
        Assert.True(new WakeEvent(initialState: true).Wait(0));
    }

    [Fact]
    public void ATimedWaitNeverEndsBeforeItsDeadline()
    {
        var e = new WakeEvent();
        for (int i = 0; i < 50; i++)
        {
            long deadline = In(TimeSpan.FromMicroseconds(20 + 40 * i));
            Assert.False(e.Wait(deadline));
            Assert.True(Stopwatch.GetTimestamp() >= deadline, $"wait {i} returned before its deadline");
        }
    }

    [Fact]
    public void SetWakesEveryThreadBlockedWithoutADeadline()
    {
        var e = new WakeEvent();
        int woken = 0;
        var waiters = Enumerable.Range(0, 4).Select(_ => new Thread(() =>
        {
            if (e.Wait(long.MaxValue)) Interlocked.Increment(ref woken);
        })).ToArray();
        foreach (var t in waiters) t.Start();
        Thread.Sleep(50); // most of them asleep in the futex by now; a late one sees the event set instead
        Assert.Equal(0, Volatile.Read(ref woken));
        e.Set();
        foreach (var t in waiters) Assert.True(t.Join(TimeSpan.FromSeconds(10)), "a waiter was not woken");
        Assert.Equal(4, woken);
    }

    [Fact]
    public void SetWakesATimedWaiterBeforeItsDeadline()
    {
        var e = new WakeEvent();
        long deadline = In(TimeSpan.FromMinutes(1));
        bool result = false;
        var waiter = new Thread(() => result = e.Wait(deadline));
        waiter.Start();
        Thread.Sleep(20);
        e.Set();
        Assert.True(waiter.Join(TimeSpan.FromSeconds(10)), "the timed waiter was not woken");
        Assert.True(result);
    }

    [Fact]
    public void SetsAndResetsRacingWithWaitsLoseNoWakeUp()
    {
        // A ping-pong of 20,000 rounds between two threads, each waiting without a deadline for the other's Set: a lost
        // wake-up would hang it (caught by the join's bound).
        var ping = new WakeEvent();
        var pong = new WakeEvent();
        const int rounds = 20_000;
        var other = new Thread(() =>
        {
            for (int i = 0; i < rounds; i++)
            {
                ping.Wait();
                ping.Reset();
                pong.Set();
            }
        });
        other.Start();
        for (int i = 0; i < rounds; i++)
        {
            ping.Set();
            pong.Wait();
            pong.Reset();
        }
        Assert.True(other.Join(TimeSpan.FromSeconds(30)));
    }
}
