using Ferry.Linux;

namespace Ferry.Migration.Tests.Memory;

public unsafe class GuestMemoryMappingTests
{
    [Fact]
    public void SixteenGiBReservationCostsAlmostNoResidentMemory()
    {
        long before = ResidentBytes();
        using var mapping = GuestMemoryMapping.Create(16UL << 30);
        // Touch 256 pages spread over the whole range: each costs one 4 KiB page, not its neighbourhood.
        for (ulong i = 0; i < 256; i++)
        {
            ((byte*)mapping.Address)[(long)(i * (64UL << 20))] = 1;
        }

        long grown = ResidentBytes() - before;
        Assert.Equal(16UL << 30, mapping.Length);
        // 256 touched pages are 1 MiB, or 512 MiB where THP is "always" (each touch faults a 2 MiB page); on top,
        // 64 MiB for whatever the test runner allocates meanwhile. Either way far below the 16 GiB reserved.
        const string thp = "/sys/kernel/mm/transparent_hugepage/enabled";
        long perTouch = File.Exists(thp) && File.ReadAllText(thp).Contains("[always]") ? 2L << 20 : 4096;
        Assert.True(grown < (256 * perTouch) + (64L << 20), $"resident set grew by {grown >> 20} MiB");
    }

    [Fact]
    public void MappingStartsZeroAndDropPagesZeroesWrittenPages()
    {
        using var mapping = GuestMemoryMapping.Create(4 * 4096);
        byte* p = (byte*)mapping.Address;
        Assert.Equal(0, p[5000]);
        p[4096] = 7;
        p[2 * 4096] = 9;
        mapping.DropPages(4096, 4096);
        Assert.Equal(0, p[4096]);
        Assert.Equal(9, p[2 * 4096]);
        Assert.Throws<ArgumentOutOfRangeException>(() => mapping.DropPages(4096, 4 * 4096));
        Assert.Throws<ArgumentOutOfRangeException>(() => mapping.DropPages(1, 4096));
    }

    [Fact]
    public void PopulateFaultsTheWholeMappingInAndKeepsItZero()
    {
        using var mapping = GuestMemoryMapping.Create(32 << 20);
        long before = ResidentBytes();
        Assert.True(mapping.Populate(), "MADV_POPULATE_WRITE needs Linux 5.14");
        long grown = ResidentBytes() - before;
        // Other threads of the test run may free memory meanwhile, so allow a quarter of slack below 32 MiB.
        Assert.True(grown > 24 << 20, $"resident set grew by only {grown >> 20} MiB");
        Assert.True(Ferry.Migration.Memory.ZeroPage.IsZero(mapping.Address + (17 << 20)));
    }

    [Fact]
    public void LengthMustBeWholePages()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => GuestMemoryMapping.Create(0));
        Assert.Throws<ArgumentOutOfRangeException>(() => GuestMemoryMapping.Create(4097));
    }

    [Fact]
    public void KernelRefusalIsALinuxExceptionNamingMmap()
    {
        // 2^62 bytes exceeds the 47-bit user address space, so even MAP_NORESERVE fails with ENOMEM.
        var e = Assert.Throws<LinuxException>(() => GuestMemoryMapping.Create(1UL << 62));
        Assert.Equal("mmap", e.Call);
        Assert.Equal(12, e.Errno);
    }

    internal static long ResidentBytes()
    {
        // /proc/self/statm: size resident shared text lib data dt, in pages.
        string[] fields = File.ReadAllText("/proc/self/statm").Split(' ');
        return long.Parse(fields[1]) * Environment.SystemPageSize;
    }
}
