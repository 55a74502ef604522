using System.IO.Hashing;
using Ferry.Linux;
using Ferry.Migration.Guest;
using Ferry.Migration.Memory;

namespace Ferry.Migration.Precopy;

/// <summary>
/// The verification digest of <see cref="MemoryDigest.Compute"/> — the same value — computed without reading pages the
/// kernel has nothing behind: such private anonymous pages read as zeros, so zeros are hashed in their place. Reading
/// them would fault them in at pause time on both sides (1 GiB: 1.6 s of system time here on a cold host, and the
/// stalls spilled into the downtime steps around it). Which pages are populated comes from the kernel's page table
/// (<see cref="Pagemap"/>), not from the engine's own bookkeeping, so verification stays independent of the engine.
/// </summary>
internal static class VerifyDigest
{
    /// <summary>Zeros hashed in place of unpopulated pages (64 KiB: large enough that a long run costs few calls).</summary>
    private static readonly byte[] Zeros = new byte[64 << 10];

    /// <summary>Digest of <paramref name="regions"/> (private anonymous memory, or files' mappings and regions read through a reader, read whole), equal to <see cref="MemoryDigest.Compute"/>.</summary>
    public static UInt128 Compute(IReadOnlyList<MemoryRegion> regions)
    {
        Pagemap pagemap;
        try
        {
            pagemap = Pagemap.OpenSelf();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return MemoryDigest.Compute(regions); // no page table to ask: read everything
        }
        using (pagemap)
        {
            var hash = new XxHash128();
            foreach (var region in regions)
            {
                MemoryDigest.AppendLayout(hash, region);
                var populated = new DirtyBitmap(region.Pages);
                // A file's mapping has nothing behind a page this process never touched, yet the file may hold data there;
                // a region read through its reader has no mapping here to ask about.
                if (region.FileBacked || region.Reader is not null) populated.SetAll();
                else pagemap.OrPopulated(region.HostAddress, region.Size, populated.Words, 0);
                ulong next = 0;
                foreach (var run in populated.Runs(0, region.Pages))
                {
                    AppendZeros(hash, (run.Start - next) << MemoryRegion.PageShift);
                    MemoryDigest.AppendPages(hash, region, run.Start, run.Length);
                    next = run.End;
                }
                AppendZeros(hash, (region.Pages - next) << MemoryRegion.PageShift);
            }
            return hash.GetCurrentHashAsUInt128();
        }
    }

    private static void AppendZeros(XxHash128 hash, ulong bytes)
    {
        for (; bytes > 0;)
        {
            int n = (int)Math.Min(bytes, (ulong)Zeros.Length);
            hash.Append(Zeros.AsSpan(0, n));
            bytes -= (ulong)n;
        }
    }
}
