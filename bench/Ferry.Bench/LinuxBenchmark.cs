using Ferry.Cli;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Ferry.Bench;

/// <summary>
/// How fast the built-in Linux guest (<c>guest-linux/</c>: the same Image with its embedded initramfs, and OpenSBI's
/// <c>fw_dynamic.bin</c>) runs on Ferry's machine and under QEMU 7.2 TCG, in one run, 1 GiB and 2 harts each; both
/// driven as processes through their console (<c>ferry vm run</c>, <c>qemu-system-riscv64 -M virt</c>), one VM at a
/// time. Per system: boot (host time from process start to the guest's first heartbeat line); guest throughput (the
/// dirtier's achieved pages/s when asked for far more than either machine can do, and the disk writer's 4 KiB
/// <c>O_DIRECT | O_DSYNC</c> writes per second, each from two <c>status</c> answers 5 s apart on the host clock); and
/// the idle cost (the VM process's CPU time, <c>/proc/PID/stat</c> utime + stime, over 10 s of a guest with nothing
/// to do). <c>docs/BENCH-LINUX.md</c> has the method and a measured table.
/// </summary>
internal static class LinuxBenchmark
{
    private const string Memory = "1G";
    private const int Harts = 2;
    /// <summary>
    /// In every case: a heartbeat a second and the stall sampler every 100 ms instead of every 1 ms, so that the guest's
    /// own clockwork (1,000 wake-ups/s by default) costs little next to what is measured.
    /// </summary>
    private const string QuietGuest = "console=ttyS0 ferry.heartbeat=1s ferry.tick=100ms";
    private const long DiskImageBytes = 128L << 20;
    private const int BlockBytes = 4096;

    // Targets from issue 9's "Speed" section: reported against, not asserted.
    private const double BootTargetSeconds = 2;
    private const double IdleTargetPercent = 3;

    private static readonly TimeSpan BootTimeout = TimeSpan.FromSeconds(120);
    /// <summary>A workload's first line after the heartbeat, and each <c>status</c> answer.</summary>
    private static readonly TimeSpan StepTimeout = TimeSpan.FromSeconds(60);
    /// <summary>From the workload's first line to the first <c>status</c>: its threads are running by then.</summary>
    private static readonly TimeSpan Warmup = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan ThroughputWindow = TimeSpan.FromSeconds(5);
    /// <summary>After the first heartbeat, before the idle window: the rest of the boot and the JIT's tiering are over.</summary>
    private static readonly TimeSpan IdleSettle = TimeSpan.FromSeconds(5);
    private static readonly TimeSpan IdleWindow = TimeSpan.FromSeconds(10);

    private enum Workload
    {
        Dirtier,
        Disk,
        Idle,
    }

    private sealed record Case(string Name, Workload Workload, string Cmdline);

    private static readonly Case[] Cases =
    [
        // 10M pages/s on two threads: far beyond either machine, so the figure is what the guest achieves.
        new("dirtier", Workload.Dirtier, $"{QuietGuest} ferry.ws=64M ferry.threads=2 ferry.rate=10000000"),
        // ws=0: no dirtier competing with the disk writer. 1M blocks/s: the writer never sleeps between writes.
        new("disk", Workload.Disk, $"{QuietGuest} ferry.ws=0 ferry.disk=1 ferry.diskrate=1000000 ferry.disksize=64M"),
        // The dirtier's working set is filled at boot, then nothing runs but the heartbeat and its sampler.
        new("idle", Workload.Idle, $"{QuietGuest} ferry.rate=0"),
    ];

    private sealed record Settings
    {
        public string? JsonPath { get; init; }
        public int Repetitions { get; init; } = 3;
        public bool UseQemu { get; init; } = true;
    }

