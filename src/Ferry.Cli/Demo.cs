using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using Ferry.Api;
using Ferry.Linux;
using Ferry.Machine;
using Ferry.Migration;
using Spectre.Console;

namespace Ferry.Cli;

/// <summary>What <c>ferry demo</c> runs.</summary>
/// <param name="MemoryBytes">The guest's RAM.</param>
/// <param name="Harts">The guest's harts.</param>
/// <param name="DirtyRate">Pages the guest's dirtier writes per second (hot set, all harts).</param>
/// <param name="Json">Print the result as JSON on stdout, nothing else there.</param>
/// <param name="Verify">Digest all memory on both sides at the switchover (the guest stands still for it, outside the downtime figure).</param>
/// <param name="Mode">Pre-copy, post-copy or hybrid.</param>
public sealed record DemoSettings(ulong MemoryBytes, int Harts, long DirtyRate, bool Json, bool Verify = true, MigrationMode Mode = MigrationMode.Precopy)
{
    /// <summary>The demo: 1 GiB, 2 harts, 20,000 pages/s (a moderately busy VM: ~80 MiB/s of writes).</summary>
    public static DemoSettings Default { get; } = new(1UL << 30, 2, 20_000, false);

    /// <summary>The destination's <c>--fault-poll</c> (zero: off).</summary>
    public TimeSpan FaultPoll { get; init; }

    /// <summary>The migration's page bandwidth cap in bytes/s (<c>--max-bandwidth</c>; zero: none).</summary>
    public long MaxBandwidth { get; init; }
}

/// <summary>
/// <c>ferry demo</c>: the built-in Linux guest boots in one VM process (<c>ferry vm run</c>), a second waits for it
/// (<c>ferry vm receive</c>) on 127.0.0.1, and the first live-migrates to the second while the guest dirties memory
/// on both harts and prints a heartbeat. Then it shows the engine's figures and what the guest saw: the longest gap
/// between heartbeat lines across the two processes' consoles (host time), the guest's own largest stall around the
/// switchover, that its heartbeat goes on at the destination, and its memory self-check there.
/// </summary>
public static class Demo
{
    /// <summary>Heartbeat period: short enough to see a switchover of a few milliseconds in the gap between lines.</summary>
    private const int HeartbeatMs = 10;

    private static readonly TimeSpan BootTimeout = TimeSpan.FromSeconds(120);
    private static readonly TimeSpan StepTimeout = TimeSpan.FromSeconds(60);

    /// <summary>How long the guest runs on the source before the migration, and on the destination before the self-check.</summary>
    private static readonly TimeSpan Settle = TimeSpan.FromSeconds(1);

    public static int Run(DemoSettings settings, CliConsole console, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        ArgumentNullException.ThrowIfNull(console);
        string image;
        try
        {
            image = BuiltInGuest.Build(console, cancellationToken);
        }
        catch (GuestBuildException e)
        {
            console.Error.WriteLine($"ferry: {e.Message}");
            return FerryCommand.ExitMigrationFailed;
        }
        catch (OperationCanceledException)
        {
            return VmRun.ExitInterrupted;
        }
        if (!File.Exists(BuiltInGuest.Firmware))
        {
            console.Error.WriteLine($"ferry: {BuiltInGuest.Firmware}: no such file (apt-get install opensbi)");
            return FerryCommand.ExitUsage;
        }

        DirectoryInfo dir = Directory.CreateTempSubdirectory("ferry-demo-");
        try
        {
            return Run(settings, image, dir.FullName, console, cancellationToken);
        }
        finally
        {
            try
            {
                dir.Delete(recursive: true);
            }
            catch (IOException)
            {
                // A socket file still bound by a child being reaped: the temp cleaner gets it.
            }
        }
    }

