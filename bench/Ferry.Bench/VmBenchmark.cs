using Ferry.Cli;
using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using Ferry.Api;
using Ferry.Migration;
using Spectre.Console;

namespace Ferry.Bench;

/// <summary>
/// Live migration of the same running Linux guest (<c>guest-linux/</c>: kernel, initramfs, OpenSBI) under Ferry and
/// under QEMU 7.2 TCG, in one run, on loopback with unlimited bandwidth and a 50 ms downtime limit: an idle 1 GiB
/// guest, and 256 MiB dirtied uniformly at 5k and 50k pages/s. Both systems are driven as processes, as a user
/// would: <c>ferry vm receive</c> + <c>ferry vm run</c> + the API's migrate, and two <c>qemu-system-riscv64</c> with
/// QMP. For each migration: the system's own total time, downtime and bytes; what the guest saw (the longest gap
/// between heartbeat lines across the source's then the destination's console, host time, and its own stall); and
/// whether it arrived intact (heartbeat going on, <c>selfcheck ok</c> on the destination).
/// </summary>
/// <remarks>
/// The guest has no busy-wait option: its heartbeat, stall sampler (1 ms) and dirtier all sleep between wake-ups.
/// QEMU 7.2 does not migrate armed timers, so a guest whose harts are all asleep at the switchover can stay frozen
/// on the destination (<c>PLATFORM.md</c>); that shows here as a heartbeat that does not resume, reported as measured.
/// Typing <c>selfcheck</c> wakes it through the UART's interrupt, so the memory check still answers.
/// </remarks>
internal static class VmBenchmark
{
    internal const string Qemu = "qemu-system-riscv64";
    internal const string Firmware = "/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_dynamic.bin";
    private const string Memory = "1G";
    private const int Harts = 2;
    private const string WorkingSet = "256M";
    private const double DowntimeLimitMs = 50;
    // QEMU's "unlimited": max-bandwidth is bytes/s and must be set (its default is 32 MiB/s); 1 TiB/s never binds.
    private const long QemuMaxBandwidth = 1L << 40;

    /// <summary>
    /// Heartbeat period: the gap between lines can never be shorter, and a switchover of D ms shows as at most one
    /// period plus D. 5 ms keeps that floor low at 200 lines/s, which neither emulator notices.
    /// </summary>
    private const int HeartbeatMs = 5;

    // Targets from issue 10's "Speed" section: reported against, not asserted.
    private const double IdleDowntimeTargetMs = 10;
    private const double BusyDowntimeTargetMs = 50;
    private const double GapSlackTargetMs = 5;
    private const double TotalRatioTarget = 0.5;

    private static readonly TimeSpan BootTimeout = TimeSpan.FromSeconds(300);
    private static readonly TimeSpan StepTimeout = TimeSpan.FromSeconds(60);
    private static readonly TimeSpan MigrateTimeout = TimeSpan.FromSeconds(300);
    /// <summary>How long the guest runs before the migration (its dirtier at rate), and on the destination before the self-check.</summary>
    private static readonly TimeSpan Settle = TimeSpan.FromSeconds(2);

    private sealed record Case(string Name, long Rate);

    private sealed record Settings
    {
        public string? JsonPath { get; init; }
        public int Repetitions { get; init; } = 3;
        public bool UseQemu { get; init; } = true;
        public List<Case> Cases { get; init; } = [new("idle", 0), new("5k", 5_000), new("50k", 50_000)];
    }

    public static int Run(string[] args, TextWriter output, TextWriter error)
    {
        if (!TryParse(args, out var settings, out var problem))
        {
            error.WriteLine($"Ferry.Bench vm: {problem}");
            error.WriteLine("usage: Ferry.Bench vm [--repetitions N] [--cases idle,5k,50k] [--no-qemu] [--json FILE]");
            return 2;
        }
        var root = RepoRoot.Find();
        if (root is null)
        {
            error.WriteLine("Ferry.Bench vm: cannot find the repository (no Ferry.slnx above the current or the program's directory)");
            return 2;
        }
        if (!File.Exists(Firmware))
        {
            error.WriteLine($"Ferry.Bench vm: {Firmware}: no such file (apt-get install opensbi)");
            return 2;
        }
        string? image = BuildGuest(root, error);
        if (image is null) return 1;

        // Children die with the benchmark: Ctrl+C or any exit kills the VM processes it started, by their PIDs.
        Console.CancelKeyPress += (_, _) => VmProcess.KillAll();
        AppDomain.CurrentDomain.ProcessExit += (_, _) => VmProcess.KillAll();

        DirectoryInfo work = Directory.CreateTempSubdirectory("ferry-bench-vm-");
        try
        {
            string? ferry = SnapshotFerry(root, work.FullName, error);
            if (ferry is null) return 1;
            string? qemuVersion = settings.UseQemu ? QemuVersion(output) : null;
            if (!settings.UseQemu) output.WriteLine("--no-qemu: Ferry figures only");
            return Run(settings, ferry, image, qemuVersion, work.FullName, output, error);
        }
        finally
        {
            VmProcess.KillAll();
            try
            {
                work.Delete(recursive: true);
            }
            catch (IOException)
            {
                // A socket still bound by a child being reaped: the temp cleaner gets it.
            }
        }
    }

