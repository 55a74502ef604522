using System.Buffers.Binary;
using System.IO.Hashing;
using System.Runtime.InteropServices;
using Ferry.Linux;
using Ferry.Migration.Guest;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Protocol;

/// <summary>
/// Reads one page channel on the destination, receiving page data straight into guest memory: the header and run
/// table are parsed and validated into a reusable descriptor array, then the data of the Normal runs is received with
/// <see cref="IMigrationChannel.ReceiveScatter"/> into the guest pages they name (with the trailer, one receive per
/// batch unless Zero runs come between), each Zero run is zeroed (only where a page holds received data, with a
/// <see cref="ReceivedPageMap"/>), and finally the trailer is checked (over the data too, hashed from guest memory,
/// when DataChecksummed is set).
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
    // Record header + batch header + run table (8 + 8 + 512 * 16 bytes) + trailer. Pinned: the trailer is received
    // by address, as the last segment of a batch's scatter receive.
    private readonly byte[] _table = GC.AllocateArray<byte>(MigrationProtocol.HeaderSize + PageBatchCodec.TableSize(MigrationProtocol.MaxRunsPerBatch) + MigrationProtocol.TrailerSize, pinned: true);
    private readonly nint _tableAddress;
    // Where the data of a batch's Normal runs lands, in stream order (adjacent runs coalesced), plus the trailer.
    private readonly IoSegment[] _segments = new IoSegment[MigrationProtocol.MaxRunsPerBatch + 1];
    // Post-copy pages claimed for an in-place receive (see ReceivePostcopyInPlace); allocated with the staging buffer.
    private InPlaceClaim[]? _claims;
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
        unsafe
        {
            // SAFETY: _table was allocated on the pinned object heap and never moves.
            _tableAddress = (nint)System.Runtime.CompilerServices.Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_table));
        }
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

    /// <summary>
    /// Post-copy: where batches flagged <see cref="PageBatchFlags.Postcopy"/> are installed. Null (the default, and
    /// until the destination switched to post-copy) refuses them. A page is handed to the running guest only whole and
    /// only after the batch's checksum held: its data lands in a staging buffer, or in the guest's memory in place
    /// where nothing reads a missing page until it is published (see ReceivePostcopyInPlace).
    /// </summary>
    internal Postcopy.PostcopyIncoming? Postcopy
    {
        get => Volatile.Read(ref _postcopy);
        set => Volatile.Write(ref _postcopy, value);
    }
    private Postcopy.PostcopyIncoming? _postcopy;

    /// <summary>
    /// Set once this channel may carry post-copy batches only: the urgent channel from its start, a page channel once
    /// its switchover Flush came (or the source said none would, or from the start on a resumed connection). A pre-copy
    /// batch writes straight into guest memory, present pages included, which is right only while the guest is paused
    /// or before it ran here: after that it would overwrite what the running guest wrote (and behind the back of a
    /// machine's decoded code), so a source that sends one is refused. Any thread may set it.
    /// </summary>
    internal bool PostcopyOnly
    {
        get => Volatile.Read(ref _postcopyOnly);
        set => Volatile.Write(ref _postcopyOnly, value);
    }
    private bool _postcopyOnly;

    /// <summary>
    /// Where each pre-copy page's hash is recorded as it lands (null: nowhere), so that a verified hybrid migration
    /// reads nothing at the switchover: the destination's digest of the memory it held there cost the paused guest
    /// 18-20 ms per GiB (measured). Set before the first batch is read.
    /// </summary>
    internal Postcopy.PageHashDigest? LandedDigest { get; set; }
    // Post-copy batch data lands here (allocated at the first such batch), then the trailer.
    private byte[]? _staging;
    private nint _stagingAddress;
    private int _stagingOffset;

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
        if ((h.Flags & (byte)PageBatchFlags.Postcopy) != 0) return ReadPostcopyBatch(h, regionIndex, runCount, tableBytes, normal, zero);
        if (PostcopyOnly)
            throw new MigrationProtocolException($"PageBatch on {_channel.Name}: a pre-copy batch where only post-copy ones may come (the urgent channel, or a page channel after its switchover)");
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
        // The data of consecutive Normal runs (and the trailer after the last) is received with one scatter receive
        // straight into the guest pages they name: one syscall per batch, not one per run. Measured on this PVM host
        // over loopback, single scattered pages (tools/recv-cost): recv per page 2.5-10.6 µs, readv per 256 pages
        // 1.3-4.8 µs per page.
        // A Zero run ends the group: runs may overlap, and each applies in the sender's order.
        int pending = 0, groupStart = 0;
        for (int i = 0; i < runCount; i++)
        {
            var run = _runs[i];
            nint address = region.PageAddress(run.FirstPage);
            if (run.Encoding == PageEncoding.Normal)
            {
                int length = (int)run.Count << MemoryRegion.PageShift;
                // Sparse data into a fresh 2 MiB window costs less in 4 KiB faults (see ReceivedPageMap): the final pass
                // and short runs of any round.
                if (finalPass || run.Count < ReceivedPageMap.SparseRunPages)
                    _received?.PreferSmallPagesInFreshWindows(regionIndex, region, run.FirstPage, run.Count);
                if (PopulateFreshRuns && _received is not null && !_received.AnyHeld(regionIndex, run.FirstPage, run.Count))
                    Populate(address, length);
                // Marked held before its data lands with the group, so that the next runs' decisions see this one, as
                // they would have run by run. Nothing reads held pages' contents in between: the prefaulter only maps
                // pages (contents kept), and a Zero run first receives the group before it. A failed receive fails
                // the migration and discards the guest.
                _received?.MarkHeld(regionIndex, run.FirstPage, run.Count);
                ref var last = ref _segments[Math.Max(0, pending - 1)];
                if (pending > 0 && last.Address + last.Length == address)
                    last = new IoSegment(last.Address, last.Length + length);
                else
                    _segments[pending++] = new IoSegment(address, length);
                continue;
            }
            hash = ReceiveGroup(pending, groupStart, i, region, checksumData, hash);
            pending = 0;
            groupStart = i + 1;
            if (_received is not null)
            {
                _received.Zero(regionIndex, region, run.FirstPage, run.Count);
            }
            else
            {
                unsafe
                {
                    // SAFETY: every page of a validated run lies inside the region's host mapping.
                    NativeMemory.Clear((void*)address, (nuint)run.Count << MemoryRegion.PageShift);
                }
            }
        }
        int trailerOffset = H + BH + tableBytes;
        _segments[pending++] = new IoSegment(_tableAddress + trailerOffset, T);
        hash = ReceiveGroup(pending, groupStart, runCount, region, checksumData, hash);
        if (hash != BinaryPrimitives.ReadUInt64LittleEndian(_table.AsSpan(trailerOffset, T)))
            throw new MigrationProtocolException($"PageBatch on {_channel.Name}: checksum mismatch (region {regionIndex}, {runCount} runs{(checksumData ? ", data included" : "")})");
        LandedDigest?.Record(regionIndex, region, _runs.AsSpan(0, runCount));
        return new PageRecord(PageRecordKind.PageBatch, regionIndex, normal, zero, 0, H + h.PayloadLength);
    }

    /// <summary>
    /// Allocate the post-copy staging buffer (1 MiB, the pinned object heap) now, when post-copy is agreed at the
    /// handshake: allocated at the first post-copy batch, the channels' buffers set off a background collection in the
    /// guest's first milliseconds after the resume, whose pauses stop the fault path and the push (traced, in-process).
    /// </summary>
    internal void PreparePostcopy()
    {
        if (_staging is not null) return;
        const int T = MigrationProtocol.TrailerSize;
        // Claimed stretches of one batch received in place: at most one per Normal page.
        _claims = new InPlaceClaim[MigrationProtocol.MaxNormalPagesPerBatch];
        // Page aligned within (UFFDIO_COPY copies whole pages from aligned memory): one page more than needed.
        _staging = GC.AllocateArray<byte>((MigrationProtocol.MaxNormalPagesPerBatch << MemoryRegion.PageShift) + T + MemoryRegion.PageSize, pinned: true);
        unsafe
        {
            // SAFETY: allocated on the pinned object heap; it never moves.
            nint start = (nint)System.Runtime.CompilerServices.Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_staging));
            _stagingOffset = (int)(((start + MemoryRegion.PageSize - 1) & ~(nint)(MemoryRegion.PageSize - 1)) - start);
            _stagingAddress = start + _stagingOffset;
        }
    }

    /// <summary>
    /// A post-copy batch: all of its data into the staging buffer with the trailer in one receive, the checksum checked,
    /// and only then each run installed into the guest (pages still missing only).
    /// </summary>
    private PageRecord ReadPostcopyBatch(RecordHeader h, int regionIndex, int runCount, int tableBytes, int normal, long zero)
    {
        const int H = MigrationProtocol.HeaderSize;
        const int BH = MigrationProtocol.BatchHeaderSize;
        const int T = MigrationProtocol.TrailerSize;
        var postcopy = Postcopy ?? throw new MigrationProtocolException($"PageBatch on {_channel.Name}: a post-copy batch before the switchover to post-copy");
        if ((h.Flags & (byte)PageBatchFlags.FinalPass) != 0)
            throw new MigrationProtocolException($"PageBatch on {_channel.Name}: FinalPass and Postcopy together");
        long expected = BH + tableBytes + ((long)normal << MemoryRegion.PageShift) + T;
        if (h.PayloadLength != expected)
            throw new MigrationProtocolException($"PageBatch on {_channel.Name}: payload is {h.PayloadLength} bytes but {runCount} runs with {normal} Normal pages need {expected}");
        PreparePostcopy();
        bool checksumData = (h.Flags & (byte)PageBatchFlags.DataChecksummed) != 0;
        // In place only when the whole rest of the record is here already: the claims are made before the data is
        // read, and a page claimed by a batch whose data is still on the wire (a batch is 8 ms of a 1 Gb/s link) is one
        // a faulting guest thread would wait for behind that batch instead of asking for it on the urgent channel.
        if (normal > 0 && _channel.BytesReadable >= (long)(normal << MemoryRegion.PageShift) + T
            && postcopy.ReceiveInPlaceAddress(regionIndex) is var inPlace and not 0)
        {
            ReceivePostcopyInPlace(postcopy, regionIndex, runCount, tableBytes, checksumData, inPlace);
            return new PageRecord(PageRecordKind.PageBatch, regionIndex, normal, zero, 0, H + h.PayloadLength);
        }
        int dataBytes = normal << MemoryRegion.PageShift;
        var staging = _staging.AsSpan(_stagingOffset);
        Wire.ReceiveBody(_channel, staging[..(dataBytes + T)], h.Kind);
        ulong hash = XxHash3.HashToUInt64(_table.AsSpan(0, H + BH + tableBytes));
        if (checksumData)
        {
            int offset = 0;
            for (int i = 0; i < runCount; i++)
            {
                var run = _runs[i];
                if (run.Encoding != PageEncoding.Normal) continue;
                int length = (int)run.Count << MemoryRegion.PageShift;
                hash = XxHash3.HashToUInt64(staging.Slice(offset, length), (long)hash);
                offset += length;
            }
        }
        if (hash != BinaryPrimitives.ReadUInt64LittleEndian(staging.Slice(dataBytes, T)))
            throw new MigrationProtocolException($"PageBatch on {_channel.Name}: checksum mismatch (post-copy, region {regionIndex}, {runCount} runs{(checksumData ? ", data included" : "")})");
        int at = 0;
        for (int i = 0; i < runCount; i++)
        {
            var run = _runs[i];
            if (run.Encoding == PageEncoding.Normal)
            {
                postcopy.Install(regionIndex, run.FirstPage, (int)run.Count, _stagingAddress + at);
                at += (int)run.Count << MemoryRegion.PageShift;
            }
            else
            {
                postcopy.InstallZero(regionIndex, run.FirstPage, run.Count);
            }
        }
        return new PageRecord(PageRecordKind.PageBatch, regionIndex, normal, zero, 0, H + h.PayloadLength);
    }

    /// <summary>
    /// A post-copy batch into a guest memory that takes pages in place (<see cref="Guest.IPostcopyMemory.ReceiveInPlaceAddress"/>,
    /// at <paramref name="inPlace"/>): run by run in the sender's order, the still-missing pages of Normal runs are
    /// claimed and their data received straight into them, the others' into the staging buffer at their place in the
    /// batch (where they are dropped), all in one scatter receive with the trailer. Once the checksum holds, the claimed
    /// pages are published and the Zero runs applied. Saves the copy from the staging buffer into the guest
    /// that installing costs, one per pushed page (18-29 % of the receivers' CPU in the post-copy window, measured on
    /// the demo VM).
    /// </summary>
    /// <remarks>
    /// <para>The data checksum (post-copy batches carry one: the source is paused) chains each Normal run's data: a run
    /// claimed whole is hashed where it landed in the guest (its pages are consecutive there), one claimed in part has
    /// its claimed pages copied into the staging buffer beside the rest first (a page the guest faulted in meanwhile:
    /// rare).</para>
    /// <para>A receive that fails, or a checksum that does not hold, gives every claimed page back as missing before it
    /// throws (their bytes are whatever arrived, unseen: a missing page is not read until published), so a post-copy
    /// resumed over a new connection asks for them again. Zero runs are applied only once the checksum holds, as by
    /// copy: a run table damaged on the way (a Normal run read as Zero) would otherwise zero pages for good, which the
    /// resumed post-copy would never send again, since they are no longer missing. So the runs of one batch apply
    /// in the sender's order only where they do not overlap, which a source's post-copy batches never do (each page
    /// is handed out once).</para>
    /// </remarks>
    private void ReceivePostcopyInPlace(Postcopy.PostcopyIncoming postcopy, int regionIndex, int runCount, int tableBytes, bool checksumData, nint inPlace)
    {
        const int H = MigrationProtocol.HeaderSize;
        const int BH = MigrationProtocol.BatchHeaderSize;
        const int T = MigrationProtocol.TrailerSize;
        var claims = _claims!;
        int claimCount = 0, segments = 0;
        try
        {
            int offset = 0; // of the run's data in the batch (and in the staging buffer)
            for (int i = 0; i < runCount; i++)
            {
                var run = _runs[i];
                if (run.Encoding != PageEncoding.Normal) continue; // once the checksum holds, below
                ulong page = run.FirstPage, end = run.FirstPage + run.Count;
                while (page < end)
                {
                    ulong n = postcopy.ClaimStretch(regionIndex, page, end - page, out bool claimed);
                    int length = (int)n << MemoryRegion.PageShift;
                    nint to = claimed
                        ? inPlace + (nint)(page << MemoryRegion.PageShift)
                        : _stagingAddress + offset + (nint)((page - run.FirstPage) << MemoryRegion.PageShift);
                    if (claimed) claims[claimCount++] = new InPlaceClaim(page, n, i, offset + (int)((page - run.FirstPage) << MemoryRegion.PageShift));
                    ref var last = ref _segments[Math.Max(0, segments - 1)];
                    if (segments > 0 && last.Address + last.Length == to) last = new IoSegment(last.Address, last.Length + length);
                    else _segments[segments++] = new IoSegment(to, length);
                    page += n;
                }
                offset += (int)run.Count << MemoryRegion.PageShift;
            }
            int trailerOffset = H + BH + tableBytes;
            _segments[segments++] = new IoSegment(_tableAddress + trailerOffset, T);
            _channel.ReceiveScatter(_segments.AsSpan(0, segments));
            ulong hash = XxHash3.HashToUInt64(_table.AsSpan(0, H + BH + tableBytes));
            if (checksumData) hash = HashInPlaceRuns(runCount, claims.AsSpan(0, claimCount), inPlace, hash);
            if (hash != BinaryPrimitives.ReadUInt64LittleEndian(_table.AsSpan(trailerOffset, T)))
                throw new MigrationProtocolException($"PageBatch on {_channel.Name}: checksum mismatch (post-copy, region {regionIndex}, {runCount} runs{(checksumData ? ", data included" : "")})");
        }
        catch
        {
            for (int c = 0; c < claimCount; c++) postcopy.Unclaim(regionIndex, claims[c].Start, claims[c].Count);
            throw;
        }
        for (int c = 0; c < claimCount; c++)
        {
            var claim = claims[c];
            postcopy.PublishInPlace(regionIndex, claim.Start, claim.Count, inPlace + (nint)(claim.Start << MemoryRegion.PageShift));
        }
        for (int i = 0; i < runCount; i++)
        {
            if (_runs[i].Encoding != PageEncoding.Normal) postcopy.InstallZero(regionIndex, _runs[i].FirstPage, _runs[i].Count);
        }
    }

    /// <summary>The data checksum's chain over the Normal runs of a batch received in place (see <see cref="ReceivePostcopyInPlace"/>).</summary>
    private unsafe ulong HashInPlaceRuns(int runCount, ReadOnlySpan<InPlaceClaim> claims, nint inPlace, ulong hash)
    {
        int offset = 0, c = 0;
        for (int i = 0; i < runCount; i++)
        {
            var run = _runs[i];
            if (run.Encoding != PageEncoding.Normal) continue;
            int length = (int)run.Count << MemoryRegion.PageShift;
            ulong claimed = 0;
            int first = c;
            while (c < claims.Length && claims[c].Run == i) claimed += claims[c++].Count;
            nint data;
            if (claimed == run.Count)
            {
                // SAFETY (all three): validated runs inside the region's mapping, offsets inside the staging buffer.
                data = inPlace + (nint)(run.FirstPage << MemoryRegion.PageShift);
            }
            else
            {
                for (int k = first; k < c; k++)
                {
                    Buffer.MemoryCopy((void*)(inPlace + (nint)(claims[k].Start << MemoryRegion.PageShift)), (void*)(_stagingAddress + claims[k].Offset),
                        (long)claims[k].Count << MemoryRegion.PageShift, (long)claims[k].Count << MemoryRegion.PageShift);
                }
                data = _stagingAddress + offset;
            }
            hash = XxHash3.HashToUInt64(new ReadOnlySpan<byte>((void*)data, length), (long)hash);
            offset += length;
        }
        return hash;
    }

    /// <summary>Pages [Start, + Count) of run <c>Run</c>, claimed for an in-place receive; their data at Offset in the batch.</summary>
    private readonly record struct InPlaceClaim(ulong Start, ulong Count, int Run, int Offset);

    /// <summary>
    /// Receive the <paramref name="segments"/> gathered for runs [<paramref name="from"/>, <paramref name="to"/>) (none:
    /// nothing to receive), then hash their data when it is checksummed. Returns the hash.
    /// </summary>
    private ulong ReceiveGroup(int segments, int from, int to, in MemoryRegion region, bool checksumData, ulong hash)
    {
        if (segments == 0) return hash;
        _channel.ReceiveScatter(_segments.AsSpan(0, segments));
        if (!checksumData) return hash;
        for (int i = from; i < to; i++)
        {
            var run = _runs[i];
            if (run.Encoding != PageEncoding.Normal) continue;
            unsafe
            {
                // SAFETY: run validated inside the region's host mapping; count <= 256 pages, so length <= 1 MiB.
                hash = XxHash3.HashToUInt64(new ReadOnlySpan<byte>((void*)region.PageAddress(run.FirstPage), (int)run.Count << MemoryRegion.PageShift), (long)hash);
            }
        }
        return hash;
    }

    private void Populate(nint address, int length)
    {
        if (Libc.madvise(address, (nuint)length, Libc.MADV_POPULATE_WRITE) == 0) return;
        // EINVAL: a kernel without MADV_POPULATE_WRITE; stop asking. Any other error (ENOMEM, EFAULT) is left to the
        // receive itself, which faults the pages in the ordinary way or fails with the real reason.
        if (Marshal.GetLastPInvokeError() == Libc.EINVAL) PopulateFreshRuns = false;
    }
}
