using System.Buffers.Binary;
using System.IO.Hashing;
using System.Runtime.InteropServices;
using Ferry.Linux;
using Ferry.Migration.Guest;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Protocol;

/// <summary>
/// Reads one page channel on the destination, receiving page data straight into guest memory: the header and run
/// table are parsed and validated into a reusable descriptor array, then each Normal run is received with
/// <see cref="IMigrationChannel.ReceiveExactly"/> into the guest pages it names, each Zero run is zeroed (only where a
/// page holds received data, with a <see cref="ReceivedPageMap"/>), and finally
/// the trailer is checked (over the data too, hashed incrementally from guest memory, when DataChecksummed is set).
/// One reader per channel, used by one thread; it allocates nothing after construction.
/// </summary>
/// <remarks>
/// Data lands in guest memory before the trailer is verified. A bad trailer throws; the engine then fails the
/// migration and discards the destination guest, so unverified memory never runs.
/// </remarks>
public sealed class PageBatchReader
{
    private readonly IMigrationChannel _channel;
    private readonly IReadOnlyList<MemoryRegion> _regions;
    // Record header + batch header + run table (8 + 8 + 512 * 16 bytes) + trailer.
    private readonly byte[] _table = new byte[MigrationProtocol.HeaderSize + PageBatchCodec.TableSize(MigrationProtocol.MaxRunsPerBatch) + MigrationProtocol.TrailerSize];
    // Decoded runs of the last batch.
    private readonly PageRun[] _runs = new PageRun[MigrationProtocol.MaxRunsPerBatch];
    private int _runCount;
    // Which pages hold received data (shared by every channel of one guest), or null: memory content unknown.
    private readonly ReceivedPageMap? _received;

    /// <summary>
    /// A reader over memory of unknown content: every Zero run is written with zeros. The engine uses the overload
    /// with a <see cref="ReceivedPageMap"/>, which leaves pages that never received data untouched.
    /// </summary>
    /// <param name="channel">The page channel.</param>
    /// <param name="regions">The destination guest's memory (validated layout from the handshake).</param>
    public PageBatchReader(IMigrationChannel channel, IReadOnlyList<MemoryRegion> regions)
        : this(channel, regions, null)
    {
    }

    /// <param name="channel">The page channel.</param>
    /// <param name="regions">The destination guest's memory (validated layout from the handshake), zero-filled when
    /// the first reader was made and written since only by readers sharing <paramref name="received"/>.</param>
    /// <param name="received">The map shared by every page channel of this guest; null for memory of unknown content.</param>
    public PageBatchReader(IMigrationChannel channel, IReadOnlyList<MemoryRegion> regions, ReceivedPageMap? received)
    {
        ArgumentNullException.ThrowIfNull(channel);
        ArgumentNullException.ThrowIfNull(regions);
        _channel = channel;
        _regions = regions;
        _received = received;
    }

    /// <summary>
    /// Whether a Normal run into pages that never received data is faulted in with one
    /// <c>madvise(MADV_POPULATE_WRITE)</c> before the data is received into it, instead of page by page inside the
    /// receive copy (needs a <see cref="ReceivedPageMap"/>; turns itself off on kernels before 5.14). Measured here
    /// receiving 1 GiB of random pages over loopback TCP (2 channels, load average 5-6): with 4 KiB pages it halves
    /// the time (4.8-5.5 s without, 2.2-2.7 s with); with transparent huge pages it doubles it (0.78-0.82 s without,
    /// 1.8-3.0 s with), since one fault already maps 2 MiB. Hence off by default: use it for 4 KiB-page targets.
    /// </summary>
    public bool PopulateFreshRuns { get; set; }

    /// <summary>
    /// When set, every run must lie within one 2 MiB chunk that this channel owns: page p of region r belongs to
    /// channel ((p &gt;&gt; 9) + r) % Count (MigrationProtocol.cs). The destination relies on that rule for per-page
    /// ordering (a page's versions all travel on one stream); a source breaking it could have two receive threads
    /// write one page at once, so it is a protocol error, not trusted.
    /// </summary>
    public (int Index, int Count)? Shard { get; init; }

