using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;
using System.Numerics;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Ferry.Machine;
using Ferry.Machine.Board;

namespace Ferry.Bench;

/// <summary>
/// Ferry's RISC-V emulator against QEMU's TCG on the same bare-metal programs (<c>bench/guest-cpu</c>):
/// (1) integer, a CoreMark-like loop; (2) memory, random 8-byte stores over 64 MiB with Sv39 and 4 KiB pages;
/// (3) the cost of dirty tracking on (2) while a thread harvests every 50 ms, as pre-copy does (target ≤ 1.1);
/// (4) the host CPU an idle guest costs, a 100 Hz timer tick and <c>wfi</c> (target &lt; 2% of a core).
/// </summary>
/// <remarks>
/// <para>Instructions: both machines run the same deterministic binary, so QEMU retires exactly what Ferry counts
/// (<see cref="VirtMachine.InstructionsRetired"/>); QEMU has no cheap counter of its own.</para>
/// <para>MIPS: each workload is built at N and 2N; MIPS = (I(2N) − I(N)) / (t(2N) − t(N)), which cancels QEMU's start-up
/// (process, ROM loading: ~0.1 s) and the first touch of guest RAM (this host zero-fills slowly: 64 MiB costs up to
/// 0.2 s). Ferry is measured the same way for symmetry; its direct instret/time over the 2N run is shown beside it.
/// Each time is the best of the repetitions (a shared 2-core host: the minimum is the least disturbed run).</para>
/// </remarks>
internal static class CpuBenchmark
{
    // Sizes: QEMU's N→2N difference must stand well above its start-up jitter (tens of ms on this loaded 2-core host).
    // Integer N is 0.84 G instructions: ~0.4 s of difference under QEMU (~2 GIPS), ~2.5 s under Ferry. Memory N is
    // 80 M instructions (10 M stores): ~3.2 s under QEMU (every store misses its TLB), ~1.3 s under Ferry.
    private const int IntegerIterations = 40_000;
    private const long MemoryStores = 10_000_000;
    private const ulong GuestMemory = 128UL << 20;
    private const double DirtyHarvestMs = 50;
    private const double DirtyTarget = 1.1;
    private const double IdleTargetPercent = 2;
    private static readonly TimeSpan RunTimeout = TimeSpan.FromSeconds(300);
    private const string Qemu = "qemu-system-riscv64";

    private sealed record Settings
    {
        public string? JsonPath { get; init; }
        public int IdleSeconds { get; init; } = 10;
        public int Repetitions { get; init; } = 3;
        public bool UseQemu { get; init; } = true;
        public HashSet<string> Parts { get; init; } = ["integer", "memory", "dirty", "idle"];
    }

    public static int Run(string[] args, TextWriter output, TextWriter error)
    {
        if (!TryParse(args, out var settings, out var problem))
        {
            error.WriteLine($"Ferry.Bench cpu: {problem}");
            return 2;
        }
        var root = RepoRoot.Find();
        if (root is null)
        {
            error.WriteLine("Ferry.Bench cpu: cannot find the repository (no Ferry.slnx above the current or the program's directory)");
            return 2;
        }
        var outDir = Path.Combine(root, ".out", "bench-cpu");
        if (!BuildGuests(root, outDir, settings, output, error)) return 1;

        var report = new Report { IdleSeconds = settings.IdleSeconds, Repetitions = settings.Repetitions };
        var qemu = settings.UseQemu && QemuAvailable(output);
        if (settings.Parts.Contains("integer"))
        {
            report.Workloads.Add(MeasureWorkload("integer", Path.Combine(outDir, $"integer-{IntegerIterations}.elf"),
                Path.Combine(outDir, $"integer-{IntegerIterations * 2}.elf"), "integer:", settings, qemu, output, report.Errors));
        }
        var memoryN = Path.Combine(outDir, $"memory-{MemoryStores}.elf");
        var memory2N = Path.Combine(outDir, $"memory-{MemoryStores * 2}.elf");
        if (settings.Parts.Contains("memory"))
        {
            report.Workloads.Add(MeasureWorkload("memory", memoryN, memory2N, "memory:", settings, qemu, output, report.Errors));
        }
        if (settings.Parts.Contains("dirty")) report.DirtyTracking = MeasureDirtyTracking(memory2N, settings, output, report.Errors);
        if (settings.Parts.Contains("idle"))
        {
            report.Idle = MeasureIdle(Path.Combine(outDir, $"idle-{settings.IdleSeconds}s.elf"), settings, qemu, output, report.Errors);
        }

        PrintSummary(report, output);
        if (settings.JsonPath is { } path)
        {
            File.WriteAllText(path, JsonSerializer.Serialize(report, JsonOptions));
            output.WriteLine($"wrote {path}");
        }
        if (report.Errors.Count > 0)
        {
            error.WriteLine();
            error.WriteLine($"Ferry.Bench cpu: {report.Errors.Count} problem(s):");
            foreach (var e in report.Errors) error.WriteLine($"  !! {e}");
            return 1;
        }
        return 0;
    }

