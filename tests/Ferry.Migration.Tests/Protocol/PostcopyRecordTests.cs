using Ferry.Migration.Guest;
using Ferry.Migration.Protocol;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Tests.Protocol;

public class PostcopyRecordTests
{
    private static T RoundTrip<T>(ControlMessage message) where T : ControlMessage
    {
        var (a, b) = InMemoryTransport.CreatePair("t");
        using (a)
        using (b)
        {
            new ProtocolWriter(a).Write(message);
            return new ProtocolReader(b).Expect<T>();
        }
    }

    private static MigrationProtocolException Rejects(byte[] bytes)
    {
        var (a, b) = InMemoryTransport.CreatePair("t");
        using (a)
        using (b)
        {
            a.Send(bytes);
            return Assert.Throws<MigrationProtocolException>(() => new ProtocolReader(b).Read());
        }
    }

    [Fact]
    public void MissingPagesAndPostcopyDoneRoundTrip()
    {
        var missing = RoundTrip<MissingPagesMessage>(new MissingPagesMessage(1, [(0, 3), (1UL << 33, uint.MaxValue)]));
        Assert.Equal(1, missing.Region);
        Assert.Equal([(0UL, 3U), (1UL << 33, uint.MaxValue)], missing.Runs);
        var done = RoundTrip<PostcopyDoneMessage>(new PostcopyDoneMessage(7, 50, 900, 1200, 123456, ulong.MaxValue, 262144, 12, UInt128.MaxValue - 5));
        Assert.Equal(new PostcopyDoneMessage(7, 50, 900, 1200, 123456, ulong.MaxValue, 262144, 12, UInt128.MaxValue - 5), done);
        Assert.Null(RoundTrip<PostcopyDoneMessage>(done with { Digest = null }).Digest);
    }

    [Fact]
    public void AnEmptyRunOrARunCountBeyondTheLimitIsRefused()
    {
        var bytes = new byte[8 + 4 + 12];
        new RecordHeader(RecordKind.MissingPages, 0, 16).Write(bytes);
        bytes[10] = 1; // one run, of 0 pages
        Assert.Contains("run 0 is empty", Rejects(bytes).Message, StringComparison.Ordinal);

        bytes = new byte[8 + 4];
        new RecordHeader(RecordKind.MissingPages, 0, 4).Write(bytes);
        bytes[10] = 0x01;
        bytes[11] = 0x10; // 4097 runs
        Assert.Contains("4097 runs", Rejects(bytes).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void MissingPagesOutsideGuestMemoryAreRefused()
    {
        MemoryRegion[] regions = [new(0, 1 << 20, 4096)];
        new MissingPagesMessage(0, [(0, 256)]).Validate(regions);
        Assert.Contains("outside region 0", Assert.Throws<MigrationProtocolException>(() => new MissingPagesMessage(0, [(200, 57)]).Validate(regions)).Message, StringComparison.Ordinal);
        Assert.Contains("does not exist", Assert.Throws<MigrationProtocolException>(() => new MissingPagesMessage(1, [(0, 1)]).Validate(regions)).Message, StringComparison.Ordinal);
        Assert.Contains("outside region 0", Assert.Throws<MigrationProtocolException>(() => new PageRequestMessage(0, 256, 1).Validate(regions)).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void PopulatedPagesRoundTripAndOnlyTheLastMayBeEmpty()
    {
        var map = RoundTrip<PopulatedPagesMessage>(new PopulatedPagesMessage(2, [(5, 1), (1UL << 30, 512)], Last: false));
        Assert.Equal(2, map.Region);
        Assert.Equal([(5UL, 1U), (1UL << 30, 512U)], map.Runs);
        Assert.False(map.Last);
        var last = RoundTrip<PopulatedPagesMessage>(new PopulatedPagesMessage(0, [], Last: true));
        Assert.True(last.Last);
        Assert.Empty(last.Runs);
        Assert.Throws<ArgumentException>(() => RoundTrip<PopulatedPagesMessage>(new PopulatedPagesMessage(0, [], Last: false)));

        var bytes = new byte[8 + 4];
        new RecordHeader(RecordKind.PopulatedPages, 0, 4).Write(bytes); // no run, and not the last record
        Assert.Contains("PopulatedPages record: 0 runs", Rejects(bytes).Message, StringComparison.Ordinal);
        bytes[1] = 2; // a flag bit PopulatedPages does not define
        Assert.Contains("flag", Rejects(bytes).Message, StringComparison.OrdinalIgnoreCase);
    }

    [Theory]
    [InlineData(RecordKind.MissingPages)]
    [InlineData(RecordKind.PopulatedPages)]
    public void ARunRecordTooShortForItsFixedPartIsRefused(RecordKind kind)
    {
        var bytes = new byte[8 + 1];
        new RecordHeader(kind, 0, 1).Write(bytes);
        Assert.Contains("too short", Rejects(bytes).Message, StringComparison.Ordinal);
        bytes = new byte[8];
        new RecordHeader(kind, 0, 0).Write(bytes);
        Assert.Contains("too short", Rejects(bytes).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void PopulatedPagesOutsideGuestMemoryAreRefused()
    {
        MemoryRegion[] regions = [new(0, 1 << 20, 4096)];
        new PopulatedPagesMessage(0, [(0, 256)], Last: true).Validate(regions);
        Assert.Contains("PopulatedPages: pages 200+57 outside region 0", Assert.Throws<MigrationProtocolException>(() => new PopulatedPagesMessage(0, [(200, 57)], Last: false).Validate(regions)).Message, StringComparison.Ordinal);
        Assert.Contains("does not exist", Assert.Throws<MigrationProtocolException>(() => new PopulatedPagesMessage(1, [(0, 1)], Last: true).Validate(regions)).Message, StringComparison.Ordinal);
    }
}
