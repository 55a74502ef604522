using System.Runtime.InteropServices;
using Ferry.Migration.Guest;
using Ferry.Migration.Memory;
using Ferry.Migration.Postcopy;
using Ferry.Migration.Protocol;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Tests.Postcopy;

/// <summary>
/// Post-copy pages received straight into a guest memory that takes them in place (Ferry's machine), without the
/// staging buffer's copy: only the pages still missing are written, each is published once its batch checked out,
/// and a batch that fails gives its claimed pages back.
/// </summary>
public sealed unsafe class InPlaceReceiveTests : IDisposable
{
    private const int Pages = 16;
    private readonly nint _source = (nint)NativeMemory.AlignedAlloc(Pages * MemoryRegion.PageSize, MemoryRegion.PageSize);
    private readonly nint _guest = (nint)NativeMemory.AlignedAlloc(Pages * MemoryRegion.PageSize, MemoryRegion.PageSize);
    private readonly MemoryRegion _sourceRegion, _guestRegion;

    public InPlaceReceiveTests()
    {
        _sourceRegion = new MemoryRegion(0, Pages * MemoryRegion.PageSize, _source);
        _guestRegion = new MemoryRegion(0, Pages * MemoryRegion.PageSize, _guest);
        for (int p = 0; p < Pages; p++)
        {
            new Span<byte>((void*)(_source + p * (int)MemoryRegion.PageSize), (int)MemoryRegion.PageSize).Fill((byte)(0x40 + p));
            // What the guest holds: a page it wrote after it arrived (installed already), or leftovers of nothing.
            new Span<byte>((void*)(_guest + p * (int)MemoryRegion.PageSize), (int)MemoryRegion.PageSize).Fill(0xEE);
        }
    }

    public void Dispose()
    {
        NativeMemory.AlignedFree((void*)_source);
        NativeMemory.AlignedFree((void*)_guest);
    }

    // Page requests the destination wrote (first page, count).
    private readonly List<(ulong First, int Count)> _requests = [];

    private byte GuestByte(int page, int offset = 0) => ((byte*)_guest)[page * (int)MemoryRegion.PageSize + offset];

    private (PostcopyIncoming Incoming, InPlaceMemory Memory, DirtyBitmap Missing) Begin(bool verify = false)
    {
        MemoryRegion[] regions = [_guestRegion];
        var incoming = new PostcopyIncoming(regions, (_, page, count) => { lock (_requests) _requests.Add((page, (int)count)); }, verify ? new PageHashDigest(regions) : null);
        var missing = new DirtyBitmap(Pages);
        missing.SetAll();
        missing.Clear(1); // installed already, by a fault's reply: the guest may have written it since
        incoming.Begin([missing], verify);
        var memory = new InPlaceMemory(_guest);
        incoming.Attach(memory);
        return (incoming, memory, missing);
    }

    /// <summary>The bytes of the source's batch of <see cref="Runs"/>, as the wire carries them.</summary>
    private byte[] Wire()
    {
        var (a, b) = InMemoryTransport.CreatePair("capture", capacity: 1 << 20);
        using (a)
        using (b)
        {
            long bytes = new PageBatchWriter(a).WriteBatch(0, _sourceRegion, Runs, PageBatchFlags.Postcopy | PageBatchFlags.DataChecksummed);
            var wire = new byte[bytes];
            Assert.True(b.ReceiveExactly(wire));
            return wire;
        }
    }

    private static readonly PageRun[] Runs = [new(0, 4, PageEncoding.Normal), new(4, 1, PageEncoding.Zero), new(5, 2, PageEncoding.Normal)];

    [Theory]
    [InlineData(PageBatchFlags.Postcopy | PageBatchFlags.DataChecksummed)] // the source's (paused: its data is checksummed)
    [InlineData(PageBatchFlags.Postcopy)]
    public void OnlyStillMissingPagesAreWrittenInPlaceAndPublishedInTheSendersOrder(PageBatchFlags flags)
    {
        var (incoming, memory, _) = Begin(verify: true);
        var (send, receive) = InMemoryTransport.CreatePair("pages", capacity: 1 << 20);
        using (send)
        using (receive)
        {
            new PageBatchWriter(send).WriteBatch(0, _sourceRegion, Runs, flags);
            var reader = new PageBatchReader(receive, [_guestRegion]) { Postcopy = incoming };
            var record = reader.ReadNext();
            Assert.Equal(6, record.NormalPages);
        }
        // Published in place: the claimed stretches of the Normal runs, around the page installed already.
        Assert.Equal([(0UL, 1), (2UL, 2), (5UL, 2)], memory.Published);
        Assert.Empty(memory.Copied); // nothing went through the staging buffer
        Assert.Equal([(4UL, 1)], memory.Zeroed);
        foreach (int p in new[] { 0, 2, 3, 5, 6 })
        {
            Assert.Equal((byte)(0x40 + p), GuestByte(p));
            Assert.Equal((byte)(0x40 + p), GuestByte(p, (int)MemoryRegion.PageSize - 1));
        }
        Assert.Equal(0xEE, GuestByte(1)); // the guest's own write survives the duplicate
        Assert.Equal(1, incoming.Duplicates);
        Assert.Equal(Pages - 1 - 6, incoming.Missing);
    }

