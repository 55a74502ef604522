using System.Diagnostics;
using Ferry.Api;
using Ferry.Migration;

namespace Ferry.Cli.Tests;

public sealed class ProgressWatchdogTests
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(60);

    private static long At(double seconds) => (long)(seconds * Stopwatch.Frequency);

    private static MigrationInfo Info(long sent, MigrationStatus status = MigrationStatus.Active, int round = 0, long remaining = 1000) =>
        new() { Status = status, BytesSent = sent, Round = round, RemainingBytes = remaining };

    [Fact]
    public void AMigrationStillForTheLimitIsGivenUpWithWhatItLastShowed()
    {
        var watchdog = new ProgressWatchdog(Limit);
        Assert.Null(watchdog.Check(Info(4096), At(0)));
        Assert.Null(watchdog.Check(Info(4096), At(59.9)));
        string? why = watchdog.Check(Info(4096), At(60));
        Assert.NotNull(why);
        Assert.Contains("no progress for 60 s", why, StringComparison.Ordinal);
        Assert.Contains("active", why, StringComparison.Ordinal);
        Assert.Contains("4,096 bytes sent", why, StringComparison.Ordinal);
    }

    [Fact]
    public void AnyMoveStartsTheWaitAgain()
    {
        var watchdog = new ProgressWatchdog(Limit);
        Assert.Null(watchdog.Check(Info(0), At(0)));
        Assert.Null(watchdog.Check(Info(1), At(50)));                                   // bytes
        Assert.Null(watchdog.Check(Info(1, remaining: 10), At(100)));                   // what the pass has left
        Assert.Null(watchdog.Check(Info(1, remaining: 10, round: 1), At(150)));         // a new round
        Assert.Null(watchdog.Check(Info(1, MigrationStatus.Device, 1, 10), At(200)));   // the switchover
        Assert.Null(watchdog.Check(Info(1, MigrationStatus.PostcopyActive, 1, 10), At(250)));   // post-copy
        Assert.Null(watchdog.Check(Info(1, MigrationStatus.PostcopyActive, 1, 10), At(309)));
        Assert.Contains("status postcopy-active", watchdog.Check(Info(1, MigrationStatus.PostcopyActive, 1, 10), At(311)), StringComparison.Ordinal);
    }

    [Fact]
    public void NoMigrationShownIsNotAStall()
    {
        var watchdog = new ProgressWatchdog(Limit);
        Assert.Null(watchdog.Check(null, At(0)));
        Assert.Null(watchdog.Check(null, At(1000)));
        Assert.Null(watchdog.Check(Info(0), At(1000)));
        Assert.Null(watchdog.Check(Info(0), At(1059)));
    }
}
