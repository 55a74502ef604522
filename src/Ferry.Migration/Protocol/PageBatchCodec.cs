using System.Buffers.Binary;

namespace Ferry.Migration.Protocol;

/// <summary>Encoding and validation of a PageBatch's batch header and run table, shared by writer and reader.</summary>
public static class PageBatchCodec
{
    /// <summary>Bytes of batch header plus <paramref name="runs"/> run descriptors.</summary>
    public static int TableSize(int runs) => MigrationProtocol.BatchHeaderSize + (runs * MigrationProtocol.RunSize);

    /// <summary>Write the batch header and run table into <paramref name="destination"/>; returns bytes written.</summary>
    public static int WriteTable(Span<byte> destination, ushort regionIndex, ReadOnlySpan<PageRun> runs)
    {
        BinaryPrimitives.WriteUInt16LittleEndian(destination, regionIndex);
        BinaryPrimitives.WriteUInt16LittleEndian(destination[2..], (ushort)runs.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[4..], 0);
        int o = MigrationProtocol.BatchHeaderSize;
        foreach (var r in runs)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(destination[o..], r.FirstPage);
            BinaryPrimitives.WriteUInt32LittleEndian(destination[(o + 8)..], r.Count);
            destination[o + 12] = (byte)r.Encoding;
            destination[o + 13] = 0;
            destination[o + 14] = 0;
            destination[o + 15] = 0;
            o += MigrationProtocol.RunSize;
        }
        return o;
    }

    /// <summary>
    /// Parse the 8-byte batch header: region index and run count (1..512), reserved 0.
    /// </summary>
    public static (ushort RegionIndex, int RunCount) ParseBatchHeader(ReadOnlySpan<byte> source, int regionCount)
    {
        ushort region = BinaryPrimitives.ReadUInt16LittleEndian(source);
        int runs = BinaryPrimitives.ReadUInt16LittleEndian(source[2..]);
        uint reserved = BinaryPrimitives.ReadUInt32LittleEndian(source[4..]);
        if (reserved != 0)
            throw new MigrationProtocolException($"PageBatch: reserved batch field is 0x{reserved:x8}, must be 0");
        if (region >= regionCount)
            throw new MigrationProtocolException($"PageBatch: region {region} does not exist ({regionCount} regions)");
        if (runs is 0 or > MigrationProtocol.MaxRunsPerBatch)
            throw new MigrationProtocolException($"PageBatch: {runs} runs; 1..{MigrationProtocol.MaxRunsPerBatch} allowed");
        return (region, runs);
    }

    /// <summary>
    /// Parse and validate the run table into <paramref name="runs"/> (exactly as many as there are descriptors):
    /// count > 0, encoding Normal or Zero, pages inside a region of <paramref name="regionPages"/> pages (no
    /// overflow), at most 256 Normal pages. Returns the number of Normal pages and of Zero pages.
    /// </summary>
    public static (int NormalPages, long ZeroPages) ParseRuns(ReadOnlySpan<byte> source, ulong regionPages, Span<PageRun> runs)
    {
        int normal = 0;
        long zero = 0;
        for (int i = 0, o = 0; i < runs.Length; i++, o += MigrationProtocol.RunSize)
        {
            ulong first = BinaryPrimitives.ReadUInt64LittleEndian(source[o..]);
            uint count = BinaryPrimitives.ReadUInt32LittleEndian(source[(o + 8)..]);
            var encoding = (PageEncoding)source[o + 12];
            if (source[o + 13] != 0 || source[o + 14] != 0 || source[o + 15] != 0)
                throw new MigrationProtocolException($"PageBatch: run {i} has non-zero reserved bytes");
            if (count == 0)
                throw new MigrationProtocolException($"PageBatch: run {i} is empty");
            // first < pages and count <= pages - first: no u64 overflow possible (first + count could wrap).
            if (first >= regionPages || count > regionPages - first)
                throw new MigrationProtocolException($"PageBatch: run {i} (pages {first}+{count}) lies outside the region's {regionPages} pages");
            switch (encoding)
            {
                case PageEncoding.Normal:
                    if (count > (uint)(MigrationProtocol.MaxNormalPagesPerBatch - normal))
                        throw new MigrationProtocolException($"PageBatch: more than {MigrationProtocol.MaxNormalPagesPerBatch} Normal pages (run {i})");
                    normal += (int)count;
                    break;
                case PageEncoding.Zero:
                    zero += count;
                    break;
                case PageEncoding.Delta or PageEncoding.Compressed:
                    throw new MigrationProtocolException($"PageBatch: run {i} uses the {encoding} encoding, reserved and refused in protocol v1");
                default:
                    throw new MigrationProtocolException($"PageBatch: run {i} has unknown encoding {(byte)encoding}");
            }
            runs[i] = new PageRun(first, count, encoding);
        }
        return (normal, zero);
    }
}
