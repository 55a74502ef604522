using Ferry.Migration.Memory;
using Ferry.Migration.Postcopy;
using Ferry.Migration.Protocol;
using Ferry.Migration.Tests.Protocol;

namespace Ferry.Migration.Tests.Postcopy;

/// <summary>
/// The destination's page-by-page digest of a verified hybrid migration: pre-copy pages recorded as they land, the rest
/// read at the switchover, post-copy's installs after. Whatever the mix, it must equal the digest of the memory.
/// </summary>
public class PageHashDigestTests
{
    private static readonly PageRun[] Runs =
    [
        new(0, 3, PageEncoding.Normal),
        new(3, 2, PageEncoding.Zero),
        new(6, 2, PageEncoding.Normal),
        new(1, 1, PageEncoding.Zero), // overlaps the first run: the later run wins, in memory and in the digest
    ];

    [Fact]
    public void PagesRecordedAsTheyLandDigestLikeTheMemoryTheyLandedIn()
    {
        using var source = new NativeGuestMemory((0, 16));
        using var destination = new NativeGuestMemory((0, 16));
        source.FillPattern(3);
        source.Page(0, 1).Clear();
        source.Page(0, 3).Clear();
        source.Page(0, 4).Clear();
        destination.FillPattern(9); // what the Zero runs overwrite
        var wire = new ByteStreamChannel(name: "pages-0");
        new PageBatchWriter(wire).WriteBatch(0, source.Regions[0], Runs, PageBatchFlags.None);
        var landed = new PageHashDigest(destination.Regions);
        var reader = new PageBatchReader(new ByteStreamChannel(wire.Output, "pages-0"), destination.Regions) { LandedDigest = landed };
        Assert.Equal(PageRecordKind.PageBatch, reader.ReadNext().Kind);

        // Pages 5 and 8.. were not in the batch: read from memory at the switchover.
        landed.HashMemory(onlyUnrecorded: true);
        Assert.Equal(PageHashDigest.Of(destination.Regions), landed.Compute());
    }

    [Fact]
    public void AtTheSwitchoverOnlyPagesNothingRecordedAreRead()
    {
        using var memory = new NativeGuestMemory((0, 8));
        memory.FillPattern(5);
        var digest = new PageHashDigest(memory.Regions);
        // Page 2 recorded from other bytes than memory holds: a page recorded already must not be read again.
        using var other = new NativeGuestMemory((0, 1));
        other.FillPattern(77);
        digest.Set(0, 2, other.Regions[0].PageAddress(0));
        // Page 6 is missing (post-copy will install and record it): skipped, recorded or not.
        var missing = new DirtyBitmap(8);
        missing.Set(6);
        digest.HashMemory([missing], onlyUnrecorded: true);
        var expected = new PageHashDigest(memory.Regions);
        expected.HashMemory();
        // With page 6 installed, only page 2 differs from memory's digest: it was not read again...
        digest.Set(0, 6, memory.Regions[0].PageAddress(6));
        Assert.NotEqual(expected.Compute(), digest.Compute());
        // ...and every other page was.
        digest.Set(0, 2, memory.Regions[0].PageAddress(2));
        Assert.Equal(expected.Compute(), digest.Compute());
    }
}
