using System.Net;
using Ferry.Machine;
using Ferry.Migration;
using Ferry.Migration.Guest;
using Ferry.Migration.Precopy;
using Ferry.Migration.Transport;

namespace Ferry.Vm.Tests;

/// <summary>
/// One live migration of a <see cref="VirtMachine"/> inside this process: the source engine and a destination engine
/// (building a <see cref="VirtMachineTarget"/>) joined by real TCP sockets on 127.0.0.1, as
/// <c>src/Ferry.Cli/LoopbackMigration.cs</c> joins two in-process guests.
/// </summary>
internal static class LoopbackVmMigration
{
    public sealed record Result(MigrationStatistics Statistics, VirtMachineSource Source, VirtMachineTarget? Destination, Exception? DestinationError);

    /// <summary>A target factory's target that wraps a <see cref="VirtMachineTarget"/> (to run its calls elsewhere).</summary>
    public interface IWrappedTarget
    {
        VirtMachineTarget Inner { get; }
    }

    /// <param name="factory">A <see cref="VirtMachineTargetFactory"/>, or one whose targets are <see cref="IWrappedTarget"/>s.</param>
    /// <param name="faults">Faults to inject into the source's channels (a link that dies at a chosen record), or null.</param>
    public static Result Run(VirtMachine machine, IMigrationTargetFactory factory, MigrationOptions options, bool copyDisk = false, FaultPlan? faults = null)
    {
        var source = new VirtMachineSource(machine, copyDisk);
        // Port 0: the kernel picks a free port, so parallel runs never collide.
        var listener = new TcpMigrationListener(new IPEndPoint(IPAddress.Loopback, 0));
        using var stopDestination = new CancellationTokenSource();
        // The receiver's limit counts every region: RAM, and a copied disk.
        ulong limit = machine.Ram.Size + (copyDisk ? machine.Disk!.ImageBytes : 0);
        var incoming = new IncomingMigration(listener, factory,
            new IncomingOptions { MaxMemoryBytes = limit, PeerTimeout = options.PeerTimeout });
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
            IMigrationConnector connector = new TcpMigrationConnector(listener.LocalEndPoint);
            if (faults is not null) connector = new FaultInjectingConnector(connector, faults);
            var outgoing = new OutgoingMigration(source, connector, options);
            statistics = outgoing.Run();
        }
        finally
        {
            if (!destinationThread.Join(options.PeerTimeout)) stopDestination.Cancel();
            listener.Dispose();
            // Cancelled, the destination fails at once; a test that waited for it forever would say nothing.
            if (!destinationThread.Join(TimeSpan.FromSeconds(30)))
                destinationError ??= new TimeoutException("the destination did not stop within 30 s of being cancelled");
        }
        if (statistics.Status != MigrationStatus.Completed && destination is not null)
        {
            // Never leave two copies running.
            destination.Dispose();
            destination = null;
        }
        VirtMachineTarget? arrived = destination is IWrappedTarget w ? w.Inner : (VirtMachineTarget?)destination;
        return new Result(statistics, source, arrived, destinationError);
    }

    /// <summary>The statistics as lines for a test's output: the outcome, where the downtime went, each round.</summary>
    public static IEnumerable<string> Describe(Result r)
    {
        MigrationStatistics s = r.Statistics;
        yield return $"status {s.Status} {s.Error}; total {s.TotalMs:F1} ms, setup {s.SetupMs:F1} ms, downtime {s.DowntimeMs:F1} ms " +
            $"(pause {s.DowntimeBreakdownMs.Pause:F1}, final pages {s.DowntimeBreakdownMs.FinalPages:F1}, device state {s.DowntimeBreakdownMs.DeviceState:F1}, " +
            $"resume {s.DowntimeBreakdownMs.Resume:F1}), expected {s.ExpectedDowntimeMs:F1} ms, {s.Rounds.Count} rounds, throttle {s.ThrottlePercent}%, " +
            $"{s.BytesSent} bytes, pages normal {s.Pages.Normal} zero {s.Pages.Zero}, switchover: {s.SwitchoverReason}";
        foreach (var round in s.Rounds)
        {
            yield return $"  round {round.Round}: {round.Pages} pages, {round.Milliseconds:F1} ms, dirty {round.DirtyPagesPerSecond:F0}/s, throttle {round.ThrottlePercent}%";
        }
        if (s.Switchover is { } t) yield return $"  switchover: pause {t.Pause:F1} ms, save {t.Save:F1} ms, dest_load {t.DestLoad:F1} ms, dest_digest {t.DestDigest:F1} ms";
        if (r.DestinationError != null) yield return $"destination: {r.DestinationError}";
    }
}
