using System.Buffers.Binary;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using Ferry.Machine.Cpu;

namespace Ferry.Machine.Board;

/// <summary>
/// The core-local interruptor at 0x200_0000 (SiFive CLINT layout, as QEMU <c>virt</c>): <c>msip</c> per hart at +0,
/// <c>mtimecmp</c> per hart at +0x4000, <c>mtime</c> at +0xbff8, counting at 10 MHz with the host's monotonic clock.
/// </summary>
/// <remarks>
/// MTIP is computed when read (<c>mtime &gt;= mtimecmp</c>), so it is exact whenever the guest looks, and no thread
/// of the CLINT's own raises it: a running hart reads it every few thousand instructions
/// (<see cref="Hart.TimerPollInstructions"/>), and a hart parked in <c>wfi</c> sleeps until its deadline
/// (<see cref="WakeDeadline"/>, to the host timer's precision: tens of microseconds, never early). A timer thread that
/// kicked running harts did this before; it woke at every compare write and every deadline (~10,000 times a second
/// for a 2-hart Linux guest with a 1 ms tick, measured with <c>perf sched</c>), and while the host was busy it waited
/// for a CPU behind the very harts it was to interrupt (1.5-3.6 ms measured), delaying the guest's timer by as much.
/// </remarks>
internal sealed class Clint : IMmioDevice
{
    public const ulong ClintBase = 0x200_0000;
    public const ulong ClintSize = 0x1_0000;
    public const ulong TimebaseHz = 10_000_000;

    private readonly ulong[] mtimecmp;
    private readonly uint[] msip;
    private Hart[] harts = [];
    // Serialises writes of mtimecmp (a partial write merges into the old value) and of mtime.
    private readonly object gate = new();
    private readonly long origin = Stopwatch.GetTimestamp();
    // mtime = host ticks since origin (scaled) + offset; the offset changes when the guest writes mtime or a
    // migration carries the guest's time base over.
    private long offset;

    public Clint(int hartCount)
    {
        // mtimecmp resets to 0, so MTIP is pending until the guest programs a compare value (as QEMU 7.2).
        mtimecmp = new ulong[hartCount];
        msip = new uint[hartCount];
    }

    public void Attach(Hart[] attached) => harts = attached;

    // Host clock ticks per mtime tick: 100 on Linux (Stopwatch counts nanoseconds), where the scaling is exact.
    private static readonly long HostTicksPerTick = Math.Max(1, Stopwatch.Frequency / (long)TimebaseHz);

    /// <summary>The current mtime.</summary>
    public ulong Mtime => MtimeAt(Stopwatch.GetTimestamp());

    /// <summary>What <see cref="Mtime"/> reads at host time <paramref name="timestamp"/> (a <see cref="Stopwatch"/> value).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal ulong MtimeAt(long timestamp)
    {
        long ticks = timestamp - origin;
        // No Int128 here or in HostDeadline: its operators have no precompiled (ReadyToRun) code, so a method using them
        // is JIT-compiled on first use, which for HostDeadline was a hart's first wfi after a migration's resume.
        long scaled = HostTicksPerTick * (long)TimebaseHz == Stopwatch.Frequency
            ? ticks / HostTicksPerTick
            : (long)Math.Floor(ticks * ((double)TimebaseHz / Stopwatch.Frequency));
        return (ulong)(scaled + Volatile.Read(ref offset));
    }

    /// <summary>True while hart <paramref name="hart"/>'s timer interrupt is pending.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public bool TimerPending(int hart) => Mtime >= Volatile.Read(ref mtimecmp[hart]);

    public ulong ReadMtimecmp(int hart) => Volatile.Read(ref mtimecmp[hart]);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public ulong Read(ulong offsetInWindow, int size)
    {
        if (offsetInWindow < 0x4000)
        {
            int h = (int)(offsetInWindow / 4);
            return h < msip.Length && size == 4 && (offsetInWindow & 3) == 0 ? Volatile.Read(ref msip[h]) : 0;
        }
        if (offsetInWindow >= 0x4000 && offsetInWindow < 0x4000 + 8 * (ulong)mtimecmp.Length)
        {
            int h = (int)((offsetInWindow - 0x4000) / 8);
            return Slice(Volatile.Read(ref mtimecmp[h]), offsetInWindow & 7, size);
        }
        if (offsetInWindow >= 0xbff8) return Slice(Mtime, offsetInWindow - 0xbff8, size);
        return 0;
    }

