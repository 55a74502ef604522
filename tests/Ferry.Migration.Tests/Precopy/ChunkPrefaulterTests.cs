using Ferry.Linux;
using Ferry.Migration.Guest;
using Ferry.Migration.Memory;
using Ferry.Migration.Precopy;
using Ferry.Migration.Protocol;

namespace Ferry.Migration.Tests.Precopy;

/// <summary>
/// The destination's background mapping of used 2 MiB chunks: which chunks it maps, that it never changes what a
/// page holds, that a chunk split to 4 KiB pages becomes a huge page again, and that it stops when asked.
/// </summary>
public sealed unsafe class ChunkPrefaulterTests : IDisposable
{
    private const int Chunks = 4;
    private const ulong Pages = Chunks * ChunkPrefaulter.ChunkPages;
    private GuestMemoryMapping _mapping = null!;
    private MemoryRegion _region;
    private ReceivedPageMap _map = null!;

    public ChunkPrefaulterTests() => Map(transparentHugePages: false);

    /// <summary>
    /// Fresh guest memory. Without huge pages (the default here) a landed page maps just itself, so what the
    /// prefaulter maps shows in the page map; with them a landed page maps its whole chunk, as on a real destination.
    /// </summary>
    private void Map(bool transparentHugePages)
    {
        _mapping?.Dispose();
        _mapping = GuestMemoryMapping.Create(Pages * 4096, transparentHugePages);
        _region = new MemoryRegion(0, Pages * 4096, _mapping.Address);
        _map = new ReceivedPageMap([_region], _mapping.HugePagesAdvised);
    }

    public void Dispose() => _mapping.Dispose();

    /// <summary>Land data in pages [first, first + count) as a receiver would: write them, then mark them held.</summary>
    private void Land(ulong first, ulong count, bool split = false)
    {
        // A receiver advises fresh windows before sparse data lands in them; the test does the same when asked.
        if (split) _map.PreferSmallPagesInFreshWindows(0, _region, first, count);
        for (ulong p = first; p < first + count; p++) *(ulong*)_region.PageAddress(p) = p + 1;
        _map.MarkHeld(0, first, count);
    }

    /// <summary>Pages of [first, first + count) the kernel has mapped (from /proc/self/pagemap).</summary>
    private ulong Present(ulong first, ulong count)
    {
        var bits = new DirtyBitmap(count);
        using var pagemap = Pagemap.OpenSelf();
        pagemap.OrPopulated(_region.PageAddress(first), count * 4096, bits.Words, 0);
        return bits.Count();
    }

    private void AssertContents(ulong first, ulong count, ulong heldFirst, ulong heldCount)
    {
        for (ulong p = first; p < first + count; p++)
        {
            ulong expected = p >= heldFirst && p < heldFirst + heldCount ? p + 1 : 0;
            Assert.Equal(expected, *(ulong*)_region.PageAddress(p));
        }
    }

    [Fact]
    public void AChunkWithEnoughDataIsMappedWholeAndOneWithLessIsNotTouched()
    {
        const ulong C = ChunkPrefaulter.ChunkPages;
        Land(C + 100, ChunkPrefaulter.DefaultMinHeldPages);      // chunk 1: at the threshold
        Land((2 * C) + 7, ChunkPrefaulter.DefaultMinHeldPages - 1); // chunk 2: one page short
        using var prefaulter = new ChunkPrefaulter([_region], _map);
        Assert.Equal((ulong)ChunkPrefaulter.DefaultMinHeldPages, Present(C, C));
        // First sight of the data: a chunk still being streamed in is left to its receiver.
        Assert.Equal(0, prefaulter.ScanOnce());
        Assert.Equal((ulong)ChunkPrefaulter.DefaultMinHeldPages, Present(C, C));

        Assert.Equal(1, prefaulter.ScanOnce());

        Assert.Equal(C, Present(C, C));
        Assert.Equal(0UL, Present(0, C));
        Assert.Equal(ChunkPrefaulter.DefaultMinHeldPages - 1UL, Present(2 * C, C));
        Assert.Equal(0UL, Present(3 * C, C));
        // Data where it landed, zero everywhere else.
        AssertContents(C, C, C + 100, ChunkPrefaulter.DefaultMinHeldPages);
        // Done chunks are not done again.
        Assert.Equal(0, prefaulter.ScanOnce());
        Assert.Equal(1, prefaulter.ChunksPrefaulted);
    }

