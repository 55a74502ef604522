using System.Net;
using Ferry.Migration.InProcess;
using Ferry.Migration.Precopy;
using Ferry.Migration.Transport;
using static Ferry.Migration.Tests.Precopy.MigrationHarness;

namespace Ferry.Migration.Tests.Precopy;

public class PrecopyMigrationTests
{
    private static void AssertCompletedAndIntact(MigrationOutcome outcome)
    {
        Assert.True(outcome.Stats.Status == MigrationStatus.Completed, $"status {outcome.Stats.Status}: {outcome.Stats.Error} / {outcome.DestinationError}");
        Assert.Null(outcome.DestinationError);
        Assert.NotNull(outcome.Target);
        Assert.True(outcome.Target.Started);
        Assert.NotNull(outcome.Stats.Verify);
        Assert.True(outcome.Stats.Verify.Match, $"digests differ: {outcome.Stats.Verify.SourceDigest} vs {outcome.Stats.Verify.DestDigest}");
        Assert.Equal(32, outcome.Stats.Verify.SourceDigest.Length);
        DestinationChecks.AssertSelfCheckAfterStart(outcome.Target);
    }

    [Fact]
    public void IdleGuestMigratesInOneRoundPlusStopAndCopyWithMatchingDigests()
    {
        using var guest = NewGuest(16, fill: MemoryFill.Random, writers: 1);
        var transport = new InMemoryTransport();
        var outcome = Migrate(guest, transport.Connector, transport.Listener, Options());
        using var _ = outcome.Target;
        AssertCompletedAndIntact(outcome);
        var s = outcome.Stats;
        // Round 0 sends all 4096 pages; nothing is dirtied, so the policy switches at once: final round is empty.
        Assert.Equal(2, s.Rounds.Count);
        Assert.Equal(4096, s.Rounds[0].Pages);
        Assert.Equal(0, s.Rounds[1].Pages);
        Assert.Equal(4096, s.Pages.Normal + s.Pages.Zero);
        Assert.True(s.BytesSent >= 16L << 20, $"bytes_sent {s.BytesSent} below the data sent");
        Assert.False(guest.IsRunning, "the source must stay paused after commit");
        Assert.True(s.DowntimeMs > 0);
        Assert.True(s.DowntimeMs < s.TotalMs);
    }

    [Fact]
    public void ZeroPagesTravelAsZeroRunsNotAsData()
    {
        // A fresh zero-filled guest that never wrote: every page is zero.
        using var guest = NewGuest(16, fill: MemoryFill.Zero);
        var transport = new InMemoryTransport();
        var outcome = Migrate(guest, transport.Connector, transport.Listener, Options());
        using var _ = outcome.Target;
        AssertCompletedAndIntact(outcome);
        Assert.Equal(0, outcome.Stats.Pages.Normal);
        Assert.Equal(4096, outcome.Stats.Pages.Zero);
        // Zero runs cost a 16-byte descriptor per run, not 4 KiB per page: far under 1% of memory.
        Assert.True(outcome.Stats.BytesSent < (16 << 20) / 100, $"bytes_sent {outcome.Stats.BytesSent}");
    }

    [Fact]
    public void BusyHotsetGuestMigratesOverInMemoryChannelsWithMatchingDigests()
    {
        using var guest = NewGuest(32, pagesPerSecond: 20_000, pattern: DirtyPattern.Hotset, writers: 2);
        var transport = new InMemoryTransport();
        var outcome = Migrate(guest, transport.Connector, transport.Listener, Options() with { DowntimeLimit = TimeSpan.FromMilliseconds(300) });
        using var _ = outcome.Target;
        AssertCompletedAndIntact(outcome);
        Assert.True(outcome.Stats.Rounds.Count >= 2);
        Assert.All(outcome.Stats.Rounds, r => Assert.True(r.Milliseconds >= 0));
    }

#if HAVE_TCP
    [Fact]
    public void BusyHotsetGuestMigratesOverTcpLoopbackWithMatchingDigests()
    {
        using var guest = NewGuest(32, pagesPerSecond: 20_000, pattern: DirtyPattern.Hotset, writers: 2, split: true);
        using var listener = new TcpMigrationListener(new IPEndPoint(IPAddress.Loopback, 0));
        var connector = new TcpMigrationConnector(listener.LocalEndPoint);
        var outcome = Migrate(guest, connector, listener, Options() with { PageChannels = 3, DowntimeLimit = TimeSpan.FromMilliseconds(300) });
        using var _ = outcome.Target;
        AssertCompletedAndIntact(outcome);
        Assert.Equal(2, guest.Regions.Count);
    }

#endif
    [Fact]
    public void NonConvergingGuestWithStrategyCancelFailsAtTheTimeoutAndKeepsRunning()
    {
        using var guest = NewGuest(8, pagesPerSecond: 100_000, writers: 2);
        var transport = new InMemoryTransport();
        var factory = new RecordingTargetFactory(new InProcessTargetFactory());
        var options = NonConverging() with { TimeoutStrategy = TimeoutStrategy.Cancel };
        var outcome = Migrate(guest, transport.Connector, transport.Listener, options, factory);
        AssertFailedBeforeCommit(outcome, guest, factory);
        Assert.Contains("timeout", outcome.Stats.Error, StringComparison.Ordinal);
        AssertWorkloadContinues(guest);
    }

    [Fact]
    public void NonConvergingGuestWithStrategyForceCompletesAnyway()
    {
        using var guest = NewGuest(8, pagesPerSecond: 100_000, writers: 2);
        var transport = new InMemoryTransport();
        var outcome = Migrate(guest, transport.Connector, transport.Listener, NonConverging() with { TimeoutStrategy = TimeoutStrategy.Force });
        using var _ = outcome.Target;
        AssertCompletedAndIntact(outcome);
        Assert.Equal(0, outcome.Stats.ThrottlePercent);
    }

    [Fact]
    public void AutoConvergeThrottlesANonConvergingGuestUntilItCompletes()
    {
        // 40k pages/s against 100 MB/s (24k pages/s): each round dirties most of the 2048 pages it sends.
        using var guest = NewGuest(8, pagesPerSecond: 40_000, writers: 2);
        var transport = new InMemoryTransport();
        var options = NonConverging() with
        {
            AutoConverge = true,
            MaxBandwidth = 100_000_000,
            DowntimeLimit = TimeSpan.FromMilliseconds(30),
            Timeout = TimeSpan.FromSeconds(20),
            MaxRounds = 200,
            TimeoutStrategy = TimeoutStrategy.Cancel,
        };
        var outcome = Migrate(guest, transport.Connector, transport.Listener, options);
        using var _ = outcome.Target;
        AssertCompletedAndIntact(outcome);
        Assert.True(outcome.Stats.ThrottlePercent >= 20, $"throttle {outcome.Stats.ThrottlePercent}");
        Assert.Contains(outcome.Stats.Rounds, r => r.ThrottlePercent > 0);
    }

    /// <summary>
    /// Dirtying far faster than a 20 MB/s link (4 900 pages/s) with a 5 ms limit (3 ms of pages = 15 pages after the
    /// 2 ms state estimate): cannot converge without throttling as long as the writers manage 5k pages/s.
    /// </summary>
    private static MigrationOptions NonConverging() => Options() with
    {
        MaxBandwidth = 20_000_000,
        DowntimeLimit = TimeSpan.FromMilliseconds(5),
        Timeout = TimeSpan.FromMilliseconds(800),
        AutoConverge = false,
    };
}
