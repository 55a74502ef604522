using System.Globalization;
using Ferry.Migration;
using Spectre.Console;

namespace Ferry.Cli;

/// <summary>How progress is shown while a migration runs.</summary>
public enum ProgressMode
{
    /// <summary>Nothing (<c>--json</c>: stdout is the document, stderr stays quiet).</summary>
    None,

    /// <summary>One plain line per round on stderr (stderr is a file or a pipe: logs stay readable).</summary>
    Lines,

    /// <summary>A live line redrawn in place on stderr (stderr is a terminal).</summary>
    Live,
}

/// <summary>
/// Receives <see cref="MigrationProgress"/> from the engine's migration thread and shows it.
/// </summary>
/// <remarks>
/// <see cref="Report"/> runs on the engine's threads, so it only stores the snapshot (and, in <see cref="ProgressMode.Lines"/>,
/// writes a line when the round changes: a few per migration). The live display redraws from the caller's thread in
/// <see cref="RunLive"/>, never from the engine's.
/// </remarks>
public sealed class ProgressView : IProgress<MigrationProgress>
{
    private readonly ProgressMode _mode;
    private readonly TextWriter _error;
    private readonly Lock _gate = new();
    // Latest snapshot from the engine; read by the live display's refresh loop.
    private volatile MigrationProgress? _latest;
    // Lines mode: the latest report of the phase (round and status) not yet written.
    private MigrationProgress? _pending;

    public ProgressView(ProgressMode mode, TextWriter error)
    {
        _mode = mode;
        _error = error;
    }

    /// <summary>The mode for a command: none with <c>--json</c>, live on a terminal, lines otherwise.</summary>
    public static ProgressMode ModeFor(bool json, bool errorIsTerminal) =>
        json ? ProgressMode.None : errorIsTerminal ? ProgressMode.Live : ProgressMode.Lines;

    /// <summary>The latest snapshot, or null before the first report.</summary>
    public MigrationProgress? Latest => _latest;

    public void Report(MigrationProgress value)
    {
        ArgumentNullException.ThrowIfNull(value);
        _latest = value;
        if (_mode != ProgressMode.Lines) return;
        lock (_gate)
        {
            // One line per round, with the figures the round ended on: the engine reports every 250 ms while a pass
            // runs and once at its end, so a phase's line is written when the next phase's first report arrives (or
            // at Flush), from the last report it had. A log reader wants that, not every refresh.
            if (_pending is { } last && (last.Round != value.Round || last.Status != value.Status))
            {
                _error.WriteLine(Describe(last));
                _error.Flush();
            }
            _pending = value;
        }
    }

    /// <summary>In <see cref="ProgressMode.Lines"/>, write the last phase's line (the migration ended).</summary>
    public void Flush()
    {
        if (_mode != ProgressMode.Lines) return;
        lock (_gate)
        {
            if (_pending is null) return;
            _error.WriteLine(Describe(_pending));
            _error.Flush();
            _pending = null;
        }
    }

    /// <summary>"round 3       left   12.5 MiB   1.1 GiB/s  dirty 20,000 pages/s  throttle  0%  1.2 s": fits 80 columns.</summary>
    public static string Describe(MigrationProgress p)
    {
        ArgumentNullException.ThrowIfNull(p);
        var phase = p.Status switch
        {
            MigrationStatus.Active => string.Create(CultureInfo.InvariantCulture, $"round {p.Round}"),
            MigrationStatus.Device => "stop-and-copy",
            _ => StatisticsView.Name(p.Status),
        };
        return string.Create(CultureInfo.InvariantCulture,
            $"{phase,-13} left {Units.FormatBytes(p.RemainingBytes),10} {Units.FormatRate(p.BandwidthBytesPerSecond),11}  " +
            $"dirty {p.DirtyPagesPerSecond,7:N0} pages/s  throttle {p.ThrottlePercent,2}%  {p.Elapsed.TotalSeconds:0.0} s");
    }

    /// <summary>
    /// Run <paramref name="work"/> on its own thread while this thread shows progress: redrawn in place on a terminal
    /// (Spectre's live display, every 100 ms), nothing more otherwise (lines come from <see cref="Report"/>).
    /// </summary>
    public T RunLive<T>(IAnsiConsole errorConsole, Func<T> work)
    {
        ArgumentNullException.ThrowIfNull(errorConsole);
        ArgumentNullException.ThrowIfNull(work);
        if (_mode != ProgressMode.Live)
        {
            try
            {
                return work();
            }
            finally
            {
                Flush();
            }
        }

        var task = Task.Factory.StartNew(work, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        errorConsole.Live(new Text("connecting..."))
            .AutoClear(true)
            .Start(ctx =>
            {
                // 100 ms: fast enough to watch a round go by (a 1 GiB round takes ~1 s), slow enough to cost nothing.
                // The wait handle, not task.Wait: a failed task must surface below as its own exception, not here
                // as an AggregateException.
                while (!((IAsyncResult)task).AsyncWaitHandle.WaitOne(100))
                {
                    if (_latest is { } p) ctx.UpdateTarget(new Text(Describe(p)));
                    ctx.Refresh();
                }
            });
        return task.GetAwaiter().GetResult();
    }
}
