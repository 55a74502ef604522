using System.Runtime.InteropServices;
using Ferry.Linux;
using Ferry.Migration.Guest;
using Ferry.Migration.Protocol;

namespace Ferry.Migration.Precopy;

/// <summary>
/// The destination's background mapping, during pre-copy, of every 2 MiB chunk of guest memory the guest evidently
/// uses (at least <see cref="MinHeldPages"/> of its 512 pages hold received data), so that the pages the stop-and-copy
/// pass brings there land in memory that is mapped, and mapped as a huge page where this side had split it.
/// </summary>
/// <remarks>
/// <para><b>Why</b>: the final pass lands the pages dirtied since the last round, and a guest writes mostly where it
/// wrote before: into chunks that hold data already, but often into pages of them that were still zero when pre-copy
/// sent them (as Zero runs, which the destination never touches: <see cref="ReceivedPageMap"/>). Worse, a chunk
/// whose first data was sparse was switched to 4 KiB pages (<see cref="ReceivedPageMap.PreferSmallPagesInFreshWindows"/>),
/// and on the PVM host where this was measured, receiving into 4 KiB-mapped memory costs 25-40 µs per page even when
/// the page is present, against 4-6 µs into a huge page (tools/fault-cost, one page in eight over 32 MiB). The 1 GiB
/// hotset benchmark spent 20-45 ms of its 50 ms limit landing ~1,500 final pages so; with the hot chunks collapsed
/// back into huge pages here, the hot pages of the final pass cost ~2.5 µs each.</para>
/// <para><b>How</b>: a chunk this side split is made a huge page again with <c>MADV_HUGEPAGE</c> +
/// <c>MADV_COLLAPSE</c> (Linux 6.1+; contents kept; 0.3-6 ms per chunk here; EAGAIN when a page is busy, retried on
/// the next scans). Any other chunk has its holes faulted in with <c>MADV_POPULATE_WRITE</c> (Linux 5.14+), which is
/// what helps on hardware, where a fault is cheap but still a fault inside the downtime.</para>
/// <para><b>Cost</b>: memory the guest was using on the source anyway (with transparent huge pages the source backs
/// whole 2 MiB chunks), at most 8× the received data in chunks at the threshold; chunks the guest barely touched
/// are left alone, as is all memory the guest never wrote (an idle 4 GiB guest costs nothing). The 1 GiB hotset
/// benchmark maps 52 chunks (104 MiB) this way.</para>
/// <para><b>Safety</b>: neither call changes what a page contains (a collapse copies the pages under the kernel's
/// locks, as khugepaged does in any running process), so both may run while receive threads write the same chunk:
/// a page either holds received data or reads as zero, before and after. It stops on <see cref="RequestStop"/>
/// within one 256 KiB piece or one collapse, so it does not compete with the final pass; the owner must
/// <see cref="Dispose"/> it (which joins the thread) before the guest memory is unmapped.</para>
/// </remarks>
public sealed class ChunkPrefaulter : IDisposable
{
    /// <summary>Pages per chunk: 2 MiB, the huge page size and the page channels' unit of sharding.</summary>
    public const int ChunkPages = ReceivedPageMap.ChunkPages;

    /// <summary>Default threshold: an eighth of the chunk (256 KiB of data).</summary>
    public const int DefaultMinHeldPages = 64;

    // Populate granularity: short enough that a stop request waits at most ~1 ms (64 × ~14 µs).
    private const int PiecePages = 64;

    private readonly IReadOnlyList<MemoryRegion> _regions;
    private readonly ReceivedPageMap _received;
    // Per region and chunk: Done, or how many collapses failed with EAGAIN so far.
    private readonly byte[][] _state;
    private const byte Done = byte.MaxValue;
    // EAGAIN from MADV_COLLAPSE (a page of the chunk was busy: being written, or on its way to an LRU list) is
    // transient: the chunk is tried again on the next scans, then faulted in 4 KiB pages like others.
    private const byte MaxCollapseTries = 4;
    // Per region and chunk: its held count at the previous scan. A chunk is taken only once that count held still
    // for a scan: one whose count moves is being streamed by a receiver right now (round 0 of a populated guest),
    // which faults its pages in as it goes; populating ahead of it would only compete for the CPU and the page tables.
    private readonly ushort[][] _lastHeld;
#pragma warning disable CA2213 // see Dispose
    private readonly ManualResetEventSlim _stop = new();
#pragma warning restore CA2213
    private readonly TimeSpan _scanInterval;
    private Thread? _thread;
    private long _pagesPopulated;
    private int _chunksPrefaulted;
    private int _chunksCollapsed;
    private int _disposed;

