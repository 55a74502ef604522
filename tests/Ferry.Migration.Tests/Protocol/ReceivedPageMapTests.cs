using Ferry.Linux;
using Ferry.Migration.Guest;
using Ferry.Migration.Protocol;

namespace Ferry.Migration.Tests.Protocol;

/// <summary>How the destination applies Zero runs: never touching fresh pages, zeroing pages that held data.</summary>
public class ReceivedPageMapTests
{
    private const int Pages = 256;

    private static unsafe Span<byte> Bytes(MemoryRegion region) => new((void*)region.HostAddress, (int)region.Size);

    /// <summary>Encode <paramref name="runs"/> (one batch each) from <paramref name="source"/>.</summary>
    private static ByteStreamChannel Stream(NativeGuestMemory source, params PageRun[][] runs)
    {
        var wire = new ByteStreamChannel(name: "pages-0");
        var writer = new PageBatchWriter(wire);
        foreach (var batch in runs) writer.WriteBatch(0, source.Regions[0], batch, PageBatchTests.Flags(true));
        return new ByteStreamChannel(wire.Output, "pages-0");
    }

    [Fact]
    public void AZeroRunOverPagesThatNeverReceivedDataTouchesNothing()
    {
        using var source = new NativeGuestMemory((0, Pages));
        source.FillPattern(5);
        source.Region(0)[(4 * 4096)..].Clear();
        using var mapping = GuestMemoryMapping.Create(Pages * 4096);
        var region = new MemoryRegion(0, Pages * 4096, mapping.Address);
        // Any access to pages 4.. faults: a Zero run that read or wrote them would kill the test process.
        Assert.Equal(0, Libc.mprotect(region.PageAddress(4), (Pages - 4) * 4096, Libc.PROT_NONE));
        var map = new ReceivedPageMap([region]);
        var reader = new PageBatchReader(Stream(source, new PageRun[] { new(0, 4, PageEncoding.Normal), new(4, Pages - 4, PageEncoding.Zero) }), [region], map);

        var record = reader.ReadNext();

        Assert.Equal((4, Pages - 4L), (record.NormalPages, record.ZeroPages));
        Assert.Equal((0L, 0L), (map.PagesCleared, map.PagesDropped));
        Assert.True(map.HoldsData(0, 3));
        Assert.False(map.HoldsData(0, 4));
        Assert.Equal(0, Libc.mprotect(region.HostAddress, Pages * 4096, Libc.PROT_READ | Libc.PROT_WRITE));
        Assert.True(source.Region(0).SequenceEqual(Bytes(region)));
    }

    [Fact]
    public void AZeroRunClearsPagesThatHeldDataShortRunsByWritingLongRunsByDropping()
    {
        using var source = new NativeGuestMemory((0, Pages));
        source.FillPattern(9);
        using var mapping = GuestMemoryMapping.Create(Pages * 4096);
        var region = new MemoryRegion(0, Pages * 4096, mapping.Address);
        var map = new ReceivedPageMap([region]);
        int longRun = ReceivedPageMap.DropThresholdPages + 10;
        var reader = new PageBatchReader(Stream(source,
            [new(0, 10 + (uint)longRun, PageEncoding.Normal)],   // pages 0..: data
            [new(0, 10, PageEncoding.Zero)],                      // short run over data: memset
            [new(10, (uint)longRun + 20, PageEncoding.Zero)],     // long run over data (and 20 fresh pages): dropped
            [new(0, (uint)longRun + 30, PageEncoding.Zero)]),     // again: nothing holds data any more
            [region], map);

        reader.ReadNext();
        Assert.True(source.Region(0)[..((10 + longRun) * 4096)].SequenceEqual(Bytes(region)[..((10 + longRun) * 4096)]));
        reader.ReadNext();
        Assert.Equal((10L, 0L), (map.PagesCleared, map.PagesDropped));
        reader.ReadNext();
        Assert.Equal((10L, (long)longRun), (map.PagesCleared, map.PagesDropped));
        reader.ReadNext();
        Assert.Equal((10L, (long)longRun), (map.PagesCleared, map.PagesDropped));

        Assert.DoesNotContain(Bytes(region).ToArray(), b => b != 0);
        for (ulong p = 0; p < Pages; p++) Assert.False(map.HoldsData(0, p), $"page {p} still marked as holding data");
    }

