using Ferry.Linux;

namespace Ferry.Migration.Tests.Memory;

public unsafe class GuestMemoryMappingTests
{
    [Fact]
    public void SixteenGiBReservationCostsAlmostNoResidentMemory()
    {
        long before = ResidentBytes();
        using var mapping = GuestMemoryMapping.Create(16UL << 30, transparentHugePages: false);
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
    public void HugePagesAreAdvisedByDefaultOnATwoMiBAlignedMappingAndBackTouchedMemory()
    {
        using var mapping = GuestMemoryMapping.Create(8UL << 20);
        Assert.True(mapping.HugePagesAdvised);
        Assert.Equal(0, mapping.Address % (nint)GuestMemoryMapping.HugePageSize);
        Assert.Contains(" hg", Smaps(mapping.Address, "VmFlags"), StringComparison.Ordinal); // the kernel's mark for MADV_HUGEPAGE

        ((byte*)mapping.Address)[(3 << 20) + 5] = 1;
        const string thp = "/sys/kernel/mm/transparent_hugepage/enabled";
        if (File.Exists(thp) && !File.ReadAllText(thp).Contains("[never]", StringComparison.Ordinal))
        {
            // THP on (here: "madvise"): the fault took a whole 2 MiB page, unless none was free; allow that fallback
            // only when the kernel says so in its counters.
            // At least 2048: the kernel may have merged this mapping with a neighbouring one that has huge pages too.
            long huge = long.Parse(Smaps(mapping.Address, "AnonHugePages").Split(' ')[0]);
            Assert.True(huge >= 2048 || ThpFallbacks() > 0, $"AnonHugePages {huge} kB after touching one 2 MiB window");
        }
    }

    [Fact]
    public void HugePagesCanBeTurnedOff()
    {
        using var mapping = GuestMemoryMapping.Create(4UL << 20, transparentHugePages: false);
        Assert.False(mapping.HugePagesAdvised);
        Assert.DoesNotContain(" hg", Smaps(mapping.Address, "VmFlags"), StringComparison.Ordinal);
        ((byte*)mapping.Address)[5] = 1;
        // Any mapping merged with this one has the same flags (no "hg"), so no huge page can be in the entry.
        Assert.Equal("0 kB", Smaps(mapping.Address, "AnonHugePages"));
    }

    [Fact]
    public void PopulatingPartOfAMappingFaultsInOnlyThatPart()
    {
        using var mapping = GuestMemoryMapping.Create(64 * 4096, transparentHugePages: false);
        Assert.True(mapping.Populate(8 * 4096, 4 * 4096));
        // The page table, not smaps' Rss: the kernel may merge this mapping with a neighbour into one smaps entry.
        using var pagemap = Pagemap.OpenSelf();
        var bitmap = new ulong[1];
        Assert.Equal(4UL, pagemap.OrPopulated(mapping.Address, mapping.Length, bitmap, 0));
        Assert.Equal(0xFUL << 8, bitmap[0]);
        Assert.Throws<ArgumentOutOfRangeException>(() => mapping.Populate(60 * 4096, 8 * 4096));
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

    /// <summary>The value of <paramref name="field"/> in the /proc/self/smaps entry that contains <paramref name="address"/>.</summary>
    internal static string Smaps(nint address, string field)
    {
        bool inside = false;
        foreach (string line in File.ReadLines("/proc/self/smaps"))
        {
            string[] head = line.Split(' ', 2)[0].Split('-');
            if (head.Length == 2 && ulong.TryParse(head[0], System.Globalization.NumberStyles.HexNumber, null, out ulong start)
                && ulong.TryParse(head[1], System.Globalization.NumberStyles.HexNumber, null, out ulong end))
            {
                inside = (ulong)address >= start && (ulong)address < end;
            }
            else if (inside && line.StartsWith(field + ":", StringComparison.Ordinal))
            {
                return line[(field.Length + 1)..].Trim();
            }
        }

        throw new InvalidOperationException($"no {field} for 0x{address:x} in /proc/self/smaps");
    }

    /// <summary>thp_fault_fallback from /proc/vmstat: huge-page faults that had to use 4 KiB pages.</summary>
    private static long ThpFallbacks() =>
        File.ReadLines("/proc/vmstat").Where(l => l.StartsWith("thp_fault_fallback ", StringComparison.Ordinal))
            .Select(l => long.Parse(l.Split(' ')[1])).FirstOrDefault();

    internal static long ResidentBytes()
    {
        // /proc/self/statm: size resident shared text lib data dt, in pages.
        string[] fields = File.ReadAllText("/proc/self/statm").Split(' ');
        return long.Parse(fields[1]) * Environment.SystemPageSize;
    }
}