    private static ulong Slice(ulong value, ulong byteOffset, int size)
    {
        ulong v = value >> (int)(8 * byteOffset);
        return size == 8 ? v : v & ((1UL << (8 * size)) - 1);
    }

    private static ulong Merge(ulong old, ulong byteOffset, int size, ulong value)
    {
        if (size == 8) return value;
        int shift = (int)(8 * byteOffset);
        ulong mask = ((1UL << (8 * size)) - 1) << shift;
        return (old & ~mask) | ((value << shift) & mask);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Write(ulong offsetInWindow, int size, ulong value)
    {
        if (offsetInWindow < 0x4000)
        {
            int h = (int)(offsetInWindow / 4);
            if (h >= msip.Length || size != 4 || (offsetInWindow & 3) != 0) return;
            Volatile.Write(ref msip[h], (uint)value & 1);
            harts[h].SetIrqLine(Hart.IrqMsi, (value & 1) != 0);
            return;
        }
        if (offsetInWindow >= 0x4000 && offsetInWindow < 0x4000 + 8 * (ulong)mtimecmp.Length)
        {
            int h = (int)((offsetInWindow - 0x4000) / 8);
            lock (gate) Volatile.Write(ref mtimecmp[h], Merge(mtimecmp[h], offsetInWindow & 7, size, value));
            // MTIP may have changed: the hart looks now, and one parked in wfi takes its new deadline.
            harts[h].Kick();
            return;
        }
        if (offsetInWindow >= 0xbff8)
        {
            lock (gate)
            {
                ulong now = Mtime;
                ulong next = Merge(now, offsetInWindow - 0xbff8, size, value);
                Volatile.Write(ref offset, offset + (long)(next - now));
            }
            foreach (Hart hart in harts) hart.Kick();
        }
    }

    /// <summary>
    /// Hart <paramref name="hart"/> blocks (in wfi, or on a missing post-copy page): the <see cref="Stopwatch"/>
    /// timestamp to wake at for its timer, or <see cref="long.MaxValue"/> (forever) when its timer interrupt is disabled
    /// and cannot wake it. A compare or mtime written meanwhile kicks the hart, which then blocks again with the new
    /// deadline.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public long WakeDeadline(int hart, bool timerEnabled) =>
        timerEnabled ? HostDeadline(Volatile.Read(ref mtimecmp[hart])) : long.MaxValue;

    /// <summary>
    /// The <see cref="Stopwatch"/> timestamp at which <see cref="Mtime"/> reaches <paramref name="compare"/> (never
    /// before it), or <see cref="long.MaxValue"/> when that is too far away to say.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal long HostDeadline(ulong compare)
    {
        // Mtime is (host ticks since origin, scaled) + offset: the host ticks that make it reach compare, rounded up.
        long off = Volatile.Read(ref offset);
        ulong guest;
        if (off >= 0)
        {
            if (compare <= (ulong)off) return 0;
            guest = compare - (ulong)off;
        }
        else
        {
            guest = compare + (ulong)-off;
            if (guest < compare) return long.MaxValue; // past the end of the counter
        }
        if (guest > long.MaxValue / 1000) return long.MaxValue; // centuries away
        long host = HostTicksPerTick * (long)TimebaseHz == Stopwatch.Frequency
            ? (long)guest * HostTicksPerTick
            : (long)Math.Ceiling((long)guest * ((double)Stopwatch.Frequency / TimebaseHz));
        return host > long.MaxValue - origin ? long.MaxValue : origin + host;
    }

    private const uint StateMagic = 0x544e4c43; // "CLNT"
    private const ushort StateVersion = 1;
    // Header (8), hart count (4), reserved (4), mtime (8), host wall clock at save (8); per hart mtimecmp (8), msip (4).
    private const int StateFixedSize = 8 + 4 + 4 + 8 + 8;
    private const int StateHartSize = 8 + 4;

    /// <summary>Bytes in a section <see cref="SaveState"/> makes for this CLINT.</summary>
    public int StateSize => StateFixedSize + mtimecmp.Length * StateHartSize;

    /// <summary>
    /// The state as a section: magic "CLNT", version, size, hart count, the guest's <c>mtime</c> together with the
    /// host's wall clock (UTC, 100 ns ticks) when it was read, then each hart's <c>mtimecmp</c> and <c>msip</c>.
    /// The wall clock is what lets another host carry the guest's time on: the monotonic clock it counts from is
    /// this host's and means nothing elsewhere.
    /// </summary>
    public byte[] SaveState()
    {
        var buf = new byte[StateSize];
        Span<byte> s = buf;
        StateHeader.Write(s, StateMagic, StateVersion);
        BinaryPrimitives.WriteUInt32LittleEndian(s[8..], (uint)mtimecmp.Length);
        lock (gate)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(s[16..], Mtime);
            BinaryPrimitives.WriteInt64LittleEndian(s[24..], DateTime.UtcNow.Ticks);
            int o = StateFixedSize;
            for (int h = 0; h < mtimecmp.Length; h++)
            {
                BinaryPrimitives.WriteUInt64LittleEndian(s[o..], mtimecmp[h]);
                BinaryPrimitives.WriteUInt32LittleEndian(s[(o + 8)..], Volatile.Read(ref msip[h]));
                o += StateHartSize;
            }
        }
        return buf;
    }