    private static int Run(Settings s, string ferry, string image, string? qemuVersion, string work, TextWriter output, TextWriter error)
    {
        var report = new Report
        {
            Repetitions = s.Repetitions,
            Kernel = image,
            QemuVersion = qemuVersion,
            HeartbeatMs = HeartbeatMs,
            Memory = Memory,
            Harts = Harts,
            WorkingSet = WorkingSet,
            DowntimeLimitMs = DowntimeLimitMs,
            LoadAverageAtStart = LoadAverage(),
        };
        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"guest: {image}, {Memory} RAM, {Harts} harts, heartbeat {HeartbeatMs} ms, dirtier over {WorkingSet} (uniform); " +
            $"loopback, unlimited bandwidth, downtime limit {DowntimeLimitMs} ms; {s.Repetitions} repetition(s)"));
        output.WriteLine($"ferry: {ferry}");
        output.WriteLine();
        for (var rep = 1; rep <= s.Repetitions; rep++)
        {
            for (int ci = 0; ci < s.Cases.Count; ci++)
            {
                var c = s.Cases[ci];
                // Alternate which system goes first, for each case across repetitions too (a counter over all runs gave
                // each case one fixed order with three cases), so that neither always inherits the other's freed
                // memory or a quieter moment.
                bool ferryFirst = (rep + ci) % 2 == 1;
                foreach (var system in ferryFirst ? new[] { "ferry", "qemu" } : ["qemu", "ferry"])
                {
                    if (system == "qemu" && qemuVersion is null) continue;
                    string dir = Path.Combine(work, $"{system}-{c.Name}-{rep}");
                    Directory.CreateDirectory(dir);
                    double load = LoadAverage();
                    RunResult r;
                    try
                    {
                        r = system == "ferry" ? RunFerry(c, ferry, image, dir) : RunQemu(c, image, dir);
                    }
                    catch (Exception e) when (e is InvalidOperationException or IOException or QmpException or SocketException
                                                  or ApiSocketException or VmApiException or JsonException)
                    {
                        r = new RunResult { Problem = e.Message };
                    }
                    finally
                    {
                        VmProcess.KillAll();
                    }
                    r.System = system;
                    r.Case = c.Name;
                    r.Repetition = rep;
                    r.LoadAverage = load;
                    report.Runs.Add(r);
                    output.WriteLine(RunLine(r));
                    try
                    {
                        Directory.Delete(dir, recursive: true);
                    }
                    catch (IOException)
                    {
                        // Left for the final cleanup.
                    }
                }
            }
        }
        report.LoadAverageAtEnd = LoadAverage();
        Summarise(s, report);
        output.WriteLine();
        PrintSummary(report, output);
        if (s.JsonPath is { } path)
        {
            File.WriteAllText(path, JsonSerializer.Serialize(report, JsonOptions));
            output.WriteLine($"wrote {path}");
        }
        // Ferry's failures are this project's: the exit code says so. QEMU's are reported as measured.
        var ferryProblems = report.Runs.Where(r => r.System == "ferry" && !r.Intact).ToList();
        if (ferryProblems.Count > 0)
        {
            error.WriteLine();
            error.WriteLine($"Ferry.Bench vm: {ferryProblems.Count} Ferry migration(s) not intact:");
            foreach (var r in ferryProblems) error.WriteLine($"  !! {r.Case} #{r.Repetition}: {r.Problem ?? IntactProblem(r)}");
            return 1;
        }
        return 0;
    }

    // ---------------------------------------------------------------- one migration under Ferry

    private static string Cmdline(Case c) => string.Create(CultureInfo.InvariantCulture,
        // ferry.spin=2: a thread per hart that never sleeps, so QEMU 7.2 (which loses a sleeping guest's timers on
        // arrival) keeps running after its migration, as the issue's comparison asks.
        $"console=ttyS0 ferry.heartbeat={HeartbeatMs}ms ferry.ws={WorkingSet} ferry.rate={c.Rate} ferry.spin=2");

    private static RunResult RunFerry(Case c, string ferry, string image, string dir)
    {
        string sourceApi = Path.Combine(dir, "s.sock");
        string destinationApi = Path.Combine(dir, "d.sock");
        using var destination = VmProcess.Start("ferry destination", ferry, ["vm", "receive", "--listen", "127.0.0.1:0", "--api", destinationApi]);
        const string waiting = "ferry: waiting for an incoming migration on ";
        string? listening = destination.WaitForErrorLine(l => l.StartsWith(waiting, StringComparison.Ordinal), StepTimeout)?.Line;
        if (listening is null) return Failed("the destination did not start listening", destination);
        string address = listening[waiting.Length..].Trim();

        using var source = VmProcess.Start("ferry source", ferry,
        [
            "vm", "run", "--kernel", image, "--firmware", Firmware, "--memory", Memory,
            "--harts", Harts.ToString(CultureInfo.InvariantCulture), "--cmdline", Cmdline(c), "--api", sourceApi,
        ]);
        if (source.WaitForLine(l => l.StartsWith("dirtier: ", StringComparison.Ordinal), BootTimeout) is null)
        {
            return Failed("the guest did not start its workload on the source", source, destination);
        }
        Thread.Sleep(Settle);
        if (source.HasExited) return Failed("the source VM process ended", source, destination);

        long start = Stopwatch.GetTimestamp();
        MigrationStatistics statistics;
        using (var client = new VmApiClient(sourceApi))
        using (var cts = new CancellationTokenSource(MigrateTimeout))
        {
            var request = new MigrateRequest { Destination = address, DowntimeLimitMs = DowntimeLimitMs, MaxBandwidth = 0 };
            try
            {
                statistics = client.MigrateAsync(request, cts.Token).GetAwaiter().GetResult();
            }
            catch (OperationCanceledException)
            {
                try
                {
                    client.CancelMigrationAsync(CancellationToken.None).GetAwaiter().GetResult();
                }
                catch (Exception e) when (e is VmApiException or ApiSocketException)
                {
                    // Killed below either way.
                }
                return Failed($"the migration did not end within {MigrateTimeout.TotalSeconds:0} s", source, destination);
            }
        }
        double hostMs = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        var r = new RunResult
        {
            Status = statistics.Status.ToString().ToLowerInvariant(),
            TotalMs = statistics.TotalMs,
            DowntimeMs = statistics.DowntimeMs,
            BytesSent = statistics.BytesSent,
            HostMs = hostMs,
            Rounds = statistics.Rounds.Count,
            ExpectedDowntimeMs = statistics.ExpectedDowntimeMs,
        };
        if (statistics.Status != MigrationStatus.Completed)
        {
            r.Problem = $"migration {r.Status}: {statistics.Error}";
            return r;
        }
        r.SourceExitCode = source.WaitForExit(TimeSpan.FromSeconds(30)) ? source.ExitCode : null;
        Observe(source, destination, start, r);
        try
        {
            using var client = new VmApiClient(destinationApi);
            client.ShutdownAsync(CancellationToken.None).GetAwaiter().GetResult();
            destination.WaitForExit(TimeSpan.FromSeconds(30));
        }
        catch (Exception e) when (e is VmApiException or ApiSocketException)
        {
            // Killed by the caller.
        }
        return r;
    }

    // ---------------------------------------------------------------- one migration under QEMU

    private static string[] QemuArguments(string image, Case c, string qmp) =>
    [
        "-M", "virt", "-smp", Harts.ToString(CultureInfo.InvariantCulture), "-m", Memory, "-bios", Firmware,
        "-kernel", image, "-append", Cmdline(c), "-nographic", "-serial", "stdio", "-monitor", "none", "-no-reboot",
        "-qmp", $"unix:{qmp},server=on,wait=off",
    ];

    private static RunResult RunQemu(Case c, string image, string dir)
    {
        string sourceQmp = Path.Combine(dir, "s.qmp");
        string destinationQmp = Path.Combine(dir, "d.qmp");
        int port = FreePort();
        using var destination = VmProcess.Start("qemu destination", Qemu,
            [.. QemuArguments(image, c, destinationQmp), "-incoming", $"tcp:127.0.0.1:{port}"]);
        using var source = VmProcess.Start("qemu source", Qemu, QemuArguments(image, c, sourceQmp));
        if (source.WaitForLine(l => l.StartsWith("dirtier: ", StringComparison.Ordinal), BootTimeout) is null)
        {
            return Failed("the guest did not start its workload on the source", source, destination);
        }
        Thread.Sleep(Settle);
        if (source.HasExited) return Failed("the source QEMU ended", source, destination);
        if (destination.HasExited) return Failed("the destination QEMU ended", source, destination);

        using var qmp = QmpClient.Connect(sourceQmp, StepTimeout, () => source.HasExited);
        qmp.Execute("migrate-set-parameters", new JsonObject
        {
            ["downtime-limit"] = (long)DowntimeLimitMs,
            ["max-bandwidth"] = QemuMaxBandwidth,
        });
        long start = Stopwatch.GetTimestamp();
        qmp.Execute("migrate", new JsonObject { ["uri"] = $"tcp:127.0.0.1:{port}" });
        JsonObject info;
        string status;
        while (true)
        {
            info = qmp.Execute("query-migrate") as JsonObject ?? [];
            status = (string?)info["status"] ?? "none";
            if (status is "completed" or "failed" or "cancelled") break;
            if (Stopwatch.GetElapsedTime(start) > MigrateTimeout)
            {
                qmp.Execute("migrate_cancel");
                return Failed($"the migration did not end within {MigrateTimeout.TotalSeconds:0} s", source, destination);
            }
            // 20 ms: fine enough for the host time, rare enough not to compete with QEMU's migration thread.
            Thread.Sleep(20);
        }
        double hostMs = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        var r = new RunResult
        {
            Status = status,
            TotalMs = (double?)info["total-time"] ?? 0,
            DowntimeMs = (double?)info["downtime"] ?? 0,
            BytesSent = (long?)info["ram"]?["transferred"] ?? 0,
            HostMs = hostMs,
            Rounds = (int?)info["ram"]?["dirty-sync-count"] ?? 0,
            ExpectedDowntimeMs = (double?)info["expected-downtime"],
        };
        if (status != "completed")
        {
            r.Problem = $"migration {status}: {(string?)info["error-desc"]}";
            return r;
        }
        // The source stays paused (postmigrate) until told to go.
        try
        {
            qmp.Execute("quit");
        }
        catch (QmpException)
        {
            // It closed the socket as it quit.
        }
        r.SourceExitCode = source.WaitForExit(TimeSpan.FromSeconds(30)) ? source.ExitCode : null;
        Observe(source, destination, start, r);
        destination.Type("poweroff");
        destination.WaitForExit(TimeSpan.FromSeconds(10));
        return r;
    }

    private static int FreePort()
    {
        // QEMU 7.2's -incoming cannot report a port it chose; a port the kernel just handed out is free in practice.
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    // ---------------------------------------------------------------- what the guest saw

    /// <summary>
    /// Wait for the destination's heartbeat, let the guest run, ask for its self-check; then the longest gap between
    /// heartbeat lines from the migration's start to the self-check (source's console, then destination's), and the
    /// guest's own largest stall in the source's last line and the destination's first second.
    /// </summary>
    private static void Observe(VmProcess source, VmProcess destination, long migrationStart, RunResult r)
    {
        var first = destination.WaitForLine(l => l.StartsWith("heartbeat ", StringComparison.Ordinal), TimeSpan.FromSeconds(10));
        Thread.Sleep(Settle);
        int at = destination.LineCount;
        long typedAt = Stopwatch.GetTimestamp();
        destination.Type("selfcheck");
        // 20 s: Ferry checks 256 MiB in ~1 s; a guest frozen on arrival (QEMU 7.2) never answers.
        string selfcheck = destination.WaitForLine(l => l.StartsWith("selfcheck ", StringComparison.Ordinal), TimeSpan.FromSeconds(20), at)?.Line
                           ?? "no answer";
        r.Selfcheck = selfcheck;
        r.SelfcheckOk = selfcheck.StartsWith("selfcheck ok", StringComparison.Ordinal);

        var before = source.Heartbeats.Where(h => h.At >= migrationStart).ToArray();
        var after = destination.Heartbeats.Where(h => h.At < typedAt).ToArray();
        r.HeartbeatsAfterResume = after.Length;
        r.ArrivedWithinMs = first is { } f && f.At < typedAt ? Stopwatch.GetElapsedTime(migrationStart, f.At).TotalMilliseconds : null;
        if (after.Length == 0) return; // Frozen on arrival: no gap to speak of (the heartbeat never resumed).

        double maxGapMs = 0;
        long? previous = null;
        int i = 0;
        foreach (var h in before.Concat(after))
        {
            if (previous is { } p && Stopwatch.GetElapsedTime(p, h.At).TotalMilliseconds is var gap && gap > maxGapMs)
            {
                maxGapMs = gap;
                r.HeartbeatGapWhere = i < before.Length ? "source" : i == before.Length ? "switchover" : "destination";
            }
            previous = h.At;
            i++;
        }
        r.HeartbeatGapMs = maxGapMs;
        // The gap at the handover itself: the source's last line to the destination's first.
        if (before.Length > 0) r.SwitchoverGapMs = Stopwatch.GetElapsedTime(before[^1].At, after[0].At).TotalMilliseconds;
        long resumeAt = after[0].At;
        long stallUs = before.Length > 0 ? before[^1].MaxStallUs : 0;
        foreach (var h in after)
        {
            if (Stopwatch.GetElapsedTime(resumeAt, h.At) <= TimeSpan.FromSeconds(1)) stallUs = Math.Max(stallUs, h.MaxStallUs);
        }
        r.MaxStallMs = stallUs / 1000.0;
        if (before.Length > 0) r.LastSeqOnSource = before[^1].Seq;
        r.FirstSeqOnDestination = after[0].Seq;
    }

    private static RunResult Failed(string what, params VmProcess[] processes)
    {
        var lines = new List<string> { what };
        foreach (var p in processes)
        {
            foreach (string l in p.ErrorLines.TakeLast(5)) lines.Add($"{p.Name} stderr: {l}");
            foreach (string l in p.LastLines(3)) lines.Add($"{p.Name} console: {l}");
        }
        return new RunResult { Problem = string.Join("; ", lines) };
    }

    private static string IntactProblem(RunResult r) =>
        r.Status != "completed" ? $"status {r.Status}"
        : r.HeartbeatsAfterResume == 0 ? "the heartbeat did not resume on the destination"
        : !r.SelfcheckOk ? $"self-check: {r.Selfcheck}"
        : r.SourceExitCode != 0 ? $"source exit code {r.SourceExitCode?.ToString(CultureInfo.InvariantCulture) ?? "(still running)"}"
        : "?";

    private static string RunLine(RunResult r)
    {
        var ic = CultureInfo.InvariantCulture;
        string head = $"{r.Case,-5} #{r.Repetition} {r.System,-5}";
        if (r.Problem is not null && r.Status is null) return $"{head} FAILED: {r.Problem}";
        string gap = r.HeartbeatGapMs is { } g
            ? string.Create(ic, $"{g,7:0.0} ms ({r.HeartbeatGapWhere}; switchover {r.SwitchoverGapMs ?? double.NaN:0.0} ms)")
            : "STOPPED on arrival";
        string stall = r.MaxStallMs?.ToString("0.0", ic) ?? "-";
        string check = r.SelfcheckOk ? "selfcheck ok" : r.Selfcheck ?? "-";
        string problem = r.Problem is not null ? "  " + r.Problem : "";
        return string.Create(ic,
            $"{head} {r.Status} total {r.TotalMs,7:0} ms  downtime {r.DowntimeMs,6:0.0} ms  gap {gap}  stall {stall,5} ms  " +
            $"sent {r.BytesSent / 1048576.0,6:0.0} MiB  rounds {r.Rounds,2}  {check}  (load {r.LoadAverage:0.0}){problem}");
    }

    // ---------------------------------------------------------------- summary

    private static void Summarise(Settings s, Report report)
    {
        foreach (var c in s.Cases)
        {
            foreach (var system in new[] { "ferry", "qemu" })
            {
                var runs = report.Runs.Where(r => r.Case == c.Name && r.System == system).ToList();
                if (runs.Count == 0) continue;
                var done = runs.Where(r => r.Status == "completed").ToList();
                var gaps = done.Where(r => r.HeartbeatGapMs is not null).ToList();
                report.Summary.Add(new Summary
                {
                    Case = c.Name,
                    System = system,
                    Runs = runs.Count,
                    Completed = done.Count,
                    Intact = runs.Count(r => r.Intact),
                    SelfcheckOk = done.Count(r => r.SelfcheckOk),
                    HeartbeatResumed = gaps.Count,
                    TotalMs = Median(done.Select(r => r.TotalMs)),
                    DowntimeMs = Median(done.Select(r => r.DowntimeMs)),
                    HeartbeatGapMs = Median(gaps.Select(r => r.HeartbeatGapMs!.Value)),
                    SwitchoverGapMs = Median(gaps.Where(r => r.SwitchoverGapMs is not null).Select(r => r.SwitchoverGapMs!.Value)),
                    GapMinusDowntimeMs = Median(gaps.Where(r => r.SwitchoverGapMs is not null).Select(r => r.SwitchoverGapMs!.Value - r.DowntimeMs)),
                    MaxStallMs = Median(gaps.Select(r => r.MaxStallMs ?? 0)),
                    BytesSent = Median(done.Select(r => (double)r.BytesSent)),
                    HostMs = Median(done.Select(r => r.HostMs)),
                });
            }
            var ferry = report.Summary.FirstOrDefault(x => x.Case == c.Name && x.System == "ferry");
            var qemu = report.Summary.FirstOrDefault(x => x.Case == c.Name && x.System == "qemu");
            if (ferry?.TotalMs is { } ft && qemu?.TotalMs is { } qt && qt > 0) ferry.TotalOverQemu = ft / qt;
            if (ferry?.HostMs is { } fh && qemu?.HostMs is { } qh && qh > 0) ferry.HostOverQemu = fh / qh;
        }
    }

    internal static double? Median(IEnumerable<double> values)
    {
        var v = values.Order().ToList();
        if (v.Count == 0) return null;
        return v.Count % 2 == 1 ? v[v.Count / 2] : (v[v.Count / 2 - 1] + v[v.Count / 2]) / 2;
    }

    private static void PrintSummary(Report report, TextWriter output)
    {
        var ic = CultureInfo.InvariantCulture;
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(output),
            Ansi = output == Console.Out && !Console.IsOutputRedirected ? AnsiSupport.Detect : AnsiSupport.No,
            ColorSystem = output == Console.Out && !Console.IsOutputRedirected ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
        });
        // A file or a pipe gets the whole table, not wrapped at 80 columns.
        if (output != Console.Out || Console.IsOutputRedirected) console.Profile.Width = 200;
        string F(double? v, string format = "0.0") => v?.ToString(format, ic) ?? "-";
        var table = new Table().Border(TableBorder.Rounded)
            .Title($"medians of {report.Repetitions} repetition(s): {report.Memory}, {report.Harts} harts, heartbeat every {report.HeartbeatMs} ms")
            .AddColumn("case").AddColumn("system")
            .AddColumn(new TableColumn("total ms").RightAligned()).AddColumn(new TableColumn("ferry/qemu").RightAligned())
            .AddColumn(new TableColumn("host ms").RightAligned()).AddColumn(new TableColumn("ferry/qemu").RightAligned())
            .AddColumn(new TableColumn("downtime ms").RightAligned()).AddColumn(new TableColumn("gap ms").RightAligned())
            .AddColumn(new TableColumn("at switchover").RightAligned())
            .AddColumn(new TableColumn("switchover - downtime").RightAligned()).AddColumn(new TableColumn("guest stall ms").RightAligned())
            .AddColumn(new TableColumn("sent MiB").RightAligned()).AddColumn("heartbeat resumed").AddColumn("selfcheck ok").AddColumn("intact");
        foreach (var x in report.Summary)
        {
            table.AddRow(
                new Text(x.Case), new Text(x.System), new Text(F(x.TotalMs, "0")), new Text(F(x.TotalOverQemu, "0.00")),
                new Text(F(x.HostMs, "0")), new Text(F(x.HostOverQemu, "0.00")),
                new Text(F(x.DowntimeMs)), new Text(F(x.HeartbeatGapMs)), new Text(F(x.SwitchoverGapMs)), new Text(F(x.GapMinusDowntimeMs)),
                new Text(F(x.MaxStallMs)),
                new Text(F(x.BytesSent / 1048576.0)), Count(x.HeartbeatResumed, x.Completed), Count(x.SelfcheckOk, x.Completed), Count(x.Intact, x.Runs));
        }
        console.Write(table);
        output.WriteLine("total: as the system reports it (Ferry: the engine's total_ms; QEMU: total-time). host: the migrate request to its end on this");
        output.WriteLine("process's clock (Ferry: the API answer; QEMU: query-migrate completed, polled every 20 ms). gap: the longest gap between");
        output.WriteLine("heartbeat lines from the migrate request to the destination's self-check, host time; at switchover: the source's last");
        output.WriteLine("line to the destination's first; less the downtime, it is what the guest saw beyond the system's figure, up to one");
        output.WriteLine("heartbeat period of which is the heartbeat's own cadence. guest stall: the guest's own maxstall_us around the switchover.");

        output.WriteLine("targets (reported, not asserted):");
        foreach (var x in report.Summary.Where(x => x.System == "ferry"))
        {
            double target = x.Case == "idle" ? IdleDowntimeTargetMs : BusyDowntimeTargetMs;
            output.WriteLine(string.Create(ic,
                $"  {x.Case,-5} downtime {F(x.DowntimeMs)} ms <= {target} ms: {Verdict(x.DowntimeMs <= target)}; " +
                $"switchover gap - downtime {F(x.GapMinusDowntimeMs)} ms <= heartbeat {report.HeartbeatMs} + {GapSlackTargetMs} ms: {Verdict(x.GapMinusDowntimeMs <= report.HeartbeatMs + GapSlackTargetMs)}; " +
                $"total/QEMU {F(x.TotalOverQemu, "0.00")} <= {TotalRatioTarget}: {(x.TotalOverQemu is null ? "no QEMU figure" : Verdict(x.TotalOverQemu <= TotalRatioTarget))}; " +
                $"intact {x.Intact}/{x.Runs}: {Verdict(x.Intact == x.Runs)}"));
        }
        output.WriteLine(string.Create(ic, $"load average: {report.LoadAverageAtStart:0.00} at start, {report.LoadAverageAtEnd:0.00} at end"));
    }

    private static Text Count(int k, int n) => new($"{k}/{n}", new Style(k == n ? Color.Green : Color.Red));

    private static string Verdict(bool? met) => met == true ? "met" : "NOT met";

    // ---------------------------------------------------------------- setup

    /// <summary><c>guest-linux/build.sh</c> (a no-op when cached); the Image path is its last line.</summary>
    internal static string? BuildGuest(string root, TextWriter error)
    {
        var (code, stdout, stderr) = RunTool(Path.Combine(root, "guest-linux", "build.sh"), [], TimeSpan.FromMinutes(30));
        string? image = stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).LastOrDefault();
        if (code != 0 || image is null || !File.Exists(image))
        {
            error.WriteLine($"Ferry.Bench vm: guest-linux/build.sh failed (exit {code}): {stderr.Trim()}");
            return null;
        }
        return image;
    }

    /// <summary>
    /// Build <c>.out/ferry</c> through <c>./ferry --help</c> (ReadyToRun published, as users run it), then copy it to
    /// <paramref name="work"/>: other work on this checkout may rebuild <c>.out/ferry</c> while the benchmark runs.
    /// </summary>
    internal static string? SnapshotFerry(string root, string work, TextWriter error)
    {
        var (code, _, stderr) = RunTool(Path.Combine(root, "ferry"), ["--help"], TimeSpan.FromMinutes(10));
        string built = Path.Combine(root, ".out", "ferry");
        if (code != 0 || !File.Exists(Path.Combine(built, "ferry")))
        {
            error.WriteLine($"Ferry.Bench vm: building ferry failed (exit {code}): {stderr.Trim()}");
            return null;
        }
        string copy = Path.Combine(work, "ferry-bin");
        foreach (string file in Directory.EnumerateFiles(built, "*", SearchOption.AllDirectories))
        {
            string target = Path.Combine(copy, Path.GetRelativePath(built, file));
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            File.Copy(file, target);
        }
        // File.Copy keeps the mode bits on Unix: the apphost stays executable.
        return Path.Combine(copy, "ferry");
    }

    private static (int Code, string Stdout, string Stderr) RunTool(string file, string[] args, TimeSpan timeout)
    {
        var psi = new ProcessStartInfo(file) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in args) psi.ArgumentList.Add(a);
        try
        {
            using var p = Process.Start(psi)!;
            var stdout = p.StandardOutput.ReadToEndAsync();
            var stderr = p.StandardError.ReadToEndAsync();
            if (!p.WaitForExit(timeout))
            {
                p.Kill();
                p.WaitForExit();
                return (-1, "", $"{file}: still running after {timeout.TotalMinutes:0} min");
            }
            return (p.ExitCode, stdout.Result, stderr.Result);
        }
        catch (Win32Exception e)
        {
            return (-1, "", $"cannot run {file}: {e.Message}");
        }
    }

    internal static string? QemuVersion(TextWriter output)
    {
        var (code, stdout, stderr) = RunTool(Qemu, ["--version"], TimeSpan.FromSeconds(30));
        string? version = stdout.Split('\n').FirstOrDefault()?.Trim();
        if (code != 0 || string.IsNullOrEmpty(version))
        {
            output.WriteLine($"{Qemu} is not runnable ({stderr.Trim()}; apt-get install qemu-system-misc): Ferry figures only");
            return null;
        }
        output.WriteLine($"QEMU: {version}");
        return version;
    }

    internal static double LoadAverage()
    {
        try
        {
            string first = File.ReadAllText("/proc/loadavg").Split(' ')[0];
            return double.Parse(first, CultureInfo.InvariantCulture);
        }
        catch (Exception e) when (e is IOException or FormatException or UnauthorizedAccessException)
        {
            return double.NaN;
        }
    }

    private static bool TryParse(string[] args, out Settings settings, out string problem)
    {
        settings = new Settings();
        if (!BenchArguments.TrySplit(args, new HashSet<string> { "--no-qemu" }, out var flags, out problem)) return false;
        foreach (var (flag, value) in flags)
        {
            switch (flag)
            {
                case "--no-qemu":
                    settings = settings with { UseQemu = false };
                    break;
                case "--json":
                    settings = settings with { JsonPath = value };
                    break;
                case "--repetitions" when int.TryParse(value, CultureInfo.InvariantCulture, out var n) && n is > 0 and <= 100:
                    settings = settings with { Repetitions = n };
                    break;
                case "--cases":
                    var cases = new List<Case>();
                    foreach (string name in value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
                    {
                        if (ParseCase(name) is not { } c)
                        {
                            problem = $"--cases: '{name}' is not idle or a rate in pages/s (5k, 50k, 20000)";
                            return false;
                        }
                        cases.Add(c);
                    }
                    if (cases.Count == 0)
                    {
                        problem = "--cases: no case given";
                        return false;
                    }
                    settings = settings with { Cases = cases };
                    break;
                default:
                    problem = $"{flag}: '{value}' is not understood";
                    return false;
            }
        }
        return true;
    }

    private static Case? ParseCase(string name)
    {
        if (name == "idle") return new Case(name, 0);
        string digits = name.EndsWith('k') ? name[..^1] : name;
        long scale = name.EndsWith('k') ? 1000 : 1;
        return long.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out long rate) && rate * scale is > 0 and <= 10_000_000
            ? new Case(name, rate * scale)
            : null;
    }

    // ---------------------------------------------------------------- JSON

    private static readonly JsonSerializerOptions JsonOptions = new()
    {
        WriteIndented = true,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    private sealed class Report
    {
        [JsonPropertyName("repetitions")] public int Repetitions { get; init; }
        [JsonPropertyName("kernel")] public required string Kernel { get; init; }
        [JsonPropertyName("qemu_version")] public string? QemuVersion { get; init; }
        [JsonPropertyName("memory")] public required string Memory { get; init; }
        [JsonPropertyName("harts")] public int Harts { get; init; }
        [JsonPropertyName("working_set")] public required string WorkingSet { get; init; }
        [JsonPropertyName("heartbeat_ms")] public int HeartbeatMs { get; init; }
        [JsonPropertyName("downtime_limit_ms")] public double DowntimeLimitMs { get; init; }
        [JsonPropertyName("load_average_at_start")] public double LoadAverageAtStart { get; init; }
        [JsonPropertyName("load_average_at_end")] public double LoadAverageAtEnd { get; set; }
        [JsonPropertyName("summary")] public List<Summary> Summary { get; } = [];
        [JsonPropertyName("runs")] public List<RunResult> Runs { get; } = [];
    }

    /// <summary>Medians over a case's completed runs of one system (gap and stall: over those whose heartbeat resumed).</summary>
    private sealed class Summary
    {
        [JsonPropertyName("case")] public required string Case { get; init; }
        [JsonPropertyName("system")] public required string System { get; init; }
        [JsonPropertyName("runs")] public int Runs { get; init; }
        [JsonPropertyName("completed")] public int Completed { get; init; }
        [JsonPropertyName("intact")] public int Intact { get; init; }
        [JsonPropertyName("selfcheck_ok")] public int SelfcheckOk { get; init; }
        [JsonPropertyName("heartbeat_resumed")] public int HeartbeatResumed { get; init; }
        [JsonPropertyName("total_ms")] public double? TotalMs { get; init; }
        [JsonPropertyName("total_over_qemu")] public double? TotalOverQemu { get; set; }
        [JsonPropertyName("downtime_ms")] public double? DowntimeMs { get; init; }
        [JsonPropertyName("heartbeat_gap_ms")] public double? HeartbeatGapMs { get; init; }
        [JsonPropertyName("switchover_gap_ms")] public double? SwitchoverGapMs { get; init; }
        /// <summary>The switchover gap less the system's downtime: what the guest saw that the downtime figure does not say.</summary>
        [JsonPropertyName("switchover_gap_minus_downtime_ms")] public double? GapMinusDowntimeMs { get; init; }
        [JsonPropertyName("max_stall_ms")] public double? MaxStallMs { get; init; }
        [JsonPropertyName("bytes_sent")] public double? BytesSent { get; init; }
        [JsonPropertyName("host_ms")] public double? HostMs { get; init; }
        [JsonPropertyName("host_over_qemu")] public double? HostOverQemu { get; set; }
    }

    private sealed class RunResult
    {
        [JsonPropertyName("system")] public string System { get; set; } = "";
        [JsonPropertyName("case")] public string Case { get; set; } = "";
        [JsonPropertyName("repetition")] public int Repetition { get; set; }
        [JsonPropertyName("load_average")] public double LoadAverage { get; set; }
        /// <summary>The system's own word: <c>completed</c>, <c>failed</c>, ...; null when the harness failed before a migration ended.</summary>
        [JsonPropertyName("status")] public string? Status { get; init; }
        [JsonPropertyName("total_ms")] public double TotalMs { get; init; }
        [JsonPropertyName("downtime_ms")] public double DowntimeMs { get; init; }
        [JsonPropertyName("expected_downtime_ms")] public double? ExpectedDowntimeMs { get; init; }
        /// <summary>Ferry: bytes_sent; QEMU: ram.transferred.</summary>
        [JsonPropertyName("bytes_sent")] public long BytesSent { get; init; }
        /// <summary>Ferry: pre-copy rounds; QEMU: dirty-sync-count.</summary>
        [JsonPropertyName("rounds")] public int Rounds { get; init; }
        /// <summary>From the migrate request to its answer (Ferry) or to query-migrate's completed (QEMU, polled every 20 ms), host clock.</summary>
        [JsonPropertyName("host_ms")] public double HostMs { get; init; }
        [JsonPropertyName("source_exit_code")] public int? SourceExitCode { get; set; }
        [JsonPropertyName("heartbeat_gap_ms")] public double? HeartbeatGapMs { get; set; }
        /// <summary>Where the longest gap was: <c>source</c> (during pre-copy), <c>switchover</c>, or <c>destination</c>.</summary>
        [JsonPropertyName("heartbeat_gap_where")] public string? HeartbeatGapWhere { get; set; }
        [JsonPropertyName("switchover_gap_ms")] public double? SwitchoverGapMs { get; set; }
        [JsonPropertyName("max_stall_ms")] public double? MaxStallMs { get; set; }
        [JsonPropertyName("heartbeats_after_resume")] public int HeartbeatsAfterResume { get; set; }
        [JsonPropertyName("last_heartbeat_on_source")] public long? LastSeqOnSource { get; set; }
        [JsonPropertyName("first_heartbeat_on_destination")] public long? FirstSeqOnDestination { get; set; }
        [JsonPropertyName("arrived_within_ms")] public double? ArrivedWithinMs { get; set; }
        [JsonPropertyName("selfcheck")] public string? Selfcheck { get; set; }
        [JsonPropertyName("selfcheck_ok")] public bool SelfcheckOk { get; set; }
        [JsonPropertyName("problem")] public string? Problem { get; set; }

        /// <summary>Completed, the heartbeat went on at the destination, the memory checked out, and the source went away cleanly.</summary>
        [JsonPropertyName("intact")]
        public bool Intact => Status == "completed" && HeartbeatsAfterResume > 0 && SelfcheckOk && SourceExitCode == 0;
    }
}
