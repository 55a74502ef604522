using Ferry.Migration.Guest;
using Ferry.Migration.InProcess;
using Ferry.Migration.Tests.Postcopy;
using Ferry.Migration.Transport;
using static Ferry.Migration.Tests.Precopy.MigrationHarness;

namespace Ferry.Migration.Tests.Precopy;

/// <summary>
/// A region the source reads through a reader (<see cref="MemoryRegion.Reader"/>, as Ferry's machine reads a copied
/// disk's image with <c>pread</c>) instead of from a mapping: it arrives as a mapped one does, and a read error fails
/// the migration as the source's own, before the commit, with the guest running on. The engine sees no mapping of the
/// region (host address 0): a path that still read one would crash the test host.
/// </summary>
[Collection(MigrationCollection.Name)]
public class RegionReaderTests
{
    [Theory]
    [InlineData(MigrationMode.Precopy)]
    [InlineData(MigrationMode.Postcopy)]
    public void ARegionReadThroughAReaderArrivesIntact(MigrationMode mode)
    {
        using var inner = NewGuest(64, pagesPerSecond: 2_000, split: true);
        using var transport = new InMemoryTransport();
        var reader = new CopyingRegionReader(inner.Regions[1]);
        // The final pass's data checksummed too, from what was read.
        var options = Options() with { Mode = mode, ChecksumFinalPass = true };
        var outcome = Migrate(new SecondRegionPrecopyOnly(inner, reader), transport.Connector, transport.Listener, options);
        using var _ = outcome.Target;
        // Digests of both sides (this one's through the reader) agree, and the destination's guest finds every page of
        // its memory as its own bookkeeping says.
        if (mode == MigrationMode.Postcopy)
        {
            PostcopyMigrationTests.AssertCompletedInPostcopy(outcome, inner);
        }
        else
        {
            Assert.True(outcome.Stats.Status == MigrationStatus.Completed, $"status {outcome.Stats.Status}: {outcome.Stats.Error} / {outcome.DestinationError}");
            Assert.True(outcome.Stats.Verify?.Match, "digests differ");
            DestinationChecks.AssertSelfCheckAfterStart(outcome.Target!);
        }
        // Every page of the region (random data, all populated) was read to be sent, its always-dirty ones again.
        Assert.True(reader.PagesRead > (long)inner.Regions[1].Pages, $"{reader.PagesRead} pages read of {inner.Regions[1].Pages}");
    }

    [Fact]
    public unsafe void PagesThatReadAsZerosAmongDataArriveEachInItsPlace()
    {
        // A sender stages what it reads and closes up the gaps zero pages leave, so that a batch's data lies in run
        // order. In round 0 (every page): one data page in three, then 300 pages of zeros, then all data. In the later
        // passes, what every harvest adds: 300 lone pages of zeros (a run each, no data), then 400 pages alternating
        // data and zeros, so that the run table (512 runs) fills in the middle of a read, before the data (256 pages).
        // An idle guest, so that neither side's writes change its memory afterwards.
        using var inner = NewGuest(64, split: true);
        using var transport = new InMemoryTransport();
        var reader = new CopyingRegionReader(inner.Regions[1])
        {
            ReadsAsZero = p => p switch
            {
                < 3000 => p % 3 != 0,
                < 3300 => true,
                >= 4000 and < 4600 => true,
                >= 6000 and < 6400 => p % 2 == 1,
                _ => false,
            },
        };
        var options = Options() with { ChecksumFinalPass = true };
        var source = new SecondRegionPrecopyOnly(inner, reader, alsoDirty: p => (p is >= 4000 and < 4600 && p % 2 == 0) || p is >= 6000 and < 6400);
        var outcome = Migrate(source, transport.Connector, transport.Listener, options);
        using var _ = outcome.Target;
        Assert.True(outcome.Stats.Status == MigrationStatus.Completed, $"status {outcome.Stats.Status}: {outcome.Stats.Error} / {outcome.DestinationError}");
        Assert.True(outcome.Stats.Verify?.Match, "digests differ");
        Assert.True(outcome.Stats.Rounds.Count >= 2, "no pass after round 0");
        // And page by page: the destination holds what the reader gives.
        var region = inner.Regions[1];
        var expected = new byte[MemoryRegion.PageSize];
        for (ulong p = 0; p < region.Pages; p++)
        {
            fixed (byte* e = expected) reader.Read(p, 1, (nint)e);
            var landed = new ReadOnlySpan<byte>((void*)outcome.Target!.Regions[1].PageAddress(p), MemoryRegion.PageSize);
            Assert.True(landed.SequenceEqual(expected), $"page {p} differs");
        }
    }

