using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using Ferry.Linux;

namespace Ferry.Cli;

/// <summary>
/// A VM child process (<c>ferry vm run|receive</c>, or <c>qemu-system-riscv64</c> for the benchmarks) with its serial
/// console on pipes: every line it prints is kept with the host time it was read (heartbeat lines parsed), and commands
/// can be typed into its guest. Disposing kills it if it still runs (this process's own child, by its PID) and reaps it.
/// </summary>
internal sealed partial class VmProcess : IDisposable
{
    // Bounded: a guest printing without end cannot grow the host's memory without end.
    private const int MaxLines = 200_000;

    // Every child still running, so that Ctrl+C or an unexpected exit of the parent kills them (by their PIDs).
    private static readonly HashSet<VmProcess> Live = [];

    private readonly Process process;
    // A monitor, not a Lock: the waits below need Monitor.Wait and PulseAll.
    private readonly object gate = new();
    private readonly List<(long At, string Line)> lines = [];
    private readonly List<string> errorLines = [];
    private readonly List<Heartbeat> heartbeats = [];

    /// <summary>One heartbeat line: when the host read it (<see cref="Stopwatch"/> ticks), its sequence number and the guest's stall.</summary>
    public readonly record struct Heartbeat(long At, long Seq, long MaxStallUs);

    private VmProcess(Process process, string name)
    {
        this.process = process;
        Name = name;
    }

    public string Name { get; }

    public int Id => process.Id;

    public bool HasExited => process.HasExited;

    public int ExitCode => process.ExitCode;

    /// <summary>Kill and reap every child this class started that still runs.</summary>
    public static void KillAll()
    {
        VmProcess[] all;
        lock (Live) all = [.. Live];
        foreach (var p in all) p.Dispose();
    }

    /// <summary>Start <c>ferry <paramref name="args"/></c>: the same build of the command as this one.</summary>
    public static VmProcess Start(string name, IEnumerable<string> args) => Start(name, FerryStartInfo(), args);

    /// <summary>Start <paramref name="executable"/> with <paramref name="args"/>.</summary>
    public static VmProcess Start(string name, string executable, IEnumerable<string> args) => Start(name, new ProcessStartInfo(executable), args);

    private static VmProcess Start(string name, ProcessStartInfo start, IEnumerable<string> args)
    {
        start.UseShellExecute = false;
        foreach (string a in args) start.ArgumentList.Add(a);
        start.RedirectStandardInput = true;
        start.RedirectStandardOutput = true;
        start.RedirectStandardError = true;
        Process process;
        try
        {
            process = Process.Start(start) ?? throw new InvalidOperationException($"cannot start {start.FileName}");
        }
        catch (Win32Exception e)
        {
            throw new InvalidOperationException($"cannot start {start.FileName}: {e.Message}", e);
        }
        var vm = new VmProcess(process, name);
        lock (Live) Live.Add(vm);
        // Own threads, not the thread pool's callbacks: a line's host time is when it arrived, even while this process
        // is busy (the demo polls the migration meanwhile).
        StartReader(process.StandardOutput, vm.OnLine, name + " console");
        StartReader(process.StandardError, vm.OnErrorLine, name + " stderr");
        return vm;
    }

    /// <summary>
    /// The <c>ferry</c> this process runs as: its apphost when there is one beside <c>ferry.dll</c>, else
    /// <c>dotnet ferry.dll</c> (tests run the command inside their test host).
    /// </summary>
    private static ProcessStartInfo FerryStartInfo()
    {
        string dll = typeof(VmProcess).Assembly.Location;
        string dir = Path.GetDirectoryName(dll) ?? ".";
        string apphost = Path.Combine(dir, "ferry");
        if (File.Exists(apphost)) return new ProcessStartInfo(apphost);
        var start = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet");
        start.ArgumentList.Add(dll);
        return start;
    }

    private static void StartReader(StreamReader reader, Action<string> onLine, string name)
    {
        new Thread(() =>
        {
            try
            {
                while (reader.ReadLine() is { } line) onLine(line);
            }
            catch (Exception e) when (e is IOException or ObjectDisposedException)
            {
                // The process is gone.
            }
        })
        { IsBackground = true, Name = name, Priority = ThreadPriority.AboveNormal }.Start();
    }

    [GeneratedRegex(@"^heartbeat (\d+) maxstall_us=(\d+)")]
    private static partial Regex HeartbeatLine();

