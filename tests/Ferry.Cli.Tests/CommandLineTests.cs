using Ferry.Migration;
using Ferry.Migration.InProcess;

namespace Ferry.Cli.Tests;

public class CommandLineTests
{
    [Fact]
    public void EveryBenchEngineFlagReachesTheSettings()
    {
        var (settings, errors) = FerryCommand.ParseBenchEngine(
            "--memory", "512M", "--fill", "random", "--dirty-rate", "20k", "--pattern", "hotset",
            "--working-set", "64M", "--writers", "3", "--downtime-limit", "30ms", "--max-bandwidth", "500M",
            "--channels", "4", "--max-rounds", "7", "--timeout", "2s", "--timeout-strategy", "force",
            "--no-auto-converge", "--verify", "--checksum-final-pass", "--json");

        Assert.Empty(errors);
        Assert.NotNull(settings);
        Assert.Equal(512UL << 20, settings.MemoryBytes);
        Assert.Equal(MemoryFill.Random, settings.Fill);
        Assert.Equal(20_000, settings.DirtyRatePagesPerSecond);
        Assert.Equal(DirtyPattern.Hotset, settings.Pattern);
        Assert.Equal(64UL << 20, settings.WorkingSetBytes);
        Assert.Equal(3, settings.Writers);
        Assert.Equal(TimeSpan.FromMilliseconds(30), settings.DowntimeLimit);
        Assert.Equal(500L << 20, settings.MaxBandwidth);
        Assert.Equal(4, settings.Channels);
        Assert.Equal(7, settings.MaxRounds);
        Assert.Equal(TimeSpan.FromSeconds(2), settings.Timeout);
        Assert.Equal(TimeoutStrategy.Force, settings.TimeoutStrategy);
        Assert.False(settings.AutoConverge);
        Assert.True(settings.Verify);
        Assert.True(settings.Json);

        var options = settings.ToMigrationOptions();
        Assert.Equal(4, options.PageChannels);
        Assert.Equal(500L << 20, options.MaxBandwidth);
        Assert.True(options.Verify);
        Assert.True(options.ChecksumFinalPass);
        var guest = settings.ToGuestOptions();
        Assert.Equal(512UL << 20, guest.MemoryBytes);
        Assert.Equal(3, guest.WriterThreads);
        Assert.Equal(20_000, guest.DirtyRatePagesPerSecond);
    }

    [Fact]
    public void OmittedFlagsTakeTheEnginesDefaults()
    {
        var (settings, errors) = FerryCommand.ParseBenchEngine();
        Assert.Empty(errors);
        Assert.NotNull(settings);
        var engine = new MigrationOptions();
        var options = settings.ToMigrationOptions();
        Assert.Equal(engine.DowntimeLimit, options.DowntimeLimit);
        Assert.Equal(engine.PageChannels, options.PageChannels);
        Assert.Equal(engine.MaxRounds, options.MaxRounds);
        Assert.Equal(engine.Timeout, options.Timeout);
        Assert.Equal(engine.TimeoutStrategy, options.TimeoutStrategy);
        Assert.Equal(engine.AutoConverge, options.AutoConverge);
        Assert.Equal(engine.MaxBandwidth, options.MaxBandwidth);
        Assert.Equal(engine.ChecksumFinalPass, options.ChecksumFinalPass);
        Assert.Equal(1UL << 30, settings.MemoryBytes);
        Assert.Null(settings.WorkingSetBytes);
        Assert.False(settings.Json);
    }

    [Theory]
    [InlineData("--memory", "12X")]
    [InlineData("--memory", "1000")]
    [InlineData("--memory", "0")]
    [InlineData("--fill", "ones")]
    [InlineData("--dirty-rate", "-5")]
    [InlineData("--pattern", "zigzag")]
    [InlineData("--working-set", "3K")]
    [InlineData("--writers", "0")]
    [InlineData("--downtime-limit", "50")]
    [InlineData("--downtime-limit", "0ms")]
    [InlineData("--max-bandwidth", "fast")]
    [InlineData("--channels", "17")]
    [InlineData("--max-rounds", "0")]
    [InlineData("--timeout", "soon")]
    [InlineData("--timeout-strategy", "retry")]
    [InlineData("--fault-poll", "300")]
    [InlineData("--fault-poll", "11ms")]
    public void ABadValueExitsWithCode2AndOneLineNamingTheFlagAndTheValue(string flag, string value)
    {
        var (code, stdout, stderr) = RunCaptured("bench", "engine", flag, value);

        Assert.Equal(FerryCommand.ExitUsage, code);
        Assert.Equal("", stdout);
        var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var line = Assert.Single(lines);
        Assert.StartsWith($"ferry: {flag}: '{value}' ", line, StringComparison.Ordinal);
        Assert.DoesNotContain("Exception", stderr, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("--max-bandwidth", "fast")]
    [InlineData("--harts", "9")]
    [InlineData("--mode", "sideways")]
    [InlineData("--fault-poll", "300")]
    public void TheDemoRefusesABadValueBeforeStartingAnything(string flag, string value)
    {
        var (code, stdout, stderr) = RunCaptured("demo", flag, value);

        Assert.Equal(FerryCommand.ExitUsage, code);
        Assert.Equal("", stdout);
        var line = Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith($"ferry: {flag}: '{value}' ", line, StringComparison.Ordinal);
    }

    [Fact]
    public void AWorkingSetLargerThanMemoryIsAUsageError()
    {
        var (code, stdout, stderr) = RunCaptured("bench", "engine", "--memory", "64M", "--working-set", "128M");
        Assert.Equal(FerryCommand.ExitUsage, code);
        Assert.Equal("", stdout);
        Assert.Contains("--working-set", stderr, StringComparison.Ordinal);
        Assert.Contains("--memory", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void MoreWritersThanPagesIsAUsageErrorNotACrash()
    {
        var (code, stdout, stderr) = RunCaptured("bench", "engine", "--memory", "8K", "--writers", "3");
        Assert.Equal(FerryCommand.ExitUsage, code);
        Assert.Equal("", stdout);
        Assert.StartsWith("ferry: --writers: 3 writers", stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("Exception", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void AnUnknownFlagIsAUsageErrorThatNamesIt()
    {
        var (code, _, stderr) = RunCaptured("bench", "engine", "--memroy", "1G");
        Assert.Equal(FerryCommand.ExitUsage, code);
        Assert.Contains("--memroy", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void NoCommandIsAUsageError()
    {
        var (code, stdout, stderr) = RunCaptured();
        Assert.Equal(FerryCommand.ExitUsage, code);
        Assert.Equal("", stdout);
        Assert.Contains("ferry demo", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void HelpListsTheFlagsOnStdoutAndSucceeds()
    {
        var (code, stdout, _) = RunCaptured("bench", "engine", "--help");
        Assert.Equal(0, code);
        foreach (var flag in new[] { "--memory", "--dirty-rate", "--pattern", "--downtime-limit", "--max-bandwidth", "--channels", "--json" })
            Assert.Contains(flag, stdout, StringComparison.Ordinal);
    }

    internal static (int Code, string Stdout, string Stderr) RunCaptured(params string[] args)
    {
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        var code = FerryCommand.Run(args, CliConsole.Captured(stdout, stderr), TestContext.Current.CancellationToken);
        return (code, stdout.ToString(), stderr.ToString());
    }
}
