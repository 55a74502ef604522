using System.IO.Hashing;
using System.Runtime.InteropServices;
using Ferry.Linux;
using Ferry.Migration.Guest;
using Ferry.Migration.Memory;

namespace Ferry.Migration.Postcopy;

/// <summary>
/// Post-copy's verification digest: XxHash128 over the layout and one XxHash3-64 per page, in page order. A post-copy
/// destination cannot digest its memory in one pass as pre-copy does: its guest runs (and writes) while pages are
/// still arriving. So it hashes each page as it installs it, before the guest can touch it, and the pages it already
/// held before the guest started; the source, paused for good, hashes all of its memory. Equal digests mean every page
/// reached the guest exactly as the source left it.
/// </summary>
public sealed class PageHashDigest
{
    private static readonly ulong ZeroPageHash = XxHash3.HashToUInt64(new byte[MemoryRegion.PageSize]);
    // A page nothing has recorded yet. A page whose hash happens to be 0 (one in 2^64) is only hashed again.
    private const ulong Unrecorded = 0;
    private readonly ulong[] _hashes;
    private readonly IReadOnlyList<MemoryRegion> _regions;
    private readonly ulong[] _first;

    public PageHashDigest(IReadOnlyList<MemoryRegion> regions)
    {
        ArgumentNullException.ThrowIfNull(regions);
        _regions = regions;
        _first = new ulong[regions.Count];
        ulong total = 0;
        for (int r = 0; r < regions.Count; r++)
        {
            _first[r] = total;
            total += regions[r].Pages;
        }
        _hashes = new ulong[total];
        // Built ahead of the switchover: backed now, not on the first installs (see PostcopyIncoming's constructor).
        Prefault.Array<ulong>(_hashes);
    }

    /// <summary>Record page <paramref name="page"/> of region <paramref name="region"/> from its 4096 bytes at <paramref name="data"/>.</summary>
    public unsafe void Set(int region, ulong page, nint data) =>
        // SAFETY: the caller passes one page of readable memory.
        _hashes[_first[region] + page] = XxHash3.HashToUInt64(new ReadOnlySpan<byte>((void*)data, MemoryRegion.PageSize));

    /// <summary>
    /// Record the pages of a batch's <paramref name="runs"/> in region <paramref name="regionIndex"/>: Zero runs as
    /// zeros, the others from <paramref name="region"/>'s memory (where the batch's data is, on either side), or from
    /// <paramref name="staged"/>, where the source read them one after another in run order (see
    /// <see cref="Protocol.PageBatchWriter.WriteBatch"/>).
    /// </summary>
    public void Record(int regionIndex, in MemoryRegion region, ReadOnlySpan<Protocol.PageRun> runs, nint staged = 0)
    {
        foreach (ref readonly var run in runs)
        {
            if (run.Encoding == Protocol.PageEncoding.Zero)
            {
                SetZero(regionIndex, run.FirstPage, run.Count);
                continue;
            }
            for (ulong p = run.FirstPage; p < run.FirstPage + run.Count; p++)
            {
                if (staged == 0) Set(regionIndex, p, region.PageAddress(p));
                else
                {
                    Set(regionIndex, p, staged);
                    staged += MemoryRegion.PageSize;
                }
            }
        }
    }

    /// <summary>Record pages [first, first + count) of region <paramref name="region"/> as zeros.</summary>
    public void SetZero(int region, ulong first, ulong count) =>
        _hashes.AsSpan((int)(_first[region] + first), (int)count).Fill(ZeroPageHash);