    private static readonly JsonSerializerOptions JsonOptions = new()
    {
        WriteIndented = true,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    // ---------------------------------------------------------------- workloads 1 and 2: MIPS against QEMU

    private static WorkloadReport MeasureWorkload(string name, string elfN, string elf2N, string resultPrefix, Settings s, bool qemu,
        TextWriter output, List<string> errors)
    {
        output.WriteLine($"{name}: N and 2N under Ferry{(qemu ? " and QEMU" : "")}, best of {s.Repetitions}");
        var ferry = new[] { new List<FerryRun>(), new List<FerryRun>() };
        var qemuRuns = new[] { new List<QemuRun>(), new List<QemuRun>() };
        string[] elfs = [elfN, elf2N];
        // Warm-up, not counted: the first run in a process executes the interpreter before tiered JIT has optimised it
        // (measured: integer N took 3.1 s first, 1.5 s after).
        var warm = RunFerry(elfN, null, null);
        output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  warm-up ferry {warm.Seconds,7:0.000} s (not counted)"));
        for (var rep = 0; rep < s.Repetitions; rep++)
        {
            for (var v = 0; v < 2; v++)
            {
                var f = RunFerry(elfs[v], null, null);
                ferry[v].Add(f);
                output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"  #{rep + 1} {(v == 0 ? "N " : "2N")} ferry {f.Seconds,7:0.000} s {f.Instructions,14:N0} insns{(f.Ok ? "" : "  FAILED: " + f.Problem)}"));
                if (!f.Ok) break;
                if (!qemu) continue;
                var q = RunQemu(elfs[v], null);
                qemuRuns[v].Add(q);
                output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"  #{rep + 1} {(v == 0 ? "N " : "2N")} qemu  {q.Seconds,7:0.000} s{(q.Ok ? "" : "  FAILED: " + q.Problem)}"));
            }
            if (ferry.Any(l => l.Any(r => !r.Ok))) break;
        }

        var report = new WorkloadReport { Name = name };
        var failed = ferry.SelectMany(l => l).FirstOrDefault(r => !r.Ok);
        if (failed is not null)
        {
            errors.Add($"{name} under Ferry: {failed.Problem}");
            report.FerryProblem = failed.Problem;
        }
        var qemuFailed = qemuRuns.SelectMany(l => l).FirstOrDefault(r => !r.Ok);
        if (qemuFailed is not null)
        {
            errors.Add($"{name} under QEMU: {qemuFailed.Problem}");
            report.QemuProblem = qemuFailed.Problem;
        }

        // Instruction counts: a deterministic program retires the same count every run; a difference is an emulator bug.
        for (var v = 0; v < 2; v++)
        {
            var counts = ferry[v].Where(r => r.Ok).Select(r => r.Instructions).Distinct().ToList();
            if (counts.Count > 1) errors.Add($"{name}: Ferry retired different instruction counts for the same binary: {string.Join(", ", counts)}");
        }
        var okN = ferry[0].Where(r => r.Ok).ToList();
        var ok2N = ferry[1].Where(r => r.Ok).ToList();
        if (okN.Count > 0 && ok2N.Count > 0)
        {
            report.InstructionsN = okN[0].Instructions;
            report.Instructions2N = ok2N[0].Instructions;
            var delta = (double)(report.Instructions2N - report.InstructionsN);
            report.Ferry = new EngineFigures
            {
                SecondsN = okN.Min(r => r.Seconds),
                Seconds2N = ok2N.Min(r => r.Seconds),
            };
            report.Ferry.Mips = delta / (report.Ferry.Seconds2N - report.Ferry.SecondsN) / 1e6;
            report.FerryDirectMips = report.Instructions2N / report.Ferry.Seconds2N / 1e6;
            report.FerryResult = ResultLine(okN[0].Serial, resultPrefix);
            report.FerryResult2N = ResultLine(ok2N[0].Serial, resultPrefix);

            var qN = qemuRuns[0].Where(r => r.Ok).ToList();
            var q2N = qemuRuns[1].Where(r => r.Ok).ToList();
            if (qN.Count > 0 && q2N.Count > 0)
            {
                report.Qemu = new EngineFigures { SecondsN = qN.Min(r => r.Seconds), Seconds2N = q2N.Min(r => r.Seconds) };
                report.Qemu.Mips = delta / (report.Qemu.Seconds2N - report.Qemu.SecondsN) / 1e6;
                report.Ratio = report.Ferry.Mips / report.Qemu.Mips;
                report.QemuResult = ResultLine(qN[0].Serial, resultPrefix);
                report.QemuResult2N = ResultLine(q2N[0].Serial, resultPrefix);
                report.ResultsMatch = report.FerryResult == report.QemuResult && report.FerryResult2N == report.QemuResult2N
                                      && report.FerryResult is not null && report.FerryResult2N is not null;
                if (!report.ResultsMatch)
                {
                    errors.Add($"{name}: RESULT MISMATCH. Ferry printed '{report.FerryResult}' / '{report.FerryResult2N}', " +
                               $"QEMU printed '{report.QemuResult}' / '{report.QemuResult2N}' (N / 2N)");
                }
                if (report.Qemu.Seconds2N <= report.Qemu.SecondsN)
                {
                    errors.Add($"{name}: QEMU's 2N run was not slower than its N run; the sizes are too small to measure it");
                }
            }
        }
        output.WriteLine();
        return report;
    }

    private static string? ResultLine(string serial, string prefix) =>
        serial.Split('\n').Select(l => l.TrimEnd('\r')).FirstOrDefault(l => l.StartsWith(prefix, StringComparison.Ordinal));

    // ---------------------------------------------------------------- workload 3: dirty tracking

    private static DirtyReport MeasureDirtyTracking(string elf, Settings s, TextWriter output, List<string> errors)
    {
        output.WriteLine($"dirty tracking: memory 2N under Ferry, tracking off vs on with HarvestDirty every {DirtyHarvestMs} ms, best of {s.Repetitions}");
        var off = new List<double>();
        var on = new List<double>();
        long harvests = 0, pages = 0;
        for (var rep = 0; rep < s.Repetitions; rep++)
        {
            // Alternate which goes first so neither always inherits the other's freed memory or a quieter moment.
            foreach (var tracking in rep % 2 == 0 ? new[] { false, true } : [true, false])
            {
                DirtyHarvester? harvester = null;
                Action<VirtMachine>? beforeStart = tracking
                    ? (VirtMachine vm) =>
                    {
                        vm.StartDirtyLog();
                        harvester = new DirtyHarvester(vm);
                    }
                    : null;
                var run = RunFerry(elf, beforeStart, onExit: () => harvester?.Stop());
                if (!run.Ok)
                {
                    errors.Add($"dirty tracking ({(tracking ? "on" : "off")}) under Ferry: {run.Problem}");
                    output.WriteLine($"  FAILED: {run.Problem}");
                    return new DirtyReport { Problem = run.Problem };
                }
                (tracking ? on : off).Add(run.Seconds);
                if (tracking)
                {
                    harvests += harvester!.Harvests;
                    pages += harvester.Pages;
                }
                var harvested = tracking
                    ? string.Create(CultureInfo.InvariantCulture, $"  ({harvester!.Harvests} harvests, {harvester.Pages:N0} dirty pages)")
                    : "";
                output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"  #{rep + 1} tracking {(tracking ? "on " : "off")} {run.Seconds,7:0.000} s{harvested}"));
            }
        }
        var report = new DirtyReport
        {
            SecondsOff = off.Min(),
            SecondsOn = on.Min(),
            HarvestsPerRun = (double)harvests / on.Count,
            DirtyPagesPerRun = (double)pages / on.Count,
        };
        report.Ratio = report.SecondsOn / report.SecondsOff;
        output.WriteLine();
        return report;
    }

    /// <summary>Calls <see cref="VirtMachine.HarvestDirty"/> every 50 ms on its own thread, as pre-copy's rounds do.</summary>
    private sealed class DirtyHarvester
    {
        private readonly VirtMachine vm;
        private readonly Thread thread;
        private volatile bool stop;

        public DirtyHarvester(VirtMachine vm)
        {
            this.vm = vm;
            thread = new Thread(Loop) { IsBackground = true, Name = "dirty-harvester" };
            thread.Start();
        }

        public long Harvests { get; private set; }
        public long Pages { get; private set; }

        private void Loop()
        {
            while (!stop)
            {
                Thread.Sleep(TimeSpan.FromMilliseconds(DirtyHarvestMs));
                if (stop) break;
                var bits = vm.HarvestDirty();
                long n = 0;
                foreach (var word in bits) n += BitOperations.PopCount(word);
                Harvests++;
                Pages += n;
            }
        }

        /// <summary>Stop and join (before the machine is disposed).</summary>
        public void Stop()
        {
            stop = true;
            thread.Join();
        }
    }

    // ---------------------------------------------------------------- workload 4: idle cost

    private static IdleReport MeasureIdle(string elf, Settings s, bool qemu, TextWriter output, List<string> errors)
    {
        output.WriteLine($"idle: 100 Hz timer tick and wfi for {s.IdleSeconds} s; host CPU between the guest's 'idle: start' and 'idle: done'");
        var report = new IdleReport();

        // Ferry: this process's CPU time (every thread: harts, CLINT timer, UART flush timer, GC), sampled by the hart
        // thread when the UART line arrives, so the window is exactly the guest's idle period.
        // Per-thread figures as well, to say where the time goes (hart, CLINT timer, runtime).
        var ferryWindow = new IdleWindow(() => Environment.CpuUsage.TotalTime);
        Dictionary<int, ThreadTicks>? threadsAtStart = null, threadsAtDone = null;
        void OnFerryLine(string line)
        {
            if (line.StartsWith("idle: start", StringComparison.Ordinal)) threadsAtStart = ThreadTicks.Snapshot();
            ferryWindow.OnLine(line);
            if (line.StartsWith("idle: done", StringComparison.Ordinal)) threadsAtDone = ThreadTicks.Snapshot();
        }
        var f = RunFerry(elf, null, null, OnFerryLine);
        if (!f.Ok || !ferryWindow.Complete)
        {
            var problem = f.Ok ? $"no 'idle: start'/'idle: done' lines; serial output: {Quote(f.Serial)}" : f.Problem;
            errors.Add($"idle under Ferry: {problem}");
            report.Ferry = new IdleFigures { Problem = problem };
        }
        else
        {
            report.Ferry = ferryWindow.Figures();
            if (threadsAtStart is not null && threadsAtDone is not null)
            {
                report.FerryThreads = ThreadTicks.Busiest(threadsAtStart, threadsAtDone, report.Ferry.WallSeconds);
            }
        }
        output.WriteLine(IdleLine("ferry", report.Ferry));
        if (report.FerryThreads is { Count: > 0 } threads)
        {
            output.WriteLine("        by thread: " + string.Join(", ", threads.Select(t =>
                string.Create(CultureInfo.InvariantCulture, $"{t.Name} {t.PercentOfCore:0.00}%"))));
        }

        if (qemu)
        {
            IdleWindow? qemuWindow = null;
            var q = RunQemu(elf, (line, process) =>
            {
                // /proc/<pid>/stat utime+stime of the QEMU child (all its threads); the guest idles 0.5 s after
                // 'idle: done' before it exits, so the process is still there to read.
                qemuWindow ??= new IdleWindow(() =>
                {
                    process.Refresh();
                    return process.TotalProcessorTime;
                });
                qemuWindow.OnLine(line);
            });
            if (!q.Ok || qemuWindow is not { Complete: true })
            {
                var problem = q.Ok ? $"no 'idle: start'/'idle: done' lines; serial output: {Quote(q.Serial)}" : q.Problem;
                errors.Add($"idle under QEMU: {problem}");
                report.Qemu = new IdleFigures { Problem = problem };
            }
            else
            {
                report.Qemu = qemuWindow.Figures();
            }
            output.WriteLine(IdleLine("qemu ", report.Qemu));
        }
        output.WriteLine();
        return report;
    }

    private static string IdleLine(string engine, IdleFigures f) => f.Problem is not null
        ? $"  {engine} FAILED: {f.Problem}"
        : string.Create(CultureInfo.InvariantCulture,
            $"  {engine} cpu {f.CpuSeconds:0.000} s over {f.WallSeconds:0.000} s wall = {f.PercentOfCore:0.00}% of a core");

    /// <summary>One thread of this process and its CPU time in clock ticks (/proc/self/task/TID/stat utime + stime).</summary>
    private readonly record struct ThreadTicks(string Name, long Ticks)
    {
        // USER_HZ: the unit of utime and stime in /proc; 100 on every Linux architecture .NET runs on.
        private const double TicksPerSecond = 100;

        public static Dictionary<int, ThreadTicks> Snapshot()
        {
            var result = new Dictionary<int, ThreadTicks>();
            foreach (var dir in Directory.EnumerateDirectories("/proc/self/task"))
            {
                try
                {
                    var stat = File.ReadAllText(Path.Combine(dir, "stat"));
                    // "tid (comm) state ..." where comm may hold spaces and parentheses: split at the last ')'.
                    int open = stat.IndexOf('(', StringComparison.Ordinal), close = stat.LastIndexOf(')');
                    var fields = stat[(close + 2)..].Split(' ');
                    // After comm: field 3 is state (index 0 here); utime and stime are fields 14 and 15.
                    long ticks = long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture);
                    result[int.Parse(Path.GetFileName(dir), CultureInfo.InvariantCulture)] = new ThreadTicks(stat[(open + 1)..close], ticks);
                }
                catch (IOException)
                {
                    // The thread ended between listing and reading.
                }
            }
            return result;
        }

        /// <summary>Threads that used CPU between the snapshots, busiest first.</summary>
        public static List<ThreadFigures> Busiest(Dictionary<int, ThreadTicks> before, Dictionary<int, ThreadTicks> after, double wallSeconds) =>
            [.. after.Select(kv => (kv.Value.Name, Ticks: kv.Value.Ticks - (before.TryGetValue(kv.Key, out var b) ? b.Ticks : 0)))
                .Where(t => t.Ticks > 0)
                .OrderByDescending(t => t.Ticks)
                .Take(6)
                .Select(t => new ThreadFigures { Name = t.Name, PercentOfCore = 100 * t.Ticks / TicksPerSecond / wallSeconds })];
    }

    /// <summary>CPU time and wall time between the guest's "idle: start" and "idle: done" lines.</summary>
    private sealed class IdleWindow(Func<TimeSpan> cpu)
    {
        private TimeSpan cpuStart, cpuEnd;
        private long wallStart, wallEnd;
        private int seen;

        public bool Complete => seen == 2;

        public void OnLine(string line)
        {
            if (line.StartsWith("idle: start", StringComparison.Ordinal) && seen == 0)
            {
                wallStart = Stopwatch.GetTimestamp();
                cpuStart = cpu();
                seen = 1;
            }
            else if (line.StartsWith("idle: done", StringComparison.Ordinal) && seen == 1)
            {
                cpuEnd = cpu();
                wallEnd = Stopwatch.GetTimestamp();
                seen = 2;
            }
        }

        public IdleFigures Figures()
        {
            var wall = Stopwatch.GetElapsedTime(wallStart, wallEnd).TotalSeconds;
            var used = (cpuEnd - cpuStart).TotalSeconds;
            return new IdleFigures { CpuSeconds = used, WallSeconds = wall, PercentOfCore = 100 * used / wall };
        }
    }

    // ---------------------------------------------------------------- running one program

    private sealed record FerryRun(bool Ok, double Seconds, ulong Instructions, string Serial, string? Problem);

    /// <summary>
    /// One program on a fresh 1-hart, 128 MiB machine. Time is Start to the guest's power-off. A guest that does not
    /// power off with 0, or an emulator failure, is a failed run whose problem names the pc, instret and serial output.
    /// </summary>
    private static FerryRun RunFerry(string elf, Action<VirtMachine>? beforeStart, Action? onExit, Action<string>? onLine = null)
    {
        var serial = new SerialCapture(onLine);
        VirtMachine? vm = null;
        try
        {
            vm = new VirtMachine(new MachineOptions { MemoryBytes = GuestMemory, Harts = 1, SerialOut = serial });
            vm.LoadFirmware(elf);
            beforeStart?.Invoke(vm);
            var start = Stopwatch.GetTimestamp();
            vm.Start();
            bool exited;
            int code;
            try
            {
                exited = vm.WaitForExit(RunTimeout, out code);
            }
            finally
            {
                onExit?.Invoke();
            }
            var seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
            vm.Uart.Flush();
            var instructions = vm.InstructionsRetired;
            if (!exited)
            {
                vm.Pause();
                return new FerryRun(false, seconds, instructions, serial.Text,
                    $"{Path.GetFileName(elf)}: still running after {RunTimeout.TotalSeconds:0} s at pc 0x{vm.GetHart(0).Pc:x}, " +
                    $"{instructions:N0} instructions retired; serial output: {Quote(serial.Text)}");
            }
            if (code != 0)
            {
                return new FerryRun(false, seconds, instructions, serial.Text,
                    $"{Path.GetFileName(elf)}: exit code {code} at pc 0x{vm.GetHart(0).Pc:x} after {instructions:N0} instructions; " +
                    $"serial output: {Quote(serial.Text)}");
            }
            return new FerryRun(true, seconds, instructions, serial.Text, null);
        }
        catch (Exception e) when (e is InvalidOperationException or NotImplementedException or MachineConfigException or IOException)
        {
            onExit?.Invoke();
            var where = vm is null ? "" : $" (pc 0x{vm.GetHart(0).Pc:x}, {vm.InstructionsRetired:N0} instructions retired)";
            return new FerryRun(false, 0, 0, serial.Text,
                $"{Path.GetFileName(elf)}: {e.GetType().Name}: {e.Message}{where}; serial output: {Quote(serial.Text)}");
        }
        finally
        {
            vm?.Dispose();
        }
    }

    private sealed record QemuRun(bool Ok, double Seconds, string Serial, string? Problem);

    /// <summary>One program under <c>qemu-system-riscv64 -M virt -bios</c>; time is process start to exit.</summary>
    private static QemuRun RunQemu(string elf, Action<string, Process>? onLine)
    {
        var psi = new ProcessStartInfo(Qemu)
        {
            UseShellExecute = false,
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (var a in QemuArguments(elf)) psi.ArgumentList.Add(a);
        using var process = new Process { StartInfo = psi };
        var serial = new StringBuilder();
        var stderr = new StringBuilder();
        process.OutputDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (serial) serial.Append(e.Data).Append('\n');
            onLine?.Invoke(e.Data.TrimEnd('\r'), process);
        };
        process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (stderr) stderr.Append(e.Data).Append('\n');
        };
        var start = Stopwatch.GetTimestamp();
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        if (!process.WaitForExit(RunTimeout))
        {
            process.Kill();
            process.WaitForExit();
            return new QemuRun(false, 0, serial.ToString(), $"{Path.GetFileName(elf)}: QEMU still running after {RunTimeout.TotalSeconds:0} s");
        }
        var seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
        process.WaitForExit(); // drains the redirected output
        string text;
        lock (serial) text = serial.ToString();
        if (process.ExitCode != 0)
        {
            string err;
            lock (stderr) err = stderr.ToString();
            return new QemuRun(false, seconds, text,
                $"{Path.GetFileName(elf)}: QEMU exit code {process.ExitCode}; serial output: {Quote(text)}; stderr: {Quote(err)}");
        }
        return new QemuRun(true, seconds, text, null);
    }

    private static string[] QemuArguments(string elf) =>
        ["-M", "virt", "-bios", elf, "-nographic", "-m", "128M", "-smp", "1", "-cpu", "rv64,h=false,v=false"];

    private static bool QemuAvailable(TextWriter output)
    {
        try
        {
            using var p = Process.Start(new ProcessStartInfo(Qemu, "--version") { RedirectStandardOutput = true, UseShellExecute = false })!;
            var version = p.StandardOutput.ReadLine();
            p.WaitForExit();
            output.WriteLine($"QEMU: {version}");
            output.WriteLine($"QEMU command: {Qemu} {string.Join(' ', QemuArguments("PROGRAM.elf"))}");
            output.WriteLine();
            return true;
        }
        catch (Win32Exception e)
        {
            output.WriteLine($"{Qemu} not runnable ({e.Message}): Ferry figures only");
            return false;
        }
    }

    /// <summary>The UART's output: kept whole, and handed line by line to an optional callback (on the hart's thread).</summary>
    private sealed class SerialCapture(Action<string>? onLine) : Stream
    {
        private readonly StringBuilder all = new();
        private readonly StringBuilder line = new();

        public string Text
        {
            get
            {
                lock (all) return all.ToString();
            }
        }

        public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

        public override void Write(ReadOnlySpan<byte> buffer)
        {
            // The guests print ASCII only.
            foreach (var b in buffer)
            {
                var c = (char)b;
                lock (all) all.Append(c);
                if (c == '\n')
                {
                    onLine?.Invoke(line.ToString().TrimEnd('\r'));
                    line.Clear();
                }
                else
                {
                    line.Append(c);
                }
            }
        }

        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();

        public override long Position
        {
            get => throw new NotSupportedException();
            set => throw new NotSupportedException();
        }

        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
    }

    private static string Quote(string s)
    {
        s = s.Replace("\r", "", StringComparison.Ordinal).Replace("\n", "\\n", StringComparison.Ordinal);
        return s.Length == 0 ? "(none)" : $"\"{(s.Length > 400 ? s[..400] + "..." : s)}\"";
    }

    // ---------------------------------------------------------------- build, summary, arguments

    private static bool BuildGuests(string root, string outDir, Settings s, TextWriter output, TextWriter error)
    {
        var psi = new ProcessStartInfo("make")
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (var a in new[]
                 {
                     "-s", "-C", Path.Combine(root, "bench", "guest-cpu"), $"OUT={outDir}",
                     $"INT_ITER={IntegerIterations}", $"MEM_STORES={MemoryStores}", $"IDLE_SECONDS={s.IdleSeconds}",
                 })
        {
            psi.ArgumentList.Add(a);
        }
        try
        {
            using var make = Process.Start(psi)!;
            var stdout = make.StandardOutput.ReadToEndAsync();
            var stderr = make.StandardError.ReadToEnd();
            make.WaitForExit();
            if (make.ExitCode != 0)
            {
                error.WriteLine($"Ferry.Bench cpu: building the guests failed (make exit {make.ExitCode}):");
                error.WriteLine(stdout.Result);
                error.WriteLine(stderr);
                return false;
            }
        }
        catch (Win32Exception e)
        {
            error.WriteLine($"Ferry.Bench cpu: cannot run make ({e.Message})");
            return false;
        }
        output.WriteLine($"guests: {outDir} (integer {IntegerIterations:N0}/{IntegerIterations * 2:N0} iterations, " +
                         $"memory {MemoryStores:N0}/{MemoryStores * 2:N0} stores, idle {s.IdleSeconds} s)");
        return true;
    }

    private static void PrintSummary(Report r, TextWriter output)
    {
        var ic = CultureInfo.InvariantCulture;
        output.WriteLine("summary");
        output.WriteLine("  workload  insns N        insns 2N       ferry N s  ferry 2N s  ferry MIPS (direct)  qemu N s  qemu 2N s  qemu MIPS  ferry/qemu  result");
        foreach (var w in r.Workloads)
        {
            if (w.Ferry is null)
            {
                output.WriteLine($"  {w.Name,-8}  FAILED under Ferry: {w.FerryProblem}");
                continue;
            }
            var q = w.Qemu;
            var result = q is null ? w.FerryResult : w.ResultsMatch ? "match" : "MISMATCH";
            var qemuColumns = q is null
                ? $"{"-",8}  {"-",9}  {"-",9}  {"-",10}"
                : string.Create(ic, $"{q.SecondsN,8:0.000}  {q.Seconds2N,9:0.000}  {q.Mips,9:0.0}  {w.Ratio,10:0.000}");
            output.WriteLine(string.Create(ic,
                $"  {w.Name,-8}  {w.InstructionsN,13:N0}  {w.Instructions2N,13:N0}  {w.Ferry.SecondsN,9:0.000}  {w.Ferry.Seconds2N,10:0.000}  " +
                $"{w.Ferry.Mips,10:0.0} ({w.FerryDirectMips,6:0.0})  {qemuColumns}  {result}"));
        }
        if (r.DirtyTracking is { } d)
        {
            output.WriteLine(d.Problem is not null
                ? $"  dirty tracking: FAILED: {d.Problem}"
                : string.Create(ic,
                    $"  dirty tracking (memory 2N): off {d.SecondsOff:0.000} s, on {d.SecondsOn:0.000} s, ratio {d.Ratio:0.000} " +
                    $"(target <= {DirtyTarget:0.0}{(d.Ratio <= DirtyTarget ? ", met" : ", NOT met")})"));
        }
        if (r.Idle is { } idle)
        {
            foreach (var (engine, f) in new[] { ("ferry", idle.Ferry), ("qemu", idle.Qemu) })
            {
                if (f is null) continue;
                output.WriteLine(f.Problem is not null
                    ? $"  idle {engine}: FAILED: {f.Problem}"
                    : string.Create(ic,
                        $"  idle {engine,-5} ({r.IdleSeconds} s at 100 Hz): {f.PercentOfCore:0.00}% of a core{IdleVerdict(engine, f)}"));
            }
        }
    }

    private static string IdleVerdict(string engine, IdleFigures f) => engine != "ferry"
        ? ""
        : string.Create(CultureInfo.InvariantCulture,
            $" (target < {IdleTargetPercent:0}%{(f.PercentOfCore < IdleTargetPercent ? ", met" : ", NOT met")})");

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
                case "--idle-seconds" when int.TryParse(value, CultureInfo.InvariantCulture, out var secs) && secs is > 0 and <= 3600:
                    settings = settings with { IdleSeconds = secs };
                    break;
                case "--repetitions" when int.TryParse(value, CultureInfo.InvariantCulture, out var n) && n > 0:
                    settings = settings with { Repetitions = n };
                    break;
                case "--only":
                    var parts = value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToHashSet();
                    var unknown = parts.Except(["integer", "memory", "dirty", "idle"]).ToList();
                    if (unknown.Count > 0 || parts.Count == 0)
                    {
                        problem = $"--only: '{value}' is not a list of integer, memory, dirty, idle";
                        return false;
                    }
                    settings = settings with { Parts = parts };
                    break;
                default:
                    problem = $"{flag}: '{value}' is not understood";
                    return false;
            }
        }
        return true;
    }

    // ---------------------------------------------------------------- JSON

    private sealed class Report
    {
        [JsonPropertyName("repetitions")] public int Repetitions { get; init; }
        [JsonPropertyName("idle_seconds")] public int IdleSeconds { get; init; }
        [JsonPropertyName("workloads")] public List<WorkloadReport> Workloads { get; } = [];
        [JsonPropertyName("dirty_tracking")] public DirtyReport? DirtyTracking { get; set; }
        [JsonPropertyName("idle")] public IdleReport? Idle { get; set; }
        [JsonPropertyName("errors")] public List<string> Errors { get; } = [];
    }

    private sealed class WorkloadReport
    {
        [JsonPropertyName("name")] public required string Name { get; init; }
        [JsonPropertyName("instructions_n")] public ulong InstructionsN { get; set; }
        [JsonPropertyName("instructions_2n")] public ulong Instructions2N { get; set; }
        /// <summary>MIPS from the N→2N difference (the ratio uses these).</summary>
        [JsonPropertyName("ferry")] public EngineFigures? Ferry { get; set; }
        /// <summary>Ferry's instret / time of the best 2N run, start-up included.</summary>
        [JsonPropertyName("ferry_direct_mips")] public double FerryDirectMips { get; set; }
        [JsonPropertyName("qemu")] public EngineFigures? Qemu { get; set; }
        [JsonPropertyName("ferry_over_qemu")] public double Ratio { get; set; }
        [JsonPropertyName("ferry_result_n")] public string? FerryResult { get; set; }
        [JsonPropertyName("ferry_result_2n")] public string? FerryResult2N { get; set; }
        [JsonPropertyName("qemu_result_n")] public string? QemuResult { get; set; }
        [JsonPropertyName("qemu_result_2n")] public string? QemuResult2N { get; set; }
        [JsonPropertyName("results_match")] public bool ResultsMatch { get; set; }
        [JsonPropertyName("ferry_problem")] public string? FerryProblem { get; set; }
        [JsonPropertyName("qemu_problem")] public string? QemuProblem { get; set; }
    }

    private sealed class EngineFigures
    {
        [JsonPropertyName("seconds_n")] public double SecondsN { get; init; }
        [JsonPropertyName("seconds_2n")] public double Seconds2N { get; init; }
        [JsonPropertyName("mips")] public double Mips { get; set; }
    }

    private sealed class DirtyReport
    {
        [JsonPropertyName("seconds_off")] public double SecondsOff { get; init; }
        [JsonPropertyName("seconds_on")] public double SecondsOn { get; init; }
        [JsonPropertyName("ratio_on_over_off")] public double Ratio { get; set; }
        [JsonPropertyName("target")] public double Target => DirtyTarget;
        [JsonPropertyName("harvest_interval_ms")] public double HarvestIntervalMs => DirtyHarvestMs;
        [JsonPropertyName("harvests_per_run")] public double HarvestsPerRun { get; init; }
        [JsonPropertyName("dirty_pages_per_run")] public double DirtyPagesPerRun { get; init; }
        [JsonPropertyName("problem")] public string? Problem { get; init; }
    }

    private sealed class IdleReport
    {
        [JsonPropertyName("ferry")] public IdleFigures? Ferry { get; set; }
        [JsonPropertyName("ferry_busiest_threads")] public List<ThreadFigures>? FerryThreads { get; set; }
        [JsonPropertyName("qemu")] public IdleFigures? Qemu { get; set; }
        [JsonPropertyName("target_percent")] public double TargetPercent => IdleTargetPercent;
    }

    private sealed class IdleFigures
    {
        [JsonPropertyName("cpu_seconds")] public double CpuSeconds { get; init; }
        [JsonPropertyName("wall_seconds")] public double WallSeconds { get; init; }
        [JsonPropertyName("percent_of_core")] public double PercentOfCore { get; init; }
        [JsonPropertyName("problem")] public string? Problem { get; init; }
    }

    private sealed class ThreadFigures
    {
        [JsonPropertyName("name")] public required string Name { get; init; }
        [JsonPropertyName("percent_of_core")] public double PercentOfCore { get; init; }
    }
}