    [Fact]
    public void AMemoryWithoutInPlaceReceiveGetsTheSamePagesByCopy()
    {
        var (incoming, memory, _) = Begin();
        memory.InPlace = false;
        var (send, receive) = InMemoryTransport.CreatePair("pages", capacity: 1 << 20);
        using (send)
        using (receive)
        {
            new PageBatchWriter(send).WriteBatch(0, _sourceRegion, Runs, PageBatchFlags.Postcopy);
            new PageBatchReader(receive, [_guestRegion]) { Postcopy = incoming }.ReadNext();
        }
        Assert.Empty(memory.Published);
        Assert.Equal([(0UL, 1), (2UL, 2), (5UL, 2)], memory.Copied);
    }

    [Fact]
    public void ABatchCutShortGivesItsClaimedPagesBackAsMissingAndPublishesNone()
    {
        var (incoming, memory, missing) = Begin();
        ReadBatchCutShort(incoming);
        // Every page the batch claimed is missing again, for a resumed source to send, and its Zero run's page too.
        AssertNothingLanded(incoming, memory, missing);
    }

    [Fact]
    public void ABatchWhoseDataIsStillOnTheWayIsReceivedByCopySoThatItsPagesStayMissingMeanwhile()
    {
        var (incoming, memory, missing) = Begin();
        byte[] wire = Wire();
        var (send, receive) = InMemoryTransport.CreatePair("pages", capacity: 1 << 20);
        using (send)
        using (receive)
        {
            // The header and the runs have come, the data not yet: nothing may be claimed before it is here, or a guest
            // thread faulting on one of those pages would wait behind the batch instead of asking for it at once.
            int header = wire.Length - 6 * (int)MemoryRegion.PageSize - MigrationProtocol.TrailerSize;
            send.Send(wire.AsSpan(0, header));
            var reader = new PageBatchReader(receive, [_guestRegion]) { Postcopy = incoming };
            Exception? failed = null;
            var reading = new Thread(() =>
            {
                try
                {
                    reader.ReadNext();
                }
                catch (Exception e)
                {
                    failed = e;
                }
            });
            reading.Start();
            Thread.Sleep(100);
            Assert.True(reading.IsAlive);
            foreach (int p in new[] { 0, 2, 3, 5, 6 }) Assert.True(missing.TestAtomic((ulong)p), $"page {p} was claimed before its data came");
            send.Send(wire.AsSpan(header));
            Assert.True(reading.Join(TimeSpan.FromSeconds(10)));
            Assert.Null(failed);
        }
        Assert.Empty(memory.Published);
        Assert.Equal([(0UL, 1), (2UL, 2), (5UL, 2)], memory.Copied);
    }

    [Theory]
    [InlineData(-1)] // the trailer
    [InlineData(-1 - MigrationProtocol.TrailerSize - 100)] // the last page's data
    public void ABatchWhoseChecksumFailsPublishesNothing(int flip)
    {
        var (incoming, memory, missing) = Begin();
        byte[] wire = Wire();
        wire[wire.Length + flip] ^= 0x01;
        var (send, receive) = InMemoryTransport.CreatePair("pages", capacity: 1 << 20);
        using (send)
        using (receive)
        {
            send.Send(wire);
            var reader = new PageBatchReader(receive, [_guestRegion]) { Postcopy = incoming };
            var e = Assert.Throws<MigrationProtocolException>(() => reader.ReadNext());
            Assert.Contains("checksum mismatch", e.Message, StringComparison.Ordinal);
        }
        // Nor the Zero run: a batch that does not check out may have had its runs damaged on the way, and a page zeroed
        // here would never be asked for again.
        AssertNothingLanded(incoming, memory, missing);
    }

    [Fact]
    public void AFaultOnAPageClaimedByABatchThatThenFailsIsAskedForAgainAfterAResume()
    {
        var (incoming, memory, missing) = Begin();
        // While the batch's pages are claimed and their data is coming, a hart reaches page 2: the machine asks for it
        // (once: its request is sticky) and waits.
        ReadBatchCutShort(incoming, () =>
        {
            memory.Awaited.Add((0, 2));
            incoming.PageNeeded(0, 2);
        });
        Assert.True(missing.TestAtomic(2));
        // Nothing was asked: the page was on its way in that batch.
        Assert.Empty(_requests);
        // The connection is gone; the source resumes over a new one, and the page the hart waits for is asked for.
        incoming.RequestPendingAgain();
        Assert.Equal([(2UL, 1)], _requests);
        Assert.Equal(1, incoming.Faults);
        Assert.Equal(1, incoming.Awaited);
    }

