using System.Diagnostics;
using System.Text.Json;
using static Ferry.Cli.Tests.CommandLineTests;

namespace Ferry.Cli.Tests;

/// <summary>The whole command: a real source and destination in this process over loopback TCP.</summary>
public class EndToEndTests
{
    [Fact]
    public void BenchEngineMigratesABusyGuestAndPrintsOnlyTheStatisticsJson()
    {
        var (code, stdout, stderr) = RunCaptured(
            "bench", "engine", "--memory", "64M", "--dirty-rate", "5000", "--pattern", "hotset", "--verify", "--json");

        Assert.True(code == 0, $"exit {code}; stdout: {stdout}; stderr: {stderr}");
        // --json: stdout is one JSON document and nothing else; no progress anywhere.
        Assert.Equal("", stderr);
        using var doc = JsonDocument.Parse(stdout);
        var root = doc.RootElement;
        Assert.Equal("completed", root.GetProperty("status").GetString());
        Assert.Equal(64L << 20, root.GetProperty("memory_bytes").GetInt64());
        var verify = root.GetProperty("verify");
        Assert.True(verify.GetProperty("match").GetBoolean());
        Assert.Equal(verify.GetProperty("source_digest").GetString(), verify.GetProperty("dest_digest").GetString());
        foreach (var field in new[] { "total_ms", "setup_ms", "downtime_ms", "bytes_sent", "throttle_pct" })
            Assert.True(root.GetProperty(field).GetDouble() >= 0, field);
        var breakdown = root.GetProperty("downtime_breakdown_ms");
        foreach (var part in new[] { "pause", "final_pages", "device_state", "resume" })
            Assert.True(breakdown.TryGetProperty(part, out _), part);
        // The finer switchover figures agree with the breakdown they refine.
        var switchover = root.GetProperty("switchover_ms");
        Assert.Equal(breakdown.GetProperty("pause").GetDouble(), switchover.GetProperty("pause").GetDouble(), 6);
        Assert.Equal(breakdown.GetProperty("resume").GetDouble(), switchover.GetProperty("commit_to_resumed").GetDouble(), 6);
        Assert.True(switchover.GetProperty("final_pages_landed").GetDouble() >= switchover.GetProperty("final_pages_send").GetDouble());
        Assert.True(switchover.GetProperty("state_bytes").GetInt64() > 0);
        Assert.Equal("converged", root.GetProperty("switchover_reason").GetString());
        Assert.True(root.GetProperty("expected_downtime_ms").GetDouble() > 0);
        // Every page travelled at least once, as data or as a zero run.
        var pages = root.GetProperty("pages");
        Assert.True(pages.GetProperty("normal").GetInt64() + pages.GetProperty("zero").GetInt64() >= 16_384);
        var rounds = root.GetProperty("rounds");
        Assert.True(rounds.GetArrayLength() >= 2, "round 0 and the stop-and-copy round at least");
        Assert.Equal(16_384, rounds[0].GetProperty("pages").GetInt64());
        Assert.True(root.GetProperty("bytes_sent").GetInt64() > 0);
    }

    [Theory]
    [InlineData("postcopy")]
    [InlineData("hybrid")]
    public void BenchEnginePostcopyAndHybridCompleteWithMatchingDigests(string mode)
    {
        var (code, stdout, stderr) = RunCaptured(
            "bench", "engine", "--mode", mode, "--memory", "64M", "--dirty-rate", "5000", "--pattern", "hotset", "--verify", "--json");

        Assert.True(code == 0, $"exit {code}; stdout: {stdout}; stderr: {stderr}");
        using var doc = JsonDocument.Parse(stdout);
        var root = doc.RootElement;
        Assert.Equal("completed", root.GetProperty("status").GetString());
        Assert.Equal(mode, root.GetProperty("mode").GetString());
        Assert.True(root.GetProperty("verify").GetProperty("match").GetBoolean());
        var postcopy = root.GetProperty("postcopy");
        // Pure post-copy leaves all memory to after the switchover; hybrid whatever was dirty at the pause (maybe nothing).
        if (mode == "postcopy") Assert.Equal(16384, postcopy.GetProperty("missing_pages").GetInt64());
        foreach (var field in new[] { "faults", "pushed_pages", "blocktime_ms", "working_set_pages" })
            Assert.True(postcopy.GetProperty(field).GetDouble() >= 0, field);
        // A share of nothing is no share: null when the guest touched no page during post-copy (a hybrid that left
        // little or nothing missing, on a host that starved its writers).
        var share = postcopy.GetProperty("faulted_share");
        if (postcopy.GetProperty("working_set_pages").GetInt64() > 0) Assert.InRange(share.GetDouble(), 0, 1);
        else Assert.Equal(JsonValueKind.Null, share.ValueKind);
        foreach (var field in new[] { "p50", "p99", "max" })
            Assert.True(postcopy.GetProperty("fault_latency_us").GetProperty(field).GetDouble() >= 0, field);
        // Pure post-copy moves nothing before the switchover; hybrid copies memory in rounds first.
        Assert.Equal(mode == "postcopy", root.GetProperty("rounds").GetArrayLength() == 0);
    }

