using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using Ferry.Machine.Cpu;

namespace Ferry.Machine.Board;

/// <summary>
/// The platform-level interrupt controller at 0xc00_0000, a SiFive PLIC configured as QEMU <c>virt</c> configures
/// <c>hw/intc/sifive_plic.c</c>: 96 sources (1 to 95 usable, 0 reserved), priorities 0 to 7, and two contexts per hart,
/// context 2h for hart h's M-mode (drives MEIP) and 2h+1 for its S-mode (drives SEIP).
/// </summary>
/// <remarks>
/// <para>Register map (offsets from the base, 32-bit little-endian words; the RISC-V PLIC specification 1.0.0):</para>
/// <list type="table">
/// <item><term>+0x0 + 4*src</term><description>priority of source src, 3 bits (write any value, keeps value % 8, as QEMU)</description></item>
/// <item><term>+0x1000 + 4*w</term><description>pending bits of sources 32w..32w+31, read-only</description></item>
/// <item><term>+0x2000 + 0x80*ctx + 4*w</term><description>enable bits of context ctx</description></item>
/// <item><term>+0x20_0000 + 0x1000*ctx</term><description>priority threshold of context ctx (value % 8)</description></item>
/// <item><term>+0x20_0004 + 0x1000*ctx</term><description>claim (read) and complete (write)</description></item>
/// </list>
/// <para>Sources are level-triggered, through the specification's gateway: a source is pending while its line is high
/// and it is not in service. A claim returns the highest-priority source that is pending, enabled for the context and
/// above its threshold (ties: the lowest id), clears its pending bit and puts it in service; until it is completed it
/// does not become pending again, whatever its line does. A completion takes it out of service, and if its line is
/// still high it is pending again at once. A line that drops before the claim clears the pending bit (QEMU's PLIC does
/// the same: its pending bit follows the level), so a guest does not claim a device that has already been served.</para>
/// <para>Like QEMU, a completion is accepted whether or not the source is enabled for the completing context (the
/// specification lets hardware ignore it; Linux copes with both). Only 4-byte aligned accesses reach registers (QEMU's
/// valid access size); anything else, and any offset outside the map, reads 0 and ignores writes.</para>
/// <para>Each context's output, "some source is pending, enabled, not in service and above the threshold", drives
/// MEIP or SEIP of its hart through the callback given to the constructor, called only when the output changes.</para>
/// <para>Threading: harts call <see cref="Read"/>/<see cref="Write"/> from their threads and devices call
/// <see cref="SetLevel"/> from theirs; one lock guards everything. The output callback runs under that lock, so the
/// levels a hart sees arrive in order; it must not call back into the PLIC (<see cref="Hart.SetIrqLine"/> does not).</para>
/// </remarks>
public sealed class Plic : IMmioDevice
{
    public const ulong PlicBase = 0xc00_0000;
    /// <summary>QEMU <c>VIRT_PLIC_SIZE(VIRT_CPUS_MAX * 2)</c>: room for 512 harts' contexts, whatever the hart count.</summary>
    public const ulong PlicSize = 0x60_0000;

    /// <summary>Sources including the reserved source 0 (QEMU <c>VIRT_IRQCHIP_NUM_SOURCES</c>).</summary>
    public const int SourceCount = 96;
    /// <summary>Highest priority (QEMU <c>VIRT_IRQCHIP_NUM_PRIORITIES</c>); 0 means "never interrupts".</summary>
    public const int MaxPriority = 7;
    /// <summary>Harts whose contexts fit in <see cref="PlicSize"/>.</summary>
    public const int MaxHarts = 512;

    public const ulong PriorityBase = 0x0;
    public const ulong PendingBase = 0x1000;
    public const ulong EnableBase = 0x2000;
    public const ulong EnableStride = 0x80;
    public const ulong ContextBase = 0x20_0000;
    public const ulong ContextStride = 0x1000;
    public const ulong ThresholdOffset = 0x0;
    public const ulong ClaimOffset = 0x4;

    // 32-bit words in each source bitmap.
    private const int Words = (SourceCount + 31) / 32;

