using System.Diagnostics;
using Ferry.Migration.Guest;
using Ferry.Migration.InProcess;
using Ferry.Migration.Precopy;
using Ferry.Migration.Protocol;
using Ferry.Migration.Tests.Precopy;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Tests.Failure;

/// <summary>
/// The destination against a scripted source that speaks valid records in a hostile order or amount: each must end
/// in a bounded time with the half-built guest discarded, never started.
/// </summary>
[Collection(MigrationCollection.Name)]
public class HostileSourceTests
{
    private static readonly TimeSpan PeerTimeout = TimeSpan.FromSeconds(1);
    private static readonly (ulong, ulong)[] Layout = [(0, 1 << 20)];

    /// <summary>The destination engine on its own thread, its outcome kept for the test.</summary>
    private sealed class Destination
    {
        private readonly Thread _thread;
        public readonly RecordingTargetFactory Factory = new(new InProcessTargetFactory());
        public readonly Stopwatch Clock = Stopwatch.StartNew();
        public Exception? Error;
        public IMigrationTarget? Target;

        public Destination(IMigrationListener listener, IncomingOptions options)
        {
            _thread = new Thread(() =>
            {
                try
                {
                    Target = new IncomingMigration(listener, Factory, options).Run();
                }
                catch (Exception e)
                {
                    Error = e;
                }
            }) { IsBackground = true, Name = "test-destination" };
            _thread.Start();
        }

        public bool Join() => _thread.Join(TimeSpan.FromSeconds(10));

        /// <summary>Wait for the end and check the discard promise: failed with a reason, one guest, disposed, never started.</summary>
        public MigrationException AssertFailedAndDiscarded()
        {
            Assert.True(Join(), "the destination did not give up within 10 s");
            Target?.Dispose();
            Assert.Null(Target);
            var e = Assert.IsType<MigrationException>(Error, exactMatch: false);
            var created = Assert.Single(Factory.Created);
            Assert.False(created.Started, "the destination started a guest the source never committed");
            Assert.True(created.Disposed, "the half-built guest must be discarded");
            return e;
        }
    }

    private static IncomingOptions Options(long maxStateBytes = 16L << 20, int maxStateSections = 4096) => new()
    {
        PeerTimeout = PeerTimeout,
        MaxMemoryBytes = 1UL << 30,
        MaxStateBytes = maxStateBytes,
        MaxStateSections = maxStateSections,
    };

    /// <summary>Connect one page channel and complete the handshake for a 1 MiB guest.</summary>
    private static (MigrationConnection Connection, ProtocolWriter Writer, ProtocolReader Reader) Handshake(InMemoryTransport transport,
        IReadOnlyList<(ulong, ulong)>? layout = null, ProtocolCapabilities capabilities = ProtocolCapabilities.None)
    {
        var c = transport.Connector.Connect(1, CancellationToken.None);
        var writer = new ProtocolWriter(c.Control);
        var reader = new ProtocolReader(c.Control);
        writer.WriteHello(new HelloMessage(MigrationProtocol.CurrentVersion, Guid.NewGuid(), MigrationProtocol.PageSize, 1,
            capabilities, layout ?? Layout, ReadOnlyMemory<byte>.Empty));
        reader.Expect<WelcomeMessage>();
        return (c, writer, reader);
    }

    /// <summary>Connect one page channel and the urgent one, and complete a post-copy handshake for a 1 MiB guest.</summary>
    private static (MigrationConnection Connection, ProtocolWriter Writer) PostcopyHandshake(InMemoryTransport transport,
        ProtocolCapabilities more = ProtocolCapabilities.None)
    {
        var c = transport.Connector.Connect(1, urgentChannel: true, CancellationToken.None);
        var writer = new ProtocolWriter(c.Control);
        writer.WriteHello(new HelloMessage(MigrationProtocol.CurrentVersion, Guid.NewGuid(), MigrationProtocol.PageSize, 1,
            ProtocolCapabilities.Postcopy | ProtocolCapabilities.UrgentChannel | more, Layout, ReadOnlyMemory<byte>.Empty));
        new ProtocolReader(c.Control).Expect<WelcomeMessage>();
        return (c, writer);
    }

    /// <summary>Keepalives on the control and the page channel every 100 ms, so only a deadline can end the wait.</summary>
    private static Thread KeepAlive(MigrationConnection c, CancellationToken stop)
    {
        var t = new Thread(() =>
        {
            var control = new ProtocolWriter(c.Control);
            var page = new PageBatchWriter(c.Pages[0]);
            try
            {
                while (!stop.WaitHandle.WaitOne(100))
                {
                    control.WriteKeepalive(1);
                    page.WriteKeepalive(1);
                }
            }
            catch (Exception e) when (e is MigrationTransportException or ObjectDisposedException)
            {
                // The destination gave up and closed: what the test waits for.
            }
        }) { IsBackground = true, Name = "test-keepalive" };
        t.Start();
        return t;
    }

