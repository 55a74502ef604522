using Ferry.Linux;
using Ferry.Migration.Guest;
using Ferry.Migration.Memory;
using Ferry.Migration.Protocol;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Postcopy;

/// <summary>
/// The source's urgent channel: pages the destination's guest waits for, sent the moment their request is read, on a
/// connection of their own so they never queue behind the bulk push's megabytes (QEMU's postcopy-preempt measured
/// 4 KiB fault latency falling from ~10.7 to ~0.6 ms that way). Each request also tells the <see cref="Prepager"/> where
/// the guest works now.
/// </summary>
/// <remarks>Called on the return path's thread, which read the request: no hand-over to another thread, whose wake-up
/// on a busy host would cost a scheduler slice per fault. Nothing is allocated per request.</remarks>
internal sealed class UrgentSender
{
    private readonly PageBatchWriter _writer;
    private readonly IReadOnlyList<MemoryRegion> _regions;
    private readonly Prepager _prepager;
    private readonly PageRun[] _runs = new PageRun[MigrationProtocol.MaxRunsPerBatch];
    private readonly DirtyRun[] _taken = new DirtyRun[MigrationProtocol.MaxRunsPerBatch];
    // One writer at a time: the return path's faults and the system pages' push (PushSystem).
    private readonly Lock _lock = new();
    private long _pages;
    private long _bytes;

    /// <summary>Pages of a system batch at most: the lock a fault's page may wait for is held for one such batch (256
    /// KiB, ~0.1 ms on loopback).</summary>
    public const int SystemBatchPages = 64;

    public UrgentSender(IMigrationChannel channel, IReadOnlyList<MemoryRegion> regions, Prepager prepager)
    {
        _writer = new PageBatchWriter(channel);
        _regions = regions;
        _prepager = prepager;
    }

    /// <summary>Pages sent on the urgent channel.</summary>
    public long Pages => Interlocked.Read(ref _pages);

    /// <summary>Wire bytes sent.</summary>
    public long BytesSent => Interlocked.Read(ref _bytes);

    /// <summary>
    /// Send the guest's system pages (<see cref="Prepager.TakeSystem"/>) on this channel, now, on the calling thread:
    /// the moment the guest runs at the destination its kernel needs them, and the bulk push's threads (niced below
    /// the guest then) were measured to take their first pages 7-8 ms after the guest started (by then the kernel had
    /// faulted on some 30 of them, one round trip each, and run little else). The switchover calls it right after
    /// Complete, so they land while the destination loads the state, and stops between batches once
    /// <paramref name="stop"/> says so (Ready came: Commit must not wait), sending the rest once the guest runs.
    /// Faults are served between batches. Returns the pages sent. <paramref name="steady"/>: the steady pages too,
    /// after the system ones (<see cref="Prepager.TakeSystem"/>).
    /// </summary>
    public long PushSystem(Func<bool>? stop = null, bool steady = true)
    {
        long total = 0;
        while (stop?.Invoke() != true)
        {
            lock (_lock)
            {
                int n = _prepager.TakeSystem(_taken, SystemBatchPages, out int r, steady);
                if (n == 0) break;
                var region = _regions[r];
                ulong bitBase = _prepager.RegionFirst(r);
                int runs = 0;
                long pages = 0;
                for (int i = 0; i < n; i++)
                {
                    for (ulong p = _taken[i].Start - bitBase; p < _taken[i].End - bitBase; p++) Append(ref runs, region, p);
                    pages += (long)_taken[i].Length;
                }
                Write(r, region, 0, runs);
                total += pages;
            }
        }
        if (TraceLog.Enabled) TraceLog.Mark($"source: {total} system pages pushed on the urgent channel");
        return total;
    }

    // Add page p of the region to the runs, extending the last one when p continues it with the same encoding.
    private void Append(ref int runs, in MemoryRegion region, ulong p)
    {
        var encoding = ZeroPage.IsZero(region.PageAddress(p)) ? PageEncoding.Zero : PageEncoding.Normal;
        if (runs > 0 && _runs[runs - 1].Encoding == encoding && _runs[runs - 1].FirstPage + _runs[runs - 1].Count == p
            && _runs[runs - 1].Count < MigrationProtocol.MaxNormalPagesPerBatch)
            _runs[runs - 1] = _runs[runs - 1] with { Count = _runs[runs - 1].Count + 1 };
        else
            _runs[runs++] = new PageRun(p, 1, encoding);
    }

    /// <summary>Send pages [first, first + count) of region <paramref name="r"/> (a validated request) now: the first (the
    /// one faulted on) in a batch of its own, then the rest.</summary>
    public void Send(int r, ulong first, uint count)
    {
        if (TraceLog.Enabled) TraceLog.Mark($"source: serving page {first} (+{count}) of region {r}");
        var region = _regions[r];
        ulong bitBase = _prepager.RegionFirst(r);
        // Counted before they go, as the push counts its pages (PageSender.Push).
        Interlocked.Add(ref _pages, count);
        lock (_lock)
        {
            int runs = 0;
            for (ulong p = first; p < first + count; p++)
            {
                // Taken from the push; a page it sent already goes again (the destination counts what arrives twice).
                _prepager.Claim(bitBase + p);
                Append(ref runs, region, p);
                if (p == first && count > 1)
                {
                    // The page a guest thread waits for goes alone, ahead of the rest of the run asked for with it.
                    Write(r, region, 0, runs);
                    runs = 0;
                }
            }
            // A request is at most 512 pages; a batch carries at most 256 of data: split when needed.
            int from = 0, normal = 0;
            for (int i = 0; i < runs; i++)
            {
                int add = _runs[i].Encoding == PageEncoding.Normal ? (int)_runs[i].Count : 0;
                if (normal + add > MigrationProtocol.MaxNormalPagesPerBatch)
                {
                    Write(r, region, from, i);
                    from = i;
                    normal = 0;
                }
                normal += add;
            }
            Write(r, region, from, runs);
        }
        _prepager.OnFault(bitBase + first);
    }

    private void Write(int r, in MemoryRegion region, int from, int to)
    {
        if (to <= from) return;
        long bytes = _writer.WriteBatch(r, region, _runs.AsSpan(from, to - from), PageBatchFlags.Postcopy | PageBatchFlags.DataChecksummed);
        if (TraceLog.Enabled) TraceLog.Mark($"source: sent page {_runs[from].FirstPage}");
        Interlocked.Add(ref _bytes, bytes);
    }
}