    [Theory]
    [InlineData(MigrationProtocol.HeaderSize)] // the record's header, and nothing of its body
    [InlineData(MigrationProtocol.HeaderSize + MigrationProtocol.BatchHeaderSize + (3 * MigrationProtocol.RunSize))] // up to its data
    public void AStreamThatEndsCleanlyBetweenTheRecordsPartsIsALostLinkNotABrokenProtocol(int cut)
    {
        // A source that dies closes its sockets cleanly, whatever byte it had sent: the destination must see a lost link
        // (post-copy pauses and waits for a resume), as it does for an end one byte later, not a protocol violation
        // (post-copy gives the VM up).
        var (incoming, memory, missing) = Begin();
        byte[] wire = Wire();
        var (send, receive) = InMemoryTransport.CreatePair("pages", capacity: 1 << 20);
        using (send)
        using (receive)
        {
            send.Send(wire.AsSpan(0, cut));
            send.Dispose();
            var reader = new PageBatchReader(receive, [_guestRegion]) { Postcopy = incoming };
            Assert.Throws<MigrationTransportException>(() => reader.ReadNext());
        }
        Assert.Empty(memory.Copied);
        AssertNothingLanded(incoming, memory, missing);
    }

    /// <summary>None of the batch's pages went to the guest: none published or zeroed, every one still missing.</summary>
    private static void AssertNothingLanded(PostcopyIncoming incoming, InPlaceMemory memory, DirtyBitmap missing)
    {
        Assert.Empty(memory.Published);
        Assert.Empty(memory.Zeroed);
        foreach (int p in new[] { 0, 2, 3, 4, 5, 6 }) Assert.True(missing.TestAtomic((ulong)p), $"page {p} is not missing");
        Assert.Equal(Pages - 1, incoming.Missing);
    }

    /// <summary>
    /// Read the batch of which the destination gets all but the last page and the trailer before the connection goes,
    /// through a channel that said the whole batch was there (a receive can still fail: an abort, a reset), running
    /// <paramref name="beforeReceive"/> as the data's receive begins.
    /// </summary>
    private void ReadBatchCutShort(PostcopyIncoming incoming, Action? beforeReceive = null)
    {
        byte[] wire = Wire();
        var (send, receive) = InMemoryTransport.CreatePair("pages", capacity: 1 << 20);
        using (send)
        using (receive)
        {
            send.Send(wire.AsSpan(0, wire.Length - (int)MemoryRegion.PageSize - MigrationProtocol.TrailerSize));
            send.Dispose(); // the connection goes
            var reader = new PageBatchReader(new AllReadable(receive) { BeforeReceive = beforeReceive }, [_guestRegion]) { Postcopy = incoming };
            Assert.Throws<MigrationTransportException>(() => reader.ReadNext());
        }
    }

    /// <summary>A channel that says its whole stream is readable now.</summary>
    private sealed class AllReadable(IMigrationChannel inner) : IMigrationChannel
    {
        public string Name => inner.Name;
        public long BytesReadable => long.MaxValue;
        public void Send(ReadOnlySpan<byte> data) => inner.Send(data);
        public void SendGather(ReadOnlySpan<IoSegment> segments) => inner.SendGather(segments);
        public bool ReceiveExactly(Span<byte> buffer) => inner.ReceiveExactly(buffer);
        public Action? BeforeReceive { get; init; }
        public void ReceiveScatter(ReadOnlySpan<IoSegment> segments)
        {
            BeforeReceive?.Invoke();
            inner.ReceiveScatter(segments);
        }
        public void Abort() => inner.Abort();
        public void Dispose() => inner.Dispose();
    }

    /// <summary>A guest memory that takes pages in place (or, with <see cref="InPlace"/> false, only by copy), recording each call.</summary>
    private sealed class InPlaceMemory(nint host) : IPostcopyMemory
    {
        public bool InPlace = true;
        public readonly List<(ulong First, int Count)> Published = [], Copied = [], Zeroed = [];
        public readonly List<(int Region, ulong Page)> Awaited = [];
        public IReadOnlyList<(int Region, ulong Page)> AwaitedPages() => Awaited;
        public nint ReceiveInPlaceAddress(int region) => InPlace ? host : 0;
        public void PublishReceived(int region, ulong firstPage, int count) => Published.Add((firstPage, count));
        public void Install(int region, ulong firstPage, int count, nint source)
        {
            Copied.Add((firstPage, count));
            Buffer.MemoryCopy((void*)source, (void*)(host + (nint)(firstPage * MemoryRegion.PageSize)), count * MemoryRegion.PageSize, count * MemoryRegion.PageSize);
        }
        public void InstallZero(int region, ulong firstPage, ulong count) => Zeroed.Add((firstPage, (int)count));
        public long BlockedTicks => 0;
        public long WorkingSetPages => 0;
        public void Abort(string reason) { }
        public void Dispose() { }
    }
}
