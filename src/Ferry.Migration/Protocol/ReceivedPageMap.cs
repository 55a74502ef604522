using Ferry.Linux;
using Ferry.Migration.Guest;
using Ferry.Migration.Memory;

namespace Ferry.Migration.Protocol;

/// <summary>
/// The destination's record of which guest pages hold received data (1 bit per page, per region), so a Zero run
/// costs nothing over pages that never received data: fresh target memory is zero by contract
/// (<see cref="IMigrationTarget.Regions"/>), and reading it to check would fault it in (~3 s per GiB on this host,
/// where even a read fault allocates a page). Only pages that did receive data are zeroed, and their bits cleared.
/// </summary>
/// <remarks>
/// <para><b>Threading</b>: one map per destination guest, shared by every page channel's reader. A page belongs to
/// one channel (the source's sharding), but bitmap words could be shared by two channels at a region's or chunk's
/// edge, so every change of a word is an <see cref="Interlocked"/> Or/And; reads of bits a channel owns need no
/// ordering with other channels.</para>
/// <para><b>Memory kind</b>: long runs are dropped with <c>MADV_DONTNEED</c>, which zeroes only anonymous private
/// memory (shared or file-backed memory would read back its old contents, and the call still succeeds); a
/// <see cref="MemoryRegion.FileBacked"/> region is dropped with <c>MADV_REMOVE</c> instead, which punches the pages out
/// of the file. If the kernel refuses either, the pages are cleared by writing.</para>
/// </remarks>
public sealed class ReceivedPageMap
{
    /// <summary>
    /// Runs of held pages at least this long are dropped with <c>MADV_DONTNEED</c> (one syscall, and the RAM is freed);
    /// shorter ones are cleared with memset. 64 pages = 256 KiB: clearing that costs ~15 µs of memory bandwidth,
    /// several times the syscall and TLB flush, while below it a re-fault of a dropped page that receives data again
    /// (~3 µs per 4 KiB first touch here) would eat the saving.
    /// </summary>
    public const int DropThresholdPages = 64;

    // Per region: bit p set = page p holds data received on some channel.
    private readonly DirtyBitmap[] _held;
    // Per region: bit c set = 2 MiB chunk c (pages c*512 ..) was advised MADV_NOHUGEPAGE here.
    private readonly DirtyBitmap[] _split;
    private long _pagesCleared;
    private long _pagesDropped;

    /// <param name="regions">The destination guest's memory.</param>
    /// <param name="hugePagesAdvised">Whether that memory is advised transparent huge pages
    /// (<see cref="IMigrationTarget.TransparentHugePages"/>); only then are windows switched to 4 KiB pages by
    /// <see cref="PreferSmallPagesInFreshWindows"/>, and so only then can they be collapsed back.</param>
    public ReceivedPageMap(IReadOnlyList<MemoryRegion> regions, bool hugePagesAdvised = false)
    {
        ArgumentNullException.ThrowIfNull(regions);
        HugePagesAdvised = hugePagesAdvised;
        _held = new DirtyBitmap[regions.Count];
        _split = new DirtyBitmap[regions.Count];
        for (int r = 0; r < _held.Length; r++)
        {
            _held[r] = new DirtyBitmap(regions[r].Pages);
            _split[r] = new DirtyBitmap((regions[r].Pages + ChunkPages - 1) / ChunkPages);
        }
    }

    /// <summary>Pages zeroed by writing, over all Zero runs (for tests and statistics).</summary>
    public long PagesCleared => Interlocked.Read(ref _pagesCleared);

    /// <summary>Pages zeroed by <c>MADV_DONTNEED</c>, over all Zero runs.</summary>
    public long PagesDropped => Interlocked.Read(ref _pagesDropped);

    /// <summary>Whether page <paramref name="page"/> of region <paramref name="region"/> holds received data.</summary>
    public bool HoldsData(int region, ulong page) => _held[region].Test(page);

    /// <summary>
    /// How many pages of [first, first + count) hold received data: a snapshot, which may miss changes the page
    /// channels make while it counts (good enough for a hint, not for deciding what a page contains).
    /// </summary>
    public ulong HeldCount(int region, ulong first, ulong count) => _held[region].Count(first, first + count);

    /// <summary>Whether any page of [first, first + count) holds received data.</summary>
    public bool AnyHeld(int region, ulong first, ulong count)
    {
        foreach (var _ in _held[region].Runs(first, first + count)) return true;
        return false;
    }

    /// <summary>
    /// Normal runs shorter than this (pages) count as sparse: a huge page costs as much to fault in as ~300 4 KiB
    /// pages here (3.7 ms against 12 µs), and a run of fewer than 64 pages rarely starts a window that fills up.
    /// </summary>
    public const int SparseRunPages = 64;

    /// <summary>Whether the memory is advised transparent huge pages (see the constructor).</summary>
    public bool HugePagesAdvised { get; }

    /// <summary>Pages per chunk of <see cref="WasSplit"/>: 2 MiB, the x86-64 huge page.</summary>
    public const int ChunkPages = 1 << MigrationProtocol.ChunkShift;