    private void OnLine(string raw)
    {
        // QEMU's serial on stdio ends lines with \r\n.
        string line = raw.TrimEnd('\r');
        long at = Stopwatch.GetTimestamp();
        lock (gate)
        {
            if (lines.Count < MaxLines) lines.Add((at, line));
            Match m = HeartbeatLine().Match(line);
            if (m.Success && heartbeats.Count < MaxLines)
            {
                heartbeats.Add(new Heartbeat(at, long.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture),
                    long.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture)));
            }
            Monitor.PulseAll(gate);
        }
        // The guest's own lines on the engine's timeline (FERRY_TRACE): which stall came when, against the faults.
        if (TraceLog.Enabled) TraceLog.Mark($"console: {line}");
    }

    private void OnErrorLine(string line)
    {
        lock (gate)
        {
            if (errorLines.Count < MaxLines) errorLines.Add(line);
            Monitor.PulseAll(gate);
        }
    }

    public Heartbeat[] Heartbeats
    {
        get
        {
            lock (gate) return [.. heartbeats];
        }
    }

    public string[] ErrorLines
    {
        get
        {
            lock (gate) return [.. errorLines];
        }
    }

    /// <summary>The last <paramref name="n"/> console lines, for a failure report.</summary>
    public string[] LastLines(int n)
    {
        lock (gate) return [.. lines.Skip(Math.Max(0, lines.Count - n)).Select(l => l.Line)];
    }

    /// <summary>
    /// The first console line from index <paramref name="from"/> on that <paramref name="match"/> accepts, with the
    /// host time it was read, waiting up to <paramref name="timeout"/>; null if none came (or the process ended).
    /// </summary>
    public (int Index, string Line, long At)? WaitForLine(Func<string, bool> match, TimeSpan timeout, int from = 0)
    {
        if (WaitFor(lines, l => l.Line, match, timeout, from) is not { } f) return null;
        lock (gate) return (f.Index, f.Line, lines[f.Index].At);
    }

    /// <summary>As <see cref="WaitForLine"/>, on stderr (where the VM process reports).</summary>
    public (int Index, string Line)? WaitForErrorLine(Func<string, bool> match, TimeSpan timeout) =>
        WaitFor(errorLines, l => l, match, timeout, 0);

    public int LineCount
    {
        get
        {
            lock (gate) return lines.Count;
        }
    }

    private (int Index, string Line)? WaitFor<T>(List<T> list, Func<T, string> text, Func<string, bool> match, TimeSpan timeout, int from)
    {
        long deadline = Stopwatch.GetTimestamp() + (long)(timeout.TotalSeconds * Stopwatch.Frequency);
        lock (gate)
        {
            int i = from;
            while (true)
            {
                for (; i < list.Count; i++)
                {
                    if (match(text(list[i]))) return (i, text(list[i]));
                }
                long left = deadline - Stopwatch.GetTimestamp();
                if (left <= 0 || process.HasExited && i >= list.Count) return null;
                // Wake at least every 100 ms: the process may have exited without a line.
                Monitor.Wait(gate, TimeSpan.FromMilliseconds(Math.Min(100, left * 1000.0 / Stopwatch.Frequency)));
            }
        }
    }

    /// <summary>Type <paramref name="command"/> and Enter on the guest's console.</summary>
    public void Type(string command)
    {
        try
        {
            process.StandardInput.Write(command + "\n");
            process.StandardInput.Flush();
        }
        catch (IOException)
        {
            // The process is gone: the wait for its answer reports it.
        }
    }

    public bool WaitForExit(TimeSpan timeout) => process.WaitForExit(timeout);

    /// <summary>
    /// What each thread of the running process is doing, from /proc: name, state, policy, nice value and CPU time, for
    /// a report on a process that should have ended by now. Empty if it is gone.
    /// </summary>
    public string ThreadStates()
    {
        var threads = new List<string>();
        try
        {
            foreach (string task in Directory.EnumerateDirectories($"/proc/{process.Id}/task"))
            {
                string stat = File.ReadAllText($"{task}/stat");
                int open = stat.IndexOf('('), close = stat.LastIndexOf(')');
                if (open < 0 || close < open) continue;
                string[] f = stat[(close + 2)..].Split(' ');
                if (f.Length < 39) continue;
                // Fields from 3 on: state (3), utime and stime (14, 15, in ticks of 10 ms), nice (19), policy (41).
                long ms = (long.Parse(f[11], CultureInfo.InvariantCulture) + long.Parse(f[12], CultureInfo.InvariantCulture)) * 10;
                threads.Add($"{stat[(open + 1)..close]} {f[0]} policy {f[38]} nice {f[16]} cpu {ms} ms");
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
        {
            // Gone meanwhile, or not ours to read: what was read so far.
        }
        return string.Join("; ", threads);
    }

    /// <summary>SIGKILL this child (as a host failure would end it) and reap it.</summary>
    public void Kill()
    {
        process.Kill();
        process.WaitForExit();
    }

    public void Dispose()
    {
        lock (Live)
        {
            if (!Live.Remove(this)) return;
        }
        try
        {
            if (!process.HasExited) process.Kill(entireProcessTree: true);
            process.WaitForExit(TimeSpan.FromSeconds(30));
        }
        catch (InvalidOperationException)
        {
            // Never started or already reaped.
        }
        process.Dispose();
    }
}
