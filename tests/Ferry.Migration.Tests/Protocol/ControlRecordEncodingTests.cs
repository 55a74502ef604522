using System.IO.Hashing;
using Ferry.Migration.Guest;
using Ferry.Migration.Protocol;

namespace Ferry.Migration.Tests.Protocol;

public class ControlRecordEncodingTests
{
    private static readonly Guid VmId = Guid.Parse("00112233-4455-6677-8899-aabbccddeeff");

    internal static HelloMessage SampleHello(ProtocolCapabilities caps = ProtocolCapabilities.Verify, string token = "ab", ushort channels = 2) =>
        new(MigrationProtocol.CurrentVersion, VmId, 4096, channels, caps, [(0UL, 0x10000UL), (0x100000UL, 0x2000UL)], System.Text.Encoding.ASCII.GetBytes(token));

    private static string Encode(ControlMessage m)
    {
        var buffer = new byte[MigrationProtocol.ControlScratchBytes];
        int n = ProtocolWriter.Encode(m, buffer);
        return Convert.ToHexString(buffer, 0, n);
    }

    private static string Hex(string spaced) => spaced.Replace(" ", "", StringComparison.Ordinal).ToUpperInvariant();

    [Fact]
    public void HeaderIsKindFlagsZeroReservedAndLittleEndianLength()
    {
        var b = new byte[8];
        new RecordHeader(RecordKind.Complete, 1, 0x01020304).Write(b);
        Assert.Equal(Hex("07 01 0000 04030201"), Convert.ToHexString(b));
    }

    [Fact]
    public void HelloEncodesMagicVersionUuidLayoutCapabilitiesAndToken()
    {
        string expected = Hex(
            "01 00 0000 4E000000" +            // header: Hello, 78-byte payload
            "4645525259 4D4947" +               // "FERRYMIG"
            "0100" +                            // version 1
            "00112233445566778899AABBCCDDEEFF" + // uuid, RFC 4122 order
            "00100000" +                        // page size 4096
            "0200" +                            // 2 page channels
            "0100000000000000" +                // capabilities: Verify
            "0200" +                            // 2 regions
            "0000000000000000 0000010000000000" + // gpa 0, size 64 KiB
            "0000100000000000 0020000000000000" + // gpa 1 MiB, size 8 KiB
            "0200 6162");                       // token "ab"
        Assert.Equal(expected, Encode(SampleHello()));
    }

    [Theory]
    [InlineData("welcome", "02 00 0000 0A000000 0100 0100000000000000")]
    [InlineData("refuse", "03 00 0000 04000000 0200 6E6F")]
    [InlineData("complete", "07 01 0000 08000000 0500000000000000")]
    [InlineData("ready", "08 01 0000 1C000000 E8030000 02000000 03000000 1817161514131211 0807060504030201")]
    [InlineData("ready-nodigest", "08 00 0000 0C000000 E8030000 02000000 00000000")]
    [InlineData("commit", "09 00 0000 00000000")]
    [InlineData("resumed", "0A 00 0000 04000000 34120000")]
    [InlineData("cancel", "0B 00 0000 03000000 0100 78")]
    [InlineData("error", "0C 00 0000 07000000 0200 0300 626164")]
    [InlineData("keepalive", "0D 00 0000 08000000 0807060504030201")]
    [InlineData("pagerequest", "0E 00 0000 0E000000 0100 1000000000000000 03000000")]
    public void ControlRecordsEncodeToTheirDocumentedBytes(string which, string expected)
    {
        Assert.Equal(Hex(expected), Encode(Sample(which)));
    }

    internal static ControlMessage Sample(string which) => which switch
    {
        "welcome" => new WelcomeMessage(1, ProtocolCapabilities.Verify),
        "refuse" => new RefuseMessage("no"),
        "complete" => new CompleteMessage(5, CompleteFlags.VerifyRequested),
        "ready" => new ReadyMessage(1000, 2, (new UInt128(0x0102030405060708, 0x1112131415161718)), 3),
        "ready-nodigest" => new ReadyMessage(1000, 2, null),
        "commit" => CommitMessage.Instance,
        "resumed" => new ResumedMessage(0x1234),
        "cancel" => new CancelMessage("x"),
        "error" => new ErrorMessage(ProtocolErrorCode.Protocol, "bad"),
        "keepalive" => new KeepaliveMessage(0x0102030405060708),
        "pagerequest" => new PageRequestMessage(1, 0x10, 3),
        "hello" => SampleHello(),
        "state" => new StateSectionMessage(new StateSection("cpu0", 3, new byte[] { 0xAA, 0xBB })),
        _ => throw new ArgumentException(which),
    };