    /// <summary>
    /// Replace the state from a section <see cref="SaveState"/> made for as many harts (version 1 only). Throws
    /// <see cref="InvalidDataException"/> naming the problem; the CLINT is unchanged then. <c>mtime</c> goes on from
    /// the saved value plus the host wall-clock time since the save (never less: a wall clock that went back counts as
    /// no time), so the guest sees a migration's downtime as time that passed and never a backward jump. Every
    /// compare value counts at once (QEMU 7.2 loses armed timers here), and <c>msip</c> drives the harts' lines.
    /// </summary>
    public void LoadState(ReadOnlySpan<byte> s)
    {
        StateHeader.Check(s, "clint", StateMagic, StateVersion, StateSize);
        uint count = BinaryPrimitives.ReadUInt32LittleEndian(s[8..]);
        if (count != (uint)mtimecmp.Length) throw new InvalidDataException($"clint section has {count} harts, this board {mtimecmp.Length}");
        for (int h = 0; h < mtimecmp.Length; h++)
        {
            uint bit = BinaryPrimitives.ReadUInt32LittleEndian(s[(StateFixedSize + h * StateHartSize + 8)..]);
            if (bit > 1) throw new InvalidDataException($"clint section gives hart {h} msip {bit}");
        }
        ulong savedMtime = BinaryPrimitives.ReadUInt64LittleEndian(s[16..]);
        long savedWall = BinaryPrimitives.ReadInt64LittleEndian(s[24..]);

        lock (gate)
        {
            // DateTime ticks are 100 ns: exactly one mtime tick at 10 MHz.
            long elapsed = Math.Max(0, DateTime.UtcNow.Ticks - savedWall);
            ulong target = savedMtime + (ulong)elapsed;
            Volatile.Write(ref offset, offset + (long)(target - Mtime));
            for (int h = 0; h < mtimecmp.Length; h++)
            {
                int o = StateFixedSize + h * StateHartSize;
                Volatile.Write(ref mtimecmp[h], BinaryPrimitives.ReadUInt64LittleEndian(s[o..]));
                Volatile.Write(ref msip[h], BinaryPrimitives.ReadUInt32LittleEndian(s[(o + 8)..]));
            }
        }
        for (int h = 0; h < harts.Length; h++)
        {
            harts[h].SetIrqLine(Hart.IrqMsi, Volatile.Read(ref msip[h]) != 0);
        }
    }
}
