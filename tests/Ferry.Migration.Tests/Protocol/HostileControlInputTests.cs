using System.Buffers.Binary;
using Ferry.Migration.Protocol;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Tests.Protocol;

/// <summary>The control stream is hostile input: every defect is a clear error, fast, with no large allocation.</summary>
public class HostileControlInputTests
{
    private static byte[] Encode(ControlMessage m)
    {
        var wire = new ByteStreamChannel();
        new ProtocolWriter(wire).Write(m);
        return wire.Output;
    }

    private static MigrationProtocolException Rejects(byte[] bytes)
    {
        var reader = new ProtocolReader(new ByteStreamChannel(bytes));
        return Assert.Throws<MigrationProtocolException>(() => reader.Read());
    }

    [Theory]
    [MemberData(nameof(ControlRecordEncodingTests.AllSamples), MemberType = typeof(ControlRecordEncodingTests))]
    public void ARecordTruncatedAtAnyByteIsAnErrorNotAMessage(string which)
    {
        var bytes = Encode(ControlRecordEncodingTests.Sample(which));
        for (int cut = 1; cut < bytes.Length; cut++)
        {
            var reader = new ProtocolReader(new ByteStreamChannel(bytes[..cut]));
            var e = Record.Exception(() => reader.Read());
            Assert.True(e is MigrationProtocolException or MigrationTransportException, $"cut at {cut}: {e?.GetType().Name ?? "no exception"}");
        }
        Assert.Null(new ProtocolReader(new ByteStreamChannel([])).Read());
    }