    /// <summary>
    /// Whether <see cref="PreferSmallPagesInFreshWindows"/> switched 2 MiB chunk <paramref name="chunk"/> (pages
    /// chunk × 512 ..) of region <paramref name="region"/> to 4 KiB pages; meaningful when the region's host address
    /// is 2 MiB aligned (as transparent-huge-page guest memory is), where chunks and windows coincide.
    /// </summary>
    public bool WasSplit(int region, ulong chunk) => _split[region].Test(chunk);

    /// <summary>Windows switched to 4 KiB faults by <see cref="PreferSmallPagesInFreshWindows"/>.</summary>
    public long WindowsSplit => Interlocked.Read(ref _windowsSplit);
    private long _windowsSplit;

    /// <summary>
    /// Before data lands in pages [first, first + count) while the source is paused: every 2 MiB window of the run
    /// that holds no data yet is advised <c>MADV_NOHUGEPAGE</c>, so the few pages arriving there fault in 4 KiB at a
    /// time instead of as a whole huge page. Here a huge-page first touch costs ~3.7 ms (1.9 s per GiB) against
    /// ~12 µs for a 4 KiB page (3.1 s per GiB, ROUND2.md), and a final pass typically brings 1-3 pages into each
    /// fresh window: 1 GiB hotset runs spent 80-330 ms of downtime landing final pages that way. Dense data keeps
    /// huge pages (1.7x cheaper per byte). Failures are ignored: the hint only changes fault size.
    /// </summary>
    public void PreferSmallPagesInFreshWindows(int region, in MemoryRegion memory, ulong first, ulong count)
    {
        // Memory not advised huge pages faults in 4 KiB pages anyway, and its owner's choice is not ours to change.
        if (!HugePagesAdvised) return;
        const nint Window = 2 << 20;
        nint start = memory.PageAddress(first) & ~(Window - 1);
        nint end = memory.PageAddress(first + count - 1) + MemoryRegion.PageSize;
        for (nint w = start; w < end; w += Window)
        {
            // The window, clipped to the region, as pages of the region.
            ulong lo = (ulong)Math.Max(0, (long)(w - memory.HostAddress)) >> MemoryRegion.PageShift;
            ulong hi = Math.Min(memory.Pages, (ulong)((long)(w + Window - memory.HostAddress)) >> MemoryRegion.PageShift);
            if (AnyHeld(region, lo, hi - lo)) continue;
            if (Libc.madvise(memory.PageAddress(lo), (nuint)((hi - lo) << MemoryRegion.PageShift), Libc.MADV_NOHUGEPAGE) == 0)
            {
                Interlocked.Increment(ref _windowsSplit);
                Apply(_split[region].Words, lo / ChunkPages, (lo / ChunkPages) + 1, set: true);
            }
        }
    }

    /// <summary>Record that pages [first, first + count) of the region now hold data.</summary>
    public void MarkHeld(int region, ulong first, ulong count) => Apply(_held[region].Words, first, first + count, set: true);

    /// <summary>
    /// Make pages [first, first + count) of <paramref name="memory"/> (region <paramref name="region"/>) read as zero,
    /// touching only those that hold data.
    /// </summary>
    public void Zero(int region, in MemoryRegion memory, ulong first, ulong count)
    {
        var held = _held[region];
        foreach (var run in held.Runs(first, first + count))
        {
            nint address = memory.PageAddress(run.Start);
            nuint bytes = (nuint)(run.Length << MemoryRegion.PageShift);
            if (run.Length >= DropThresholdPages && Libc.madvise(address, bytes, memory.FileBacked ? Libc.MADV_REMOVE : Libc.MADV_DONTNEED) == 0)
            {
                Interlocked.Add(ref _pagesDropped, (long)run.Length);
            }
            else
            {
                unsafe
                {
                    // SAFETY: the run was validated inside the region's host mapping by the batch parser.
                    System.Runtime.InteropServices.NativeMemory.Clear((void*)address, bytes);
                }
                Interlocked.Add(ref _pagesCleared, (long)run.Length);
            }
        }
        Apply(held.Words, first, first + count, set: false);
    }

    private static void Apply(Span<ulong> words, ulong start, ulong end, bool set)
    {
        if (start >= end) return;
        int first = (int)(start >> 6);
        int last = (int)((end - 1) >> 6);
        for (int w = first; w <= last; w++)
        {
            ulong mask = ulong.MaxValue;
            if (w == first) mask &= ulong.MaxValue << (int)(start & 63);
            if (w == last) mask &= ulong.MaxValue >> (int)(63 - ((end - 1) & 63));
            if (set)
            {
                // Skip the atomic when already set: a re-sent page (every later round) changes nothing.
                if ((Volatile.Read(ref words[w]) & mask) != mask) Interlocked.Or(ref words[w], mask);
            }
            else if ((Volatile.Read(ref words[w]) & mask) != 0)
            {
                Interlocked.And(ref words[w], ~mask);
            }
        }
    }
}