    [Fact]
    public void AHelloInAVersionThisReceiverDoesNotSpeakIsRefusedBeforeAnyGuestIsBuilt()
    {
        using var transport = new InMemoryTransport();
        var destination = new Destination(transport.Listener, Options());
        using var c = transport.Connector.Connect(1, CancellationToken.None);
        new ProtocolWriter(c.Control).WriteHello(new HelloMessage(MigrationProtocol.CurrentVersion + 1, Guid.NewGuid(),
            MigrationProtocol.PageSize, 1, ProtocolCapabilities.None, Layout, ReadOnlyMemory<byte>.Empty));
        var refused = Assert.IsType<MigrationPeerException>(Record.Exception(() => new ProtocolReader(c.Control).Expect<WelcomeMessage>()));
        Assert.Equal(RecordKind.Refuse, refused.Kind);
        Assert.Contains($"protocol version {MigrationProtocol.CurrentVersion + 1} is not supported", refused.Message);
        c.Dispose();
        Assert.True(destination.Join(), "the destination did not end after refusing");
        Assert.Contains("handshake refused", Assert.IsType<MigrationException>(destination.Error, exactMatch: false).Message);
        Assert.Empty(destination.Factory.Created);
    }

    [Theory]
    [InlineData(1, 0UL, 1U)]     // page 0 is in chunk 0: channel 0's
    [InlineData(0, 511UL, 2U)]   // pages 511..512 straddle chunks 0 and 1
    public void APageSentOnAChannelThatDoesNotOwnItFailsTheMigration(int channel, ulong firstPage, uint count)
    {
        // 4 MiB = two 2 MiB chunks, dealt to channels 0 and 1. A source breaking the rule could have two receive
        // threads write one page at once, and a page's versions could arrive out of order.
        (ulong, ulong)[] layout = [(0, 4 << 20)];
        using var transport = new InMemoryTransport();
        var destination = new Destination(transport.Listener, Options());
        var c = transport.Connector.Connect(2, CancellationToken.None);
        using (c)
        {
            new ProtocolWriter(c.Control).WriteHello(new HelloMessage(MigrationProtocol.CurrentVersion, Guid.NewGuid(),
                MigrationProtocol.PageSize, 2, ProtocolCapabilities.None, layout, ReadOnlyMemory<byte>.Empty));
            var reader = new ProtocolReader(c.Control);
            reader.Expect<WelcomeMessage>();
            // Zero runs carry no data, so the region's host address is never read.
            var region = new MemoryRegion(0, 4 << 20, 0);
            try
            {
                new PageBatchWriter(c.Pages[channel]).WriteBatch(0, region, [new PageRun(firstPage, count, PageEncoding.Zero)], PageBatchFlags.None);
            }
            catch (MigrationTransportException)
            {
                // The batch goes out as two writes (table, then trailer); a receiver that refuses the table may
                // abort the channel before the trailer is written, as a real peer may reset a TCP connection.
            }
            var error = Assert.IsType<MigrationPeerException>(Record.Exception(() => reader.Expect<CommitMessage>()));
            Assert.Equal(ProtocolErrorCode.Protocol, error.Code);
            Assert.Contains("belong to another page channel", error.Message);
        }
        Assert.Contains("belong to another page channel", destination.AssertFailedAndDiscarded().Message);
    }

    [Theory]
    [InlineData(300 << 10, 4, 1 << 20, 4096)] // the fourth 300 KiB section passes 1 MiB
    [InlineData(0, 9, 16 << 20, 8)] // empty sections cost no bytes but still count
    public void StateSectionsBeyondTheReceiversTotalFailTheMigrationAndTheSourceIsToldWhy(int sectionBytes, int sections, long maxBytes, int maxSections)
    {
        using var transport = new InMemoryTransport();
        var destination = new Destination(transport.Listener, Options(maxBytes, maxSections));
        var (c, writer, reader) = Handshake(transport);
        using (c)
        {
            for (int i = 0; i < sections; i++) writer.WriteStateSection(new StateSection($"s{i}", 1, new byte[sectionBytes]));
            var error = Assert.IsType<MigrationPeerException>(Record.Exception(() => reader.Expect<CommitMessage>()));
            Assert.Equal(ProtocolErrorCode.Protocol, error.Code);
            Assert.Contains("state sections exceed", error.Message);
        }
        var e = destination.AssertFailedAndDiscarded();
        Assert.Contains($"at 's{sections - 1}'", e.Message);
    }

