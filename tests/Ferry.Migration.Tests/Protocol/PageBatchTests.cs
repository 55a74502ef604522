using System.Buffers.Binary;
using System.IO.Hashing;
using Ferry.Migration.Protocol;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Tests.Protocol;

public class PageBatchTests
{
    private static readonly PageRun[] MixedRuns =
    [
        new(0, 2, PageEncoding.Normal),
        new(2, 3, PageEncoding.Normal),   // adjacent to the first: one iovec
        new(5, 4, PageEncoding.Zero),
        new(9, 1, PageEncoding.Normal),
    ];

    /// <summary>A stop-and-copy batch with its data checksummed, or a pre-copy one.</summary>
    internal static PageBatchFlags Flags(bool checksumData) =>
        checksumData ? PageBatchFlags.FinalPass | PageBatchFlags.DataChecksummed : PageBatchFlags.None;

    private static byte[] WriteBatch(NativeGuestMemory memory, int region, PageRun[] runs, bool checksumData, out ByteStreamChannel wire)
    {
        wire = new ByteStreamChannel(name: "pages-0");
        new PageBatchWriter(wire).WriteBatch(region, memory.Regions[region], runs, Flags(checksumData));
        return wire.Output;
    }

    [Fact]
    public void ABatchEncodesHeaderRunsDataAndAChecksumOverHeaderAndRuns()
    {
        using var memory = new NativeGuestMemory((0, 4));
        memory.Page(0, 1).Fill(0x5A);
        var bytes = WriteBatch(memory, 0, [new(1, 1, PageEncoding.Normal), new(2, 2, PageEncoding.Zero)], checksumData: false, out _);
        string table = Convert.ToHexString(bytes, 0, 8 + 8 + 32);
        Assert.Equal(
            "04000000" + "30100000" +                        // PageBatch, no flags, payload 8+32+4096+8 = 0x1030
            "0000" + "0200" + "00000000" +                   // region 0, 2 runs, reserved
            "0100000000000000" + "01000000" + "01" + "000000" + // page 1, 1 page, Normal
            "0200000000000000" + "02000000" + "02" + "000000",  // pages 2..3, Zero
            table);
        Assert.All(bytes.AsSpan(48, 4096).ToArray(), b => Assert.Equal(0x5A, b));
        ulong expected = XxHash3.HashToUInt64(bytes.AsSpan(0, 48));
        Assert.Equal(expected, BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(48 + 4096)));
        Assert.Equal(48 + 4096 + 8, bytes.Length);
    }

    [Fact]
    public void DataChecksummedCoversThePageDataToo()
    {
        using var memory = new NativeGuestMemory((0, 4));
        memory.FillPattern(3);
        // Two Normal runs (pages 0-1 and 3) around a Zero run: the data hash is chained run by run, seeded with the
        // hash so far (MigrationProtocol.cs), starting from the hash of header, batch header and runs.
        var bytes = WriteBatch(memory, 0, [new(0, 2, PageEncoding.Normal), new(2, 1, PageEncoding.Zero), new(3, 1, PageEncoding.Normal)],
            checksumData: true, out _);
        Assert.Equal((byte)(PageBatchFlags.FinalPass | PageBatchFlags.DataChecksummed), bytes[1]);
        int table = bytes.Length - 8 - 3 * 4096;
        ulong expected = XxHash3.HashToUInt64(bytes.AsSpan(0, table));
        expected = XxHash3.HashToUInt64(bytes.AsSpan(table, 2 * 4096), (long)expected);
        expected = XxHash3.HashToUInt64(bytes.AsSpan(table + 2 * 4096, 4096), (long)expected);
        Assert.Equal(expected, BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(bytes.Length - 8)));
        // And it differs from the metadata-only checksum: the data is really covered.
        Assert.NotEqual(XxHash3.HashToUInt64(bytes.AsSpan(0, table)), expected);
    }

    [Fact]
    public void OneGatherSendCarriesTheBatchWithAdjacentPagesCoalesced()
    {
        using var memory = new NativeGuestMemory((0, 16));
        WriteBatch(memory, 0, MixedRuns, checksumData: false, out var wire);
        Assert.Equal(1, wire.GatherCalls);
        Assert.Equal(0, wire.SendCalls);
        Assert.Equal(4, wire.LastSegmentCount); // table, pages 0-4, page 9, trailer
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void BatchesLandInGuestMemoryAndZeroRunsClearStalePages(bool checksumData)
    {
        using var source = new NativeGuestMemory((0, 16), (0x100000, 8));
        using var destination = new NativeGuestMemory((0, 16), (0x100000, 8));
        source.FillPattern(1);
        source.Region(0).Slice(5 * 4096, 4 * 4096).Clear(); // the Zero run really is zero at the source
        destination.FillPattern(99); // stale content the Zero run must clear
        var wire = new ByteStreamChannel(name: "pages-0");
        var writer = new PageBatchWriter(wire);
        writer.WriteBatch(0, source.Regions[0], MixedRuns, Flags(checksumData));
        writer.WriteBatch(1, source.Regions[1], [new(0, 8, PageEncoding.Normal)], Flags(checksumData));
        writer.WriteFlush(42);

        var reader = new PageBatchReader(new ByteStreamChannel(wire.Output, "pages-0"), destination.Regions);
        var first = reader.ReadNext();
        Assert.Equal(new PageRecord(PageRecordKind.PageBatch, 0, 6, 4, 0, 8 + 8 + (4 * 16) + (6 * 4096) + 8), first);
        Assert.Equal(MixedRuns, reader.LastRuns.ToArray());
        Assert.Equal(PageRecordKind.PageBatch, reader.ReadNext().Kind);
        Assert.Equal(new PageRecord(PageRecordKind.Flush, 0, 0, 0, 42, 16), reader.ReadNext());
        Assert.Equal(PageRecordKind.EndOfStream, reader.ReadNext().Kind);

        Assert.True(source.Region(0)[..(10 * 4096)].SequenceEqual(destination.Region(0)[..(10 * 4096)]));
        Assert.True(source.Region(1).SequenceEqual(destination.Region(1)));
        Assert.False(source.Region(0)[(10 * 4096)..].SequenceEqual(destination.Region(0)[(10 * 4096)..])); // untouched pages stay
    }

    [Fact]
    public void WritingAndReadingBatchesAllocatesNothing()
    {
        using var source = new NativeGuestMemory((0, 16));
        using var destination = new NativeGuestMemory((0, 16));
        var sink = new ByteStreamChannel();
        var writer = new PageBatchWriter(sink);
        writer.WriteBatch(0, source.Regions[0], MixedRuns, Flags(true)); // warm up
        var input = new ByteStreamChannel(sink.Output);
        var reader = new PageBatchReader(input, destination.Regions);
        reader.ReadNext();
        input.Rewind();
        var runs = MixedRuns;
        var region = source.Regions[0];
        var nullChannel = new NullChannel();
        var quietWriter = new PageBatchWriter(nullChannel);
        quietWriter.WriteBatch(0, region, runs, Flags(true));

        // A per-batch allocation shows in every round; the runtime's own one-off work on this thread (a method's call
        // count reaching the tier-up threshold queues its recompilation: 3.5 KB once, in one full CI run) in one only.
        var allocated = new long[3];
        for (int round = 0; round < allocated.Length; round++)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < 100; i++)
            {
                quietWriter.WriteBatch(0, region, runs, Flags(i % 2 == 0));
                input.Rewind();
                reader.ReadNext();
            }
            allocated[round] = GC.GetAllocatedBytesForCurrentThread() - before;
        }
        Assert.Equal(0, allocated.Min());
    }

    private sealed class NullChannel : IMigrationChannel
    {
        public string Name => "null";
        public void Send(ReadOnlySpan<byte> data) { }
        public void SendGather(ReadOnlySpan<IoSegment> segments) { }
        public bool ReceiveExactly(Span<byte> buffer) => false;
        public void Abort() { }
        public void Dispose() { }
    }

    // ---- hostile batches -------------------------------------------------------------------------------------

    /// <summary>A batch built by hand with a correct trailer, so only the defect under test is wrong.</summary>
    private static byte[] HandBatch(ushort region, (ulong First, uint Count, byte Encoding)[] runs, int dataPages, byte flags = 0, uint? runCountField = null, uint reserved = 0)
    {
        int payload = 8 + (runs.Length * 16) + (dataPages * 4096) + 8;
        var b = new byte[8 + payload];
        new RecordHeader(RecordKind.PageBatch, flags, (uint)payload).Write(b);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(8), region);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(10), (ushort)(runCountField ?? (uint)runs.Length));
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(12), reserved);
        for (int i = 0; i < runs.Length; i++)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(16 + (i * 16)), runs[i].First);
            BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(24 + (i * 16)), runs[i].Count);
            b[28 + (i * 16)] = runs[i].Encoding;
        }
        int table = 16 + (runs.Length * 16);
        ulong sum = XxHash3.HashToUInt64(b.AsSpan(0, table));
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(b.Length - 8), sum);
        return b;
    }

    private static MigrationProtocolException Rejects(byte[] batch, int regionPages = 16)
    {
        using var memory = new NativeGuestMemory((0, regionPages));
        var reader = new PageBatchReader(new ByteStreamChannel(batch, "pages-0"), memory.Regions);
        return Assert.Throws<MigrationProtocolException>(() => reader.ReadNext());
    }

    [Fact]
    public void AHandBuiltBatchIsAcceptedSoTheDefectTestsBelowAreMeaningful()
    {
        using var memory = new NativeGuestMemory((0, 16));
        var reader = new PageBatchReader(new ByteStreamChannel(HandBatch(0, [(3, 2, 1), (8, 8, 2)], 2)), memory.Regions);
        Assert.Equal(2, reader.ReadNext().NormalPages);
    }

    [Fact]
    public void ARunPastTheEndOfTheRegionIsRefused() =>
        Assert.Contains("run 0 (pages 15+2) lies outside the region's 16 pages", Rejects(HandBatch(0, [(15, 2, 1)], 2)).Message, StringComparison.Ordinal);

    [Fact]
    public void ARunWhoseEndOverflows64BitsIsRefused() =>
        Assert.Contains("lies outside", Rejects(HandBatch(0, [(ulong.MaxValue - 1, 4, 2)], 0)).Message, StringComparison.Ordinal);

    [Fact]
    public void AnEmptyRunIsRefused() =>
        Assert.Contains("run 0 is empty", Rejects(HandBatch(0, [(0, 0, 2)], 0)).Message, StringComparison.Ordinal);

    [Theory]
    [InlineData(3, "Delta encoding, reserved and refused in protocol v1")]
    [InlineData(4, "Compressed encoding, reserved and refused in protocol v1")]
    [InlineData(0, "unknown encoding 0")]
    [InlineData(9, "unknown encoding 9")]
    public void ReservedAndUnknownEncodingsAreRefused(byte encoding, string message) =>
        Assert.Contains(message, Rejects(HandBatch(0, [(0, 1, encoding)], 0)).Message, StringComparison.Ordinal);

    [Fact]
    public void MoreThan256NormalPagesInABatchAreRefused() =>
        Assert.Contains("more than 256 Normal pages", Rejects(HandBatch(0, [(0, 200, 1), (200, 57, 1)], 0), regionPages: 512).Message, StringComparison.Ordinal);

    [Fact]
    public void MoreThan512RunsAreRefusedBeforeTheTableIsRead() =>
        Assert.Contains("513 runs; 1..512 allowed", Rejects(HandBatch(0, [(0, 1, 2)], 0, runCountField: 513)).Message, StringComparison.Ordinal);

    [Fact]
    public void ARegionIndexBeyondTheLayoutIsRefused() =>
        Assert.Contains("region 1 does not exist (1 regions)", Rejects(HandBatch(1, [(0, 1, 2)], 0)).Message, StringComparison.Ordinal);

    [Fact]
    public void ANonZeroReservedBatchFieldIsRefused() =>
        Assert.Contains("reserved batch field", Rejects(HandBatch(0, [(0, 1, 2)], 0, reserved: 1)).Message, StringComparison.Ordinal);

    [Fact]
    public void APayloadLengthThatDisagreesWithTheRunsIsRefused() =>
        Assert.Contains("payload is 4128 bytes but 1 runs with 0 Normal pages need 32", Rejects(HandBatch(0, [(0, 1, 2)], 1)).Message, StringComparison.Ordinal);

    [Fact]
    public void ACorruptedRunTableFailsTheChecksum()
    {
        var b = HandBatch(0, [(3, 2, 2)], 0);
        b[16] = 4; // first page 3 -> 4, still in range
        Assert.Contains("checksum mismatch", Rejects(b).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void CorruptedDataFailsTheChecksumOnlyWhenDataIsChecksummed()
    {
        using var source = new NativeGuestMemory((0, 4));
        source.FillPattern(5);
        foreach (bool checksummed in new[] { true, false })
        {
            var bytes = WriteBatch(source, 0, [new(0, 2, PageEncoding.Normal)], checksummed, out _);
            bytes[48 + 100] ^= 0x01; // a byte of page data
            using var destination = new NativeGuestMemory((0, 4));
            var reader = new PageBatchReader(new ByteStreamChannel(bytes), destination.Regions);
            if (checksummed)
                Assert.Contains("checksum mismatch (region 0, 1 runs, data included)", Assert.Throws<MigrationProtocolException>(() => reader.ReadNext()).Message, StringComparison.Ordinal);
            else
                Assert.Equal(PageRecordKind.PageBatch, reader.ReadNext().Kind); // pre-copy: the dirty log resends it
        }
    }

    [Fact]
    public void DataChecksummedWithoutFinalPassIsRefusedByBothEnds()
    {
        // Page data can only be checksummed soundly while the guest is paused: the writer will not send it, and a
        // receiver refuses it from a peer rather than fail a later, sound batch on a page the guest changed.
        using var source = new NativeGuestMemory((0, 4));
        source.FillPattern(6);
        var writer = new PageBatchWriter(new ByteStreamChannel());
        PageRun[] runs = [new(0, 2, PageEncoding.Normal)];
        Assert.Throws<ArgumentException>(() => writer.WriteBatch(0, source.Regions[0], runs, PageBatchFlags.DataChecksummed));
        Assert.Throws<ArgumentException>(() => writer.WriteBatch(0, source.Regions[0], runs, (PageBatchFlags)8));
        Assert.Throws<ArgumentException>(() => writer.WriteBatch(0, source.Regions[0], runs, PageBatchFlags.FinalPass | PageBatchFlags.Postcopy));

        var bytes = WriteBatch(source, 0, runs, checksumData: true, out _);
        // The flags are in the hashed header, so the trailer is recomputed, as a source breaking the rule would send it.
        bytes[1] = (byte)PageBatchFlags.DataChecksummed;
        int table = bytes.Length - 8 - 2 * 4096;
        ulong hash = XxHash3.HashToUInt64(bytes.AsSpan(0, table));
        hash = XxHash3.HashToUInt64(bytes.AsSpan(table, 2 * 4096), (long)hash);
        BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(bytes.Length - 8), hash);
        using var destination = new NativeGuestMemory((0, 4));
        var reader = new PageBatchReader(new ByteStreamChannel(bytes), destination.Regions);
        Assert.Contains("DataChecksummed without FinalPass", Assert.Throws<MigrationProtocolException>(() => reader.ReadNext()).Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(0x08)]
    [InlineData(0x80)]
    public void APageBatchWithAnUndefinedFlagIsRefused(byte flag)
    {
        using var source = new NativeGuestMemory((0, 4));
        var bytes = WriteBatch(source, 0, [new(0, 1, PageEncoding.Zero)], checksumData: false, out _);
        bytes[1] |= flag;
        using var destination = new NativeGuestMemory((0, 4));
        var e = Assert.Throws<MigrationProtocolException>(() => new PageBatchReader(new ByteStreamChannel(bytes), destination.Regions).ReadNext());
        Assert.Contains("flag", e.Message, StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public void APostcopyBatchBeforeTheSwitchoverToPostcopyIsRefused()
    {
        // A post-copy batch is installed into a running guest; before the destination switched to post-copy there is
        // nothing to install it into, and writing it into memory the pre-copy way would skip the missing-page rules.
        using var source = new NativeGuestMemory((0, 4));
        var bytes = WriteBatch(source, 0, [new(0, 1, PageEncoding.Zero)], checksumData: false, out _);
        bytes[1] |= (byte)PageBatchFlags.Postcopy;
        int table = bytes.Length - 8;
        BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(table), XxHash3.HashToUInt64(bytes.AsSpan(0, table)));
        using var destination = new NativeGuestMemory((0, 4));
        var e = Assert.Throws<MigrationProtocolException>(() => new PageBatchReader(new ByteStreamChannel(bytes), destination.Regions).ReadNext());
        Assert.Contains("before the switchover to post-copy", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void APreCopyBatchAfterTheFinalPassBeganIsRefused()
    {
        // FinalPass says the source guest is paused from this batch on; an unmarked batch after it is a source
        // contradicting itself (and would restart the destination's background work mid-switchover).
        using var source = new NativeGuestMemory((0, 4));
        source.FillPattern(9);
        var wire = new ByteStreamChannel();
        var writer = new PageBatchWriter(wire);
        writer.WriteBatch(0, source.Regions[0], [new(0, 1, PageEncoding.Normal)], PageBatchFlags.None);
        writer.WriteBatch(0, source.Regions[0], [new(1, 1, PageEncoding.Normal)], PageBatchFlags.FinalPass);
        writer.WriteBatch(0, source.Regions[0], [new(2, 1, PageEncoding.Normal)], PageBatchFlags.None);
        using var destination = new NativeGuestMemory((0, 4));
        var reader = new PageBatchReader(new ByteStreamChannel(wire.Output), destination.Regions);
        reader.ReadNext();
        Assert.False(reader.LastBatchFinalPass);
        reader.ReadNext();
        Assert.True(reader.LastBatchFinalPass);
        Assert.Contains("a pre-copy batch after the final pass began", Assert.Throws<MigrationProtocolException>(() => reader.ReadNext()).Message, StringComparison.Ordinal);
        Assert.True(source.Region(0)[..(2 * 4096)].SequenceEqual(destination.Region(0)[..(2 * 4096)]));
    }

    [Fact]
    public void AFinalPassBatchIsReportedAsSuchWithOrWithoutItsDataChecksummed()
    {
        using var source = new NativeGuestMemory((0, 4));
        source.FillPattern(8);
        using var destination = new NativeGuestMemory((0, 4));
        foreach (var flags in new[] { PageBatchFlags.None, PageBatchFlags.FinalPass, PageBatchFlags.FinalPass | PageBatchFlags.DataChecksummed })
        {
            // A reader per batch: each flag combination on its own fresh channel.
            var wire = new ByteStreamChannel();
            new PageBatchWriter(wire).WriteBatch(0, source.Regions[0], [new(1, 2, PageEncoding.Normal)], flags);
            Assert.Equal((byte)flags, wire.Output[1]);
            var reader = new PageBatchReader(new ByteStreamChannel(wire.Output), destination.Regions);
            Assert.Equal(PageRecordKind.PageBatch, reader.ReadNext().Kind);
            Assert.Equal(flags != PageBatchFlags.None, reader.LastBatchFinalPass);
        }
        Assert.True(source.Region(0).Slice(4096, 2 * 4096).SequenceEqual(destination.Region(0).Slice(4096, 2 * 4096)));
    }

    [Theory]
    [InlineData(false)] // memory of unknown content: Zero runs write zeros
    [InlineData(true)]  // with the engine's map of held pages: a Zero run clears only pages holding data
    public void ABatchsDataAndTrailerArriveInOneScatterReceiveUnlessAZeroRunComesBetween(bool withMap)
    {
        // Three Normal runs, two of them adjacent in guest memory: one receive of three segments (pages 1, pages
        // 3-5 coalesced, the trailer), not one receive per run.
        using var source = new NativeGuestMemory((0, 16));
        source.FillPattern(11);
        using var destination = new NativeGuestMemory((0, 16));
        var wire = new ByteStreamChannel();
        var writer = new PageBatchWriter(wire);
        writer.WriteBatch(0, source.Regions[0], [new(1, 1, PageEncoding.Normal), new(3, 1, PageEncoding.Normal), new(4, 2, PageEncoding.Normal)], PageBatchFlags.None);
        // Runs apply in the sender's order even where they overlap: page 8 is zeroed after its data, page 9 gets data
        // after being zeroed, so the Zero runs split the receives.
        writer.WriteBatch(0, source.Regions[0], [new(8, 2, PageEncoding.Normal), new(8, 1, PageEncoding.Zero), new(9, 1, PageEncoding.Normal), new(12, 1, PageEncoding.Zero)], PageBatchFlags.None);
        // The map's contract: memory starts zero-filled. Without a map, stale content shows every page is written.
        if (!withMap) destination.FillPattern(77);
        var input = new ByteStreamChannel(wire.Output);
        var reader = withMap
            ? new PageBatchReader(input, destination.Regions, new ReceivedPageMap(destination.Regions, hugePagesAdvised: false))
            : new PageBatchReader(input, destination.Regions);

        reader.ReadNext();
        Assert.Equal(1, input.ScatterCalls);
        Assert.Equal(3, input.ScatterSegmentCounts[0]);
        reader.ReadNext();
        Assert.Equal(4, input.ScatterCalls);
        Assert.Equal([1, 1, 1], input.ScatterSegmentCounts[1..4]); // pages 8-9; page 9; the trailer alone

        Assert.True(source.Page(0, 1).SequenceEqual(destination.Page(0, 1)));
        Assert.True(source.Region(0).Slice(3 * 4096, 3 * 4096).SequenceEqual(destination.Region(0).Slice(3 * 4096, 3 * 4096)));
        // Page 8's data landed before its Zero run cleared it (with a map: because the page was held by then).
        Assert.All(destination.Page(0, 8).ToArray(), b => Assert.Equal(0, b));
        Assert.True(source.Page(0, 9).SequenceEqual(destination.Page(0, 9)));
        Assert.All(destination.Page(0, 12).ToArray(), b => Assert.Equal(0, b));
    }

    [Fact]
    public void ControlRecordsOnAPageChannelAreRefused()
    {
        var wire = new ByteStreamChannel();
        new ProtocolWriter(wire).WriteCommit();
        Assert.Contains("page channels carry only PageBatch, Flush and Keepalive", Rejects(wire.Output).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void APageBatchClaiming4GiBFailsFastWithoutAllocating()
    {
        var b = new byte[64];
        new RecordHeader(RecordKind.PageBatch, 0, uint.MaxValue).Write(b);
        using var memory = new NativeGuestMemory((0, 4));
        var reader = new PageBatchReader(new ByteStreamChannel(b), memory.Regions);
        long before = GC.GetAllocatedBytesForCurrentThread();
        Assert.Contains("claims 4294967295 payload bytes; the limit is 1056784", Assert.Throws<MigrationProtocolException>(() => reader.ReadNext()).Message, StringComparison.Ordinal);
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 100_000);
    }

    [Fact]
    public void ABatchTruncatedAtAnyByteIsAnError()
    {
        using var source = new NativeGuestMemory((0, 4));
        source.FillPattern(2);
        var bytes = WriteBatch(source, 0, [new(0, 1, PageEncoding.Normal), new(1, 2, PageEncoding.Zero)], true, out _);
        using var destination = new NativeGuestMemory((0, 4));
        for (int cut = 1; cut < bytes.Length; cut++)
        {
            var reader = new PageBatchReader(new ByteStreamChannel(bytes[..cut]), destination.Regions);
            var e = Record.Exception(() => reader.ReadNext());
            Assert.True(e is MigrationProtocolException or MigrationTransportException, $"cut at {cut}: {e?.GetType().Name ?? "none"}");
        }
    }

    [Fact]
    public void RandomMutationsOfAPageStreamFailOnlyWithProtocolOrTransportErrors()
    {
        using var source = new NativeGuestMemory((0, 32), (0x100000, 8));
        source.FillPattern(4);
        var wire = new ByteStreamChannel();
        var writer = new PageBatchWriter(wire);
        writer.WriteBatch(0, source.Regions[0], MixedRuns, Flags(true));
        writer.WriteKeepalive(7);
        writer.WriteBatch(1, source.Regions[1], [new(0, 3, PageEncoding.Zero), new(4, 4, PageEncoding.Normal)], PageBatchFlags.None);
        writer.WriteFlush(1);
        var valid = wire.Output;
        using var destination = new NativeGuestMemory((0, 32), (0x100000, 8));
        var random = new Random(777);
        var input = new ByteStreamChannel();
        var reader = new PageBatchReader(input, destination.Regions);
        for (int iteration = 0; iteration < 1500; iteration++)
        {
            var bytes = (byte[])valid.Clone();
            for (int m = 1 + random.Next(3); m > 0; m--)
            {
                // Bias towards the headers and run tables, where the interesting checks are.
                int at = random.Next(2) == 0 ? random.Next(Math.Min(bytes.Length, 96)) : random.Next(bytes.Length);
                bytes[at] ^= (byte)(1 << random.Next(8));
            }
            input.Input = bytes;
            input.Rewind();
            try
            {
                while (reader.ReadNext().Kind != PageRecordKind.EndOfStream) { }
            }
            catch (Exception e) when (e is MigrationProtocolException or MigrationTransportException)
            {
            }
        }
    }
}