    /// <summary>
    /// Whether the last batch read had FinalPass set, which a source sets in the stop-and-copy pass: the guest is
    /// paused from here on, so background work on this side should get out of the way. Once set it stays set: an
    /// unmarked batch after a marked one is refused.
    /// </summary>
    public bool LastBatchFinalPass { get; private set; }

    /// <summary>The runs of the last batch read.</summary>
    public ReadOnlySpan<PageRun> LastRuns => _runs.AsSpan(0, _runCount);

    /// <summary>
    /// Read the next record of this page channel and apply it. Throws <see cref="MigrationProtocolException"/> for
    /// a malformed or misplaced record and <see cref="MigrationTransportException"/> when the channel fails.
    /// </summary>
    public PageRecord ReadNext()
    {
        _runCount = 0;
        var header = RecordHeader.Read(_channel, _table);
        if (header is not { } h) return new PageRecord(PageRecordKind.EndOfStream, 0, 0, 0, 0, 0);
        switch (h.Kind)
        {
            case RecordKind.PageBatch:
                return ReadBatch(h);
            case RecordKind.Flush or RecordKind.Keepalive:
                {
                    Wire.ExpectLength(h, 8);
                    var p = _table.AsSpan(MigrationProtocol.HeaderSize, 8);
                    Wire.ReceiveBody(_channel, p, h.Kind);
                    var kind = h.Kind == RecordKind.Flush ? PageRecordKind.Flush : PageRecordKind.Keepalive;
                    return new PageRecord(kind, 0, 0, 0, BinaryPrimitives.ReadUInt64LittleEndian(p), 16);
                }
            default:
                throw new MigrationProtocolException($"{h.Kind} record on {_channel.Name}: page channels carry only PageBatch, Flush and Keepalive");
        }
    }

    private void CheckShard((int Index, int Count) shard, int regionIndex, int runCount)
    {
        const int chunkShift = MigrationProtocol.ChunkShift; // 2 MiB chunks, as the sender deals them
        for (int i = 0; i < runCount; i++)
        {
            var run = _runs[i];
            ulong chunk = run.FirstPage >> chunkShift;
            bool oneChunk = shard.Count == 1 || ((run.FirstPage + run.Count - 1) >> chunkShift) == chunk;
            if (!oneChunk || (int)((chunk + (ulong)regionIndex) % (ulong)shard.Count) != shard.Index)
                throw new MigrationProtocolException(
                    $"PageBatch on {_channel.Name}: pages {run.FirstPage}..{run.FirstPage + run.Count - 1} of region {regionIndex} belong to another page channel");
        }
    }