    /// <param name="regions">The destination guest's memory: anonymous private mappings, zero where never written.</param>
    /// <param name="received">The map the page channels' readers keep of which pages hold data.</param>
    /// <param name="minHeldPages">A chunk is faulted in once at least this many of its pages hold data (1..512).</param>
    /// <param name="scanInterval">Pause between scans of the map; null: 5 ms.</param>
    public ChunkPrefaulter(IReadOnlyList<MemoryRegion> regions, ReceivedPageMap received, int minHeldPages = DefaultMinHeldPages, TimeSpan? scanInterval = null)
    {
        ArgumentNullException.ThrowIfNull(regions);
        ArgumentNullException.ThrowIfNull(received);
        ArgumentOutOfRangeException.ThrowIfLessThan(minHeldPages, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(minHeldPages, ChunkPages);
        _regions = regions;
        _received = received;
        MinHeldPages = minHeldPages;
        _scanInterval = scanInterval ?? TimeSpan.FromMilliseconds(5);
        _state = new byte[regions.Count][];
        _lastHeld = new ushort[regions.Count][];
        for (int r = 0; r < regions.Count; r++)
        {
            int chunks = (int)((regions[r].Pages + ChunkPages - 1) / ChunkPages);
            _state[r] = new byte[chunks];
            _lastHeld[r] = new ushort[chunks];
        }
    }

    /// <summary>Held pages that make a chunk worth faulting in.</summary>
    public int MinHeldPages { get; }

    /// <summary>Chunks faulted in so far.</summary>
    public int ChunksPrefaulted => Volatile.Read(ref _chunksPrefaulted);

    /// <summary>Pages this prefaulter asked the kernel to fault in (holes and held pages alike, less fully held pieces).</summary>
    public long PagesPopulated => Interlocked.Read(ref _pagesPopulated);

    /// <summary>
    /// False once the kernel refused <c>MADV_POPULATE_WRITE</c> (EINVAL before Linux 5.14, ENOMEM when short of
    /// memory): nothing more is tried.
    /// </summary>
    public bool Supported { get; private set; } = true;

    /// <summary>False once the kernel refused <c>MADV_COLLAPSE</c> as unknown (before Linux 6.1): split chunks are then populated like others.</summary>
    public bool CollapseSupported { get; private set; } = true;

    /// <summary>Chunks made huge pages again with <c>MADV_COLLAPSE</c>.</summary>
    public int ChunksCollapsed => Volatile.Read(ref _chunksCollapsed);

    /// <summary>The errno of the refusal that turned <see cref="Supported"/> off, or 0.</summary>
    public int LastError { get; private set; }

    /// <summary>Start the background thread (once).</summary>
    public void Start()
    {
        if (_thread is not null) throw new InvalidOperationException("already started");
        _thread = new Thread(Loop) { IsBackground = true, Name = "ferry-prefault" };
        _thread.Start();
    }

    /// <summary>Ask the thread to stop; returns at once (any thread, any number of times).</summary>
    public void RequestStop() => _stop.Set();

    /// <summary>Stop and wait for the thread to leave guest memory.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _stop.Set();
        _thread?.Join();
        // _stop is not disposed: a receive thread may still call RequestStop, and a slim event that was never waited
        // on through its WaitHandle holds no OS resource.
    }