    /// <summary>
    /// Hash, from memory, every page of every region whose bit is clear in <paramref name="skip"/> (per region; null =
    /// none skipped); with <paramref name="onlyUnrecorded"/>, only those no <see cref="Set"/> or <see cref="SetZero"/>
    /// recorded yet (a hybrid destination records pre-copy pages as they land, see PageBatchReader.LandedDigest, so
    /// that nothing is left to read while the guest waits to start). Pages the kernel has nothing behind (private
    /// anonymous memory never written) count as zeros without being read, which would fault them in (or, on a
    /// post-copy destination, ask the source for them).
    /// </summary>
    public void HashMemory(IReadOnlyList<DirtyBitmap>? skip = null, bool onlyUnrecorded = false)
    {
        // Recorded already, every page: not even the page table is read (2 MiB of /proc/self/pagemap per GiB).
        if (onlyUnrecorded && !AnyUnrecorded(skip)) return;
        Pagemap? pagemap = null;
        try
        {
            pagemap = Pagemap.OpenSelf();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // No page table to ask: read every page.
        }
        using (pagemap)
        {
            for (int r = 0; r < _regions.Count; r++)
            {
                var region = _regions[r];
                if (region.Reader is not null)
                {
                    HashRead(r, region, skip, onlyUnrecorded);
                    continue;
                }
                var populated = new DirtyBitmap(region.Pages);
                if (pagemap is null || region.FileBacked) populated.SetAll();
                else pagemap.OrPopulated(region.HostAddress, region.Size, populated.Words, 0);
                for (ulong p = 0; p < region.Pages; p++)
                {
                    if (!ToHash(r, p, skip, onlyUnrecorded)) continue;
                    if (populated.Test(p)) Set(r, p, region.PageAddress(p));
                    else _hashes[_first[r] + p] = ZeroPageHash;
                }
            }
        }
    }

    // Whether HashMemory hashes page p of region r.
    private bool ToHash(int r, ulong p, IReadOnlyList<DirtyBitmap>? skip, bool onlyUnrecorded) =>
        (skip is null || !skip[r].Test(p)) && (!onlyUnrecorded || _hashes[_first[r] + p] == Unrecorded);

    /// <summary>HashMemory's pages of region <paramref name="r"/>, read through its reader a chunk at a time (chunks with none to hash are not read).</summary>
    private unsafe void HashRead(int r, in MemoryRegion region, IReadOnlyList<DirtyBitmap>? skip, bool onlyUnrecorded)
    {
        byte[]? buffer = null;
        for (ulong first = 0; first < region.Pages; first += MemoryDigest.ReadChunkPages)
        {
            int n = (int)Math.Min(MemoryDigest.ReadChunkPages, region.Pages - first);
            int i = 0;
            while (i < n && !ToHash(r, first + (ulong)i, skip, onlyUnrecorded)) i++;
            if (i == n) continue;
            buffer ??= new byte[MemoryDigest.ReadChunkPages << MemoryRegion.PageShift];
            fixed (byte* data = buffer)
            {
                region.Read(first, n, (nint)data);
                for (; i < n; i++)
                {
                    if (ToHash(r, first + (ulong)i, skip, onlyUnrecorded)) Set(r, first + (ulong)i, (nint)(data + ((nint)i << MemoryRegion.PageShift)));
                }
            }
        }
    }

    private bool AnyUnrecorded(IReadOnlyList<DirtyBitmap>? skip)
    {
        for (int r = 0; r < _regions.Count; r++)
        {
            ulong pages = _regions[r].Pages;
            ReadOnlySpan<ulong> skipped = skip is null ? default : skip[r].Words;
            for (ulong w = 0; w * 64 < pages; w++)
            {
                // The pages of this word that are not skipped, checked one by one (none when all are).
                ulong candidates = skipped.IsEmpty ? ulong.MaxValue : ~skipped[(int)w];
                if (pages - (w * 64) < 64) candidates &= (1UL << (int)(pages - (w * 64))) - 1;
                while (candidates != 0)
                {
                    int bit = System.Numerics.BitOperations.TrailingZeroCount(candidates);
                    candidates &= candidates - 1;
                    if (_hashes[_first[r] + (w * 64) + (ulong)bit] == Unrecorded) return true;
                }
            }
        }
        return false;
    }

    /// <summary>The digest of the layout and every page's hash.</summary>
    public UInt128 Compute()
    {
        var hash = new XxHash128();
        foreach (var region in _regions) MemoryDigest.AppendLayout(hash, region);
        hash.Append(MemoryMarshal.AsBytes(_hashes.AsSpan()));
        return hash.GetCurrentHashAsUInt128();
    }

    /// <summary>The source's side: the digest of all of <paramref name="regions"/> (memory must hold still).</summary>
    public static UInt128 Of(IReadOnlyList<MemoryRegion> regions)
    {
        var digest = new PageHashDigest(regions);
        digest.HashMemory();
        return digest.Compute();
    }
}