    public static TheoryData<string> AllSamples => new(["welcome", "refuse", "complete", "ready", "ready-nodigest", "commit", "resumed", "cancel", "error", "keepalive", "pagerequest", "hello", "state"]);

    [Fact]
    public void StateSectionEncodesNameVersionDataAndChecksumOfAllBeforeIt()
    {
        string prefix = Hex("04 63707530 03000000 02000000 AABB"); // "cpu0", v3, 2 bytes
        ulong sum = XxHash3.HashToUInt64(Convert.FromHexString(prefix));
        var trailer = new byte[8];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(trailer, sum);
        Assert.Equal(Hex("05 00 0000 17000000") + prefix + Convert.ToHexString(trailer), Encode(Sample("state")));
    }

    [Theory]
    [MemberData(nameof(AllSamples))]
    public void EveryControlRecordRoundTripsThroughWriterAndReader(string which)
    {
        var original = Sample(which);
        var wire = new ByteStreamChannel();
        new ProtocolWriter(wire).Write(original);
        Assert.Equal(1, wire.SendCalls); // one send per record: keepalive threads cannot interleave inside it
        var reader = new ProtocolReader(new ByteStreamChannel(wire.Output));
        var decoded = reader.Read();
        Assert.NotNull(decoded);
        switch (original)
        {
            case HelloMessage h:
                var d = Assert.IsType<HelloMessage>(decoded);
                Assert.Equal((h.Version, h.VmId, h.PageSize, h.PageChannels, h.Capabilities), (d.Version, d.VmId, d.PageSize, d.PageChannels, d.Capabilities));
                Assert.Equal(h.Regions, d.Regions);
                Assert.Equal(h.Token.ToArray(), d.Token.ToArray());
                break;
            case StateSectionMessage s:
                var ds = Assert.IsType<StateSectionMessage>(decoded);
                Assert.Equal((s.Section.Name, s.Section.Version), (ds.Section.Name, ds.Section.Version));
                Assert.Equal(s.Section.Data.ToArray(), ds.Section.Data.ToArray());
                break;
            default:
                Assert.Equal(original, decoded);
                break;
        }
        Assert.Null(reader.Read()); // clean end between records
    }

    [Fact]
    public void LargeStateSectionGoesOutAsOneGatherAndRoundTrips()
    {
        var data = new byte[MigrationProtocol.MaxSectionDataLength];
        new Random(7).NextBytes(data);
        var wire = new ByteStreamChannel();
        new ProtocolWriter(wire).WriteStateSection(new StateSection("vga", 9, data));
        Assert.Equal(1, wire.GatherCalls);
        Assert.Equal(0, wire.SendCalls);
        var s = new ProtocolReader(new ByteStreamChannel(wire.Output)).Expect<StateSectionMessage>();
        Assert.Equal("vga", s.Section.Name);
        Assert.True(data.AsSpan().SequenceEqual(s.Section.Data.Span));
    }

    [Fact]
    public void LongErrorMessagesAreCutAtACharacterBoundaryWithinTheLimit()
    {
        string message = string.Concat(Enumerable.Repeat("é", 1000)); // 2000 bytes of UTF-8
        var wire = new ByteStreamChannel();
        new ProtocolWriter(wire).WriteError(ProtocolErrorCode.Internal, message);
        var e = new ProtocolReader(new ByteStreamChannel(wire.Output)).Expect<ErrorMessage>();
        Assert.Equal(512, e.Message.Length); // 1024 bytes / 2 bytes per é
        Assert.All(e.Message, c => Assert.Equal('é', c));
    }

    [Fact]
    public void ExpectSkipsKeepalivesAndTurnsPeerErrorsIntoPeerExceptions()
    {
        var wire = new ByteStreamChannel();
        var w = new ProtocolWriter(wire);
        w.WriteKeepalive(1);
        w.WriteKeepalive(2);
        w.WriteReady(1, 2, null);
        w.WriteError(ProtocolErrorCode.StateLoadFailed, "vcpu0 rejected");
        var r = new ProtocolReader(new ByteStreamChannel(wire.Output));
        Assert.Equal(2u, r.Expect<ReadyMessage>().LoadMicroseconds);
        var e = Assert.Throws<MigrationPeerException>(() => r.Expect<CommitMessage>());
        Assert.Equal(ProtocolErrorCode.StateLoadFailed, e.Code);
        Assert.Contains("vcpu0 rejected", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ExpectRejectsARecordOutOfOrder()
    {
        var wire = new ByteStreamChannel();
        new ProtocolWriter(wire).WriteCommit();
        var e = Assert.Throws<MigrationProtocolException>(() => new ProtocolReader(new ByteStreamChannel(wire.Output)).Expect<ReadyMessage>());
        Assert.Contains("Commit record arrived where ReadyMessage was expected", e.Message, StringComparison.Ordinal);
    }
}