    [Theory]
    [InlineData(MigrationMode.Precopy)]
    [InlineData(MigrationMode.Postcopy)]
    public void AReadErrorPartwayFailsTheMigrationNamingItAndTheGuestRunsOn(MigrationMode mode)
    {
        using var inner = NewGuest(64, pagesPerSecond: 2_000, split: true);
        using var transport = new InMemoryTransport();
        ulong half = inner.Regions[1].Pages / 2;
        var reader = new CopyingRegionReader(inner.Regions[1]) { Fails = page => page >= half };
        var factory = new RecordingTargetFactory(new InProcessTargetFactory());
        var outcome = Migrate(new SecondRegionPrecopyOnly(inner, reader), transport.Connector, transport.Listener, Options() with { Mode = mode }, factory);
        AssertFailedBeforeCommit(outcome, inner, factory);
        // The reader's own words, as this side's failure: not a channel's, not the destination's.
        Assert.Matches(@"^source: test\.img: cannot read the disk image at offset \d+: Input/output error \(errno 5\)$", outcome.Stats.Error);
        Assert.Empty(outcome.Stats.Rounds);
        AssertWorkloadContinues(inner);
    }

    [Theory]
    [InlineData(MigrationMode.Precopy)]
    [InlineData(MigrationMode.Postcopy)]
    public void AReadErrorOnceTheGuestIsPausedFailsTheSwitchoverAndTheGuestRunsOn(MigrationMode mode)
    {
        // The switchover carries the region's always-dirty pages, read with the guest paused.
        using var inner = NewGuest(64, pagesPerSecond: 2_000, split: true);
        using var transport = new InMemoryTransport();
        var reader = new CopyingRegionReader(inner.Regions[1]) { Fails = _ => !inner.IsRunning };
        var factory = new RecordingTargetFactory(new InProcessTargetFactory());
        var outcome = Migrate(new SecondRegionPrecopyOnly(inner, reader), transport.Connector, transport.Listener, Options() with { Mode = mode }, factory);
        AssertFailedBeforeCommit(outcome, inner, factory);
        Assert.StartsWith("source: test.img: cannot read the disk image", outcome.Stats.Error, StringComparison.Ordinal);
        Assert.NotEmpty(outcome.Stats.Rounds);
        AssertWorkloadContinues(inner);
    }

    [Theory]
    [InlineData(MigrationMode.Precopy, "the source's memory could not be read again after the commit: ")]
    [InlineData(MigrationMode.Postcopy, "the source's digest could not be computed: ")]
    public void AReadErrorAfterTheCommitLeavesTheMigrationCompletedSayingItsCheckFailed(MigrationMode mode, string problem)
    {
        // Once the destination runs the guest, only the source's digests read the region again: pre-copy's check of its
        // frozen memory, and post-copy's digest. Neither can undo the commit, nor should lose the VM.
        using var inner = NewGuest(64, pagesPerSecond: 2_000, split: true);
        using var transport = new InMemoryTransport();
        var factory = new RecordingTargetFactory(new InProcessTargetFactory());
        var reader = new CopyingRegionReader(inner.Regions[1]) { Fails = _ => factory.Created.Any(t => t.Started) };
        var outcome = Migrate(new SecondRegionPrecopyOnly(inner, reader), transport.Connector, transport.Listener, Options() with { Mode = mode }, factory);
        using var _ = outcome.Target;
        Assert.Equal(MigrationStatus.Completed, outcome.Stats.Status);
        Assert.True(outcome.Target!.Started);
        Assert.StartsWith(problem + "source: test.img: cannot read the disk image", outcome.Stats.Error, StringComparison.Ordinal);
    }
}
