using System.Net;
using Ferry.Linux;
using Ferry.Migration;
using Ferry.Migration.Guest;
using Ferry.Migration.InProcess;
using Ferry.Migration.Precopy;
using Ferry.Migration.Transport;

namespace Ferry.Cli;

/// <summary>
/// One migration inside this process: a source <see cref="InProcessGuest"/> and a destination
/// (<see cref="IncomingMigration"/> building an <see cref="InProcessTarget"/>) joined by real TCP sockets on 127.0.0.1.
/// Everything but the second host is real: the stream, the sockets, the guest's writers, the switchover.
/// </summary>
public static class LoopbackMigration
{
    /// <summary>
    /// Create the guest from <paramref name="settings"/> and migrate it; <paramref name="started"/> is given the source's
    /// engine just before it runs (on another thread it may change its bandwidth or watch its progress).
    /// </summary>
    public static LoopbackResult Run(EngineBenchSettings settings, IProgress<MigrationProgress>? progress, CancellationToken cancellationToken,
        Action<OutgoingMigration>? started = null)
    {
        ArgumentNullException.ThrowIfNull(settings);
        var source = new InProcessGuest(settings.ToGuestOptions());
        try
        {
            if (settings.DirtyRatePagesPerSecond > 0 && settings.Warmup > TimeSpan.Zero)
            {
                // Let the workload run as a guest that has been up for a while would, cancellable like the migration.
                cancellationToken.WaitHandle.WaitOne(settings.Warmup);
                cancellationToken.ThrowIfCancellationRequested();
            }
            return Run(source, settings.ToMigrationOptions(), progress, cancellationToken, started: started, faultPoll: settings.FaultPoll);
        }
        catch
        {
            source.Dispose();
            throw;
        }
    }

    /// <summary>
    /// <see cref="Run(EngineBenchSettings, IProgress{MigrationProgress}?, CancellationToken)"/> with live progress on
    /// standard error, as the commands show it. Null when setting up failed (mmap, bind): nothing migrated, the reason
    /// is printed and there is nothing else to report.
    /// </summary>
    public static LoopbackResult? RunLive(EngineBenchSettings settings, CliConsole console, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        ArgumentNullException.ThrowIfNull(console);
        var progress = new ProgressView(ProgressView.ModeFor(settings.Json, console.ErrorIsTerminal), console.Error);
        try
        {
            return progress.RunLive(StatisticsView.CreateConsole(console.Error, console.ErrorIsTerminal),
                () => Run(settings, progress, cancellationToken));
        }
        catch (Exception e) when (e is LinuxException or MigrationException or IOException)
        {
            console.Error.WriteLine($"ferry: {e.Message}");
            return null;
        }
    }

    /// <summary>How long a cancelled destination may take to stop.</summary>
    private static readonly TimeSpan StopWait = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Migrate <paramref name="source"/> to a destination in this process. The result owns the source and, when the
    /// migration completed, the started destination; dispose it.
    /// </summary>
    public static LoopbackResult Run(InProcessGuest source, MigrationOptions options, IProgress<MigrationProgress>? progress, CancellationToken cancellationToken,
        InProcessTargetFactory? targetFactory = null, Action<OutgoingMigration>? started = null, TimeSpan faultPoll = default)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(options);
        ulong memory = 0;
        foreach (var r in source.Regions) memory += r.Size;

        // Port 0: the kernel picks a free port, so parallel runs (tests, CI) never collide.
        var listener = new TcpMigrationListener(new IPEndPoint(IPAddress.Loopback, 0));
        using var stopDestination = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var incoming = new IncomingMigration(listener, targetFactory ?? new InProcessTargetFactory(),
            new IncomingOptions { MaxMemoryBytes = memory, PeerTimeout = options.PeerTimeout, FaultPoll = faultPoll });
        IMigrationTarget? destination = null;
        Exception? destinationError = null;
        var destinationThread = new Thread(() =>
        {
            try
            {
                destination = incoming.Run(stopDestination.Token);
            }
            catch (Exception e)
            {
                destinationError = e;
            }
        })
        { Name = "ferry-destination", IsBackground = true };
        destinationThread.Start();

        MigrationStatistics statistics;
        try
        {
            var outgoing = new OutgoingMigration(source, new TcpMigrationConnector(listener.LocalEndPoint), options);
            started?.Invoke(outgoing);
            using (cancellationToken.Register(outgoing.Cancel))
                statistics = outgoing.Run(progress, cancellationToken);
        }
        finally
        {
            // A completed migration's destination has answered Resumed or is about to; a failed one may still sit in
            // Accept (the source never connected) or wait for a peer that is gone: stop it either way.
            if (!destinationThread.Join(options.PeerTimeout))
                stopDestination.Cancel();
            listener.Dispose();
            // Cancelled, the destination fails at once; if it ever did not, report it rather than hang the command.
            if (!destinationThread.Join(StopWait))
                destinationError ??= new TimeoutException($"the destination did not stop within {StopWait.TotalSeconds:0} s of being cancelled");
        }
        if (statistics.Status != MigrationStatus.Completed && destination is not null)
        {
            // Cannot happen if the engine keeps its promise (a destination only starts on commit, and commit means
            // completed); never leave two copies running if it does.
            destination.Dispose();
            destination = null;
        }
        return new LoopbackResult(statistics, source, destination, destinationError);
    }
}

/// <summary>The outcome of a <see cref="LoopbackMigration"/>: statistics, both guests, and the destination's error if any.</summary>
/// <param name="Statistics">The source engine's statistics.</param>
/// <param name="Source">The source guest: running again if the migration failed, paused for good if it completed.</param>
/// <param name="Destination">The started destination guest when the migration completed; otherwise null.</param>
/// <param name="DestinationError">Why the destination gave up, when it did.</param>
public sealed record LoopbackResult(
    MigrationStatistics Statistics,
    InProcessGuest Source,
    IMigrationTarget? Destination,
    Exception? DestinationError) : IDisposable
{
    public void Dispose()
    {
        Destination?.Dispose();
        Source.Dispose();
    }
}