    private const uint StateMagic = 0x43494c50; // "PLIC"
    private const ushort StateVersion = 1;
    // Header (8), source and context counts (2 + 2), priorities (one byte each), level/pending/claimed bitmaps.
    private const int StateFixedSize = 8 + 4 + SourceCount + 3 * Words * 4;
    // Per context: enable bitmap and threshold (4).
    private const int StateContextSize = Words * 4 + 4;

    private readonly object gate = new();
    // Calls (hart, mip bit, level) when a context's output changes; under the lock.
    private readonly Action<int, int, bool> setHartIrq;
    private readonly int contexts;
    // Priority of each source, 0..7; source 0's stays 0.
    private readonly byte[] priority = new byte[SourceCount];
    // The input line of each source, as the device last drove it.
    private readonly uint[] level = new uint[Words];
    // Requests the gateway has forwarded and no context has claimed yet.
    private readonly uint[] pending = new uint[Words];
    // Sources claimed and not yet completed (in service); never pending at the same time.
    private readonly uint[] claimed = new uint[Words];
    // Enable bitmap of context c at [c * Words .. c * Words + Words); source 0's bit stays 0.
    private readonly uint[] enable;
    // Priority threshold of each context, 0..7.
    private readonly byte[] threshold;
    // The level each context's output was last driven to.
    private readonly bool[] output;

    /// <summary>
    /// A PLIC for <paramref name="hartCount"/> harts (1 to <see cref="MaxHarts"/>). <paramref name="setHartIrq"/> is
    /// called as (hart, mip bit, level) with <see cref="Hart.IrqMei"/> or <see cref="Hart.IrqSei"/> when a context's
    /// output changes; a board passes <c>(h, bit, lvl) =&gt; harts[h].SetIrqLine(bit, lvl)</c>. All outputs start low.
    /// </summary>
    public Plic(int hartCount, Action<int, int, bool> setHartIrq)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(hartCount, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(hartCount, MaxHarts);
        ArgumentNullException.ThrowIfNull(setHartIrq);
        this.setHartIrq = setHartIrq;
        HartCount = hartCount;
        contexts = 2 * hartCount;
        enable = new uint[contexts * Words];
        threshold = new byte[contexts];
        output = new bool[contexts];
    }

    public int HartCount { get; }

    /// <summary>Contexts: two per hart, M-mode at 2h and S-mode at 2h+1.</summary>
    public int ContextCount => contexts;

    /// <summary>Bytes in a section <see cref="SaveState"/> makes for this PLIC.</summary>
    public int StateSize => StateFixedSize + contexts * StateContextSize;

    /// <summary>
    /// Drive source <paramref name="source"/>'s input line (1 to <see cref="SourceCount"/> - 1) to
    /// <paramref name="level"/>. Thread-safe; devices call it from their own threads. Out-of-range sources are ignored.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void SetLevel(int source, bool level)
    {
        if (source <= 0 || source >= SourceCount) return;
        int w = source >> 5;
        uint bit = 1u << (source & 31);
        lock (gate)
        {
            this.level[w] = level ? this.level[w] | bit : this.level[w] & ~bit;
            // The gateway forwards a request only for a source not in service.
            if ((claimed[w] & bit) != 0) return;
            uint was = pending[w];
            pending[w] = level ? was | bit : was & ~bit;
            if (pending[w] != was) Update();
        }
    }