    public static int Run(string[] args, TextWriter output, TextWriter error)
    {
        if (!TryParse(args, out var settings, out var problem))
        {
            error.WriteLine($"Ferry.Bench linux: {problem}");
            error.WriteLine("usage: Ferry.Bench linux [--repetitions N] [--no-qemu] [--json FILE]");
            return 2;
        }
        if (RepoRoot.Find() is not { } root)
        {
            error.WriteLine("Ferry.Bench linux: cannot find the repository (no Ferry.slnx above the current or the program's directory)");
            return 2;
        }
        if (!File.Exists(VmBenchmark.Firmware))
        {
            error.WriteLine($"Ferry.Bench linux: {VmBenchmark.Firmware}: no such file (apt-get install opensbi)");
            return 2;
        }
        if (VmBenchmark.BuildGuest(root, error) is not { } image) return 1;

        // Children die with the benchmark: Ctrl+C or any exit kills the VM processes it started, by their PIDs.
        Console.CancelKeyPress += (_, _) => VmProcess.KillAll();
        AppDomain.CurrentDomain.ProcessExit += (_, _) => VmProcess.KillAll();
        DirectoryInfo work = Directory.CreateTempSubdirectory("ferry-bench-linux-");
        try
        {
            if (VmBenchmark.SnapshotFerry(root, work.FullName, error) is not { } ferry) return 1;
            string? qemuVersion = settings.UseQemu ? VmBenchmark.QemuVersion(output) : null;
            if (!settings.UseQemu) output.WriteLine("--no-qemu: Ferry figures only");
            return Measure(settings, ferry, image, qemuVersion, work.FullName, output, error);
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
                // A file still held by a child being reaped: the temp cleaner gets it.
            }
        }
    }

    private static int Measure(Settings s, string ferry, string image, string? qemuVersion, string work, TextWriter output, TextWriter error)
    {
        var report = new Report
        {
            Repetitions = s.Repetitions,
            Kernel = image,
            Firmware = VmBenchmark.Firmware,
            QemuVersion = qemuVersion,
            Memory = Memory,
            Harts = Harts,
            Cases = Cases.ToDictionary(c => c.Name, c => c.Cmdline),
            LoadAverageAtStart = VmBenchmark.LoadAverage(),
        };
        output.WriteLine($"guest: {image}, {Memory} RAM, {Harts} harts; {s.Repetitions} repetition(s); ferry: {ferry}");
        foreach (var c in Cases) output.WriteLine($"  {c.Name,-7} {c.Cmdline}");
        output.WriteLine();
        for (var rep = 1; rep <= s.Repetitions; rep++)
        {
            foreach (var c in Cases)
            {
                // Alternate which system goes first, from case to case and, for each case, from repetition to
                // repetition, so that neither always inherits the other's page cache or a quieter moment.
                bool ferryFirst = (rep + Array.IndexOf(Cases, c)) % 2 == 1;
                foreach (string system in ferryFirst ? new[] { "ferry", "qemu" } : ["qemu", "ferry"])
                {
                    if (system == "qemu" && qemuVersion is null) continue;
                    double load = VmBenchmark.LoadAverage();
                    RunResult r;
                    try
                    {
                        r = RunOne(system, c, system == "ferry" ? ferry : VmBenchmark.Qemu, image, work);
                    }
                    catch (Exception e) when (e is InvalidOperationException or IOException or FormatException or UnauthorizedAccessException)
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
                }
            }
        }
        report.LoadAverageAtEnd = VmBenchmark.LoadAverage();
        Summarise(report);
        output.WriteLine();
        PrintTable(report, output);
        if (s.JsonPath is { } path)
        {
            File.WriteAllText(path, JsonSerializer.Serialize(report, JsonOptions));
            output.WriteLine($"wrote {path}");
        }
        // Ferry's failures are this project's: the exit code says so. QEMU's are reported as measured.
        var failed = report.Runs.Where(r => r.System == "ferry" && r.Problem is not null).ToList();
        if (failed.Count == 0) return 0;
        error.WriteLine($"Ferry.Bench linux: {failed.Count} Ferry run(s) failed:");
        foreach (var r in failed) error.WriteLine($"  !! {r.Case} #{r.Repetition}: {r.Problem}");
        return 1;
    }

    // ---------------------------------------------------------------- one VM

    private static string[] FerryArguments(string image, string cmdline, string? disk) =>
    [
        "vm", "run", "--kernel", image, "--firmware", VmBenchmark.Firmware, "--memory", Memory,
        "--harts", Harts.ToString(CultureInfo.InvariantCulture), "--cmdline", cmdline,
        .. disk is null ? Array.Empty<string>() : ["--disk", disk],
    ];

    private static string[] QemuArguments(string image, string cmdline, string? disk) =>
    [
        "-M", "virt", "-smp", Harts.ToString(CultureInfo.InvariantCulture), "-m", Memory, "-bios", VmBenchmark.Firmware,
        "-kernel", image, "-append", cmdline, "-nographic", "-serial", "stdio", "-monitor", "none", "-no-reboot",
        .. disk is null ? Array.Empty<string>() : ["-drive", $"file={disk},format=raw,if=none,id=d0", "-device", "virtio-blk-device,drive=d0"],
    ];

    /// <summary>Boot one VM with the case's command line, measure the boot and the case, power it off.</summary>
    private static RunResult RunOne(string system, Case c, string executable, string image, string work)
    {
        string? disk = null;
        if (c.Workload == Workload.Disk)
        {
            // Sparse and fresh for every run: neither system finds the other's blocks, in the file or the page cache.
            disk = Path.Combine(work, $"{system}-disk.img");
            using (var file = new FileStream(disk, FileMode.Create, FileAccess.Write)) file.SetLength(DiskImageBytes);
        }
        try
        {
            string[] args = system == "ferry" ? FerryArguments(image, c.Cmdline, disk) : QemuArguments(image, c.Cmdline, disk);
            long started = Stopwatch.GetTimestamp();
            using var vm = VmProcess.Start(system, executable, args);
            if (vm.WaitForLine(l => l.StartsWith("heartbeat ", StringComparison.Ordinal), BootTimeout) is not { } first)
            {
                return Failed($"no heartbeat within {BootTimeout.TotalSeconds:0} s", vm);
            }
            var r = new RunResult { BootSeconds = Stopwatch.GetElapsedTime(started, first.At).TotalSeconds };
            string? problem = c.Workload switch
            {
                Workload.Dirtier => MeasureDirtier(vm, r),
                Workload.Disk => MeasureDisk(vm, r),
                _ => MeasureIdle(vm, r),
            };
            if (problem is not null) return Failed(problem, vm);
            vm.Type("poweroff");
            r.ExitCode = vm.WaitForExit(TimeSpan.FromSeconds(10)) ? vm.ExitCode : null;
            return r;
        }
        finally
        {
            if (disk is not null) File.Delete(disk);
        }
    }

    private static string? MeasureDirtier(VmProcess vm, RunResult r)
    {
        if (vm.WaitForLine(l => l.StartsWith("dirtier: ", StringComparison.Ordinal), StepTimeout) is null) return "the dirtier did not start";
        Thread.Sleep(Warmup);
        if (CounterRate(vm, "dirtied", r) is not { } perSecond) return "no status answer, or no dirtied= in it";
        r.DirtierPagesPerSecond = perSecond;
        return null;
    }

    private static string? MeasureDisk(VmProcess vm, RunResult r)
    {
        var opened = vm.WaitForLine(l => l.StartsWith("disk: ", StringComparison.Ordinal) || l.StartsWith("error: ", StringComparison.Ordinal), StepTimeout);
        if (opened is not { } o || o.Line.StartsWith("error: ", StringComparison.Ordinal)) return $"the disk writer did not start: {opened?.Line}";
        Thread.Sleep(Warmup);
        if (CounterRate(vm, "disk_writes", r) is not { } perSecond) return "no status answer, or no disk_writes= in it";
        r.DiskWritesPerSecond = perSecond;
        r.DiskMBPerSecond = perSecond * BlockBytes / 1e6;
        return null;
    }

    private static string? MeasureIdle(VmProcess vm, RunResult r)
    {
        Thread.Sleep(IdleSettle);
        if (vm.HasExited) return "the VM process ended";
        long start = Stopwatch.GetTimestamp();
        long before = CpuTicks(vm.Id);
        Thread.Sleep(IdleWindow);
        long after = CpuTicks(vm.Id);
        double wall = Stopwatch.GetElapsedTime(start).TotalSeconds;
        r.IdleCpuSeconds = (after - before) / (double)ClockTicksPerSecond;
        r.WindowHostSeconds = wall;
        r.IdleCpuPercent = 100 * r.IdleCpuSeconds / wall;
        return null;
    }

    /// <summary>
    /// A counter of the guest's <c>status</c> line per second of host time, between two answers
    /// <see cref="ThroughputWindow"/> apart (each timed when its line arrived); null when an answer did not come.
    /// </summary>
    private static double? CounterRate(VmProcess vm, string counter, RunResult r)
    {
        if (AskStatus(vm) is not { } a) return null;
        Thread.Sleep(ThroughputWindow);
        if (AskStatus(vm) is not { } b) return null;
        if (!a.TryGet(counter, out double from) || !b.TryGet(counter, out double to)) return null;
        r.WindowHostSeconds = Stopwatch.GetElapsedTime(a.At, b.At).TotalSeconds;
        // The guest's own clock over the same window: Ferry's board timer follows the host's, QEMU's follows its virtual clock.
        if (a.TryGet("uptime", out double up0) && b.TryGet("uptime", out double up1)) r.WindowGuestSeconds = up1 - up0;
        return (to - from) / r.WindowHostSeconds;
    }

    /// <summary>One <c>status</c> answer: when its line arrived (<see cref="Stopwatch"/> ticks) and its <c>name=value</c> words.</summary>
    private sealed record StatusAnswer(long At, Dictionary<string, string> Fields)
    {
        public bool TryGet(string name, out double value)
        {
            value = 0;
            return Fields.TryGetValue(name, out string? text) && double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out value);
        }
    }

    private static StatusAnswer? AskStatus(VmProcess vm)
    {
        int from = vm.LineCount;
        vm.Type("status");
        if (vm.WaitForLine(l => l.StartsWith("status ", StringComparison.Ordinal), StepTimeout, from) is not { } answer) return null;
        var fields = new Dictionary<string, string>();
        foreach (string word in answer.Line.Split(' ', StringSplitOptions.RemoveEmptyEntries))
        {
            int eq = word.IndexOf('=', StringComparison.Ordinal);
            if (eq > 0) fields[word[..eq]] = word[(eq + 1)..];
        }
        return new StatusAnswer(answer.At, fields);
    }

    /// <summary>USER_HZ, the unit of utime and stime in /proc: 100 on every Linux that .NET runs on; 10 s resolve 0.1% of a core.</summary>
    private const int ClockTicksPerSecond = 100;

    /// <summary>utime + stime of process <paramref name="pid"/>, all its threads (ended ones too), in clock ticks.</summary>
    private static long CpuTicks(int pid)
    {
        string stat = File.ReadAllText($"/proc/{pid}/stat");
        // comm (field 2) is in parentheses and may hold spaces: count from the last ')'. Index 0 there is field 3
        // (state); utime and stime are fields 14 and 15.
        string[] fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        return long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture);
    }

    private static RunResult Failed(string what, VmProcess vm)
    {
        var parts = new List<string> { what };
        parts.AddRange(vm.ErrorLines.TakeLast(5).Select(l => $"stderr: {l}"));
        parts.AddRange(vm.LastLines(3).Select(l => $"console: {l}"));
        return new RunResult { Problem = string.Join("; ", parts) };
    }

    private static string RunLine(RunResult r)
    {
        string head = $"{r.Case,-7} #{r.Repetition} {r.System,-5}";
        if (r.Problem is not null) return $"{head} FAILED: {r.Problem}";
        string figure = r.DirtierPagesPerSecond is { } pages ? $"{pages,12:N0} pages/s"
            : r.DiskMBPerSecond is { } mb ? $"{mb,7:0.00} MB/s ({r.DiskWritesPerSecond:N0} writes/s)"
            : $"{r.IdleCpuPercent,6:0.00}% of a core idle ({r.IdleCpuSeconds:0.00} s CPU)";
        string window = r.WindowGuestSeconds is { } guest ? $" over {r.WindowHostSeconds:0.00} s host, {guest:0.00} s guest" : "";
        return string.Create(CultureInfo.InvariantCulture, $"{head} boot {r.BootSeconds,5:0.00} s  {figure}{window}  (load {r.LoadAverage:0.0})");
    }

    // ---------------------------------------------------------------- summary

    private static void Summarise(Report report)
    {
        void Add(string measure, string unit, Func<RunResult, double?> value, string? target = null, Func<double, bool>? met = null)
        {
            IEnumerable<double> Values(string system) =>
                report.Runs.Where(r => r.System == system && r.Problem is null).Select(value).OfType<double>();
            var row = new Row
            {
                Measure = measure,
                Unit = unit,
                Ferry = VmBenchmark.Median(Values("ferry")),
                Qemu = VmBenchmark.Median(Values("qemu")),
                FerryRange = Range(Values("ferry")),
                QemuRange = Range(Values("qemu")),
                Target = target,
            };
            if (met is not null && row.Ferry is { } f) row.TargetMet = met(f);
            report.Summary.Add(row);
        }

        // Every boot is a sample: the heartbeat starts before any workload, so the case does not change the first line's time.
        Add("boot to the first heartbeat", "s", r => r.BootSeconds, $"Ferry <= {BootTargetSeconds} s", f => f <= BootTargetSeconds);
        Add("dirtier, achieved", "pages/s", r => r.DirtierPagesPerSecond);
        Add("disk writer, 4 KiB O_DIRECT+O_DSYNC", "MB/s", r => r.DiskMBPerSecond);
        Add("disk writer, 4 KiB O_DIRECT+O_DSYNC", "writes/s", r => r.DiskWritesPerSecond);
        Add("idle VM process CPU", "% of a core", r => r.IdleCpuPercent, $"Ferry < {IdleTargetPercent}%", f => f < IdleTargetPercent);
    }

    /// <summary>The summary as a Markdown table: readable in a terminal, and pasted as it is into docs/BENCH-LINUX.md.</summary>
    private static void PrintTable(Report report, TextWriter output)
    {
        var ic = CultureInfo.InvariantCulture;
        static string F(double? v) => v switch
        {
            null => "-",
            >= 1000 => v.Value.ToString("N0", CultureInfo.InvariantCulture),
            >= 10 => v.Value.ToString("0.0", CultureInfo.InvariantCulture),
            _ => v.Value.ToString("0.00", CultureInfo.InvariantCulture),
        };
        static string Cell(double? median, Spread? range) => range is null ? "-" : $"{F(median)} ({F(range.Min)}-{F(range.Max)}, {range.Runs})";
        output.WriteLine($"medians of {report.Repetitions} repetition(s), {report.Memory} RAM, {report.Harts} harts; in brackets: lowest-highest, runs:");
        output.WriteLine();
        output.WriteLine("| measure | unit | Ferry | QEMU | Ferry/QEMU | target |");
        output.WriteLine("|---|---|---:|---:|---:|---|");
        foreach (var x in report.Summary)
        {
            string target = x.Target is null ? "" : $"{x.Target}: {(x.TargetMet == true ? "met" : "NOT met")}";
            output.WriteLine(string.Create(ic,
                $"| {x.Measure} | {x.Unit} | {Cell(x.Ferry, x.FerryRange)} | {Cell(x.Qemu, x.QemuRange)} | {F(x.FerryOverQemu)} | {target} |"));
        }
        output.WriteLine();
        output.WriteLine(string.Create(ic, $"load average: {report.LoadAverageAtStart:0.00} at start, {report.LoadAverageAtEnd:0.00} at end"));
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
                default:
                    problem = $"{flag}: '{value}' is not understood";
                    return false;
            }
        }
        return true;
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
        [JsonPropertyName("firmware")] public required string Firmware { get; init; }
        [JsonPropertyName("qemu_version")] public string? QemuVersion { get; init; }
        [JsonPropertyName("memory")] public required string Memory { get; init; }
        [JsonPropertyName("harts")] public int Harts { get; init; }
        /// <summary>Each case's kernel command line.</summary>
        [JsonPropertyName("cases")] public required Dictionary<string, string> Cases { get; init; }
        [JsonPropertyName("load_average_at_start")] public double LoadAverageAtStart { get; init; }
        [JsonPropertyName("load_average_at_end")] public double LoadAverageAtEnd { get; set; }
        [JsonPropertyName("summary")] public List<Row> Summary { get; } = [];
        [JsonPropertyName("runs")] public List<RunResult> Runs { get; } = [];
    }

    /// <summary>One line of the table: medians over each system's runs that measured it.</summary>
    private sealed class Row
    {
        [JsonPropertyName("measure")] public required string Measure { get; init; }
        [JsonPropertyName("unit")] public required string Unit { get; init; }
        [JsonPropertyName("ferry")] public double? Ferry { get; init; }
        [JsonPropertyName("qemu")] public double? Qemu { get; init; }
        /// <summary>The runs' lowest and highest value, and how many runs there were.</summary>
        [JsonPropertyName("ferry_range")] public Spread? FerryRange { get; init; }
        [JsonPropertyName("qemu_range")] public Spread? QemuRange { get; init; }
        [JsonPropertyName("ferry_over_qemu")] public double? FerryOverQemu => Ferry is { } f && Qemu is { } q && q > 0 ? f / q : null;
        [JsonPropertyName("target")] public string? Target { get; init; }
        [JsonPropertyName("target_met")] public bool? TargetMet { get; set; }
    }

    private sealed record Spread([property: JsonPropertyName("min")] double Min, [property: JsonPropertyName("max")] double Max,
                                 [property: JsonPropertyName("runs")] int Runs);

    private static Spread? Range(IEnumerable<double> values)
    {
        var v = values.ToList();
        return v.Count == 0 ? null : new Spread(v.Min(), v.Max(), v.Count);
    }

    private sealed class RunResult
    {
        [JsonPropertyName("system")] public string System { get; set; } = "";
        [JsonPropertyName("case")] public string Case { get; set; } = "";
        [JsonPropertyName("repetition")] public int Repetition { get; set; }
        [JsonPropertyName("load_average")] public double LoadAverage { get; set; }
        /// <summary>Process start to the first heartbeat line, host clock.</summary>
        [JsonPropertyName("boot_s")] public double? BootSeconds { get; init; }
        [JsonPropertyName("dirtier_pages_per_s")] public double? DirtierPagesPerSecond { get; set; }
        [JsonPropertyName("disk_writes_per_s")] public double? DiskWritesPerSecond { get; set; }
        /// <summary>10^6 bytes per second, 4 KiB a write.</summary>
        [JsonPropertyName("disk_mb_per_s")] public double? DiskMBPerSecond { get; set; }
        /// <summary>Throughput: between the two status answers; idle: the CPU window.</summary>
        [JsonPropertyName("window_host_s")] public double WindowHostSeconds { get; set; }
        /// <summary>The guest's uptime between the two status answers (10 ms resolution).</summary>
        [JsonPropertyName("window_guest_s")] public double? WindowGuestSeconds { get; set; }
        [JsonPropertyName("idle_cpu_s")] public double? IdleCpuSeconds { get; set; }
        [JsonPropertyName("idle_cpu_percent")] public double? IdleCpuPercent { get; set; }
        /// <summary>After <c>poweroff</c>; null when it had not exited within 10 s (then it was killed).</summary>
        [JsonPropertyName("exit_code")] public int? ExitCode { get; set; }
        [JsonPropertyName("problem")] public string? Problem { get; init; }
    }
}
