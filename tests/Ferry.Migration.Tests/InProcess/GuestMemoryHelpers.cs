using Ferry.Migration.Guest;

namespace Ferry.Migration.Tests.InProcess;

/// <summary>Memory plumbing the tests do by hand where the engine would do it over the wire.</summary>
internal static unsafe class GuestMemoryHelpers
{
    public static void Copy(IReadOnlyList<MemoryRegion> from, IReadOnlyList<MemoryRegion> to)
    {
        Assert.Equal(from.Count, to.Count);
        for (int i = 0; i < from.Count; i++)
        {
            Assert.Equal(from[i].Size, to[i].Size);
            Buffer.MemoryCopy((void*)from[i].HostAddress, (void*)to[i].HostAddress, (long)to[i].Size, (long)from[i].Size);
        }
    }

    /// <summary>A copy of every page, in global page order.</summary>
    public static byte[][] Snapshot(IReadOnlyList<MemoryRegion> regions)
    {
        var pages = new List<byte[]>();
        foreach (var r in regions)
        {
            for (ulong p = 0; p < r.Pages; p++)
            {
                pages.Add(new ReadOnlySpan<byte>((void*)r.PageAddress(p), MemoryRegion.PageSize).ToArray());
            }
        }

        return [.. pages];
    }

    /// <summary>Host address of global page <paramref name="page"/>.</summary>
    public static nint PageAddress(IReadOnlyList<MemoryRegion> regions, ulong page)
    {
        foreach (var r in regions)
        {
            if (page < r.Pages)
            {
                return r.PageAddress(page);
            }

            page -= r.Pages;
        }

        throw new ArgumentOutOfRangeException(nameof(page));
    }

    /// <summary>The sequence number the workload keeps in word 0 of every page.</summary>
    public static ulong Seq(IReadOnlyList<MemoryRegion> regions, ulong page) => *(ulong*)PageAddress(regions, page);

    /// <summary>Wait (bounded) until <paramref name="condition"/> holds; false on timeout.</summary>
    public static bool WaitUntil(Func<bool> condition, int timeoutMs = 5000)
    {
        var deadline = Environment.TickCount64 + timeoutMs;
        while (!condition())
        {
            if (Environment.TickCount64 > deadline)
            {
                return false;
            }

            Thread.Sleep(2);
        }

        return true;
    }
}
