using System.Buffers.Binary;
using System.IO.Hashing;
using Ferry.Migration.Guest;

namespace Ferry.Migration.InProcess;

/// <summary>
/// The workload's state as saved at pause and loaded on the destination: options and every writer's RNG state,
/// cursor and count. The expected sequence number of each page is not here: it lives in guest memory
/// (<see cref="InProcessGuestOptions.CounterPages"/>) and migrates as pages, as a real guest's own state would.
/// </summary>
/// <remarks>
/// <para>Section "workload", version 3, little endian:
/// <code>
///   0 u32 magic "FWKL"      4 u32 flags (bit 0: split regions)   8 u64 memory bytes
///  16 i32 writer threads   20 i32 pattern                      24 i64 dirty rate (pages/s)
///  32 u64 working-set bytes 40 f64 hotset fraction              48 f64 hotset write share
///  56 i32 fill             60 i32 logical writers L            64 u64 seed
///  72 u64 working-set pages W (cross-checks the options)         80 f64 hotset start
///  88 L x { u64 s0..s3, u64 cursor, i64 written }
///  last u32 CRC-32 of everything before it
/// </code>
/// 140 bytes for one writer, 12.1 KiB for the 256-writer maximum, whatever the guest's size. Version 2 was this
/// without the hotset start; version 1 carried a u32 per tracked page (up to 3.75 MiB, ~4 ms of downtime per 4 MiB
/// at 1 GB/s) and capped tracking at a 3.75 GiB working set. Both are refused.</para>
/// </remarks>
internal sealed class WorkloadSnapshot
{
    public const string SectionName = "workload";
    public const uint SectionVersion = 3;

    private const uint Magic = 0x4C4B5746; // "FWKL"
    private const int HeaderSize = 88;

    public required InProcessGuestOptions Options { get; init; }

    public required WriterState[] Writers { get; init; }

    /// <summary>Logical writers: one per thread, or one for a thread-less (stepped) guest.</summary>
    public static int LogicalWriters(InProcessGuestOptions options) => Math.Max(options.WriterThreads, 1);

    /// <summary>Fresh state for a guest that has not written anything yet.</summary>
    public static WorkloadSnapshot Initial(InProcessGuestOptions options)
    {
        var writers = new WriterState[LogicalWriters(options)];
        for (int i = 0; i < writers.Length; i++)
        {
            writers[i] = WriterState.Seeded(options.Seed, i);
        }

        return new WorkloadSnapshot { Options = options, Writers = writers };
    }

    public byte[] Serialize()
    {
        var o = Options;
        int size = HeaderSize + (Writers.Length * WriterState.SerializedSize) + 4;
        var data = new byte[size];
        var s = data.AsSpan();
        BinaryPrimitives.WriteUInt32LittleEndian(s, Magic);
        BinaryPrimitives.WriteUInt32LittleEndian(s[4..], o.SplitRegions ? 1u : 0u);
        BinaryPrimitives.WriteUInt64LittleEndian(s[8..], o.MemoryBytes);
        BinaryPrimitives.WriteInt32LittleEndian(s[16..], o.WriterThreads);
        BinaryPrimitives.WriteInt32LittleEndian(s[20..], (int)o.Pattern);
        BinaryPrimitives.WriteInt64LittleEndian(s[24..], o.DirtyRatePagesPerSecond);
        BinaryPrimitives.WriteUInt64LittleEndian(s[32..], o.WorkingSetPages << MemoryRegion.PageShift);
        BinaryPrimitives.WriteDoubleLittleEndian(s[40..], o.HotsetFraction);
        BinaryPrimitives.WriteDoubleLittleEndian(s[48..], o.HotsetWriteShare);
        BinaryPrimitives.WriteInt32LittleEndian(s[56..], (int)o.Fill);
        BinaryPrimitives.WriteInt32LittleEndian(s[60..], Writers.Length);
        BinaryPrimitives.WriteUInt64LittleEndian(s[64..], o.Seed);
        BinaryPrimitives.WriteUInt64LittleEndian(s[72..], o.WorkingSetPages);
        BinaryPrimitives.WriteDoubleLittleEndian(s[80..], o.HotsetStart);
        int at = HeaderSize;
        foreach (var w in Writers)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(s[at..], w.S0);
            BinaryPrimitives.WriteUInt64LittleEndian(s[(at + 8)..], w.S1);
            BinaryPrimitives.WriteUInt64LittleEndian(s[(at + 16)..], w.S2);
            BinaryPrimitives.WriteUInt64LittleEndian(s[(at + 24)..], w.S3);
            BinaryPrimitives.WriteUInt64LittleEndian(s[(at + 32)..], w.Cursor);
            BinaryPrimitives.WriteInt64LittleEndian(s[(at + 40)..], Volatile.Read(ref w.Written));
            at += WriterState.SerializedSize;
        }

