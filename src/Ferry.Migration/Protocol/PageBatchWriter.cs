using System.Buffers.Binary;
using System.IO.Hashing;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Ferry.Migration.Guest;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Protocol;

/// <summary>
/// Sends page batches on one page channel straight from guest memory (or from data the caller staged): one
/// <see cref="IMigrationChannel.SendGather"/> per batch of [record header + batch header + runs, the data of each Normal
/// run (adjacent runs coalesced), the checksum trailer]. One writer per channel, used by one thread; all buffers are
/// allocated once.
/// </summary>
public sealed class PageBatchWriter
{
    private const int TableCapacity = MigrationProtocol.HeaderSize + MigrationProtocol.BatchHeaderSize + (MigrationProtocol.MaxRunsPerBatch * MigrationProtocol.RunSize);

    private readonly IMigrationChannel _channel;
    // Record header + batch header + run table, then the 8-byte trailer, then a 16-byte small-record area; pinned
    // because the gather send points at it.
    private readonly byte[] _buffer = GC.AllocateArray<byte>(TableCapacity + MigrationProtocol.TrailerSize + 16, pinned: true);
    // Address of _buffer[0] (pinned for the writer's life).
    private readonly nint _bufferAddress;
    // Header/table segment, at most one segment per Normal run (each holds >= 1 page), trailer.
    private readonly IoSegment[] _segments = new IoSegment[2 + MigrationProtocol.MaxNormalPagesPerBatch];

