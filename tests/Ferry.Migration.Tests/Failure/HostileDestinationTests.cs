using Ferry.Migration.Precopy;
using Ferry.Migration.Protocol;
using Ferry.Migration.Tests.Precopy;
using Ferry.Migration.Transport;
using static Ferry.Migration.Tests.Precopy.MigrationHarness;

namespace Ferry.Migration.Tests.Failure;

/// <summary>The source against a scripted destination that answers out of turn.</summary>
[Collection(MigrationCollection.Name)]
public class HostileDestinationTests
{
    [Fact]
    public void AReadyBeforeCompleteFailsTheMigrationAndTheSourceKeepsRunning()
    {
        using var guest = NewGuest(16, pagesPerSecond: 2_000);
        using var transport = new InMemoryTransport();
        ErrorMessage? told = null;
        var destination = new Thread(() =>
        {
            using var c = transport.Listener.Accept(CancellationToken.None);
            var reader = new ProtocolReader(c.Control);
            var writer = new ProtocolWriter(c.Control);
            reader.Expect<HelloMessage>();
            writer.WriteWelcome(ProtocolCapabilities.None);
            // Ready with no Complete to answer, and no page read: the source's round 0 cannot have finished.
            writer.WriteReady(0, 0, null);
            try
            {
                // Read until the source's Error, then close as a real destination would.
                while (told is null && reader.Read() is { } m)
                {
                    if (m is ErrorMessage e) told = e;
                }
            }
            catch (Exception e) when (e is MigrationException or IOException)
            {
                // The source aborted the channel after telling us.
            }
        }) { IsBackground = true, Name = "test-hostile-destination" };
        destination.Start();

        var stats = new OutgoingMigration(guest, transport.Connector, Options(verify: false)).Run(cancellationToken: TestContext.Current.CancellationToken);

        Assert.True(destination.Join(TimeSpan.FromSeconds(10)));
        Assert.Equal(MigrationStatus.Failed, stats.Status);
        Assert.Contains("Ready before Complete", stats.Error, StringComparison.Ordinal);
        Assert.NotNull(told);
        Assert.Equal(ProtocolErrorCode.Protocol, told.Code);
        Assert.True(guest.IsRunning, "the source guest must keep running");
        Assert.False(guest.IsDirtyLogging);
        AssertWorkloadContinues(guest);
    }
}
