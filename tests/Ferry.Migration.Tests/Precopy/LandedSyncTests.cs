using Ferry.Migration.Guest;
using Ferry.Migration.InProcess;
using Ferry.Migration.Precopy;
using Ferry.Migration.Protocol;
using Ferry.Migration.Tests.Protocol;
using Ferry.Migration.Transport;
using static Ferry.Migration.Tests.Precopy.MigrationHarness;

namespace Ferry.Migration.Tests.Precopy;

/// <summary>
/// Landed sync (MigrationProtocol.cs): a pre-copy round ends when the destination confirms it landed every page of
/// it, not when the source's sends returned.
/// </summary>
[Collection(MigrationCollection.Name)]
public class LandedSyncTests
{
    private static readonly (ulong, ulong)[] Layout = [(0, 1 << 20)];

    [Fact]
    public void TheDestinationEchoesAPageChannelKeepaliveOnlyAfterThePagesBeforeItLanded()
    {
        using var transport = new InMemoryTransport();
        var factory = new InProcessTargetFactory();
        var incoming = new IncomingMigration(transport.Listener, factory,
            new IncomingOptions { PeerTimeout = TestPeerTimeout, MaxMemoryBytes = 1UL << 30 });
        Exception? destinationError = null;
        var destination = new Thread(() =>
        {
            try
            {
                incoming.Run().Dispose();
            }
            catch (MigrationException e)
            {
                destinationError = e;
            }
        }) { IsBackground = true, Name = "test-destination" };
        destination.Start();

        using var c = transport.Connector.Connect(1, CancellationToken.None);
        var control = new ProtocolWriter(c.Control);
        var reader = new ProtocolReader(c.Control);
        control.WriteHello(new HelloMessage(MigrationProtocol.CurrentVersion, Guid.NewGuid(), MigrationProtocol.PageSize, 1,
            ProtocolCapabilities.LandedSync, Layout, ReadOnlyMemory<byte>.Empty));
        Assert.Equal(ProtocolCapabilities.LandedSync, reader.Expect<WelcomeMessage>().Capabilities);

        // 64 pages of data, then the marker, on the page channel.
        using var source = new NativeGuestMemory((0, 256));
        source.FillPattern(21);
        var pages = new PageBatchWriter(c.Pages[0]);
        pages.WriteBatch(0, source.Regions[0], [new PageRun(0, 64, PageEncoding.Normal)], PageBatchFlags.None);
        const ulong marker = (1UL << 62) | (7UL << 8);
        pages.WriteKeepalive(marker);

        // The echo comes on the control channel (skipping the destination's own keepalives), and by then every page
        // before the marker is in the destination's memory.
        KeepaliveMessage echo;
        do echo = reader.Expect<KeepaliveMessage>();
        while (echo.Timestamp != marker);
        var target = factory.LastCreated!;
        unsafe
        {
            var landed = new ReadOnlySpan<byte>((void*)target.Regions[0].HostAddress, 64 * MemoryRegion.PageSize);
            Assert.True(landed.SequenceEqual(source.Region(0)[..(64 * MemoryRegion.PageSize)]));
        }

        control.WriteCancel("test done");
        Assert.True(destination.Join(TimeSpan.FromSeconds(10)));
        Assert.Contains("test done", destinationError?.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void EveryPassIsMadeDurableOnEachPageChannelBeforeItCountsAsLandedAndTheRoundMeasuresIt()
    {
        using var guest = NewGuest(16, pagesPerSecond: 2_000);
        using var transport = new InMemoryTransport();
        // A target whose landed sync takes 150 ms, as flushing a copied disk's image may.
        var factory = new RecordingTargetFactory(new InProcessTargetFactory()) { OnSyncLanded = () => Thread.Sleep(150) };
        var options = Options() with { PageChannels = 2 };
        var outcome = Migrate(guest, transport.Connector, transport.Listener, options, factory);
        using var _ = outcome.Target;
        Assert.Equal(MigrationStatus.Completed, outcome.Stats.Status);
        Assert.True(outcome.Stats.Verify?.Match, "digests differ");
        // One marker per channel per pre-copy pass, each synced before its echo (the last entry is the stop-and-copy
        // pass, which is flushed instead) ...
        var passes = outcome.Stats.Rounds.SkipLast(1).ToList();
        Assert.NotEmpty(passes);
        Assert.Equal(passes.Count * options.PageChannels, outcome.Target!.SyncLandedCalls);
        // ... so a round lasts at least as long as its sync.
        Assert.All(passes, r => Assert.True(r.Milliseconds >= 150, $"round {r.Round} took {r.Milliseconds:F1} ms"));
    }

    [Fact]
    public void APassWhoseFlushOutlastsThePeerTimeoutIsWaitedForWhileTheDestinationSaysItIsFlushing()
    {
        using var guest = NewGuest(16, pagesPerSecond: 2_000);
        using var transport = new InMemoryTransport();
        // Storage slower than the network: the first pass's flush takes more than twice the peer timeout (1.5 s). The
        // destination says every 0.5 s that it is still at it; the source waits on, and its round measures the flush.
        var flush = TestPeerTimeout * 2.5;
        int syncs = 0;
        var factory = new RecordingTargetFactory(new InProcessTargetFactory())
        {
            OnSyncLanded = () =>
            {
                if (Interlocked.Increment(ref syncs) == 1) Thread.Sleep(flush);
            },
        };
        // The destination's own peer timeout is the default 10 s: it says so at least every second all the same.
        var incoming = new IncomingOptions { MaxMemoryBytes = 1UL << 30 };
        var outcome = Migrate(guest, transport.Connector, transport.Listener, Options(), factory, incoming);
        using var _ = outcome.Target;
        Assert.Equal(MigrationStatus.Completed, outcome.Stats.Status);
        Assert.True(outcome.Stats.Verify?.Match, "digests differ");
        Assert.True(outcome.Stats.Rounds[0].Milliseconds >= flush.TotalMilliseconds, $"round 0 took {outcome.Stats.Rounds[0].Milliseconds:F1} ms");
    }

    [Fact]
    public void AFlushThatNeverEndsFailsTheMigrationAtThePrecopyTimeLimitAndTheSourceKeepsRunning()
    {
        using var guest = NewGuest(16, pagesPerSecond: 2_000);
        using var transport = new InMemoryTransport();
        // Storage that does not answer (a hard-mounted NFS gone away) for longer than the migration may take: the
        // destination says all along that it is flushing.
        var factory = new RecordingTargetFactory(new InProcessTargetFactory()) { OnSyncLanded = () => Thread.Sleep(TimeSpan.FromSeconds(8)) };
        var options = Options() with { Timeout = TimeSpan.FromSeconds(4) };
        var outcome = Migrate(guest, transport.Connector, transport.Listener, options, factory);
        AssertFailedBeforeCommit(outcome, guest, factory);
        Assert.Equal("destination was still making round 0 durable at the pre-copy time limit (4 s): its storage is slower than the copy", outcome.Stats.Error);
        // Waited past the peer timeout (the flush was said to go on), not much past the limit.
        Assert.InRange(outcome.Elapsed, TimeSpan.FromSeconds(4), TimeSpan.FromSeconds(4) + TestPeerTimeout + TimeSpan.FromSeconds(2));
        AssertWorkloadContinues(guest);
    }

    [Fact]
    public void ADestinationThatCannotMakeAPassDurableFailsTheMigrationThereSayingWhyAndTheSourceKeepsRunning()
    {
        using var guest = NewGuest(16, pagesPerSecond: 2_000);
        using var transport = new InMemoryTransport();
        // A copied disk whose image meets a write-back error: found by the first pass's sync, not at the switchover.
        const string Why = "/var/lib/vm/disk.img: cannot flush the copied disk image";
        var factory = new RecordingTargetFactory(new InProcessTargetFactory()) { OnSyncLanded = () => throw new IOException(Why) };
        var outcome = Migrate(guest, transport.Connector, transport.Listener, Options(), factory);
        AssertFailedBeforeCommit(outcome, guest, factory);
        Assert.Contains(Why, outcome.Stats.Error, StringComparison.Ordinal);
        // In round 0's wait for its landing: no round completed.
        Assert.Empty(outcome.Stats.Rounds);
        AssertWorkloadContinues(guest);
    }

    [Fact]
    public void ADestinationThatNeverConfirmsARoundFailsTheMigrationAndTheSourceKeepsRunning()
    {
        using var guest = NewGuest(4, pagesPerSecond: 2_000);
        using var transport = new InMemoryTransport();
        var markers = new List<ulong>();
        var destination = new Thread(() =>
        {
            using var c = transport.Listener.Accept(CancellationToken.None);
            var reader = new ProtocolReader(c.Control);
            var writer = new ProtocolWriter(c.Control);
            reader.Expect<HelloMessage>();
            writer.WriteWelcome(ProtocolCapabilities.LandedSync);
            // Drain the page channels, noting the markers but never echoing them; echo control keepalives, so the
            // source sees a live peer and only its wait for the round can end the migration.
            var drains = new List<Thread>();
            foreach (var page in c.Pages)
            {
                var drain = new Thread(() =>
                {
                    try
                    {
                        var header = new byte[MigrationProtocol.HeaderSize];
                        while (page.ReceiveExactly(header))
                        {
                            var h = RecordHeader.Parse(header);
                            var body = new byte[h.PayloadLength];
                            page.ReceiveExactly(body);
                            if (h.Kind == RecordKind.Keepalive)
                                lock (markers) markers.Add(BitConverter.ToUInt64(body));
                        }
                    }
                    catch (Exception e) when (e is MigrationException or IOException)
                    {
                        // The source aborted the channel.
                    }
                }) { IsBackground = true };
                drain.Start();
                drains.Add(drain);
            }
            try
            {
                while (reader.Read() is { } m)
                {
                    if (m is KeepaliveMessage k) writer.WriteKeepalive(k.Timestamp);
                }
            }
            catch (Exception e) when (e is MigrationException or IOException)
            {
                // The source aborted the channel after telling us.
            }
            foreach (var d in drains) d.Join();
        }) { IsBackground = true, Name = "test-mute-destination" };
        destination.Start();

        var stats = new OutgoingMigration(guest, transport.Connector, Options(verify: false)).Run(cancellationToken: TestContext.Current.CancellationToken);

        Assert.True(destination.Join(TimeSpan.FromSeconds(10)));
        Assert.Equal(MigrationStatus.Failed, stats.Status);
        Assert.Contains("did not confirm landing round 0", stats.Error, StringComparison.Ordinal);
        // One marker per page channel, for round 0: bit 62 set, bit 63 clear, the round in bits 8.., the channel below.
        lock (markers) Assert.Equal([(1UL << 62) | 0, (1UL << 62) | 1], markers.Order());
        Assert.True(guest.IsRunning, "the source guest must keep running");
        Assert.False(guest.IsDirtyLogging);
        AssertWorkloadContinues(guest);
    }
}
