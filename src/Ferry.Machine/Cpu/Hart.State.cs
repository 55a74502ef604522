using System.Buffers.Binary;

namespace Ferry.Machine.Cpu;

internal sealed unsafe partial class Hart
{
    private const uint StateMagic = 0x54524148; // "HART"
    private const ushort StateVersion = 1;

    /// <summary>Bytes in a version-1 hart section: header, 32 x, 32 f, pc, and the CSRs below.</summary>
    public const int StateSize = 8 + 32 * 8 + 32 * 8 + 8 + 8 + 26 * 8 + 16 + 16 * 8;

    /// <summary>
    /// The architectural state as a section: magic, version, size, then little-endian fields in a fixed order. Only
    /// while the hart runs no guest code (paused or not started). The reservation is saved as its virtual address and
    /// value; lr's host address is found again on load.
    /// </summary>
    public byte[] SaveState()
    {
        var buf = new byte[StateSize];
        Span<byte> s = buf;
        StateHeader.Write(s, StateMagic, StateVersion);
        int o = 8;
        void Put(ulong v) { BinaryPrimitives.WriteUInt64LittleEndian(buf.AsSpan(o), v); o += 8; }
        for (int r = 0; r < 32; r++) Put(x[r]);
        for (int r = 0; r < 32; r++) Put(fr[r]);
        Put(pc);
        Put((ulong)priv);
        Put(mstatus); Put(medeleg); Put(mideleg); Put(mie); Put(mipSoft);
        Put(mtvec); Put(mscratch); Put(mepc); Put(mcause); Put(mtval);
        Put(stvec); Put(sscratch); Put(sepc); Put(scause); Put(stval); Put(satp);
        Put(mcounteren); Put(scounteren); Put(mcountinhibit);
        Put(menvcfg); Put(senvcfg);
        Put((ulong)(uint)fflags | ((ulong)(uint)frm << 8));
        Put(instret);
        Put(reservation != null ? 1UL : 0);
        Put(reservationVa);
        Put(reservationValue);
        pmpCfg.CopyTo(buf, o);
        o += 16;
        for (int k = 0; k < 16; k++) Put(pmpAddr[k]);
        if (o != StateSize) throw new InvalidOperationException("hart state layout out of step");
        return buf;
    }

    /// <summary>
    /// Replace the hart's state from a section <see cref="SaveState"/> made. Throws <see cref="InvalidDataException"/>
    /// naming the problem for a section that is short, foreign, of another version, or holds impossible values;
    /// the hart is left unchanged then.
    /// </summary>
    public void LoadState(ReadOnlySpan<byte> s)
    {
        StateHeader.Check(s, "hart", StateMagic, StateVersion, StateSize);
        int o = 8;
        ulong Get(ReadOnlySpan<byte> src) { ulong v = BinaryPrimitives.ReadUInt64LittleEndian(src[o..]); o += 8; return v; }
        // Validate what could put the hart in an impossible state before changing anything.
        int oPriv = 8 + 64 * 8 + 8;
        ulong newPriv = BinaryPrimitives.ReadUInt64LittleEndian(s[oPriv..]);
        if (newPriv is not (ulong)PrvU and not (ulong)PrvS and not (ulong)PrvM) throw new InvalidDataException($"hart section privilege {newPriv} is invalid");
        ulong newSatp = BinaryPrimitives.ReadUInt64LittleEndian(s[(oPriv + 8 + 16 * 8)..]);
        if ((newSatp >> 60) is not 0 and not 8 and not 9) throw new InvalidDataException("hart section satp mode is invalid");

        for (int r = 0; r < 32; r++) x[r] = Get(s);
        x[0] = 0;
        for (int r = 0; r < 32; r++) fr[r] = Get(s);
        pc = Get(s);
        priv = (int)Get(s);
        mstatus = (Get(s) & (MstatusWritable | MstatusSd)) | MstatusXl;
        medeleg = Get(s) & DelegableExceptions;
        mideleg = Get(s) & SupervisorInterrupts;
        mie = Get(s) & InterruptBits;
        mipSoft = Get(s) & SupervisorInterrupts;
        mtvec = Get(s); mscratch = Get(s); mepc = Get(s); mcause = Get(s); mtval = Get(s);
        stvec = Get(s); sscratch = Get(s); sepc = Get(s); scause = Get(s); stval = Get(s); satp = Get(s);
        mcounteren = (uint)Get(s); scounteren = (uint)Get(s); mcountinhibit = (uint)Get(s);
        menvcfg = Get(s) & 1; senvcfg = Get(s) & 1;
        ulong f = Get(s);
        fflags = (int)(f & 0x1f);
        frm = (int)((f >> 8) & 7);
        instret = Get(s);
        bool reserved = Get(s) != 0;
        reservationVa = Get(s);
        reservationValue = Get(s);
        s.Slice(o, 16).CopyTo(pmpCfg);
        o += 16;
        for (int k = 0; k < 16; k++) pmpAddr[k] = Get(s) & ((1UL << 54) - 1);
        PmpChanged();
        UpdateMode();
        FlushTlb();
        DropAllCode();
        // Find lr's host address again; if the page is gone, sc simply fails (allowed by the spec). So it does if a
        // page of the lookup is still missing in post-copy (the state is loaded after it begins): this thread is not
        // the hart's and must not wait for one.
        probing = true;
        try
        {
            reservation = reserved ? ReserveAddress(reservationVa, 8, out _) : null;
            if (reserved && reservation == null) reservation = ReserveAddress(reservationVa, 4, out _);
        }
        finally
        {
            probing = false;
        }
    }
}