    public PageBatchWriter(IMigrationChannel channel)
    {
        ArgumentNullException.ThrowIfNull(channel);
        _channel = channel;
        unsafe
        {
            // SAFETY: _buffer was allocated on the pinned object heap and never moves.
            _bufferAddress = (nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_buffer));
        }
    }

    /// <summary>The channel this writer sends on.</summary>
    public IMigrationChannel Channel => _channel;

    /// <summary>
    /// Send one batch of <paramref name="runs"/> (1..512 runs, at most 256 Normal pages, all inside
    /// <paramref name="region"/>) from the region's host memory, with header <paramref name="flags"/>: FinalPass
    /// once the guest is paused, DataChecksummed only with it (see the protocol). Returns the bytes put on the wire.
    /// Runs or flags outside these limits throw <see cref="ArgumentException"/> (an engine bug, not a peer's).
    /// A region read through its <see cref="MemoryRegion.Reader"/> has no host memory to send from: the caller read
    /// the batch's Normal pages to <paramref name="staged"/>, one after another in run order, and the data goes from
    /// there (0: from the region's memory).
    /// </summary>
    public long WriteBatch(int regionIndex, in MemoryRegion region, ReadOnlySpan<PageRun> runs, PageBatchFlags flags, nint staged = 0)
    {
        if ((uint)regionIndex > ushort.MaxValue) throw new ArgumentOutOfRangeException(nameof(regionIndex));
        if (((byte)flags & ~MigrationProtocol.DefinedFlags(RecordKind.PageBatch)) != 0 ||
            (flags & (PageBatchFlags.DataChecksummed | PageBatchFlags.FinalPass | PageBatchFlags.Postcopy)) == PageBatchFlags.DataChecksummed ||
            (flags & (PageBatchFlags.FinalPass | PageBatchFlags.Postcopy)) == (PageBatchFlags.FinalPass | PageBatchFlags.Postcopy))
            throw new ArgumentException($"PageBatch flags {flags}: undefined, DataChecksummed without FinalPass or Postcopy, or both of those", nameof(flags));
        bool checksumData = (flags & PageBatchFlags.DataChecksummed) != 0;
        if (runs.Length is 0 or > MigrationProtocol.MaxRunsPerBatch)
            throw new ArgumentException($"a batch holds 1..{MigrationProtocol.MaxRunsPerBatch} runs, not {runs.Length}", nameof(runs));
        if (staged == 0 && region.Reader is not null)
            throw new ArgumentException("a region read through its reader is sent from staged data", nameof(staged));

        ulong pages = region.Pages;
        int normalPages = 0;
        int segmentCount = 1;
        for (int i = 0; i < runs.Length; i++)
        {
            var r = runs[i];
            if (r.Count == 0 || r.FirstPage >= pages || r.Count > pages - r.FirstPage)
                throw new ArgumentException($"run {i} (pages {r.FirstPage}+{r.Count}) outside region of {pages} pages", nameof(runs));
            if (r.Encoding == PageEncoding.Zero) continue;
            if (r.Encoding != PageEncoding.Normal)
                throw new ArgumentException($"run {i}: encoding {r.Encoding} is not sendable in protocol v1", nameof(runs));
            if (r.Count > (uint)(MigrationProtocol.MaxNormalPagesPerBatch - normalPages))
                throw new ArgumentException($"more than {MigrationProtocol.MaxNormalPagesPerBatch} Normal pages in one batch", nameof(runs));
            nint address = staged == 0 ? region.PageAddress(r.FirstPage) : staged + ((nint)normalPages << MemoryRegion.PageShift);
            normalPages += (int)r.Count;
            int length = (int)r.Count << MemoryRegion.PageShift;
            ref var last = ref _segments[segmentCount - 1];
            if (segmentCount > 1 && last.Address + last.Length == address)
                last = new IoSegment(last.Address, last.Length + length); // adjacent in guest memory: one iovec
            else
                _segments[segmentCount++] = new IoSegment(address, length);
        }

        int table = MigrationProtocol.HeaderSize + PageBatchCodec.WriteTable(_buffer.AsSpan(MigrationProtocol.HeaderSize), (ushort)regionIndex, runs);
        long dataBytes = (long)normalPages << MemoryRegion.PageShift;
        uint payload = (uint)(table - MigrationProtocol.HeaderSize + dataBytes + MigrationProtocol.TrailerSize);
        new RecordHeader(RecordKind.PageBatch, (byte)flags, payload).Write(_buffer);

        // One-shot hashes chained by seed, run by run (MigrationProtocol.cs): the streaming XxHash3.Append measured
        // 1.06 GB/s on 4 KiB appends against 22-40 GB/s one-shot, which made the final pass cost ~10 µs per page.
        ulong hash = XxHash3.HashToUInt64(_buffer.AsSpan(0, table));
        if (checksumData)
        {
            nint next = staged;
            foreach (var r in runs)
            {
                if (r.Encoding != PageEncoding.Normal) continue;
                int length = (int)r.Count << MemoryRegion.PageShift;
                nint address = staged == 0 ? region.PageAddress(r.FirstPage) : next;
                next += length;
                unsafe
                {
                    // SAFETY: the run lies inside the region's host mapping (checked above), which outlives the call, or
                    // inside the caller's staged data.
                    hash = XxHash3.HashToUInt64(new ReadOnlySpan<byte>((void*)address, length), (long)hash);
                }
            }
        }
        BinaryPrimitives.WriteUInt64LittleEndian(_buffer.AsSpan(TableCapacity), hash);

        _segments[0] = new IoSegment(_bufferAddress, table);
        _segments[segmentCount++] = new IoSegment(_bufferAddress + TableCapacity, MigrationProtocol.TrailerSize);
        _channel.SendGather(_segments.AsSpan(0, segmentCount));
        return MigrationProtocol.HeaderSize + (long)payload;
    }

    /// <summary>Send Flush(<paramref name="sequence"/>): everything sent before it on this channel has been sent.</summary>
    public long WriteFlush(ulong sequence) => WriteSmall(RecordKind.Flush, sequence);

    /// <summary>Send a Keepalive on this page channel.</summary>
    public long WriteKeepalive(ulong timestamp) => WriteSmall(RecordKind.Keepalive, timestamp);

    private long WriteSmall(RecordKind kind, ulong value)
    {
        var b = _buffer.AsSpan(TableCapacity + MigrationProtocol.TrailerSize, 16);
        new RecordHeader(kind, 0, 8).Write(b);
        BinaryPrimitives.WriteUInt64LittleEndian(b[8..], value);
        _channel.Send(b);
        return 16;
    }
}