    private static int Run(DemoSettings settings, string image, string dir, CliConsole console, CancellationToken cancellationToken)
    {
        string sourceApi = Path.Combine(dir, "source.sock");
        string destinationApi = Path.Combine(dir, "destination.sock");
        // A quarter of RAM, at most 256 MiB: what the dirtier writes and the self-check reads.
        ulong ws = Math.Min(256UL << 20, settings.MemoryBytes / 4) >> 20;
        string cmdline = string.Create(CultureInfo.InvariantCulture,
            $"console=ttyS0 ferry.heartbeat={HeartbeatMs}ms ferry.ws={ws}M ferry.rate={settings.DirtyRate} ferry.pattern=hotset");
        void Say(string line)
        {
            if (!settings.Json) console.Error.WriteLine($"ferry demo: {line}");
        }

        string[] receive = ["vm", "receive", "--listen", "127.0.0.1:0", "--api", destinationApi];
        if (settings.FaultPoll > TimeSpan.Zero)
            receive = [.. receive, "--fault-poll", $"{settings.FaultPoll.TotalMicroseconds.ToString(CultureInfo.InvariantCulture)}us"];
        using var destination = VmProcess.Start("destination", receive);
        const string waiting = "ferry: waiting for an incoming migration on ";
        var listening = destination.WaitForErrorLine(l => l.StartsWith(waiting, StringComparison.Ordinal), StepTimeout);
        if (listening is null) return Failed(console, "the destination VM process did not start listening", destination);
        string address = listening.Value.Line[waiting.Length..].Trim();

        Say($"booting the built-in Linux guest ({Units.FormatBytes(settings.MemoryBytes)}, {settings.Harts} harts; dirtier: {settings.DirtyRate:N0} pages/s over {ws} MiB)");
        using var source = VmProcess.Start("source",
        [
            "vm", "run", "--kernel", image, "--memory", settings.MemoryBytes.ToString(CultureInfo.InvariantCulture),
            "--harts", settings.Harts.ToString(CultureInfo.InvariantCulture), "--cmdline", cmdline, "--api", sourceApi,
        ]);
        if (source.WaitForLine(l => l.StartsWith("dirtier: ", StringComparison.Ordinal), BootTimeout) is not { } up)
        {
            return Failed(console, "the guest did not start its workload on the source", source, destination);
        }
        Thread.Sleep(Settle);
        if (source.HasExited) return Failed(console, "the source VM process ended", source, destination);

        Say($"migrating the running guest live from VM process {source.Id} to VM process {destination.Id} at {address}");
        long migrationStart = Stopwatch.GetTimestamp();
        if (TraceLog.Enabled) TraceLog.Mark("demo: migration requested");
        MigrationStatistics statistics;
        using (var client = new VmApiClient(sourceApi))
        {
            var progress = new ProgressView(ProgressView.ModeFor(settings.Json, console.ErrorIsTerminal), console.Error);
            var watchdog = new ProgressWatchdog(StepTimeout);
            var request = new MigrateRequest { Destination = address, Verify = settings.Verify, Mode = settings.Mode.ToString().ToLowerInvariant(),
                MaxBandwidth = settings.MaxBandwidth > 0 ? settings.MaxBandwidth : null };
            try
            {
                // A post-copy whose destination died pauses on the source for a resume that nobody here will send.
                statistics = progress.RunLive(StatisticsView.CreateConsole(console.Error, console.ErrorIsTerminal),
                    () => MigrateClient.Migrate(client, request, progress, cancellationToken, abandon: info =>
                        info?.Status == MigrationStatus.PostcopyPaused && destination.HasExited
                            ? $"the destination VM process exited (code {destination.ExitCode}) during post-copy: the guest is lost"
                            : watchdog.Check(info, Stopwatch.GetTimestamp())));
            }
            catch (MigrationAbandonedException e)
            {
                // A stuck migration is cancelled first (before the pause the guest runs on at the source); what the
                // source's threads were doing is the lead to why it stuck.
                string threads = source.HasExited ? "" : $"; the source's threads: {source.ThreadStates()}";
                try
                {
                    client.CancelMigrationAsync(CancellationToken.None).GetAwaiter().GetResult();
                }
                catch (Exception c) when (c is VmApiException or ApiSocketException)
                {
                    // Ended meanwhile, or the source is gone: the failure below says enough.
                }
                return Failed(console, e.Message + threads, source, destination);
            }
            catch (Exception e) when (e is VmApiException or ApiSocketException)
            {
                return Failed(console, $"the source VM refused the migration: {e.Message}", source, destination);
            }
        }

        GuestReport? guest = null;
        int sourceExit = -1;
        if (statistics.Status == MigrationStatus.Completed)
        {
            guest = Observe(source, destination, migrationStart, out sourceExit, out string? lingering);
            if (lingering is not null)
                console.Error.WriteLine($"ferry demo: the source VM process ({source.Id}) has not exited 30 s after the migration; its threads then: {lingering}");
            // The demo is over: power the guest off through the destination's API.
            try
            {
                using var client = new VmApiClient(destinationApi);
                client.ShutdownAsync(CancellationToken.None).GetAwaiter().GetResult();
                destination.WaitForExit(TimeSpan.FromSeconds(30));
            }
            catch (Exception e) when (e is VmApiException or ApiSocketException)
            {
                console.Error.WriteLine($"ferry demo: could not shut the destination down: {e.Message}");
            }
        }

        if (settings.Json)
        {
            JsonObject document = JsonSerializer.SerializeToNode(statistics, CliJson.Options)!.AsObject();
            if (guest is not null) document["guest"] = JsonSerializer.SerializeToNode(guest, CliJson.Options);
            console.Out.WriteLine(document.ToJsonString(CliJson.Options));
        }
        else
        {
            var output = StatisticsView.CreateConsole(console.Out, console.OutIsTerminal);
            StatisticsView.Write(output, statistics);
            if (guest is not null) output.Write(GuestTable(guest, statistics.Switchover));
        }
        if (statistics.Status != MigrationStatus.Completed)
        {
            foreach (string line in destination.ErrorLines) console.Error.WriteLine($"  destination: {line}");
            return FerryCommand.ExitMigrationFailed;
        }
        bool good = (!settings.Verify || statistics.Verify is { Match: true }) && guest is { Selfcheck: "ok", HeartbeatsAfterResume: > 0, SourceExitCode: 0 };
        return good ? FerryCommand.ExitCompleted : FerryCommand.ExitVerifyFailed;
    }