    [Fact]
    public void AnUnknownModeIsABadCommandLine()
    {
        var (code, _, stderr) = RunCaptured("bench", "engine", "--mode", "teleport");
        Assert.Equal(FerryCommand.ExitUsage, code);
        Assert.Contains("--mode: 'teleport' is not one of: precopy, postcopy, hybrid", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void WithoutJsonTheTableGoesToStdoutAndOneProgressLinePerRoundToStderr()
    {
        var (code, stdout, stderr) = RunCaptured("bench", "engine", "--memory", "16M", "--dirty-rate", "2000", "--pattern", "hotset");

        Assert.True(code == 0, $"exit {code}; stderr: {stderr}");
        Assert.Contains("completed", stdout, StringComparison.Ordinal);
        Assert.Contains("downtime", stdout, StringComparison.Ordinal);
        Assert.Matches(@"switchover\s*│ converged, expected [\d.]+ ms downtime", stdout);
        Assert.Contains("(stop)", stdout, StringComparison.Ordinal);
        var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Contains(lines, l => l.StartsWith("round 0", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith("stop-and-copy", StringComparison.Ordinal));
        // One line per round, not one per progress report.
        Assert.Equal(lines.Length, lines.Distinct().Count());
        Assert.True(lines.Length < 40, $"{lines.Length} progress lines");
    }

    [Fact]
    public void AMigrationThatCannotConvergeExitsNonZeroAndSaysWhy()
    {
        // Every page of a 4 MiB guest rewritten ~20 times a second over a link capped at 4 MiB/s: whatever the
        // machine's speed, the rest can never fit in 1 ms, so after two rounds the cancel strategy must give up, and
        // the command must say so in its status and its exit code. (Without the cap, a fast enough round could
        // converge: it flaked once when huge pages made rounds quicker.)
        var (code, stdout, stderr) = RunCaptured(
            "bench", "engine", "--memory", "4M", "--dirty-rate", "20k", "--pattern", "uniform", "--downtime-limit", "1ms",
            "--max-bandwidth", "4M", "--max-rounds", "2", "--no-auto-converge", "--timeout-strategy", "cancel", "--json");

        Assert.True(code == FerryCommand.ExitMigrationFailed, $"exit {code}; stdout: {stdout}; stderr: {stderr}");
        using var doc = JsonDocument.Parse(stdout);
        var status = doc.RootElement.GetProperty("status").GetString();
        Assert.True(status is "failed" or "cancelled", status);
        Assert.False(string.IsNullOrEmpty(doc.RootElement.GetProperty("error").GetString()));
    }

    [Fact]
    public async Task TheBuiltBinaryRejectsABadFlagWithExitCode2AndNoStackTrace()
    {
        var ferry = Path.Combine(AppContext.BaseDirectory, "ferry.dll");
        Assert.True(File.Exists(ferry), ferry);
        var start = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (var a in new[] { ferry, "bench", "engine", "--memory", "1Q" }) start.ArgumentList.Add(a);
        using var process = Process.Start(start)!;
        var ct = TestContext.Current.CancellationToken;
        var stdout = process.StandardOutput.ReadToEndAsync(ct);
        var stderr = await process.StandardError.ReadToEndAsync(ct);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(TimeSpan.FromSeconds(30));
        await process.WaitForExitAsync(timeout.Token);

        Assert.Equal(2, process.ExitCode);
        Assert.Equal("", await stdout);
        Assert.Equal("ferry: --memory: '1Q' is not a size (use e.g. 4096, 64K, 512M, 1G or 2GiB)", stderr.TrimEnd());
    }
}