    [Fact]
    public void AFileBackedRegionIsNeverMapped()
    {
        // A copied disk image: populating it would allocate the file's holes. The test's memory is anonymous; only
        // the region's mark decides.
        _region = _region with { FileBacked = true };
        _map = new ReceivedPageMap([_region]);
        Land(ChunkPrefaulter.ChunkPages, ChunkPrefaulter.ChunkPages / 2);
        using var prefaulter = new ChunkPrefaulter([_region], _map, minHeldPages: 1);

        Assert.Equal(0, prefaulter.ScanOnce());
        Assert.Equal(0, prefaulter.ScanOnce());
        Assert.Equal(0L, prefaulter.PagesPopulated);
        Assert.Equal((ulong)ChunkPrefaulter.ChunkPages / 2, Present(ChunkPrefaulter.ChunkPages, ChunkPrefaulter.ChunkPages));
    }

    [Fact]
    public void AChunkThatReachesTheThresholdLaterIsMappedOnALaterScan()
    {
        using var prefaulter = new ChunkPrefaulter([_region], _map, minHeldPages: 10);
        Land(5, 9);
        Assert.Equal(0, prefaulter.ScanOnce());
        Assert.Equal(0, prefaulter.ScanOnce());
        Land(300, 1);
        Assert.Equal(0, prefaulter.ScanOnce()); // at the threshold, but its count just moved
        Assert.Equal(9UL + 1, Present(0, ChunkPrefaulter.ChunkPages));

        Assert.Equal(1, prefaulter.ScanOnce());

        Assert.Equal((ulong)ChunkPrefaulter.ChunkPages, Present(0, ChunkPrefaulter.ChunkPages));
        for (ulong p = 0; p < ChunkPrefaulter.ChunkPages; p++)
            Assert.Equal(p is >= 5 and < 14 or 300 ? p + 1 : 0, *(ulong*)_region.PageAddress(p));
    }

    [Fact]
    public void AChunkSplitToSmallPagesIsCollapsedBackWithItsContentsKept()
    {
        Map(transparentHugePages: true);
        if (!_mapping.HugePagesAdvised) Assert.Skip("this kernel has no transparent huge pages");
        // Sparse first data: the receiver switched the window to 4 KiB pages.
        Land(0, 1, split: true);
        Land(1, ChunkPrefaulter.DefaultMinHeldPages + 40);
        Assert.True(_map.WasSplit(0, 0));
        Assert.Equal(1, _map.WindowsSplit);
        using var prefaulter = new ChunkPrefaulter([_region], _map);

        // EAGAIN (a page briefly busy) leaves the chunk for a later scan; a few scans settle it.
        for (int i = 0; i < 8 && prefaulter.ChunksPrefaulted == 0; i++) prefaulter.ScanOnce();

        Assert.Equal(1, prefaulter.ChunksPrefaulted);
        Assert.Equal((ulong)ChunkPrefaulter.ChunkPages, Present(0, ChunkPrefaulter.ChunkPages));
        AssertContents(0, ChunkPrefaulter.ChunkPages, 0, ChunkPrefaulter.DefaultMinHeldPages + 41);
        // Before Linux 6.1 there is no MADV_COLLAPSE: the chunk is then faulted in 4 KiB at a time instead.
        if (prefaulter.CollapseSupported) Assert.Equal(1, prefaulter.ChunksCollapsed);
        else Assert.Equal(0, prefaulter.ChunksCollapsed);
    }