    [Fact]
    public void AZeroRunOverAFileBackedRegionZeroesTheFileItself()
    {
        // A disk image copied as a region is a MAP_SHARED file mapping: MADV_DONTNEED would succeed there and leave the
        // old data in the file, so a long run over data must punch it out of the file (MADV_REMOVE) instead.
        using var source = new NativeGuestMemory((0, Pages));
        source.FillPattern(11);
        string path = Path.Combine(Path.GetTempPath(), $"ferry-map-{Guid.NewGuid():N}.img");
        try
        {
            using (var f = new FileStream(path, FileMode.CreateNew)) f.SetLength(Pages * 4096);
            using var file = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite);
            nint address = Libc.mmap(0, Pages * 4096, Libc.PROT_READ | Libc.PROT_WRITE, Libc.MAP_SHARED, (int)file.DangerousGetHandle(), 0);
            Assert.NotEqual(Libc.MAP_FAILED, address);
            try
            {
                var region = new MemoryRegion(0, Pages * 4096, address) { FileBacked = true };
                var map = new ReceivedPageMap([region]);
                int longRun = ReceivedPageMap.DropThresholdPages + 10;
                var reader = new PageBatchReader(Stream(source,
                    [new(0, (uint)longRun + 5, PageEncoding.Normal)],
                    [new(0, (uint)longRun, PageEncoding.Zero)]), [region], map);
                reader.ReadNext();
                reader.ReadNext();
                Assert.Equal((long)longRun, map.PagesDropped);

                byte[] onDisk = new byte[Pages * 4096];
                RandomAccess.Read(file, onDisk, 0);
                Assert.DoesNotContain(onDisk[..(longRun * 4096)], b => b != 0);
                Assert.True(source.Region(0)[(longRun * 4096)..((longRun + 5) * 4096)].SequenceEqual(onDisk.AsSpan((longRun * 4096)..((longRun + 5) * 4096))));
            }
            finally
            {
                Libc.munmap(address, Pages * 4096);
            }
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void DataReceivedAfterADropLandsAgain(bool populateFreshRuns)
    {
        using var source = new NativeGuestMemory((0, Pages));
        source.FillPattern(3);
        using var mapping = GuestMemoryMapping.Create(Pages * 4096);
        var region = new MemoryRegion(0, Pages * 4096, mapping.Address);
        var map = new ReceivedPageMap([region]);
        var reader = new PageBatchReader(Stream(source,
            [new(0, 200, PageEncoding.Normal)], [new(0, 200, PageEncoding.Zero)], [new(0, 200, PageEncoding.Normal)]), [region], map)
        {
            PopulateFreshRuns = populateFreshRuns,
        };
        for (int i = 0; i < 3; i++) reader.ReadNext();
        Assert.Equal(200, map.PagesDropped);
        Assert.True(source.Region(0)[..(200 * 4096)].SequenceEqual(Bytes(region)[..(200 * 4096)]));
        Assert.True(map.HoldsData(0, 199));
    }

    [Fact]
    public void ADenseRunThenAShortOneInTheSameFreshWindowKeepsItsHugePage()
    {
        // One pre-copy batch, one scatter receive: 100 pages, a gap, 3 pages, all in the second 2 MiB window. The
        // short run must see the dense one as data in its window (as it did run by run), so the window is not split.
        const int WindowPages = 512;
        using var mapping = GuestMemoryMapping.Create(2 * WindowPages * 4096);
        if (!mapping.HugePagesAdvised) Assert.Skip("this kernel has no transparent huge pages");
        var region = new MemoryRegion(0, 2 * WindowPages * 4096, mapping.Address);
        using var source = new NativeGuestMemory((0, 2 * WindowPages));
        source.FillPattern(6);
        var map = new ReceivedPageMap([region], hugePagesAdvised: true);
        var wire = new ByteStreamChannel(name: "pages-0");
        new PageBatchWriter(wire).WriteBatch(0, source.Regions[0],
            [new(WindowPages, 100, PageEncoding.Normal), new(WindowPages + 101, 3, PageEncoding.Normal)], PageBatchFlags.None);
        new PageBatchReader(new ByteStreamChannel(wire.Output, "pages-0"), [region], map).ReadNext();
        Assert.Equal(0, map.WindowsSplit);
        Assert.True(source.Region(0).Slice(WindowPages * 4096, 100 * 4096).SequenceEqual(Bytes(region).Slice(WindowPages * 4096, 100 * 4096)));
        Assert.True(source.Region(0).Slice((WindowPages + 101) * 4096, 3 * 4096).SequenceEqual(Bytes(region).Slice((WindowPages + 101) * 4096, 3 * 4096)));
    }

    [Theory]
    [InlineData(PageBatchFlags.FinalPass, 256)] // final pass (source paused): a dense run too gets small pages in a fresh window
    [InlineData(PageBatchFlags.FinalPass | PageBatchFlags.DataChecksummed, 1)] // with its data checksummed or not
    [InlineData(PageBatchFlags.None, 1)]        // a pre-copy round's short run
    [InlineData(PageBatchFlags.None, 256)]      // a pre-copy round's dense run keeps the huge page
    public void SparseDataIntoAFreshWindowFaultsInOnlyItsOwnPages(PageBatchFlags flags, int runPages)
    {
        const int WindowPages = 512;
        using var mapping = GuestMemoryMapping.Create(2 * WindowPages * 4096);
        if (!mapping.HugePagesAdvised) Assert.Skip("this kernel has no transparent huge pages");
        var region = new MemoryRegion(0, 2 * WindowPages * 4096, mapping.Address);
        using var source = new NativeGuestMemory((0, 2 * WindowPages));
        source.FillPattern(4);
        var map = new ReceivedPageMap([region], hugePagesAdvised: true);
        var wire = new ByteStreamChannel(name: "pages-0");
        new PageBatchWriter(wire).WriteBatch(0, source.Regions[0], [new(WindowPages + 100, (uint)runPages, PageEncoding.Normal)], flags);
        new PageBatchReader(new ByteStreamChannel(wire.Output, "pages-0"), [region], map).ReadNext();

        var populated = new Ferry.Migration.Memory.DirtyBitmap(region.Pages);
        using (var pagemap = Pagemap.OpenSelf()) pagemap.OrPopulated(region.HostAddress, region.Size, populated.Words, 0);
        bool small = flags.HasFlag(PageBatchFlags.FinalPass) || runPages < ReceivedPageMap.SparseRunPages;
        Assert.Equal(small ? 1 : 0, map.WindowsSplit);
        // With small pages only the received pages exist; otherwise the write brought in the whole 2 MiB window.
        Assert.Equal(small ? (ulong)runPages : WindowPages, populated.Count(WindowPages, 2 * WindowPages));
        Assert.Equal(0UL, populated.Count(0, WindowPages));
        Assert.True(source.Region(0).Slice((WindowPages + 100) * 4096, runPages * 4096).SequenceEqual(Bytes(region).Slice((WindowPages + 100) * 4096, runPages * 4096)));
    }
}
