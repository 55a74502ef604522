using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Ferry.Linux;
using Ferry.Migration.Guest;
using Ferry.Migration.Memory;
using Ferry.Migration.Protocol;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Precopy;

/// <summary>
/// One page channel's sender thread on the source (as QEMU's multifd send threads). Each pass, it walks its share of
/// the pages to send, classifies each page (zero or not) and sends batches straight from guest memory.
/// </summary>
/// <remarks>
/// <para><b>Sharding</b>: page p of region r belongs to channel ((p &gt;&gt; 9) + r) % N, i.e. 2 MiB chunks dealt
/// round-robin, the region index offsetting the deal so that small regions do not all land on channel 0. A page is
/// therefore always sent on the same channel, every version of it travels in order within one stream, and the
/// destination needs no cross-channel ordering. 2 MiB (512 pages) is the batch's run-table size and a huge page, so
/// a run never needs splitting at a chunk edge within a batch, and a hot 2 MiB area does not pin one channel for long.</para>
/// <para><b>Threading</b>: the migration thread calls <see cref="Start"/> for a pass and waits on the shared countdown;
/// the sender only reads the bitmap (the migration thread does not touch it until every sender signalled).</para>
/// <para><b>First pass</b>: given the guest's populated-page map, pages it never populated go out as Zero runs
/// without being read (reading them would fault them in: ~3 s per GiB here); populated ones get the SIMD zero check.</para>
/// <para><b>Regions read through a reader</b> (a copied disk image, <see cref="MemoryRegion.Reader"/>): their pages
/// are read into a staging area (allocated once, with the sender) and classified and sent from there, so that a read
/// error is an exception that fails the migration, not a fault in a mapping that kills the source.</para>
/// <para><b>Allocation</b>: none per page or per batch; the run table is allocated once.</para>
/// </remarks>
internal sealed class PageSender
{
    /// <summary>log2 of the pages per shard chunk (2 MiB): the protocol's rule.</summary>
    public const int ChunkShift = MigrationProtocol.ChunkShift;

    private readonly int _index;
    private readonly int _channelCount;
    private readonly IMigrationChannel _channel;
    private readonly PageBatchWriter _writer;
    private readonly IReadOnlyList<MemoryRegion> _regions;
    // First bitmap bit of each region (pages of earlier regions).
    private readonly ulong[] _regionFirstBit;
    // Run table of the batch being built, reused for every batch.
    private readonly PageRun[] _runs = new PageRun[MigrationProtocol.MaxRunsPerBatch];
    private readonly Action<Exception, PageSender> _onFailure;
    private readonly CancellationToken _abort;
    private readonly Thread _thread;
    // Signalled by the migration thread when a pass is ready.
    private readonly SemaphoreSlim _go = new(0, 1);

    // The pass: what to send and how. Written by the migration thread before _go is released.
    private DirtyBitmap? _bitmap;
    // Pages that may hold data (the guest's populated map), for the first pass only; null = read every page.
    private DirtyBitmap? _populated;
    private PageBatchFlags _flags;
    private ulong _flushSequence;
    private ulong _marker;
    private CountdownEvent? _done;
    private bool _stop;
    // Post-copy push: the shared order pages are taken in (null: a pre-copy pass over the bitmap), and its runs.
    private Postcopy.Prepager? _prepager;
    private readonly DirtyRun[] _taken = new DirtyRun[MigrationProtocol.MaxRunsPerBatch];

    // Regions read through a reader (MemoryRegion.Reader) are staged here: the batch's Normal pages, one after another
    // in run order (MaxNormalPagesPerBatch of them, 1 MiB); 0 when no region has a reader. Pinned for the sender's life.
    private readonly byte[]? _stagingBuffer;
    private readonly nint _staging;

    // Runs accumulated for the current batch.
    private int _runCount;
    private int _normalInBatch;
    private int _batchRegion = -1;