    private PageRecord ReadBatch(RecordHeader h)
    {
        const int H = MigrationProtocol.HeaderSize;
        const int BH = MigrationProtocol.BatchHeaderSize;
        const int T = MigrationProtocol.TrailerSize;
        if (h.PayloadLength < BH + MigrationProtocol.RunSize + T)
            throw new MigrationProtocolException($"PageBatch on {_channel.Name}: payload of {h.PayloadLength} bytes is too short");
        // The batch header and the first run in one receive: every batch has at least one run and the payload was
        // just checked to hold one, so this never reads past the record. A batch of one run (all of a random guest's
        // 1 MiB batches) then costs 4 receives instead of 5.
        Wire.ReceiveBody(_channel, _table.AsSpan(H, BH + MigrationProtocol.RunSize), h.Kind);
        var (regionIndex, runCount) = PageBatchCodec.ParseBatchHeader(_table.AsSpan(H), _regions.Count);
        int tableBytes = runCount * MigrationProtocol.RunSize;
        if (h.PayloadLength < (uint)(BH + tableBytes + T))
            throw new MigrationProtocolException($"PageBatch on {_channel.Name}: payload of {h.PayloadLength} bytes cannot hold {runCount} runs");
        if (runCount > 1)
            Wire.ReceiveBody(_channel, _table.AsSpan(H + BH + MigrationProtocol.RunSize, tableBytes - MigrationProtocol.RunSize), h.Kind);
        var region = _regions[regionIndex];
        var (normal, zero) = PageBatchCodec.ParseRuns(_table.AsSpan(H + BH, tableBytes), region.Pages, _runs.AsSpan(0, runCount));
        _runCount = runCount;
        if (Shard is { } shard) CheckShard(shard, regionIndex, runCount);
        long expected = BH + tableBytes + ((long)normal << MemoryRegion.PageShift) + T;
        if (h.PayloadLength != expected)
            throw new MigrationProtocolException($"PageBatch on {_channel.Name}: payload is {h.PayloadLength} bytes but {runCount} runs with {normal} Normal pages need {expected}");

        bool checksumData = (h.Flags & (byte)PageBatchFlags.DataChecksummed) != 0;
        bool finalPass = (h.Flags & (byte)PageBatchFlags.FinalPass) != 0;
        if (checksumData && !finalPass)
            throw new MigrationProtocolException($"PageBatch on {_channel.Name}: DataChecksummed without FinalPass (page data can only be checksummed while the guest is paused)");
        if (LastBatchFinalPass && !finalPass)
            throw new MigrationProtocolException($"PageBatch on {_channel.Name}: a pre-copy batch after the final pass began (the source said its guest was paused)");
        LastBatchFinalPass = finalPass;
        // Chained one-shot hashes, run by run: see PageBatchWriter and MigrationProtocol.cs.
        ulong hash = XxHash3.HashToUInt64(_table.AsSpan(0, H + BH + tableBytes));
        for (int i = 0; i < runCount; i++)
        {
            var run = _runs[i];
            nint address = region.PageAddress(run.FirstPage);
            if (run.Encoding == PageEncoding.Normal)
            {
                Span<byte> pages;
                unsafe
                {
                    // SAFETY: run validated inside the region's host mapping; count <= 256 pages, so length <= 1 MiB.
                    pages = new Span<byte>((void*)address, (int)run.Count << MemoryRegion.PageShift);
                }
                // Sparse data into a fresh 2 MiB window costs less in 4 KiB faults (see ReceivedPageMap): the final pass
                // and short runs of any round.
                if (finalPass || run.Count < ReceivedPageMap.SparseRunPages)
                    _received?.PreferSmallPagesInFreshWindows(regionIndex, region, run.FirstPage, run.Count);
                if (PopulateFreshRuns && _received is not null && !_received.AnyHeld(regionIndex, run.FirstPage, run.Count))
                    Populate(address, pages.Length);
                Wire.ReceiveBody(_channel, pages, h.Kind);
                if (checksumData) hash = XxHash3.HashToUInt64(pages, (long)hash);
                _received?.MarkHeld(regionIndex, run.FirstPage, run.Count);
            }
            else if (_received is not null)
            {
                _received.Zero(regionIndex, region, run.FirstPage, run.Count);
            }
            else
            {
                unsafe
                {
                    // SAFETY: every page of a validated run lies inside the region's host mapping.
                    System.Runtime.InteropServices.NativeMemory.Clear((void*)address, (nuint)run.Count << MemoryRegion.PageShift);
                }
            }
        }
        var trailer = _table.AsSpan(H + BH + tableBytes, T);
        Wire.ReceiveBody(_channel, trailer, h.Kind);
        if (hash != BinaryPrimitives.ReadUInt64LittleEndian(trailer))
            throw new MigrationProtocolException($"PageBatch on {_channel.Name}: checksum mismatch (region {regionIndex}, {runCount} runs{(checksumData ? ", data included" : "")})");
        return new PageRecord(PageRecordKind.PageBatch, regionIndex, normal, zero, 0, H + h.PayloadLength);
    }

    private void Populate(nint address, int length)
    {
        if (Libc.madvise(address, (nuint)length, Libc.MADV_POPULATE_WRITE) == 0) return;
        // EINVAL: a kernel without MADV_POPULATE_WRITE; stop asking. Any other error (ENOMEM, EFAULT) is left to the
        // receive itself, which faults the pages in the ordinary way or fails with the real reason.
        if (Marshal.GetLastPInvokeError() == Libc.EINVAL) PopulateFreshRuns = false;
    }
}
