using Ferry.Linux;
using Ferry.Migration.Guest;
using Ferry.Migration.Memory;
using Ferry.Migration.Precopy;

namespace Ferry.Migration.Tests.Precopy;

public class VerifyDigestTests
{
    private static unsafe Span<byte> Bytes(MemoryRegion r) => new((void*)r.HostAddress, (int)r.Size);

    [Fact]
    public void TheDigestEqualsTheFullReadDigestWithoutReadingUnpopulatedPages()
    {
        using var a = GuestMemoryMapping.Create(4 << 20, transparentHugePages: false);
        using var b = GuestMemoryMapping.Create(2 << 20, transparentHugePages: false);
        MemoryRegion[] regions = [new(0, 4 << 20, a.Address), new(1UL << 32, 2 << 20, b.Address)];
        // Populated: a few scattered pages with data, one written then dropped (unpopulated again), one written zero.
        var random = new Random(11);
        foreach (ulong p in new ulong[] { 0, 1, 17, 700, 1023 }) random.NextBytes(Bytes(regions[0]).Slice((int)(p * 4096), 4096));
        random.NextBytes(Bytes(regions[1]).Slice(5 * 4096, 4096));
        Bytes(regions[1]).Slice(9 * 4096, 4096).Fill(0x33);
        Assert.Equal(0, Libc.madvise(regions[1].PageAddress(9), 4096, Libc.MADV_DONTNEED));
        Bytes(regions[1]).Slice(12 * 4096, 4096).Clear();

        // Every page the kernel has nothing behind becomes inaccessible: reading one would kill the test process.
        var protectedRuns = new List<(MemoryRegion Region, ulong Page, ulong Count)>();
        using (var pagemap = Pagemap.OpenSelf())
        {
            foreach (var region in regions)
            {
                var populated = new DirtyBitmap(region.Pages);
                pagemap.OrPopulated(region.HostAddress, region.Size, populated.Words, 0);
                for (ulong p = 0; p < region.Pages; p++)
                {
                    if (populated.Test(p)) continue;
                    Assert.Equal(0, Libc.mprotect(region.PageAddress(p), 4096, Libc.PROT_NONE));
                    protectedRuns.Add((region, p, 1));
                }
            }
        }
        Assert.True(protectedRuns.Count > 1000, $"only {protectedRuns.Count} pages were unpopulated; the test proves nothing");

        var digest = VerifyDigest.Compute(regions);

        foreach (var (region, p, _) in protectedRuns) Assert.Equal(0, Libc.mprotect(region.PageAddress(p), 4096, Libc.PROT_READ | Libc.PROT_WRITE));
        Assert.Equal(MemoryDigest.Compute(regions), digest);
    }

    [Fact]
    public void AFileBackedRegionIsReadWholeSinceItsPageTableDoesNotSayWhatTheFileHolds()
    {
        // A copied disk's view: data written to the file (as its device writes, not through the mapping), mapped
        // shared and read-only, so that no page of it is in this process's page table yet.
        string path = Path.Combine(Path.GetTempPath(), $"ferry-verify-{Environment.ProcessId}-{Guid.NewGuid():N}.img");
        try
        {
            var data = new byte[1 << 20];
            new Random(5).NextBytes(data.AsSpan(3 * 4096, 8 * 4096));
            File.WriteAllBytes(path, data);
            using var file = File.OpenHandle(path);
            nint at = Libc.mmap(0, (nuint)data.Length, Libc.PROT_READ, Libc.MAP_SHARED, (int)file.DangerousGetHandle(), 0);
            Assert.NotEqual(Libc.MAP_FAILED, at);
            try
            {
                var region = new MemoryRegion(1UL << 56, (ulong)data.Length, at);
                var pageTableOnly = VerifyDigest.Compute([region]);
                var fileBacked = VerifyDigest.Compute([region with { FileBacked = true }]);
                // The page table alone says zeros: the test would prove nothing if it did not.
                Assert.NotEqual(MemoryDigest.Compute([region]), pageTableOnly);
                Assert.Equal(MemoryDigest.Compute([region with { FileBacked = true }]), fileBacked);
            }
            finally
            {
                Libc.munmap(at, (nuint)data.Length);
            }
        }
        finally
        {
            File.Delete(path);
        }
    }
}