    /// <summary>Watch the guest on the destination for a while, then ask for its self-check; and see the source go.</summary>
    private static GuestReport Observe(VmProcess source, VmProcess destination, long migrationStart, out int sourceExit, out string? lingering)
    {
        // The source exits 0 once the destination runs the VM. If it has not, what its threads do, at once: it may yet
        // go before the report is written.
        long waitStart = Stopwatch.GetTimestamp();
        sourceExit = source.WaitForExit(TimeSpan.FromSeconds(30)) ? source.ExitCode : -1;
        // How long its teardown and reap took: a regression there once held demos for minutes (an idle thread the reap
        // waited for, see LatencyPriority.PromoteIdle).
        double waitedMs = Stopwatch.GetElapsedTime(waitStart).TotalMilliseconds;
        double? sourceExitMs = sourceExit != -1 ? Math.Round(waitedMs, 1) : null;
        lingering = sourceExit != -1 ? null
            : source.HasExited ? string.Create(CultureInfo.InvariantCulture,
                $"none: it exited (code {source.ExitCode}) as the wait for it gave up after {waitedMs:F0} ms")
            : source.ThreadStates();
        var first = destination.WaitForLine(l => l.StartsWith("heartbeat ", StringComparison.Ordinal), StepTimeout);
        Thread.Sleep(Settle);
        int at = destination.LineCount;
        destination.Type("selfcheck");
        string selfcheck = destination.WaitForLine(l => l.StartsWith("selfcheck ", StringComparison.Ordinal), StepTimeout, at)?.Line ?? "no answer";
        VmProcess.Heartbeat[] after = destination.Heartbeats;
        // The source's lines up to the destination's first (a line the guest had half written at the pause ends on the
        // destination's console, not the source's).
        long arrived = after.Length > 0 ? after[0].At : long.MaxValue;
        VmProcess.Heartbeat[] before = source.Heartbeats.Where(h => h.At < arrived).ToArray();

        // Gaps between consecutive heartbeat lines across both consoles, from the migration's start on.
        double maxGapMs = 0;
        long? previous = null;
        foreach (var h in before.Concat(after))
        {
            if (h.At < migrationStart) continue;
            if (previous is { } p) maxGapMs = Math.Max(maxGapMs, Stopwatch.GetElapsedTime(p, h.At).TotalMilliseconds);
            previous = h.At;
        }
        // The guest's own stall: the largest lateness its sampler saw, in the lines around the switchover (the
        // source's last and the destination's first second).
        long resumeAt = after.Length > 0 ? after[0].At : 0;
        long stallUs = 0;
        foreach (var h in after)
        {
            if (Stopwatch.GetElapsedTime(resumeAt, h.At) <= TimeSpan.FromSeconds(1)) stallUs = Math.Max(stallUs, h.MaxStallUs);
        }
        if (before.Length > 0) stallUs = Math.Max(stallUs, before[^1].MaxStallUs);
        // The switchover's own share: the source's last line and the destination's first two (a line reports the
        // largest lateness since the one before it, and the sampler's late wake-up may come just after the first).
        // What the first second adds after that is post-copy's faults and the host's other work.
        long switchoverUs = before.Length > 0 ? before[^1].MaxStallUs : 0;
        foreach (var h in after.Take(2))
        {
            if (Stopwatch.GetElapsedTime(resumeAt, h.At) <= TimeSpan.FromSeconds(1)) switchoverUs = Math.Max(switchoverUs, h.MaxStallUs);
        }
        // The same measure in the last second before the migration began: what this host does to the guest anyway
        // (on a 2-core host shared by both VM processes, tens of ms in some seconds).
        long? baselineUs = null;
        foreach (var h in source.Heartbeats)
        {
            if (h.At < migrationStart && Stopwatch.GetElapsedTime(h.At, migrationStart) <= TimeSpan.FromSeconds(1))
                baselineUs = Math.Max(baselineUs ?? 0, h.MaxStallUs);
        }
        // While the migration ran on the source (its start to the line before the switchover's): what pre-copy's
        // rounds, and the destination's preparation on a shared host, cost the guest before the pause.
        long? sourceUs = null;
        for (int i = 0; i + 1 < before.Length; i++)
        {
            if (before[i].At >= migrationStart) sourceUs = Math.Max(sourceUs ?? 0, before[i].MaxStallUs);
        }
        double? switchoverGapMs = before.Length > 0 && after.Length > 0 ? Math.Round(Stopwatch.GetElapsedTime(before[^1].At, after[0].At).TotalMilliseconds, 2) : null;
        return new GuestReport(
            HeartbeatMaxGapMs: Math.Round(maxGapMs, 2),
            SwitchoverGapMs: switchoverGapMs,
            HeartbeatPeriodMs: HeartbeatMs,
            MaxStallMs: stallUs / 1000.0,
            SwitchoverStallMs: switchoverUs / 1000.0,
            BaselineStallMs: baselineUs / 1000.0,
            SourceStallMs: sourceUs / 1000.0,
            HeartbeatsAfterResume: after.Length,
            LastHeartbeatOnSource: before.Length > 0 ? before[^1].Seq : 0,
            FirstHeartbeatOnDestination: after.Length > 0 ? after[0].Seq : 0,
            Selfcheck: selfcheck.StartsWith("selfcheck ok", StringComparison.Ordinal) ? "ok" : selfcheck,
            SourceExitCode: sourceExit,
            SourceExitMs: sourceExitMs,
            ArrivedWithinMs: first is { } f ? Math.Round(Stopwatch.GetElapsedTime(migrationStart, f.At).TotalMilliseconds, 1) : null);
    }

