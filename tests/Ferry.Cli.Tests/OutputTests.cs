using System.Text.Json;
using Ferry.Migration;

namespace Ferry.Cli.Tests;

public class OutputTests
{
    private static readonly MigrationStatistics Sample = new()
    {
        Status = MigrationStatus.Completed,
        MemoryBytes = 64L << 20,
        TotalMs = 812.5,
        SetupMs = 3.25,
        DowntimeMs = 17.5,
        DowntimeBreakdownMs = new DowntimeBreakdown { Pause = 0.5, FinalPages = 12, DeviceState = 1, Resume = 4 },
        BytesSent = 70_000_000,
        Pages = new PageCounts { Normal = 16_000, Zero = 600 },
        Rounds =
        [
            new RoundStatistics { Round = 0, Pages = 16_384, Bytes = 67_108_864, Milliseconds = 700, DirtyPagesPerSecond = 5_000, BandwidthBytesPerSecond = 95_000_000 },
            new RoundStatistics { Round = 1, Pages = 216, Bytes = 884_736, Milliseconds = 12, DirtyPagesPerSecond = 4_900, BandwidthBytesPerSecond = 73_000_000 },
        ],
        Verify = new VerifyResult { SourceDigest = "ab12", DestDigest = "ab12", Match = true },
    };

    [Fact]
    public void JsonUsesTheQueryMigrateFieldNames()
    {
        using var doc = JsonDocument.Parse(StatisticsView.ToJson(Sample));
        var root = doc.RootElement;
        foreach (var field in new[]
                 {
                     "status", "error", "mode", "memory_bytes", "total_ms", "setup_ms", "downtime_ms",
                     "downtime_breakdown_ms", "bytes_sent", "pages", "rounds", "throttle_pct", "verify",
                 })
            Assert.True(root.TryGetProperty(field, out _), $"missing {field}");
        Assert.Equal("completed", root.GetProperty("status").GetString());
        Assert.Equal(17.5, root.GetProperty("downtime_ms").GetDouble());
        Assert.Equal(12, root.GetProperty("downtime_breakdown_ms").GetProperty("final_pages").GetDouble());
        Assert.Equal(600, root.GetProperty("pages").GetProperty("zero").GetInt64());
        Assert.Equal(4_900, root.GetProperty("rounds")[1].GetProperty("dirty_pages_per_s").GetDouble());
        Assert.True(root.GetProperty("verify").GetProperty("match").GetBoolean());
    }

    [Fact]
    public void TableShowsStatusDowntimeAndEveryRound()
    {
        using var writer = new StringWriter();
        StatisticsView.Write(StatisticsView.CreateConsole(writer, isTerminal: false), Sample);
        var text = writer.ToString();

        Assert.Contains("completed", text, StringComparison.Ordinal);
        Assert.Contains("17.5 ms", text, StringComparison.Ordinal);
        Assert.Contains("final pages 12.0 ms", text, StringComparison.Ordinal);
        Assert.Contains("16,000 normal, 600 zero", text, StringComparison.Ordinal);
        Assert.Contains("64 MiB", text, StringComparison.Ordinal);
        Assert.Contains("1 (stop)", text, StringComparison.Ordinal);
        Assert.Contains("match", text, StringComparison.Ordinal);
        // Not a terminal: no escape sequences in a file or a pipe.
        Assert.DoesNotContain("\u001b[", text, StringComparison.Ordinal);
    }

    [Fact]
    public void AFailedMigrationShowsItsReason()
    {
        using var writer = new StringWriter();
        var failed = Sample with { Status = MigrationStatus.Failed, Error = "destination closed the control channel", Verify = null };
        StatisticsView.Write(StatisticsView.CreateConsole(writer, isTerminal: false), failed);
        Assert.Contains("failed", writer.ToString(), StringComparison.Ordinal);
        Assert.Contains("destination closed the control channel", writer.ToString(), StringComparison.Ordinal);
        Assert.DoesNotContain("(stop)", writer.ToString(), StringComparison.Ordinal);
    }

    [Fact]
    public void PlainProgressWritesOneLinePerRound()
    {
        using var writer = new StringWriter();
        var view = new ProgressView(ProgressMode.Lines, writer);
        for (var round = 0; round < 3; round++)
            for (var tick = 0; tick < 5; tick++)
                view.Report(new MigrationProgress(MigrationStatus.Active, round, (3 - round) << 20, tick << 20, 1e9, 20_000, 0, TimeSpan.FromSeconds(round + (tick / 10.0))));
        view.Report(new MigrationProgress(MigrationStatus.Device, 3, 4096, 1 << 30, 1e9, 0, 20, TimeSpan.FromSeconds(3)));
        view.Report(new MigrationProgress(MigrationStatus.Device, 3, 0, 1 << 30, 1e9, 0, 20, TimeSpan.FromSeconds(3)));
        Assert.Equal(3, writer.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries).Length);
        view.Flush();

        var lines = writer.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(4, lines.Length);
        // Each round's line carries the figures it ended on (its last report), not its first.
        Assert.StartsWith("round 0", lines[0], StringComparison.Ordinal);
        Assert.Contains("left      3 MiB", lines[0], StringComparison.Ordinal);
        Assert.EndsWith("0.4 s", lines[0], StringComparison.Ordinal);
        Assert.Contains("left        0 B", lines[3], StringComparison.Ordinal);
        Assert.StartsWith("round 2", lines[2], StringComparison.Ordinal);
        Assert.StartsWith("stop-and-copy", lines[3], StringComparison.Ordinal);
        Assert.Contains("throttle 20%", lines[3], StringComparison.Ordinal);
        Assert.Contains("20,000 pages/s", lines[0], StringComparison.Ordinal);
    }

    [Fact]
    public void JsonModeShowsNoProgress()
    {
        Assert.Equal(ProgressMode.None, ProgressView.ModeFor(json: true, errorIsTerminal: true));
        Assert.Equal(ProgressMode.Live, ProgressView.ModeFor(json: false, errorIsTerminal: true));
        Assert.Equal(ProgressMode.Lines, ProgressView.ModeFor(json: false, errorIsTerminal: false));

        using var writer = new StringWriter();
        var view = new ProgressView(ProgressMode.None, writer);
        view.Report(new MigrationProgress(MigrationStatus.Active, 0, 1, 1, 1, 1, 0, TimeSpan.Zero));
        Assert.Equal("", writer.ToString());
        Assert.NotNull(view.Latest);
    }

    [Theory]
    [InlineData(MigrationStatus.Completed, null, false, 0)]
    [InlineData(MigrationStatus.Completed, true, true, 0)]
    [InlineData(MigrationStatus.Completed, false, true, 3)]
    [InlineData(MigrationStatus.Completed, null, true, 3)]
    [InlineData(MigrationStatus.Failed, null, false, 1)]
    [InlineData(MigrationStatus.Cancelled, null, false, 1)]
    public void ExitCodeFollowsStatusAndVerification(MigrationStatus status, bool? match, bool verifyRequested, int expected)
    {
        var s = new MigrationStatistics
        {
            Status = status,
            Verify = match is null ? null : new VerifyResult { Match = match.Value },
        };
        Assert.Equal(expected, EngineBench.ExitCode(s, verifyRequested));
    }
}