    [Fact]
    public void ADestinationWhosePageChannelNeverFlushesAfterCompleteGivesUpWithinThePeerTimeout()
    {
        using var transport = new InMemoryTransport();
        var destination = new Destination(transport.Listener, Options());
        var (c, writer, _) = Handshake(transport);
        using var stop = new CancellationTokenSource();
        using (c)
        {
            writer.WriteComplete(1, CompleteFlags.None);
            // Alive on every channel, but the Flush never comes.
            var keepalive = KeepAlive(c, stop.Token);
            var e = destination.AssertFailedAndDiscarded();
            stop.Cancel();
            keepalive.Join();
            Assert.Contains("did not deliver their Flush", e.Message);
            // .NET timers count in whole milliseconds of a coarser clock than Stopwatch: allow them to fire a hair early.
            Assert.InRange(destination.Clock.Elapsed, PeerTimeout - TimeSpan.FromMilliseconds(20), PeerTimeout * 6);
        }
    }

    [Fact]
    public void ACompleteSayingNoPageWasSentIsRefusedOutsidePostcopy()
    {
        // Flush sequence 0 lets a pure post-copy skip the switchover Flush; a pre-copy Complete may not claim it.
        using var transport = new InMemoryTransport();
        var destination = new Destination(transport.Listener, Options());
        var (c, writer, _) = Handshake(transport);
        using (c)
        {
            writer.WriteComplete(0, CompleteFlags.None);
            var e = destination.AssertFailedAndDiscarded();
            Assert.Contains("post-copy only", e.Message);
        }
    }

    [Fact]
    public void APostcopyCompleteSayingNoPageWasSentAfterPagesCameIsRefused()
    {
        using var transport = new InMemoryTransport();
        var destination = new Destination(transport.Listener, Options());
        var (c, writer) = PostcopyHandshake(transport);
        using (c)
        {
            // A zero run carries no data, so the region's host address is never read.
            new PageBatchWriter(c.Pages[0]).WriteBatch(0, new MemoryRegion(0, 1 << 20, 0), [new PageRun(3, 2, PageEncoding.Zero)], PageBatchFlags.None);
            Thread.Sleep(200); // let the receiver take the batch
            writer.Write(new MissingPagesMessage(0, [(0, 256)]));
            writer.WriteComplete(0, CompleteFlags.Postcopy);
            var e = destination.AssertFailedAndDiscarded();
            Assert.Contains("pages arrived before a Complete that says none were sent", e.Message);
        }
    }

    /// <summary>A pure post-copy source that sends <paramref name="map"/> where its populated map is due; the failure.</summary>
    private static MigrationException FailsOnThePopulatedMap(Action<ProtocolWriter> map) =>
        FailsAfterHandshake(t => PostcopyHandshake(t, ProtocolCapabilities.PopulatedMap), map);

    /// <summary>
    /// A source that completes <paramref name="handshake"/> and then sends <paramref name="records"/>; the destination's
    /// failure, once it discarded the half-built guest.
    /// </summary>
    private static MigrationException FailsAfterHandshake(Func<InMemoryTransport, (MigrationConnection, ProtocolWriter)> handshake,
        Action<ProtocolWriter> records, long maxStateBytes = 16L << 20)
    {
        using var transport = new InMemoryTransport();
        var destination = new Destination(transport.Listener, Options(maxStateBytes));
        var (c, writer) = handshake(transport);
        using (c)
        {
            try
            {
                records(writer);
            }
            catch (MigrationTransportException)
            {
                // The destination gave up and closed before the source was done.
            }
            return destination.AssertFailedAndDiscarded();
        }
    }

    [Fact]
    public void APopulatedMapRunOutsideGuestMemoryFailsTheMigration()
    {
        var e = FailsOnThePopulatedMap(writer =>
        {
            writer.WriteKeepalive(1); // read past, not echoed: the map comes first
            writer.Write(new PopulatedPagesMessage(0, [(3, 2)], Last: false));
            writer.Write(new PopulatedPagesMessage(0, [(250, 7)], Last: true)); // the guest has 256 pages
        });
        Assert.Contains("PopulatedPages: pages 250+7 outside region 0 of 256 pages", e.Message);
    }

    [Fact]
    public void APopulatedMapThatNeverEndsFailsTheMigration()
    {
        // The same page again and again, never Last: more runs than the guest has pages.
        var e = FailsOnThePopulatedMap(writer =>
        {
            for (int i = 0; i < 300; i++) writer.Write(new PopulatedPagesMessage(0, [(1, 1)], Last: false));
        });
        Assert.Contains("more runs than the guest's 256 pages", e.Message);
    }

    /// <summary>A source that negotiated Shape and sends <paramref name="first"/> where its shape is due; the failure.</summary>
    private static MigrationException FailsOnTheShape(Action<ProtocolWriter> first, long maxStateBytes = 16L << 20) =>
        FailsAfterHandshake(t =>
        {
            var (c, writer, _) = Handshake(t, capabilities: ProtocolCapabilities.Shape);
            return (c, writer);
        }, first, maxStateBytes);

