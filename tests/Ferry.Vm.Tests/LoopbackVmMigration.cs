using System.Net;
using Ferry.Machine;
using Ferry.Migration;
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

    public static Result Run(VirtMachine machine, VirtMachineTargetFactory factory, MigrationOptions options)
    {
        var source = new VirtMachineSource(machine);
        // Port 0: the kernel picks a free port, so parallel runs never collide.
        var listener = new TcpMigrationListener(new IPEndPoint(IPAddress.Loopback, 0));
        using var stopDestination = new CancellationTokenSource();
        var incoming = new IncomingMigration(listener, factory,
            new IncomingOptions { MaxMemoryBytes = machine.Ram.Size, PeerTimeout = options.PeerTimeout });
        Ferry.Migration.Guest.IMigrationTarget? destination = null;
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
            statistics = outgoing.Run();
        }
        finally
        {
            if (!destinationThread.Join(options.PeerTimeout)) stopDestination.Cancel();
            listener.Dispose();
            destinationThread.Join();
        }
        if (statistics.Status != MigrationStatus.Completed && destination is not null)
        {
            // Never leave two copies running.
            destination.Dispose();
            destination = null;
        }
        return new Result(statistics, source, (VirtMachineTarget?)destination, destinationError);
    }
}