        BinaryPrimitives.WriteUInt32LittleEndian(s[at..], Crc32.HashToUInt32(s[..at]));
        return data;
    }

    /// <summary>Parse and validate; every failure is an <see cref="InvalidDataException"/> saying what was wrong.</summary>
    public static WorkloadSnapshot Parse(ReadOnlySpan<byte> s)
    {
        if (s.Length < HeaderSize + 4 || s.Length > StateSection.MaxDataLength)
        {
            throw new InvalidDataException($"workload section of {s.Length} bytes");
        }

        if (BinaryPrimitives.ReadUInt32LittleEndian(s) != Magic)
        {
            throw new InvalidDataException("workload section has a bad magic number");
        }

        uint crc = BinaryPrimitives.ReadUInt32LittleEndian(s[^4..]);
        if (crc != Crc32.HashToUInt32(s[..^4]))
        {
            throw new InvalidDataException("workload section checksum mismatch");
        }

        uint flags = BinaryPrimitives.ReadUInt32LittleEndian(s[4..]);
        if (flags > 1)
        {
            throw new InvalidDataException($"workload section has unknown flags {flags:x}");
        }

        var options = new InProcessGuestOptions
        {
            SplitRegions = flags == 1,
            MemoryBytes = BinaryPrimitives.ReadUInt64LittleEndian(s[8..]),
            WriterThreads = BinaryPrimitives.ReadInt32LittleEndian(s[16..]),
            Pattern = (DirtyPattern)BinaryPrimitives.ReadInt32LittleEndian(s[20..]),
            DirtyRatePagesPerSecond = BinaryPrimitives.ReadInt64LittleEndian(s[24..]),
            WorkingSetBytes = BinaryPrimitives.ReadUInt64LittleEndian(s[32..]),
            HotsetFraction = BinaryPrimitives.ReadDoubleLittleEndian(s[40..]),
            HotsetWriteShare = BinaryPrimitives.ReadDoubleLittleEndian(s[48..]),
            HotsetStart = BinaryPrimitives.ReadDoubleLittleEndian(s[80..]),
            Fill = (MemoryFill)BinaryPrimitives.ReadInt32LittleEndian(s[56..]),
            Seed = BinaryPrimitives.ReadUInt64LittleEndian(s[64..]),
        };
        try
        {
            options.Validate();
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException($"workload section: {e.Message}", e);
        }

        int writers = BinaryPrimitives.ReadInt32LittleEndian(s[60..]);
        ulong workingSet = BinaryPrimitives.ReadUInt64LittleEndian(s[72..]);
        if (writers != LogicalWriters(options) || workingSet != options.WorkingSetPages)
        {
            throw new InvalidDataException($"workload section has {writers} writers and {workingSet} working-set pages, options imply {LogicalWriters(options)} and {options.WorkingSetPages}");
        }

        // writers is bounded by MaxWriterThreads (validated options), so this cannot overflow.
        long want = HeaderSize + ((long)writers * WriterState.SerializedSize) + 4;
        if (s.Length != want)
        {
            throw new InvalidDataException($"workload section is {s.Length} bytes, its header implies {want}");
        }

        var states = new WriterState[writers];
        int at = HeaderSize;
        for (int i = 0; i < writers; i++)
        {
            states[i] = new WriterState
            {
                S0 = BinaryPrimitives.ReadUInt64LittleEndian(s[at..]),
                S1 = BinaryPrimitives.ReadUInt64LittleEndian(s[(at + 8)..]),
                S2 = BinaryPrimitives.ReadUInt64LittleEndian(s[(at + 16)..]),
                S3 = BinaryPrimitives.ReadUInt64LittleEndian(s[(at + 24)..]),
                Cursor = BinaryPrimitives.ReadUInt64LittleEndian(s[(at + 32)..]),
                Written = BinaryPrimitives.ReadInt64LittleEndian(s[(at + 40)..]),
            };
            if ((states[i].S0 | states[i].S1 | states[i].S2 | states[i].S3) == 0 || states[i].Written < 0)
            {
                throw new InvalidDataException($"workload section: writer {i} has an impossible state");
            }

            at += WriterState.SerializedSize;
        }

        return new WorkloadSnapshot { Options = options, Writers = states };
    }
}