    /// <summary>True while context <paramref name="context"/>'s output (its hart's MEIP or SEIP) is high.</summary>
    public bool OutputLevel(int context)
    {
        lock (gate) return output[context];
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public ulong Read(ulong offset, int size)
    {
        if (size != 4 || (offset & 3) != 0) return 0;
        lock (gate)
        {
            if (offset < PriorityBase + 4 * SourceCount) return priority[offset / 4];
            if (offset >= PendingBase && offset < PendingBase + 4 * Words) return pending[(offset - PendingBase) / 4];
            if (TryEnableWord(offset, out int index)) return enable[index];
            if (TryContextRegister(offset, out int ctx, out ulong reg))
            {
                if (reg == ThresholdOffset) return threshold[ctx];
                if (reg == ClaimOffset) return Claim(ctx);
            }
            return 0;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Write(ulong offset, int size, ulong value)
    {
        if (size != 4 || (offset & 3) != 0) return;
        uint v = (uint)value;
        lock (gate)
        {
            if (offset < PriorityBase + 4 * SourceCount)
            {
                int source = (int)(offset / 4);
                if (source == 0) return; // reserved: hardwired to 0
                priority[source] = (byte)(v % (MaxPriority + 1)); // WARL, as QEMU when MaxPriority + 1 is a power of two
                Update();
            }
            else if (TryEnableWord(offset, out int index))
            {
                // Source 0 does not exist: its enable bit is hardwired to 0.
                enable[index] = index % Words == 0 ? v & ~1u : v;
                Update();
            }
            else if (TryContextRegister(offset, out int ctx, out ulong reg))
            {
                if (reg == ThresholdOffset)
                {
                    threshold[ctx] = (byte)(v % (MaxPriority + 1));
                    Update();
                }
                else if (reg == ClaimOffset)
                {
                    Complete(v);
                }
            }
            // Pending bits are read-only; every other offset is unmapped.
        }
    }

    private bool TryEnableWord(ulong offset, out int index)
    {
        index = 0;
        if (offset < EnableBase || offset >= EnableBase + EnableStride * (ulong)contexts) return false;
        ulong ctx = (offset - EnableBase) / EnableStride;
        ulong word = (offset - EnableBase) % EnableStride / 4;
        if (word >= Words) return false;
        index = (int)ctx * Words + (int)word;
        return true;
    }

    private bool TryContextRegister(ulong offset, out int ctx, out ulong reg)
    {
        ctx = 0;
        reg = 0;
        if (offset < ContextBase || offset >= ContextBase + ContextStride * (ulong)contexts) return false;
        ctx = (int)((offset - ContextBase) / ContextStride);
        reg = (offset - ContextBase) % ContextStride;
        return true;
    }

    // The best claimable source for a context: pending, enabled, not in service, priority above the threshold; the
    // lowest id among equals. 0 if none.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private int Best(int ctx)
    {
        int best = 0;
        int bestPriority = threshold[ctx];
        int e = ctx * Words;
        for (int w = 0; w < Words; w++)
        {
            uint ready = pending[w] & ~claimed[w] & enable[e + w];
            while (ready != 0)
            {
                int source = (w << 5) + System.Numerics.BitOperations.TrailingZeroCount(ready);
                ready &= ready - 1;
                if (priority[source] > bestPriority)
                {
                    best = source;
                    bestPriority = priority[source];
                }
            }
        }
        return best;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private uint Claim(int ctx)
    {
        int source = Best(ctx);
        if (source != 0)
        {
            int w = source >> 5;
            uint bit = 1u << (source & 31);
            pending[w] &= ~bit;
            claimed[w] |= bit;
            Update();
        }
        return (uint)source;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Complete(uint source)
    {
        if (source == 0 || source >= SourceCount) return;
        int w = (int)(source >> 5);
        uint bit = 1u << (int)(source & 31);
        if ((claimed[w] & bit) == 0) return;
        claimed[w] &= ~bit;
        // A line still high is a new request from the gateway.
        pending[w] |= level[w] & bit;
        Update();
    }

    // Recompute every context's output and drive the ones that changed.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Update()
    {
        for (int ctx = 0; ctx < contexts; ctx++)
        {
            bool now = Best(ctx) != 0;
            if (now == output[ctx]) continue;
            output[ctx] = now;
            setHartIrq(ctx >> 1, (ctx & 1) == 0 ? Hart.IrqMei : Hart.IrqSei, now);
        }
    }

    /// <summary>
    /// The state as a section of <see cref="StateSize"/> bytes: magic "PLIC", version, size, the source and context
    /// counts, each source's priority, the line, pending and in-service bitmaps, then each context's enable bitmap and
    /// threshold. Lines are saved too, so a completion after a restore re-pends a source whose line is still high.
    /// </summary>
    public byte[] SaveState()
    {
        var buf = new byte[StateSize];
        Span<byte> s = buf;
        StateHeader.Write(s, StateMagic, StateVersion);
        BinaryPrimitives.WriteUInt16LittleEndian(s[8..], SourceCount);
        BinaryPrimitives.WriteUInt16LittleEndian(s[10..], (ushort)contexts);
        int o = 12;
        void Put(uint v) { BinaryPrimitives.WriteUInt32LittleEndian(buf.AsSpan(o), v); o += 4; }
        lock (gate)
        {
            priority.CopyTo(buf, o);
            o += SourceCount;
            foreach (uint v in level) Put(v);
            foreach (uint v in pending) Put(v);
            foreach (uint v in claimed) Put(v);
            for (int ctx = 0; ctx < contexts; ctx++)
            {
                for (int w = 0; w < Words; w++) Put(enable[ctx * Words + w]);
                Put(threshold[ctx]);
            }
        }
        if (o != StateSize) throw new InvalidOperationException("plic state layout out of step");
        return buf;
    }

    /// <summary>
    /// Replace the state from a section <see cref="SaveState"/> made for a PLIC with as many harts (version 1 only).
    /// Throws <see cref="InvalidDataException"/> naming the problem for a section that is short, foreign, of another
    /// version or shape, or holds impossible values; the PLIC is left unchanged then. Then drives every output whose
    /// level changed.
    /// </summary>
    public void LoadState(ReadOnlySpan<byte> s)
    {
        StateHeader.Check(s, "plic", StateMagic, StateVersion, StateSize);
        int sources = BinaryPrimitives.ReadUInt16LittleEndian(s[8..]);
        if (sources != SourceCount) throw new InvalidDataException($"plic section has {sources} sources, this board {SourceCount}");
        int ctxs = BinaryPrimitives.ReadUInt16LittleEndian(s[10..]);
        if (ctxs != contexts) throw new InvalidDataException($"plic section has {ctxs} contexts, this board {contexts}");

        int o = 12;
        ReadOnlySpan<byte> prio = s.Slice(o, SourceCount);
        o += SourceCount;
        if (prio[0] != 0) throw new InvalidDataException("plic section gives reserved source 0 a priority");
        foreach (byte p in prio)
        {
            if (p > MaxPriority) throw new InvalidDataException($"plic section holds priority {p}, above {MaxPriority}");
        }
        var lines = new uint[Words];
        var pend = new uint[Words];
        var busy = new uint[Words];
        uint Get(ReadOnlySpan<byte> span) { uint v = BinaryPrimitives.ReadUInt32LittleEndian(span[o..]); o += 4; return v; }
        for (int w = 0; w < Words; w++) lines[w] = Get(s);
        for (int w = 0; w < Words; w++) pend[w] = Get(s);
        for (int w = 0; w < Words; w++) busy[w] = Get(s);
        var en = new uint[contexts * Words];
        var thr = new byte[contexts];
        for (int ctx = 0; ctx < contexts; ctx++)
        {
            for (int w = 0; w < Words; w++) en[ctx * Words + w] = Get(s);
            uint t = Get(s);
            if (t > MaxPriority) throw new InvalidDataException($"plic section gives context {ctx} threshold {t}, above {MaxPriority}");
            thr[ctx] = (byte)t;
        }
        // Source 0 never has a line, a request or an enable bit (there are exactly 96 sources: no spare bits above).
        if (((lines[0] | pend[0] | busy[0]) & 1) != 0) throw new InvalidDataException("plic section drives reserved source 0");
        for (int ctx = 0; ctx < contexts; ctx++)
        {
            if ((en[ctx * Words] & 1) != 0) throw new InvalidDataException($"plic section enables reserved source 0 for context {ctx}");
        }
        for (int w = 0; w < Words; w++)
        {
            if ((pend[w] & busy[w]) != 0) throw new InvalidDataException("plic section has a source both pending and in service");
        }

        lock (gate)
        {
            prio.CopyTo(priority);
            lines.CopyTo(level, 0);
            pend.CopyTo(pending, 0);
            busy.CopyTo(claimed, 0);
            en.CopyTo(enable, 0);
            thr.CopyTo(threshold, 0);
            Update();
        }
    }
}