    [Fact]
    public void AnythingButAStateSectionWhereTheShapeIsDueFailsTheMigration()
    {
        var e = FailsOnTheShape(writer =>
        {
            writer.WriteKeepalive(1); // echoed and read past
            writer.WriteComplete(0, CompleteFlags.None);
        });
        Assert.Contains("the source's shape (a StateSection) was due first after Welcome", e.Message);
    }

    [Fact]
    public void AShapeOverTheReceiversStateLimitFailsTheMigration()
    {
        var e = FailsOnTheShape(writer => writer.WriteStateSection(new StateSection("huge-shape", 1, new byte[4096])), maxStateBytes: 1024);
        Assert.Contains("the source's shape 'huge-shape' exceeds this receiver's limit of 1024 state bytes", e.Message);
    }

    [Fact]
    public void AnythingButThePopulatedMapWhereItIsDueFailsTheMigration()
    {
        var e = FailsOnThePopulatedMap(writer => writer.Write(new MissingPagesMessage(0, [(0, 256)])));
        Assert.Contains("PopulatedPages", e.Message);
    }

    [Theory]
    [InlineData(true)]  // the urgent channel: post-copy batches only, from its start
    [InlineData(false)] // a page channel after its switchover Flush: the push follows, post-copy batches only
    public void APrecopyBatchWhereOnlyPostcopyOnesMayComeFailsTheMigration(bool urgent)
    {
        // A pre-copy batch is written straight into guest memory, present pages included: once the guest may run here
        // it would overwrite what the guest wrote. Refused, whatever the source meant by it.
        using var transport = new InMemoryTransport();
        var destination = new Destination(transport.Listener, Options());
        var (c, writer) = PostcopyHandshake(transport);
        using (c)
        {
            var channel = urgent ? c.Urgent! : c.Pages[0];
            if (!urgent) new PageBatchWriter(channel).WriteFlush(1);
            try
            {
                // A zero run carries no data, so the region's host address is never read.
                new PageBatchWriter(channel).WriteBatch(0, new MemoryRegion(0, 1 << 20, 0), [new PageRun(3, 2, PageEncoding.Zero)], PageBatchFlags.None);
            }
            catch (MigrationTransportException)
            {
                // Refused from its header, before its trailer was written: the destination aborted the channel.
            }
            var e = destination.AssertFailedAndDiscarded();
            Assert.Contains("a pre-copy batch where only post-copy ones may come", e.Message);
        }
    }

    [Fact]
    public void PostcopyPagesWithNoSwitchoverAfterThemEndWithTheSourcesSilenceNotLater()
    {
        // The urgent channel's thread holds pages sent before Complete until the switchover attaches the guest's
        // memory; a source that never gets there must not keep it (or the destination) waiting past the peer timeout.
        using var transport = new InMemoryTransport();
        var destination = new Destination(transport.Listener, Options());
        var (c, writer) = PostcopyHandshake(transport);
        using (c)
        {
            // A zero run carries no data, so the region's host address is never read.
            new PageBatchWriter(c.Urgent!).WriteBatch(0, new MemoryRegion(0, 1 << 20, 0), [new PageRun(3, 2, PageEncoding.Zero)], PageBatchFlags.Postcopy);
            var e = destination.AssertFailedAndDiscarded();
            Assert.True(destination.Clock.Elapsed < PeerTimeout * 4, $"gave up after {destination.Clock.Elapsed.TotalSeconds:F1} s");
            Assert.Contains("silent", e.Message);
        }
    }

    [Fact]
    public void ADestinationThatNeverGetsCommitAfterReadyDiscardsTheGuestWithinThePeerTimeout()
    {
        // Real state for the 1 MiB layout, so the destination loads it and answers Ready.
        using var guest = MigrationHarness.NewGuest(1, fill: MemoryFill.Zero);
        guest.Pause();
        var state = guest.SaveState();
        var layout = guest.Regions.Select(r => (r.GuestPhysicalAddress, r.Size)).ToArray();

        using var transport = new InMemoryTransport();
        var destination = new Destination(transport.Listener, Options());
        var (c, writer, reader) = Handshake(transport, layout);
        using var stop = new CancellationTokenSource();
        using (c)
        {
            new PageBatchWriter(c.Pages[0]).WriteFlush(1);
            foreach (var s in state) writer.WriteStateSection(s);
            writer.WriteComplete(1, CompleteFlags.None);
            reader.Expect<ReadyMessage>();
            // Alive, never deciding: the Commit deadline, not the silence watchdog, must end it.
            var keepalive = KeepAlive(c, stop.Token);
            var e = destination.AssertFailedAndDiscarded();
            stop.Cancel();
            keepalive.Join();
            Assert.Contains("no Commit within", e.Message);
        }
        guest.Resume();
    }
}