    private static int Failed(CliConsole console, string what, params VmProcess[] processes)
    {
        console.Error.WriteLine($"ferry demo: {what}");
        foreach (var p in processes)
        {
            foreach (string line in p.ErrorLines) console.Error.WriteLine($"  {p.Name}: {line}");
        }
        return FerryCommand.ExitMigrationFailed;
    }

    private static Table GuestTable(GuestReport g, Migration.Precopy.SwitchoverTimings? t)
    {
        var table = new Table().Border(TableBorder.Rounded).Title("what the guest saw").HideHeaders().AddColumn("what").AddColumn("value");
        table.AddRow(new Text("heartbeat"), g.HeartbeatsAfterResume > 0
            ? new Markup(string.Create(CultureInfo.InvariantCulture,
                $"[green]continues[/] on the destination: {g.LastHeartbeatOnSource} was the source's last line, {g.FirstHeartbeatOnDestination} the destination's first; {g.HeartbeatsAfterResume} lines there"))
            : new Markup("[red]STOPPED[/]: no heartbeat on the destination"));
        table.AddRow(new Text("longest gap"), new Text(string.Create(CultureInfo.InvariantCulture,
            $"{g.HeartbeatMaxGapMs:0.0} ms between two heartbeat lines (one every {g.HeartbeatPeriodMs} ms) during the migration; {g.SwitchoverGapMs:0.0} ms from the source's last to the destination's first") +
            (t is null ? "" : string.Create(CultureInfo.InvariantCulture,
                $", of which {t.SourceDigest + t.DestDigest:0.0} ms are the verification's memory digests, taken while the guest is paused and left out of the downtime"))));
        table.AddRow(new Text("guest stall"), new Text(string.Create(CultureInfo.InvariantCulture,
            $"{g.SwitchoverStallMs:0.0} ms: the longest the guest's own clock saw it not run at the switchover; {g.MaxStallMs:0.0} ms in the destination's first second") +
            (g.SourceStallMs is { } m ? string.Create(CultureInfo.InvariantCulture, $"; {m:0.0} ms on the source while the migration ran there") : "") +
            (g.BaselineStallMs is { } b ? string.Create(CultureInfo.InvariantCulture, $"; {b:0.0} ms in the last second before the migration began") : "")));
        table.AddRow(new Text("self-check"), g.Selfcheck == "ok"
            ? new Markup("[green]ok[/]: every page of the dirtier's working set holds what it last wrote")
            : new Markup($"[red]FAILED[/]: {Markup.Escape(g.Selfcheck)}"));
        table.AddRow(new Text("source"), g.SourceExitCode == 0
            ? new Markup(string.Create(CultureInfo.InvariantCulture, $"[green]gone[/]: its VM process exited 0, {g.SourceExitMs:0} ms after the migration ended"))
            : new Markup(string.Create(CultureInfo.InvariantCulture, $"[red]still there or failed[/] (exit {g.SourceExitCode})")));
        return table;
    }

