using System.Diagnostics;
using System.Globalization;

namespace Ferry.Linux.Tests;

/// <summary>Pagemap over real mappings of this process: what the kernel reports for touched, untouched and dropped pages.</summary>
public sealed unsafe class PagemapTests
{
    private const int Page = 4096;

    [Fact]
    public void TouchedPagesArePopulatedUntouchedAndDroppedPagesAreNot()
    {
        using var mapping = GuestMemoryMapping.Create(64 * Page, transparentHugePages: false);
        byte* p = (byte*)mapping.Address;
        p[3 * Page] = 1;              // written
        _ = p[10 * Page + 100];       // read only: on this host (pvm_no_zero_page) a private page, elsewhere the zero page; present either way
        p[20 * Page] = 1;
        p[21 * Page + 4095] = 1;
        p[40 * Page] = 1;
        mapping.DropPages(40 * Page, Page); // dropped: reads as zero again, so must not be reported

        using var pagemap = Pagemap.OpenSelf();
        var bitmap = new ulong[1];
        ulong count = pagemap.OrPopulated(mapping.Address, mapping.Length, bitmap, 0);

        Assert.Equal((1UL << 3) | (1UL << 10) | (1UL << 20) | (1UL << 21), bitmap[0]);
        Assert.Equal(4UL, count);
        Assert.Equal(0, p[40 * Page]);
    }

    [Fact]
    public void BitsAreOredInAtAnUnalignedOffsetWithoutDisturbingOthers()
    {
        using var mapping = GuestMemoryMapping.Create(200 * Page, transparentHugePages: false);
        byte* p = (byte*)mapping.Address;
        foreach (int page in new[] { 0, 63, 64, 130, 199 })
        {
            p[page * Page] = 1;
        }

        using var pagemap = Pagemap.OpenSelf();
        var bitmap = new ulong[5];
        bitmap[0] = 1UL << 2; // a bit set by someone else stays set
        pagemap.OrPopulated(mapping.Address, mapping.Length, bitmap, firstBit: 37);

        var set = new List<int>();
        for (int b = 0; b < 5 * 64; b++)
        {
            if ((bitmap[b >> 6] & (1UL << (b & 63))) != 0)
            {
                set.Add(b);
            }
        }

        Assert.Equal([2, 37, 37 + 63, 37 + 64, 37 + 130, 37 + 199], set);
    }

    [Fact]
    public void ASubRangeReportsOnlyItsOwnPages()
    {
        using var mapping = GuestMemoryMapping.Create(16 * Page, transparentHugePages: false);
        byte* p = (byte*)mapping.Address;
        p[2 * Page] = 1;
        p[9 * Page] = 1;
        using var pagemap = Pagemap.OpenSelf();
        var bitmap = new ulong[1];
        pagemap.OrPopulated(mapping.Address + (8 * Page), 8 * Page, bitmap, 0);
        Assert.Equal(1UL << 1, bitmap[0]);
    }

    [Fact]
    public void ATransparentHugePageReportsAllItsSmallPagesAndNothingBeyondIt()
    {
        using var mapping = GuestMemoryMapping.Create(3 * GuestMemoryMapping.HugePageSize);
        Assert.True(mapping.HugePagesAdvised, "MADV_HUGEPAGE refused");
        Assert.Equal(0, mapping.Address % (nint)GuestMemoryMapping.HugePageSize);
        byte* p = (byte*)mapping.Address;
        p[GuestMemoryMapping.HugePageSize + (7 * Page)] = 1; // one byte in the second 2 MiB window

        using var pagemap = Pagemap.OpenSelf();
        var bitmap = new ulong[3 * 512 / 64];
        ulong count = pagemap.OrPopulated(mapping.Address, mapping.Length, bitmap, 0);

        // The first and last windows are untouched whatever backs the middle one.
        Assert.All(bitmap[..8], w => Assert.Equal(0UL, w));
        Assert.All(bitmap[16..], w => Assert.Equal(0UL, w));
        Assert.NotEqual(0UL, bitmap[8] & (1UL << 7));
        // Either the kernel gave the window a huge page, and all its 512 small pages are present (populated is a
        // superset of written), or no 2 MiB page was free at fault time and exactly the touched 4 KiB page is.
        Assert.True(count is 1 or 512, $"{count} pages populated");
        if (count == 512)
        {
            Assert.All(bitmap[8..16], w => Assert.Equal(ulong.MaxValue, w));
        }

        // smaps is per mapping (possibly merged with a neighbour), so it can confirm only one way: none there, none here.
        if (SmapsField(mapping.Address, "AnonHugePages") == 0)
        {
            Assert.Equal(1UL, count);
        }
    }

    [Fact]
    public void AnUntouchedFourGiBRangeIsReadQuicklyAndReportsNothing()
    {
        using var mapping = GuestMemoryMapping.Create(4UL << 30);
        ((byte*)mapping.Address)[12345 * Page] = 1;
        using var pagemap = Pagemap.OpenSelf();
        var bitmap = new ulong[(4UL << 30) / Page / 64];
        var sw = Stopwatch.StartNew();
        ulong count = pagemap.OrPopulated(mapping.Address, mapping.Length, bitmap, 0);
        sw.Stop();

        Assert.True(count is 1 or 512, $"{count} pages populated");
        Assert.NotEqual(0UL, bitmap[12345 / 64] & (1UL << (12345 % 64)));
        // 1 Mi entries, 8 MiB of pread: measured 1.4-8 ms here; 2 s only catches a per-page syscall or fault.
        Assert.True(sw.ElapsedMilliseconds < 2000, $"{sw.ElapsedMilliseconds} ms");
    }

    [Fact]
    public void UnalignedRangesAndShortBitmapsAreRejected()
    {
        using var mapping = GuestMemoryMapping.Create(128 * Page, transparentHugePages: false);
        using var pagemap = Pagemap.OpenSelf();
        Assert.Throws<ArgumentException>(() => pagemap.OrPopulated(mapping.Address + 1, Page, new ulong[2], 0));
        Assert.Throws<ArgumentException>(() => pagemap.OrPopulated(mapping.Address, 100, new ulong[2], 0));
        Assert.Throws<ArgumentException>(() => pagemap.OrPopulated(mapping.Address, mapping.Length, new ulong[2], 1));
        pagemap.Dispose();
        Assert.Throws<ObjectDisposedException>(() => pagemap.OrPopulated(mapping.Address, Page, new ulong[1], 0));
    }

    /// <summary>A kB field (e.g. AnonHugePages) of the /proc/self/smaps entry containing <paramref name="address"/>.</summary>
    internal static long SmapsField(nint address, string field)
    {
        bool inside = false;
        foreach (string line in File.ReadLines("/proc/self/smaps"))
        {
            int dash = line.IndexOf('-', StringComparison.Ordinal);
            int space = line.IndexOf(' ', StringComparison.Ordinal);
            if (dash > 0 && space > dash && ulong.TryParse(line.AsSpan(0, dash), NumberStyles.HexNumber, null, out ulong start)
                && ulong.TryParse(line.AsSpan(dash + 1, space - dash - 1), NumberStyles.HexNumber, null, out ulong end))
            {
                inside = (ulong)address >= start && (ulong)address < end;
                continue;
            }

            if (inside && line.StartsWith(field + ":", StringComparison.Ordinal))
            {
                return long.Parse(line.AsSpan(field.Length + 1).Trim().ToString().Split(' ')[0], CultureInfo.InvariantCulture);
            }
        }

        throw new InvalidOperationException($"no {field} for 0x{address:x} in /proc/self/smaps");
    }
}
