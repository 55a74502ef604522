using System.Buffers.Binary;
using System.IO.Hashing;
using System.Runtime.InteropServices;
using Ferry.Migration.Guest;

namespace Ferry.Migration.InProcess;

/// <summary>
/// The workload's state as saved at pause and loaded on the destination: options, every writer's RNG state, and the
/// expected sequence number of each tracked page (what <see cref="InProcessGuest.SelfCheck"/> compares memory with).
/// </summary>
/// <remarks>
/// <para>Section "workload", version 1, little endian:
/// <code>
///   0 u32 magic "FWKL"      4 u32 flags (bit 0: split regions)   8 u64 memory bytes
///  16 i32 writer threads   20 i32 pattern                      24 i64 dirty rate (pages/s)
///  32 u64 working-set bytes 40 f64 hotset fraction              48 f64 hotset write share
///  56 i32 fill             60 i32 logical writers L            64 u64 seed
///  72 u64 tracked pages N   80 L x { u64 s0..s3, u64 cursor, i64 written }   then N x u32 expected sequence
///  last u32 CRC-32 of everything before it
/// </code></para>
/// <para>Tracked pages are capped at <see cref="MaxTrackedPages"/> so the section stays under the 4 MiB
/// <see cref="StateSection.MaxDataLength"/>: 3.75 Mi entries x 4 bytes leaves 256 KiB for the header and 256 writers
/// (12 KiB). That is a 3.75 GiB working set; pages beyond it (bigger benchmark guests) are still checked for their
/// index and data word, just not for their exact write count. A real guest keeps such state in its own memory; here
/// it rides in device state, which adds ~4 ms of downtime per 4 MiB at 1 GB/s, so benchmarks of big guests should
/// know it is there.</para>
/// </remarks>
internal sealed class WorkloadSnapshot
{
    public const string SectionName = "workload";
    public const uint SectionVersion = 1;

    /// <summary>Cap on pages whose write count is tracked; see remarks.</summary>
    public const ulong MaxTrackedPages = 960 * 1024;

    private const uint Magic = 0x4C4B5746; // "FWKL"
    private const int HeaderSize = 80;

    public required InProcessGuestOptions Options { get; init; }

    public required WriterState[] Writers { get; init; }

    /// <summary>Expected sequence number of working-set pages 0 .. Length - 1.</summary>
    public required uint[] Expected { get; init; }

    /// <summary>Logical writers: one per thread, or one for a thread-less (stepped) guest.</summary>
    public static int LogicalWriters(InProcessGuestOptions options) => Math.Max(options.WriterThreads, 1);

    public static ulong TrackedPages(InProcessGuestOptions options) => Math.Min(options.WorkingSetPages, MaxTrackedPages);

    /// <summary>Fresh state for a guest that has not written anything yet.</summary>
    public static WorkloadSnapshot Initial(InProcessGuestOptions options)
    {
        var writers = new WriterState[LogicalWriters(options)];
        for (int i = 0; i < writers.Length; i++)
        {
            writers[i] = WriterState.Seeded(options.Seed, i);
        }

        return new WorkloadSnapshot { Options = options, Writers = writers, Expected = new uint[TrackedPages(options)] };
    }

    public byte[] Serialize()
    {
        var o = Options;
        int size = HeaderSize + (Writers.Length * WriterState.SerializedSize) + (Expected.Length * 4) + 4;
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
        BinaryPrimitives.WriteUInt64LittleEndian(s[72..], (ulong)Expected.Length);
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

        var expected = s.Slice(at, Expected.Length * 4);
        if (BitConverter.IsLittleEndian)
        {
            MemoryMarshal.AsBytes(Expected.AsSpan()).CopyTo(expected);
        }
        else
        {
            for (int i = 0; i < Expected.Length; i++)
            {
                BinaryPrimitives.WriteUInt32LittleEndian(expected[(i * 4)..], Expected[i]);
            }
        }

        at += expected.Length;
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
        ulong tracked = BinaryPrimitives.ReadUInt64LittleEndian(s[72..]);
        if (writers != LogicalWriters(options) || tracked != TrackedPages(options))
        {
            throw new InvalidDataException($"workload section has {writers} writers and {tracked} tracked pages, options imply {LogicalWriters(options)} and {TrackedPages(options)}");
        }

        // Both counts are bounded above (256 writers, MaxTrackedPages), so this cannot overflow.
        long want = HeaderSize + ((long)writers * WriterState.SerializedSize) + ((long)tracked * 4) + 4;
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

        var expected = new uint[tracked];
        var raw = s.Slice(at, (int)tracked * 4);
        for (int i = 0; i < expected.Length; i++)
        {
            expected[i] = BinaryPrimitives.ReadUInt32LittleEndian(raw[(i * 4)..]);
        }

        return new WorkloadSnapshot { Options = options, Writers = states, Expected = expected };
    }
}
