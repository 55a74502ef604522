using System.Globalization;
using System.Text.Json;
using Ferry.Migration;
using Spectre.Console;
using Spectre.Console.Rendering;

namespace Ferry.Cli;

/// <summary>Renders <see cref="MigrationStatistics"/> as the <c>--json</c> document or as tables.</summary>
public static class StatisticsView
{
    /// <summary>The JSON document: exactly <see cref="MigrationStatistics"/>'s fields (QEMU query-migrate style names).</summary>
    public static string ToJson(MigrationStatistics statistics) => JsonSerializer.Serialize(statistics, CliJson.Options);

    /// <summary>A Spectre console writing to <paramref name="writer"/>; colours only on a terminal.</summary>
    public static IAnsiConsole CreateConsole(TextWriter writer, bool isTerminal)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Ansi = isTerminal ? AnsiSupport.Detect : AnsiSupport.No,
            ColorSystem = isTerminal ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
            Interactive = isTerminal ? InteractionSupport.Detect : InteractionSupport.No,
            Out = new AnsiConsoleOutput(writer),
        });
        // Redirected output has no width; 100 columns keeps the round table on one line per round.
        if (!isTerminal) console.Profile.Width = 100;
        return console;
    }

    /// <summary>Summary table, then one row per round.</summary>
    public static void Write(IAnsiConsole console, MigrationStatistics s)
    {
        console.Write(Summary(s));
        if (s.Rounds.Count > 0) console.Write(Rounds(s));
    }

    /// <summary>Status, times, downtime and its parts, bytes, pages, throttle, verification.</summary>
    public static Table Summary(MigrationStatistics s)
    {
        var table = new Table().Border(TableBorder.Rounded).HideHeaders()
            .AddColumn("what").AddColumn("value");
        var statusColour = s.Status == MigrationStatus.Completed ? "green" : "red";
        table.AddRow(new Text("status"), new Markup($"[{statusColour}]{Name(s.Status)}[/]"));
        if (!string.IsNullOrEmpty(s.Error)) table.AddRow(new Text("error"), new Text(s.Error));
        table.AddRow("mode", s.Mode);
        table.AddRow("memory", Units.FormatBytes(s.MemoryBytes));
        table.AddRow("total time", Units.FormatMs(s.TotalMs));
        table.AddRow("setup", Units.FormatMs(s.SetupMs));
        var d = s.DowntimeBreakdownMs;
        table.AddRow(new Text("downtime"), new Markup(
            $"[bold]{Markup.Escape(Units.FormatMs(s.DowntimeMs))}[/]  " + Markup.Escape(
                $"(pause {Units.FormatMs(d.Pause)}, final pages {Units.FormatMs(d.FinalPages)}, " +
                $"device state {Units.FormatMs(d.DeviceState)}, resume {Units.FormatMs(d.Resume)})")));
        if (s.SwitchoverReason is { } why)
        {
            var expected = s.ExpectedDowntimeMs is { } e ? $", expected {Units.FormatMs(e)} downtime" : "";
            table.AddRow("switchover", why.Replace('_', ' ') + expected);
        }
        table.AddRow("bytes sent", $"{Units.FormatBytes(s.BytesSent)} ({s.BytesSent.ToString("N0", CultureInfo.InvariantCulture)} B)");
        table.AddRow("pages", string.Create(CultureInfo.InvariantCulture, $"{s.Pages.Normal:N0} normal, {s.Pages.Zero:N0} zero"));
        if (s.TotalMs > 0)
            table.AddRow("average rate", Units.FormatRate(s.BytesSent / (s.TotalMs / 1000)));
        table.AddRow("rounds", s.Rounds.Count.ToString(CultureInfo.InvariantCulture));
        table.AddRow("throttle", $"{s.ThrottlePercent}%");
        if (s.Verify is { } v)
        {
            IRenderable verdict = v.Match
                ? new Markup($"[green]match[/] {Markup.Escape(v.SourceDigest)}")
                : new Markup($"[red]MISMATCH[/] source {Markup.Escape(v.SourceDigest)}, destination {Markup.Escape(v.DestDigest)}");
            table.AddRow(new Text("verify"), verdict);
        }
        if (s.Postcopy is { } p)
        {
            table.AddRow("post-copy", string.Create(CultureInfo.InvariantCulture,
                $"{p.MissingPages:N0} pages after the switchover in {Units.FormatMs(p.Milliseconds)}: {p.PushedPages:N0} pushed ({p.Prepaging}), {p.UrgentPages:N0} on request ({p.DuplicatePages:N0} twice)"));
            string share = p.FaultedShare is { } f ? string.Create(CultureInfo.InvariantCulture, $", {f:P1} of a working set of {p.WorkingSetPages:N0} pages") : "";
            table.AddRow("faults", string.Create(CultureInfo.InvariantCulture,
                $"{p.Faults:N0}{share}; latency p50 {p.FaultLatencyUs.P50:F0} µs, p99 {p.FaultLatencyUs.P99:F0} µs, max {p.FaultLatencyUs.Max:F0} µs; guest blocked {Units.FormatMs(p.BlocktimeMs)}"));
        }
        return table;
    }

    /// <summary>Per round: pages, bytes, time, bandwidth, the guest's dirty rate during it, throttle.</summary>
    public static Table Rounds(MigrationStatistics s)
    {
        var table = new Table().Border(TableBorder.Rounded)
            .AddColumn(new TableColumn("round").RightAligned())
            .AddColumn(new TableColumn("pages").RightAligned())
            .AddColumn(new TableColumn("sent").RightAligned())
            .AddColumn(new TableColumn("time").RightAligned())
            .AddColumn(new TableColumn("bandwidth").RightAligned())
            .AddColumn(new TableColumn("dirty pages/s").RightAligned())
            .AddColumn(new TableColumn("throttle").RightAligned());
        for (var i = 0; i < s.Rounds.Count; i++)
        {
            var r = s.Rounds[i];
            // The last round of a completed migration is the stop-and-copy (STW = stop the world).
            // After post-copy there is no stop-and-copy round: the rest moved after the guest resumed.
            var label = i == s.Rounds.Count - 1 && s.Status == MigrationStatus.Completed && s.Postcopy is null
                ? $"{r.Round} (stop)"
                : r.Round.ToString(CultureInfo.InvariantCulture);
            table.AddRow(
                label,
                r.Pages.ToString("N0", CultureInfo.InvariantCulture),
                Units.FormatBytes(r.Bytes),
                Units.FormatMs(r.Milliseconds),
                Units.FormatRate(r.BandwidthBytesPerSecond),
                r.DirtyPagesPerSecond.ToString("N0", CultureInfo.InvariantCulture),
                $"{r.ThrottlePercent}%");
        }
        return table;
    }

    /// <summary>The status as the JSON spells it ("completed", ...).</summary>
    public static string Name(MigrationStatus status) => JsonSerializer.Serialize(status, CliJson.Options).Trim('"');
}