    [Theory]
    [InlineData(RecordKind.StateSection, 0xFFFFFFFFu)]
    [InlineData(RecordKind.Hello, 0xFFFFFFFFu)]
    [InlineData(RecordKind.Error, 1u << 20)]
    [InlineData(RecordKind.Commit, 1u)]
    public void AnOverlongLengthFailsBeforeAnythingIsReadOrAllocated(RecordKind kind, uint length)
    {
        var bytes = new byte[8 + 64];
        new RecordHeader(kind, 0, length).Write(bytes);
        var reader = new ProtocolReader(new ByteStreamChannel(bytes));
        long before = GC.GetAllocatedBytesForCurrentThread();
        var e = Assert.Throws<MigrationProtocolException>(() => reader.Read());
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.True(allocated < 100_000, $"allocated {allocated} bytes");
        Assert.Contains($"{kind} record claims {length} payload bytes; the limit is {MigrationProtocol.MaxPayloadLength(kind)}", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void AStateSectionClaimingMoreThan4MiBOfDataIsRefusedWithoutAllocatingIt()
    {
        // Header length within the kind's bound, but the section's own data length over 4 MiB.
        var p = new byte[8 + 1 + 4 + 8];
        new RecordHeader(RecordKind.StateSection, 0, (uint)MigrationProtocol.MaxPayloadLength(RecordKind.StateSection)).Write(p);
        p[8] = 4;
        "cpu0"u8.CopyTo(p.AsSpan(9));
        BinaryPrimitives.WriteUInt32LittleEndian(p.AsSpan(17), 0xFFFF_FFF0);
        var reader = new ProtocolReader(new ByteStreamChannel(p));
        long before = GC.GetAllocatedBytesForCurrentThread();
        var e = Assert.Throws<MigrationProtocolException>(() => reader.Read());
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 100_000);
        Assert.Contains("the limit is 4194304", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(19)]
    [InlineData(255)]
    public void UnknownRecordKindsAreRefused(byte kind)
    {
        var bytes = new byte[8];
        bytes[0] = kind;
        Assert.Contains($"unknown record kind {kind}", Rejects(bytes).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void NonZeroReservedHeaderBitsAreRefused()
    {
        var bytes = Encode(CommitMessage.Instance);
        bytes[3] = 0x80;
        Assert.Contains("reserved header field is 0x8000", Rejects(bytes).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void FlagBitsAKindDoesNotDefineAreRefused()
    {
        var bytes = Encode(new CompleteMessage(1, CompleteFlags.None));
        bytes[1] = 0x04;
        Assert.Contains("undefined flag bits 0x04", Rejects(bytes).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void PageRecordsOnTheControlChannelAreRefused()
    {
        var bytes = new byte[16];
        new RecordHeader(RecordKind.Flush, 0, 8).Write(bytes);
        Assert.Contains("only allowed on page channels", Rejects(bytes).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void AWrongMagicIsRefusedAsNotAFerryStream()
    {
        var bytes = Encode(ControlRecordEncodingTests.SampleHello());
        bytes[8] = (byte)'G';
        Assert.Contains("bad magic", Rejects(bytes).Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    [InlineData(0xFFFF)]
    public void AnUnsupportedVersionIsRefusedBeforeAnyOtherField(ushort version)
    {
        var bytes = Encode(ControlRecordEncodingTests.SampleHello());
        BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(16), version);
        bytes[8 + 26] = 0xFF; // garbage page size after the version: the version error must win
        var e = Rejects(bytes);
        Assert.Contains($"protocol version {version} is not supported; this receiver accepts 1..1", e.Message, StringComparison.Ordinal);
    }

    private static byte[] HelloWithRegions(params (ulong Gpa, ulong Size)[] regions)
    {
        // Encode by hand: the writer rightly refuses to produce bad layouts.
        var good = Encode(ControlRecordEncodingTests.SampleHello());
        var fixedPart = good.AsSpan(8, MigrationProtocol.HelloFixedSize).ToArray();
        BinaryPrimitives.WriteUInt16LittleEndian(fixedPart.AsSpan(40), (ushort)regions.Length);
        var payload = new byte[fixedPart.Length + (regions.Length * 16) + 2];
        fixedPart.CopyTo(payload, 0);
        for (int i = 0; i < regions.Length; i++)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(payload.AsSpan(fixedPart.Length + (i * 16)), regions[i].Gpa);
            BinaryPrimitives.WriteUInt64LittleEndian(payload.AsSpan(fixedPart.Length + (i * 16) + 8), regions[i].Size);
        }
        var bytes = new byte[8 + payload.Length];
        new RecordHeader(RecordKind.Hello, 0, (uint)payload.Length).Write(bytes);
        payload.CopyTo(bytes, 8);
        return bytes;
    }

    [Fact]
    public void AValidHandWrittenLayoutIsAccepted()
    {
        var hello = Assert.IsType<HelloMessage>(new ProtocolReader(new ByteStreamChannel(HelloWithRegions((0, 4096), (8192, 4096)))).Read());
        Assert.Equal(8192UL, hello.TotalBytes);
    }

    [Fact]
    public void MoreThan64RegionsAreRefused()
    {
        var regions = Enumerable.Range(0, 65).Select(i => ((ulong)i * 8192, 4096UL)).ToArray();
        Assert.Contains("65 memory regions; 1..64 allowed", Rejects(HelloWithRegions(regions)).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void OverlappingRegionsAreRefused() =>
        Assert.Contains("overlaps", Rejects(HelloWithRegions((0, 0x3000), (0x2000, 0x1000))).Message, StringComparison.Ordinal);

    [Fact]
    public void UnsortedRegionsAreRefused() =>
        Assert.Contains("must be sorted", Rejects(HelloWithRegions((0x10000, 0x1000), (0, 0x1000))).Message, StringComparison.Ordinal);

    [Fact]
    public void UnalignedRegionsAreRefused() =>
        Assert.Contains("is not 4096-byte aligned", Rejects(HelloWithRegions((0x800, 0x1000))).Message, StringComparison.Ordinal);

    [Fact]
    public void EmptyRegionsAreRefused() =>
        Assert.Contains("region 0 is empty", Rejects(HelloWithRegions((0, 0))).Message, StringComparison.Ordinal);

    [Fact]
    public void ARegionWrappingTheAddressSpaceIsRefused() =>
        Assert.Contains("wraps", Rejects(HelloWithRegions((0xFFFF_FFFF_FFFF_F000, 0x2000))).Message, StringComparison.Ordinal);

    [Fact]
    public void MemoryBeyondTheReceiversLimitIsRefusedByEvaluate()
    {
        var d = MigrationProtocol.Evaluate(ControlRecordEncodingTests.SampleHello(), maxMemoryBytes: 0x10000, "ab"u8, 2);
        Assert.False(d.Accepted);
        Assert.Contains("exceeds this receiver's limit of 65536 bytes (at region 1)", d.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public void EvaluateAcceptsAGoodHelloWithTheRequestedCapabilities()
    {
        var d = MigrationProtocol.Evaluate(ControlRecordEncodingTests.SampleHello(), 1UL << 30, "ab"u8, 2);
        Assert.Equal(new HandshakeDecision(true, ProtocolCapabilities.Verify, null), d);
    }

    [Fact]
    public void ASourceRefusesAWelcomeInAVersionItDoesNotSpeak()
    {
        var bytes = Encode(new WelcomeMessage(1, ProtocolCapabilities.None));
        bytes[8] = 2;
        Assert.Contains("the destination chose protocol version 2; this source speaks 1..1", Rejects(bytes).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void EvaluateTakesTheConfiguredTokenAsAStringAndNullMeansNone()
    {
        Assert.True(MigrationProtocol.Evaluate(ControlRecordEncodingTests.SampleHello(token: "ab"), 1UL << 30, "ab", 2).Accepted);
        Assert.True(MigrationProtocol.Evaluate(ControlRecordEncodingTests.SampleHello(token: "anything"), 1UL << 30, (string?)null, 2).Accepted);
        Assert.False(MigrationProtocol.Evaluate(ControlRecordEncodingTests.SampleHello(token: ""), 1UL << 30, "ab", 2).Accepted);
    }

    [Fact]
    public void EvaluateRefusesAWrongToken()
    {
        var d = MigrationProtocol.Evaluate(ControlRecordEncodingTests.SampleHello(token: "zz"), 1UL << 30, "ab"u8, 2);
        Assert.Equal("authorisation token rejected", d.Reason);
    }

    [Fact]
    public void EvaluateRefusesCapabilitiesV1CannotHonour()
    {
        var d = MigrationProtocol.Evaluate(ControlRecordEncodingTests.SampleHello(ProtocolCapabilities.Verify | ProtocolCapabilities.Delta | (ProtocolCapabilities)(1UL << 40)), 1UL << 30, "ab"u8, 2);
        Assert.False(d.Accepted);
        Assert.Equal("capabilities not supported by this receiver: Delta, bit 40", d.Reason);
    }

    [Fact]
    public void EvaluateLeavesUnknownOptionalCapabilitiesOutOfWelcomeInsteadOfRefusing()
    {
        // Bits 0-31 are optional: a newer source offering a feature this receiver lacks still migrates without it.
        var d = MigrationProtocol.Evaluate(ControlRecordEncodingTests.SampleHello(ProtocolCapabilities.Verify | (ProtocolCapabilities)(1UL << 20)), 1UL << 30, "ab"u8, 2);
        Assert.Equal(new HandshakeDecision(true, ProtocolCapabilities.Verify, null), d);
    }

    [Fact]
    public void EvaluateRefusesAChannelCountThatDiffersFromTheConnection()
    {
        var d = MigrationProtocol.Evaluate(ControlRecordEncodingTests.SampleHello(channels: 3), 1UL << 30, "ab"u8, 2);
        Assert.Contains("3 page channels but 2 connected", d.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public void AStateSectionWithABadChecksumIsRefused()
    {
        var bytes = Encode(ControlRecordEncodingTests.Sample("state"));
        bytes[^9] ^= 1; // last data byte
        Assert.Contains("StateSection 'cpu0' (version 3, 2 bytes): checksum mismatch", Rejects(bytes).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void AStateSectionNameMustBePrintableAscii()
    {
        var bytes = Encode(ControlRecordEncodingTests.Sample("state"));
        bytes[10] = 0x07;
        Assert.Contains("not printable ASCII", Rejects(bytes).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void InvalidUtf8InAStringIsRefused()
    {
        var bytes = Encode(new CancelMessage("ok"));
        bytes[10] = 0xC3; // lead byte with no continuation
        Assert.Contains("not valid UTF-8", Rejects(bytes).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void APageRequestForZeroOrTooManyPagesIsRefused()
    {
        var bytes = Encode(new PageRequestMessage(0, 0, 1));
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(8 + 10), 513);
        Assert.Contains("count 513 outside 1..512", Rejects(bytes).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void AFixedSizeRecordWithTheWrongLengthIsRefused()
    {
        var bytes = new byte[8 + 4];
        new RecordHeader(RecordKind.Keepalive, 0, 4).Write(bytes);
        Assert.Contains("payload is 4 bytes, must be 8", Rejects(bytes).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ASilentPeerInsideARecordTimesOutInsteadOfHanging()
    {
        var (source, destination) = InMemoryTransport.CreatePair("control", receiveTimeout: TimeSpan.FromMilliseconds(100));
        source.Send(Encode(new KeepaliveMessage(1)).AsSpan(0, 12)); // header and half the payload, then silence
        var e = Assert.Throws<MigrationTransportException>(() => new ProtocolReader(destination).Read());
        Assert.Contains("receive timeout", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void RandomMutationsOfAValidStreamFailOnlyWithProtocolOrTransportErrors()
    {
        var wire = new ByteStreamChannel();
        var w = new ProtocolWriter(wire);
        foreach (var name in new[] { "hello", "welcome", "state", "keepalive", "complete", "ready", "commit", "resumed", "error", "pagerequest" })
            w.Write(ControlRecordEncodingTests.Sample(name));
        var valid = wire.Output;
        var random = new Random(12345);
        for (int iteration = 0; iteration < 3000; iteration++)
        {
            var bytes = (byte[])valid.Clone();
            int mutations = 1 + random.Next(4);
            for (int m = 0; m < mutations; m++)
            {
                int at = random.Next(bytes.Length);
                bytes[at] = random.Next(3) switch { 0 => (byte)random.Next(256), 1 => (byte)(bytes[at] ^ (1 << random.Next(8))), _ => 0xFF };
            }
            if (random.Next(4) == 0) bytes = bytes[..random.Next(bytes.Length)];
            var reader = new ProtocolReader(new ByteStreamChannel(bytes));
            long before = GC.GetAllocatedBytesForCurrentThread();
            try
            {
                while (reader.Read() is not null) { }
            }
            catch (Exception e) when (e is MigrationProtocolException or MigrationTransportException)
            {
            }
            long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            Assert.True(allocated < 200_000, $"iteration {iteration} allocated {allocated} bytes");
        }
    }
}
