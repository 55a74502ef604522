using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using Ferry.Linux;
using Ferry.Migration;
using Ferry.Migration.InProcess;
using Spectre.Console;

namespace Ferry.Cli;

/// <summary>
/// <c>ferry demo</c>: live-migrate a busy in-process guest over loopback TCP, then show what the guest saw after
/// arriving: its memory checks out page by page and its writers kept running on the destination.
/// </summary>
/// <remarks>Until the KVM monitor exists this is the in-process guest; the command stays the README's first.</remarks>
public static class Demo
{
    /// <summary>
    /// 1 GiB of random (incompressible) memory, two writers dirtying a hot set at 20,000 pages/s (~80 MiB/s of
    /// writes, a moderately busy VM), verified by digest. Converges in a few rounds over loopback.
    /// </summary>
    public static EngineBenchSettings Settings { get; } = new()
    {
        MemoryBytes = 1UL << 30,
        Fill = MemoryFill.Random,
        DirtyRatePagesPerSecond = 20_000,
        Pattern = DirtyPattern.Hotset,
        Writers = 2,
        Verify = true,
    };

    /// <summary>How long to watch the destination's workload after arrival: 20 ticks of its 1 ms pacing and more.</summary>
    private static readonly TimeSpan WatchAfterArrival = TimeSpan.FromMilliseconds(500);

    public static int Run(EngineBenchSettings settings, CliConsole console, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        ArgumentNullException.ThrowIfNull(console);
        if (!HostMemory.CheckFits(settings.MemoryBytes, settings.Fill, console.Error)) return FerryCommand.ExitUsage;
        if (!settings.Json)
            console.Error.WriteLine($"ferry demo: migrating a {Units.FormatBytes(settings.MemoryBytes)} guest " +
                                    $"({settings.Fill.ToString().ToLowerInvariant()} contents, {settings.Pattern.ToString().ToLowerInvariant()} writes at " +
                                    $"{settings.DirtyRatePagesPerSecond:N0} pages/s) over 127.0.0.1");
        var result = LoopbackMigration.RunLive(settings, console, cancellationToken);
        if (result is null) return FerryCommand.ExitMigrationFailed;

        using (result)
        {
            var arrival = result.Destination is InProcessTarget target ? Observe(target) : null;
            if (settings.Json)
            {
                console.Out.WriteLine(JsonSerializer.Serialize(new DemoReport(result.Statistics, arrival), JsonOptions));
            }
            else
            {
                var output = StatisticsView.CreateConsole(console.Out, console.OutIsTerminal);
                StatisticsView.Write(output, result.Statistics);
                if (arrival is not null) output.Write(ArrivalTable(arrival));
                else if (result.DestinationError is { } e) output.MarkupLine($"[red]destination:[/] {Markup.Escape(e.Message)}");
            }
            var code = EngineBench.ExitCode(result.Statistics, settings.Verify);
            if (code == FerryCommand.ExitCompleted && arrival is not { SelfCheckOk: true, WritersRunning: true })
                code = FerryCommand.ExitVerifyFailed;
            return code;
        }
    }

    private static readonly JsonSerializerOptions JsonOptions = new()
    {
        WriteIndented = true,
        // Terminal and file output, never embedded in HTML: print "caller's", not "caller\u0027s".
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    /// <summary>
    /// Watch the started destination: do its writers keep writing? Then pause it (the self-check needs still
    /// memory) and check every page against the workload's own record of what it last wrote there.
    /// </summary>
    private static ArrivalReport Observe(InProcessTarget target)
    {
        var guest = target.Guest ?? throw new InvalidOperationException("the destination guest was not started");
        var before = guest.PagesWritten;
        var clock = Stopwatch.StartNew();
        Thread.Sleep(WatchAfterArrival);
        var written = guest.PagesWritten - before;
        var watchedMs = clock.Elapsed.TotalMilliseconds;
        guest.Pause();
        var failure = guest.SelfCheck();
        return new ArrivalReport(
            SelfCheckOk: failure is null,
            FirstBadPage: failure?.ToString(),
            PagesChecked: (long)guest.TotalPages,
            WritersRunning: written > 0,
            PagesWrittenAfterArrival: written,
            WatchedMs: watchedMs);
    }

    private static Table ArrivalTable(ArrivalReport a)
    {
        var table = new Table().Border(TableBorder.Rounded).Title("after arrival (destination)").HideHeaders()
            .AddColumn("what").AddColumn("value");
        table.AddRow(new Text("self-check"), a.SelfCheckOk
            ? new Markup($"[green]ok[/]: all {a.PagesChecked:N0} pages agree with the workload's record")
            : new Markup($"[red]FAILED[/]: {Markup.Escape(a.FirstBadPage ?? "")}"));
        var rate = a.PagesWrittenAfterArrival / (a.WatchedMs / 1000);
        table.AddRow(new Text("workload"), a.WritersRunning
            ? new Markup(string.Create(CultureInfo.InvariantCulture,
                $"[green]running[/]: {a.PagesWrittenAfterArrival:N0} pages written in {a.WatchedMs:0} ms ({rate:N0} pages/s)"))
            : new Markup("[red]STOPPED[/]: no page written since arrival"));
        return table;
    }

    /// <summary>What <c>ferry demo --json</c> prints: the migration's statistics and what the destination saw.</summary>
    public sealed record DemoReport(
        [property: JsonPropertyName("migration")] MigrationStatistics Migration,
        [property: JsonPropertyName("after_arrival")] ArrivalReport? AfterArrival);

    /// <summary>The destination guest after the switchover.</summary>
    public sealed record ArrivalReport(
        [property: JsonPropertyName("self_check_ok")] bool SelfCheckOk,
        [property: JsonPropertyName("first_bad_page")] string? FirstBadPage,
        [property: JsonPropertyName("pages_checked")] long PagesChecked,
        [property: JsonPropertyName("writers_running")] bool WritersRunning,
        [property: JsonPropertyName("pages_written_after_arrival")] long PagesWrittenAfterArrival,
        [property: JsonPropertyName("watched_ms")] double WatchedMs);
}
