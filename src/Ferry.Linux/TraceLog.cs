using System.Diagnostics;

namespace Ferry.Linux;

/// <summary>
/// Timestamped marks for finding where a switchover's or a fault's time goes, across processes: set
/// <c>FERRY_TRACE=/path/file</c> and every Ferry process appends its marks there when it exits, one per line:
/// <c>microseconds pid thread label</c>. The clock is <see cref="Stopwatch"/>'s (CLOCK_MONOTONIC on Linux), the one
/// <c>perf sched record -k mono</c> uses, so marks line up with the scheduler's view of the same run.
/// </summary>
/// <remarks>
/// Off (the default) a mark is one read of a static field, and callers build labels only inside
/// <c>if (TraceLog.Enabled)</c>. On, marks go to a fixed ring of the last 65,536, so tracing a long run keeps its end
/// (the switchover) and never grows.
/// </remarks>
public static class TraceLog
{
    private const int Capacity = 1 << 16;
    private static string? path = Environment.GetEnvironmentVariable("FERRY_TRACE") is { Length: > 0 } p ? p : null;
    private static long[]? stamps;
    private static string?[]? labels;
    private static long next;
    private static int exitHooked;
    private static int watching;

    static TraceLog()
    {
        if (path is not null) Allocate();
    }

    /// <summary>True when marks are recorded.</summary>
    public static bool Enabled { get; private set; }

    /// <summary>Record marks from now on and write them to <paramref name="file"/> at <see cref="Flush"/> or exit.</summary>
    public static void Enable(string file)
    {
        ArgumentException.ThrowIfNullOrEmpty(file);
        path = file;
        Allocate();
    }

    /// <summary>Stop recording and drop what was recorded (nothing is written at exit).</summary>
    public static void Disable()
    {
        Enabled = false;
        path = null;
        Interlocked.Exchange(ref next, 0);
        if (labels is not null) Array.Clear(labels);
    }

    private static void Allocate()
    {
        stamps ??= new long[Capacity];
        labels ??= new string?[Capacity];
        Enabled = true;
        if (Interlocked.Exchange(ref exitHooked, 1) == 0) AppDomain.CurrentDomain.ProcessExit += (_, _) => Flush();
        if (Interlocked.Exchange(ref watching, 1) == 0) new Thread(WatchCollections) { IsBackground = true, Name = "ferry-trace-gc" }.Start();
    }

    // A collection stops every managed thread, a VM's harts included: mark each one seen, with the pause it added, so
    // that a stall in a trace can be told from one. Polled every millisecond (a pause shorter than the poll still shows
    // in the total). The runtime's JIT too (first calls, and the background re-compilation of hot methods): what it
    // compiled in each millisecond and the time that took, a CPU the guest's harts did not have.
    private static void WatchCollections()
    {
        int gen0 = GC.CollectionCount(0), gen1 = GC.CollectionCount(1), gen2 = GC.CollectionCount(2);
        var paused = GC.GetTotalPauseDuration();
        long jitted = System.Runtime.JitInfo.GetCompiledMethodCount();
        var jitTime = System.Runtime.JitInfo.GetCompilationTime();
        while (Enabled)
        {
            Thread.Sleep(1);
            long j = System.Runtime.JitInfo.GetCompiledMethodCount();
            if (j != jitted)
            {
                var t = System.Runtime.JitInfo.GetCompilationTime();
                Mark($"jit: {j - jitted} methods, {(t - jitTime).TotalMilliseconds:F2} ms");
                (jitted, jitTime) = (j, t);
            }
            int g0 = GC.CollectionCount(0), g1 = GC.CollectionCount(1), g2 = GC.CollectionCount(2);
            if (g0 == gen0 && g1 == gen1 && g2 == gen2) continue;
            var total = GC.GetTotalPauseDuration();
            Mark($"gc: {g0 - gen0} gen0, {g1 - gen1} gen1, {g2 - gen2} gen2, paused {(total - paused).TotalMilliseconds:F2} ms");
            (gen0, gen1, gen2, paused) = (g0, g1, g2, total);
        }
        Volatile.Write(ref watching, 0);
    }

    /// <summary>Record <paramref name="label"/> now (no-op unless <see cref="Enabled"/>).</summary>
    public static void Mark(string label)
    {
        if (!Enabled) return;
        long i = (Interlocked.Increment(ref next) - 1) & (Capacity - 1);
        stamps![i] = Stopwatch.GetTimestamp();
        labels![i] = $"{Environment.CurrentManagedThreadId} {label}";
    }

    /// <summary>Append the recorded marks to the file, oldest first, and start over.</summary>
    public static void Flush()
    {
        if (!Enabled || path is null) return;
        long end = Interlocked.Read(ref next);
        long start = Math.Max(0, end - Capacity);
        var lines = new List<string>((int)(end - start));
        int pid = Environment.ProcessId;
        for (long n = start; n < end; n++)
        {
            long i = n & (Capacity - 1);
            if (labels![i] is { } l) lines.Add($"{stamps![i] / (Stopwatch.Frequency / 1_000_000)} {pid} {l}");
            labels[i] = null;
        }
        Interlocked.Exchange(ref next, 0);
        File.AppendAllLines(path, lines);
    }
}