    /// <summary>
    /// One scan: map every chunk not done yet that holds at least <see cref="MinHeldPages"/> pages of data, and held
    /// as many at the previous scan, unless a stop was requested. Returns the chunks mapped. The thread calls this in
    /// a loop; tests call it directly.
    /// </summary>
    public int ScanOnce()
    {
        int chunks = 0;
        for (int r = 0; r < _regions.Count && Supported; r++)
        {
            var region = _regions[r];
            // A file mapping (a disk image being copied): populating would allocate every hole of the file, and its
            // page faults are not the anonymous-memory costs this exists to hide.
            if (region.FileBacked) continue;
            var state = _state[r];
            for (int c = 0; c < state.Length; c++)
            {
                if (state[c] == Done) continue;
                if (_stop.IsSet || !Supported) return chunks;
                ulong first = (ulong)c * ChunkPages;
                ulong count = Math.Min(ChunkPages, region.Pages - first);
                ushort held = (ushort)_received.HeldCount(r, first, count);
                ushort last = _lastHeld[r][c];
                _lastHeld[r][c] = held;
                if (held < Math.Min(MinHeldPages, (int)count) || held != last) continue;
                var outcome = Map(r, region, first, count, collapse: state[c] < MaxCollapseTries);
                if (outcome == Outcome.Stopped) return chunks; // stopped inside, or unsupported
                if (outcome == Outcome.Busy)
                {
                    state[c]++;
                    continue;
                }
                state[c] = Done;
                chunks++;
                Interlocked.Increment(ref _chunksPrefaulted);
            }
        }
        return chunks;
    }

    private void Loop()
    {
        while (!_stop.IsSet && Supported)
        {
            ScanOnce();
            _stop.Wait(_scanInterval);
        }
    }

    private enum Outcome
    {
        Mapped,
        Busy,
        Stopped,
    }

    /// <summary>
    /// Map the chunk: collapse it into a huge page when this side split it (and <paramref name="collapse"/>), else
    /// fault its holes in.
    /// </summary>
    private Outcome Map(int r, in MemoryRegion region, ulong first, ulong count, bool collapse)
    {
        nint address = region.PageAddress(first);
        if (collapse && CollapseSupported && count == ChunkPages && (address & ((ChunkPages << MemoryRegion.PageShift) - 1)) == 0
            && _received.WasSplit(r, first / ChunkPages))
        {
            // A chunk the readers switched to 4 KiB pages when its first data was sparse. Faulting its holes in 4 KiB
            // at a time would help little here: receiving into 4 KiB-mapped memory costs 25-40 µs per page on this
            // host against 4-6 µs into a huge page (tools/fault-cost: a socket pair, one page in eight). So make it one
            // huge page again, contents kept: 0.3-6 ms per chunk here, by how much of it was populated.
            const nuint Chunk = ChunkPages << MemoryRegion.PageShift;
            if (Libc.madvise(address, Chunk, Libc.MADV_HUGEPAGE) == 0 && Libc.madvise(address, Chunk, Libc.MADV_COLLAPSE) == 0)
            {
                Interlocked.Increment(ref _chunksCollapsed);
                Interlocked.Add(ref _pagesPopulated, ChunkPages);
                return Outcome.Mapped;
            }
            // EINVAL: a kernel before 6.1. EAGAIN: a page was busy, try again later. Other failures (ENOMEM: no huge
            // page free) are this chunk's: fault its holes in instead, as for any other chunk.
            int err = Marshal.GetLastPInvokeError();
            if (err == Libc.EAGAIN) return Outcome.Busy;
            if (err == Libc.EINVAL) CollapseSupported = false;
        }
        for (ulong p = first; p < first + count; p += PiecePages)
        {
            if (_stop.IsSet) return Outcome.Stopped;
            ulong n = Math.Min(PiecePages, first + count - p);
            if (_received.HeldCount(r, p, n) == n) continue;
            if (Libc.madvise(region.PageAddress(p), (nuint)(n << MemoryRegion.PageShift), Libc.MADV_POPULATE_WRITE) != 0)
            {
                // EINVAL: a kernel without MADV_POPULATE_WRITE; ENOMEM: the host is short of memory; EFAULT, EINTR.
                // Any of them ends the prefaulting: it is an optimisation, and the receive path faults pages in itself
                // (and reports a real shortage of memory with its own error).
                LastError = Marshal.GetLastPInvokeError();
                Supported = false;
                return Outcome.Stopped;
            }
            Interlocked.Add(ref _pagesPopulated, (long)n);
        }
        return Outcome.Mapped;
    }
}