    public PageSender(int index, int channelCount, IMigrationChannel channel, IReadOnlyList<MemoryRegion> regions,
        Action<Exception, PageSender> onFailure, CancellationToken abort)
    {
        _index = index;
        _channelCount = channelCount;
        _channel = channel;
        _writer = new PageBatchWriter(channel);
        _regions = regions;
        _regionFirstBit = new ulong[regions.Count];
        ulong bit = 0;
        for (int r = 0; r < regions.Count; r++)
        {
            _regionFirstBit[r] = bit;
            bit += regions[r].Pages;
        }
        if (regions.Any(r => r.Reader is not null))
        {
            _stagingBuffer = GC.AllocateUninitializedArray<byte>(MigrationProtocol.MaxNormalPagesPerBatch << MemoryRegion.PageShift, pinned: true);
            unsafe
            {
                // SAFETY: allocated on the pinned object heap, it never moves.
                _staging = (nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_stagingBuffer));
            }
        }
        _onFailure = onFailure;
        _abort = abort;
        _thread = new Thread(Loop) { IsBackground = true, Name = $"ferry-send-{index}" };
    }

    /// <summary>Channel name, for errors.</summary>
    public string Name => _channel.Name;

    /// <summary>Pages sent as data, over all passes. Written by the sender thread; read after a pass ends.</summary>
    public long NormalPages { get; private set; }

    /// <summary>Pages sent as zero runs, over all passes (including <see cref="UnreadZeroPages"/>).</summary>
    public long ZeroPages { get; private set; }

    /// <summary>Of <see cref="ZeroPages"/>, those sent without being read because the guest never populated them.</summary>
    public long UnreadZeroPages { get; private set; }
    private long _unreadInBatch;

    /// <summary>Wire bytes of every batch and flush sent, over all passes (read live for progress).</summary>
    public long BytesSent => Interlocked.Read(ref _bytesSent);
    private long _bytesSent;

    public void StartThread() => _thread.Start();

    /// <summary>
    /// Send every set page of <paramref name="bitmap"/> in this channel's shard with header <paramref name="flags"/>
    /// (FinalPass once the guest is paused; DataChecksummed only with it, when asked), then
    /// Flush(<paramref name="flushSequence"/>) unless it is 0, then Keepalive(<paramref name="marker"/>) unless it is
    /// 0 (the landed-sync marker, MigrationProtocol.cs). A page clear in <paramref name="populated"/>
    /// (same bit layout) is sent as Zero without being read; null reads every page.
    /// </summary>
    public void Start(DirtyBitmap bitmap, PageBatchFlags flags, ulong flushSequence, CountdownEvent done, DirtyBitmap? populated = null, ulong marker = 0)
    {
        _prepager = null;
        _marker = marker;
        _bitmap = bitmap;
        _populated = populated;
        _flags = flags;
        _flushSequence = flushSequence;
        _done = done;
        _go.Release();
    }

    /// <summary>Pages this sender pushed in post-copy.</summary>
    public long PushedPages => Interlocked.Read(ref _pushedPages);
    private long _pushedPages;

    /// <summary>
    /// Post-copy push: take pages from <paramref name="prepager"/> (shared by every sender; any page on any channel, the
    /// source being paused for good) and send each take as one batch flagged Postcopy and DataChecksummed, until none is
    /// left; then Flush(<paramref name="flushSequence"/>). <paramref name="populated"/> (global page bits) as for
    /// <see cref="Start"/>.
    /// </summary>
    public void StartPostcopy(Postcopy.Prepager prepager, ulong flushSequence, CountdownEvent done, DirtyBitmap? populated)
    {
        _prepager = prepager;
        _bitmap = null;
        _populated = populated;
        _flags = PageBatchFlags.Postcopy | PageBatchFlags.DataChecksummed;
        _flushSequence = flushSequence;
        _marker = 0;
        _done = done;
        _go.Release();
    }

    /// <summary>End the thread after the current pass (or at once if idle) and wait for it.</summary>
    public void Stop(TimeSpan timeout)
    {
        _stop = true;
        if (_go.CurrentCount == 0) _go.Release();
        // A sender created but never started (a migration that failed during setup) has nothing to wait for; Join
        // on an unstarted thread throws.
        if ((_thread.ThreadState & ThreadState.Unstarted) != 0) return;
        _thread.Join(timeout);
    }

    private void Loop()
    {
        while (true)
        {
            try
            {
                _go.Wait(_abort);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            if (_stop) return;
            try
            {
                if (_prepager is not null) SendPostcopy();
                else SendPass();
                if (_flushSequence != 0)
                {
                    Interlocked.Add(ref _bytesSent, _writer.WriteFlush(_flushSequence));
                }
                if (_marker != 0 && !_abort.IsCancellationRequested)
                {
                    Interlocked.Add(ref _bytesSent, _writer.WriteKeepalive(_marker));
                }
            }
            catch (Exception e)
            {
                _onFailure(e, this);
            }
            finally
            {
                // Not once stopped: a post-copy resumed over a new connection counts its new senders' passes on the same
                // event, and one signal too many throws (on this thread: the process would go).
                if (!Volatile.Read(ref _stop)) _done!.Signal();
            }
        }
    }

    /// <remarks>
    /// The push runs as a batch thread (SCHED_BATCH), as do the destination's bulk receivers: a normal thread's share
    /// of the CPU, but any thread that wakes (a hart the guest's timer wakes, a writer) preempts it at once. They ran
    /// at nice 10 (a tenth of a normal thread's share) to keep out of the fault path's way, which its own threads'
    /// real-time priority does now; niced, a guest keeping the destination's CPUs busy starved the push (the demo VM at
    /// 1M pages/s: post-copy 17-22 s against 0.27 s; at 20k, 405-512 ms against 251-281 ms). As normal threads, they
    /// held the guest's woken harts off the CPU instead: 6 alternated demo pairs, the guest's largest stall in its
    /// first second median 23.5 ms normal against 12.6 ms batch, faults 382 against 245, harts blocked 183 against
    /// 136 ms (the in-process engine unchanged: faulted share 9.05 against 9.15 %).
    /// </remarks>
    private void SendPostcopy()
    {
        bool batch = Ferry.Linux.Libc.SetCurrentThreadBatch(true);
        try
        {
            Push(_prepager!);
        }
        finally
        {
            if (batch) Ferry.Linux.Libc.SetCurrentThreadBatch(false);
        }
    }

    private void Push(Postcopy.Prepager prepager)
    {
        _runCount = 0;
        _normalInBatch = 0;
        _unreadInBatch = 0;
        _batchRegion = -1;
        while (!_abort.IsCancellationRequested)
        {
            int n = prepager.Take(_taken, MigrationProtocol.MaxNormalPagesPerBatch, out int r);
            if (n == 0) break;
            ulong bitBase = _regionFirstBit[r];
            long pages = 0;
            for (int i = 0; i < n; i++)
            {
                var run = _taken[i];
                if (_populated is null) AddPages(r, run.Start - bitBase, run.Length);
                else AddPagesPopulatedOnly(r, bitBase, run.Start, run.End);
                pages += (long)run.Length;
            }
            // Counted before they go: the destination may have them all and the source read its PostcopyDone (and
            // this count) before this thread is back from the send (a hybrid's 53 pages were reported as 0 pushed).
            Interlocked.Add(ref _pushedPages, pages);
            // One take, one batch: the pages around a fault go out now, not when a batch fills.
            FlushBatch();
            if (TraceLog.Enabled) TraceLog.Mark($"source: pushed {pages} pages in {n} runs from page {_taken[0].Start}");
        }
    }

    private void SendPass()
    {
        var bitmap = _bitmap!;
        _runCount = 0;
        _normalInBatch = 0;
        _unreadInBatch = 0;
        _batchRegion = -1;
        for (int r = 0; r < _regions.Count; r++)
        {
            ulong pages = _regions[r].Pages;
            ulong chunks = (pages + (1UL << ChunkShift) - 1) >> ChunkShift;
            // First chunk c with (c + r) % N == index.
            ulong c = (ulong)(((_index - r) % _channelCount + _channelCount) % _channelCount);
            for (; c < chunks; c += (ulong)_channelCount)
            {
                if (_abort.IsCancellationRequested) return;
                ulong first = c << ChunkShift;
                ulong end = Math.Min(first + (1UL << ChunkShift), pages);
                ulong bitBase = _regionFirstBit[r];
                foreach (var run in bitmap.Runs(bitBase + first, bitBase + end))
                {
                    if (_populated is null) AddPages(r, run.Start - bitBase, run.Length);
                    else AddPagesPopulatedOnly(r, bitBase, run.Start, run.End);
                }
            }
            FlushBatch();
        }
    }

    /// <summary>
    /// Bits [start, end) of region r (first bit <paramref name="bitBase"/>): populated pages are classified as usual;
    /// the gaps between them go out as Zero runs without a single read, since reading untouched memory faults it in
    /// (~3 s per GiB on this host, ROUND2.md) only to find zeros.
    /// </summary>
    private void AddPagesPopulatedOnly(int r, ulong bitBase, ulong start, ulong end)
    {
        ulong next = start;
        foreach (var populated in _populated!.Runs(start, end))
        {
            if (populated.Start > next) AddUnreadZero(r, next - bitBase, populated.Start - next);
            AddPages(r, populated.Start - bitBase, populated.Length);
            next = populated.End;
        }
        if (end > next) AddUnreadZero(r, next - bitBase, end - next);
    }

    /// <summary>Append pages [first, first + count) of region r as one Zero run (extending the last one if adjacent).</summary>
    private void AddUnreadZero(int r, ulong first, ulong count)
    {
        if (_batchRegion != r)
        {
            FlushBatch();
            _batchRegion = r;
        }
        while (count > 0)
        {
            if (_runCount > 0)
            {
                ref var last = ref _runs[_runCount - 1];
                if (last.Encoding == PageEncoding.Zero && last.FirstPage + last.Count == first && last.Count < uint.MaxValue)
                {
                    uint grow = (uint)Math.Min(count, uint.MaxValue - last.Count);
                    last = last with { Count = last.Count + grow };
                    _unreadInBatch += grow;
                    first += grow;
                    count -= grow;
                    continue;
                }
                if (_runCount == _runs.Length) FlushBatch();
            }
            uint n = (uint)Math.Min(count, uint.MaxValue);
            _runs[_runCount++] = new PageRun(first, n, PageEncoding.Zero);
            _unreadInBatch += n;
            first += n;
            count -= n;
        }
    }

    /// <summary>Classify pages [first, first + count) of region r and append them to the batch.</summary>
    private void AddPages(int r, ulong first, ulong count)
    {
        if (_batchRegion != r)
        {
            FlushBatch();
            _batchRegion = r;
        }
        var region = _regions[r];
        if (region.Reader is not null)
        {
            AddReadPages(region, first, count);
            return;
        }
        for (ulong p = first; p < first + count; p++)
        {
            var encoding = ZeroPage.IsZero(region.PageAddress(p)) ? PageEncoding.Zero : PageEncoding.Normal;
            if (encoding == PageEncoding.Normal && _normalInBatch == MigrationProtocol.MaxNormalPagesPerBatch)
                FlushBatch();
            AppendPage(p, encoding);
        }
    }

    /// <summary>
    /// <see cref="AddPages"/> for a region read through its reader: read as many pages as the batch has room for data
    /// into the staging area right after the batch's Normal pages, classify them there, and close up the zero pages'
    /// gaps, so that the batch's data lies one page after another in run order as WriteBatch takes it. A read error
    /// ends the pass (RegionReadException), and with it the migration.
    /// </summary>
    private const int MinReadPages = 32;

    private void AddReadPages(in MemoryRegion region, ulong first, ulong count)
    {
        for (ulong end = first + count; first < end;)
        {
            // Room for this many pages' data in the batch; too little for a read worth its call (pages that read as
            // zeros take none, so on an image of mostly zero blocks the reads would shrink to a page each), and the
            // batch goes first.
            int room = MigrationProtocol.MaxNormalPagesPerBatch - _normalInBatch;
            if (room == 0 || (room < MinReadPages && end - first > (ulong)room)) FlushBatch();
            int n = (int)Math.Min(end - first, (ulong)(MigrationProtocol.MaxNormalPagesPerBatch - _normalInBatch));
            nint read = _staging + ((nint)_normalInBatch << MemoryRegion.PageShift);
            region.Read(first, n, read);
            for (int i = 0; i < n; i++)
            {
                nint page = read + ((nint)i << MemoryRegion.PageShift);
                var encoding = ZeroPage.IsZero(page) ? PageEncoding.Zero : PageEncoding.Normal;
                // A full run table is sent now, not by AppendPage once this page has its place in the data.
                if (_runCount == _runs.Length) FlushBatch();
                // Its place in the batch's data: at or before where it was read, once earlier zero pages or a flush
                // left a gap.
                nint place = _staging + ((nint)_normalInBatch << MemoryRegion.PageShift);
                if (encoding == PageEncoding.Normal && place != page)
                {
                    unsafe
                    {
                        // SAFETY: both pages lie inside the staging buffer, and do not overlap (place is whole pages below).
                        Buffer.MemoryCopy((void*)page, (void*)place, MemoryRegion.PageSize, MemoryRegion.PageSize);
                    }
                }
                AppendPage(first + (ulong)i, encoding);
            }
            first += (ulong)n;
        }
    }

    /// <summary>Append page p to the batch: extend the last run when p continues it with the same encoding.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void AppendPage(ulong p, PageEncoding encoding)
    {
        if (_runCount > 0)
        {
            ref var last = ref _runs[_runCount - 1];
            if (last.Encoding == encoding && last.FirstPage + last.Count == p && last.Count < uint.MaxValue)
            {
                last = last with { Count = last.Count + 1 };
                if (encoding == PageEncoding.Normal) _normalInBatch++;
                return;
            }
            if (_runCount == _runs.Length) FlushBatch();
        }
        _runs[_runCount++] = new PageRun(p, 1, encoding);
        if (encoding == PageEncoding.Normal) _normalInBatch++;
    }

    /// <summary>
    /// Verified pre-copy (VerifyPageHashes): each page's hash is recorded here as it goes out. Read again after the send,
    /// so a page the guest was writing meanwhile may not hash as sent; but that write marked it dirty, so a later pass
    /// (at the latest the final one, with the guest paused) sends it and records it again.
    /// </summary>
    public Postcopy.PageHashDigest? SentDigest { get; set; }

    private void FlushBatch()
    {
        if (_runCount == 0) return;
        var runs = _runs.AsSpan(0, _runCount);
        long normal = 0, zero = 0;
        foreach (ref readonly var run in runs)
        {
            if (run.Encoding == PageEncoding.Normal) normal += run.Count;
            else zero += run.Count;
        }
        var region = _regions[_batchRegion];
        nint staged = region.Reader is null ? 0 : _staging;
        long bytes = _writer.WriteBatch(_batchRegion, region, runs, _flags, staged);
        SentDigest?.Record(_batchRegion, region, runs, staged);
        Interlocked.Add(ref _bytesSent, bytes);
        NormalPages += normal;
        ZeroPages += zero;
        UnreadZeroPages += _unreadInBatch;
        _unreadInBatch = 0;
        _runCount = 0;
        _normalInBatch = 0;
    }
}