    /// <summary>What the guest saw, as <c>--json</c>'s <c>guest</c> object.</summary>
    public sealed record GuestReport(
        [property: JsonPropertyName("heartbeat_max_gap_ms")] double HeartbeatMaxGapMs,
        [property: JsonPropertyName("switchover_gap_ms")] double? SwitchoverGapMs,
        [property: JsonPropertyName("heartbeat_period_ms")] int HeartbeatPeriodMs,
        [property: JsonPropertyName("max_stall_ms")] double MaxStallMs,
        [property: JsonPropertyName("switchover_stall_ms")] double SwitchoverStallMs,
        [property: JsonPropertyName("baseline_stall_ms")] double? BaselineStallMs,
        [property: JsonPropertyName("source_stall_ms")] double? SourceStallMs,
        [property: JsonPropertyName("heartbeats_after_resume")] int HeartbeatsAfterResume,
        [property: JsonPropertyName("last_heartbeat_on_source")] long LastHeartbeatOnSource,
        [property: JsonPropertyName("first_heartbeat_on_destination")] long FirstHeartbeatOnDestination,
        [property: JsonPropertyName("selfcheck")] string Selfcheck,
        [property: JsonPropertyName("source_exit_code")] int SourceExitCode,
        [property: JsonPropertyName("source_exit_ms")] double? SourceExitMs,
        [property: JsonPropertyName("arrived_within_ms")] double? ArrivedWithinMs);
}