    [Fact]
    public void MemoryNotAdvisedHugePagesNeverHasItsAdviceChanged()
    {
        // Default here: no huge-page advice. A sparse run in the final pass would split a window of THP memory; here
        // it must not, so nothing is ever collapsed either: the chunk is just faulted in.
        Land(0, 1, split: true);
        Assert.False(_map.WasSplit(0, 0));
        Assert.Equal(0, _map.WindowsSplit);
        Land(1, ChunkPrefaulter.DefaultMinHeldPages);
        using var prefaulter = new ChunkPrefaulter([_region], _map);

        prefaulter.ScanOnce();
        prefaulter.ScanOnce();

        Assert.Equal(1, prefaulter.ChunksPrefaulted);
        Assert.Equal(0, prefaulter.ChunksCollapsed);
        Assert.Equal((ulong)ChunkPrefaulter.ChunkPages, Present(0, ChunkPrefaulter.ChunkPages));
        AssertContents(0, ChunkPrefaulter.ChunkPages, 0, ChunkPrefaulter.DefaultMinHeldPages + 1);
    }

    [Fact]
    public void NothingIsMappedAfterAStopRequestAndDisposeWaitsForTheThread()
    {
        Land(0, ChunkPrefaulter.ChunkPages / 2);
        var prefaulter = new ChunkPrefaulter([_region], _map);
        // A first scan only notes the chunk's count (a chunk is taken once its count held still), so without it the
        // scan below would map nothing whether or not the stop was honoured.
        Assert.Equal(0, prefaulter.ScanOnce());
        prefaulter.RequestStop();

        Assert.Equal(0, prefaulter.ScanOnce());
        Assert.Equal(0L, prefaulter.PagesPopulated);

        prefaulter.Start();
        Assert.Throws<InvalidOperationException>(prefaulter.Start);
        prefaulter.Dispose();
        prefaulter.Dispose();
        prefaulter.RequestStop(); // a receiver may still say so after the owner disposed it
        Assert.Equal(0, prefaulter.ChunksPrefaulted);
    }

    [Fact]
    public void TheThreadMapsUsedChunksWhileDataKeepsLanding()
    {
        using var prefaulter = new ChunkPrefaulter([_region], _map, scanInterval: TimeSpan.FromMilliseconds(1));
        prefaulter.Start();
        Land(3 * ChunkPrefaulter.ChunkPages, ChunkPrefaulter.ChunkPages / 4);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (prefaulter.ChunksPrefaulted == 0 && DateTime.UtcNow < deadline) Thread.Sleep(1);
        prefaulter.Dispose();

        Assert.Equal(1, prefaulter.ChunksPrefaulted);
        Assert.Equal((ulong)ChunkPrefaulter.ChunkPages, Present(3 * ChunkPrefaulter.ChunkPages, ChunkPrefaulter.ChunkPages));
        AssertContents(3 * ChunkPrefaulter.ChunkPages, ChunkPrefaulter.ChunkPages, 3 * ChunkPrefaulter.ChunkPages, ChunkPrefaulter.ChunkPages / 4);
    }

    [Fact]
    public void AKernelRefusalEndsThePrefaultingQuietly()
    {
        // Data landed, then the memory became inaccessible: MADV_POPULATE_WRITE fails (EFAULT or ENOMEM, as for a
        // host short of memory). The prefaulter is an optimisation: it stops trying, says why, and throws nothing.
        Land(0, ChunkPrefaulter.ChunkPages / 2);
        Assert.Equal(0, Libc.mprotect(_region.HostAddress, (nuint)_region.Size, Libc.PROT_NONE));
        try
        {
            using var prefaulter = new ChunkPrefaulter([_region], _map);
            prefaulter.ScanOnce();
            prefaulter.ScanOnce();

            Assert.False(prefaulter.Supported);
            Assert.NotEqual(0, prefaulter.LastError);
            Assert.Equal(0, prefaulter.ChunksPrefaulted);
            Assert.Equal(0, prefaulter.ScanOnce()); // and does not try again
        }
        finally
        {
            Assert.Equal(0, Libc.mprotect(_region.HostAddress, (nuint)_region.Size, Libc.PROT_READ | Libc.PROT_WRITE));
        }
    }

    [Theory]
    [InlineData(0)]
    [InlineData(ChunkPrefaulter.ChunkPages + 1)]
    public void AThresholdOutsideTheChunkIsRefused(int threshold) =>
        Assert.Throws<ArgumentOutOfRangeException>(() => new ChunkPrefaulter([_region], _map, threshold));
}
