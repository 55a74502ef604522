using System.Net;
using Ferry.Migration.Protocol;
using Ferry.Migration.Tests.Protocol;
using Ferry.Migration.Transport;

// Channels are blocking by design (one thread per channel); the test drives them from plain threads.
#pragma warning disable xUnit1031, xUnit1051

namespace Ferry.Migration.Tests.Transport;

/// <summary>The protocol and the TCP transport together, as the engine will use them.</summary>
public class WireOverTcpTests
{
    [Fact]
    public void AHandshakeThenPageBatchesOnTwoChannelsRebuildGuestMemoryExactly()
    {
        var options = new TcpTransportOptions { ReceiveTimeout = TimeSpan.FromSeconds(5), SendTimeout = TimeSpan.FromSeconds(5) };
        using var listener = new TcpMigrationListener(new IPEndPoint(IPAddress.Loopback, 0), options);
        using var source = new NativeGuestMemory((0, 600), (0x10_0000_0000, 64));
        using var destination = new NativeGuestMemory((0, 600), (0x10_0000_0000, 64));
        source.FillPattern(11);
        source.Region(0).Slice(100 * 4096, 50 * 4096).Clear(); // a zero stretch, sent as one Zero run
        destination.FillPattern(77); // stale: the Zero run must clear it

        var sender = Task.Run(() =>
        {
            using var c = new TcpMigrationConnector(listener.LocalEndPoint, options).Connect(2, CancellationToken.None);
            var control = new ProtocolWriter(c.Control);
            control.WriteHello(new HelloMessage(1, Guid.NewGuid(), 4096, 2, ProtocolCapabilities.None,
                source.Regions.Select(r => (r.GuestPhysicalAddress, r.Size)).ToArray(), "secret"u8.ToArray()));
            new ProtocolReader(c.Control).Expect<WelcomeMessage>();
            // Page k of a region travels on channel (k / 256) % 2, as an engine would shard it.
            Parallel.For(0, 2, ch =>
            {
                var w = new PageBatchWriter(c.Pages[ch]);
                for (int region = 0; region < 2; region++)
                {
                    var r = source.Regions[region];
                    for (ulong first = (ulong)ch * 256; first < r.Pages; first += 512)
                    {
                        uint count = (uint)Math.Min(256, r.Pages - first);
                        PageRun[] runs = region == 0 && first == 0
                            ? [new(0, 100, PageEncoding.Normal), new(100, 50, PageEncoding.Zero), new(150, 106, PageEncoding.Normal)]
                            : [new(first, count, PageEncoding.Normal)];
                        w.WriteBatch(region, r, runs, PageBatchFlags.FinalPass | PageBatchFlags.DataChecksummed);
                    }
                }
                w.WriteFlush(1);
            });
            control.WriteComplete(1, CompleteFlags.None);
            new ProtocolReader(c.Control).Expect<ReadyMessage>();
        });

        using var d = listener.Accept(CancellationToken.None);
        var reader = new ProtocolReader(d.Control);
        var hello = reader.Expect<HelloMessage>();
        var decision = MigrationProtocol.Evaluate(hello, 1UL << 30, "secret"u8, d.Pages.Count);
        Assert.True(decision.Accepted, decision.Reason);
        new ProtocolWriter(d.Control).WriteWelcome(decision.Capabilities);
        var counts = new long[2];
        Parallel.For(0, 2, ch =>
        {
            var r = new PageBatchReader(d.Pages[ch], destination.Regions);
            while (true)
            {
                var rec = r.ReadNext();
                if (rec.Kind == PageRecordKind.Flush) break;
                Assert.Equal(PageRecordKind.PageBatch, rec.Kind);
                counts[ch] += rec.NormalPages + rec.ZeroPages;
            }
        });
        Assert.Equal(1UL, reader.Expect<CompleteMessage>().FlushSequence);
        new ProtocolWriter(d.Control).WriteReady(0, 0, null);
        sender.GetAwaiter().GetResult();

        Assert.Equal(664, counts[0] + counts[1]);
        Assert.True(source.All.SequenceEqual(destination.All));
    }
}
