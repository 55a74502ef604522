using System.Runtime.CompilerServices;
namespace Ferry.Machine.Cpu;

internal sealed unsafe partial class Hart
{
    // mstatus fields.
    private const ulong MstatusSie = 1UL << 1, MstatusMie = 1UL << 3, MstatusSpie = 1UL << 5, MstatusMpie = 1UL << 7,
        MstatusSpp = 1UL << 8, MstatusMpp = 3UL << 11, MstatusFs = 3UL << 13, MstatusMprv = 1UL << 17,
        MstatusSum = 1UL << 18, MstatusMxr = 1UL << 19, MstatusTvm = 1UL << 20, MstatusTw = 1UL << 21,
        MstatusTsr = 1UL << 22, MstatusSd = 1UL << 63;

    // UXL = SXL = 2 (64-bit), read-only.
    private const ulong MstatusXl = (2UL << 32) | (2UL << 34);
    private const ulong MstatusWritable = 0x7e79aa;
    private const ulong SstatusReadable = MstatusSie | MstatusSpie | MstatusSpp | MstatusFs | (3UL << 15)
        | MstatusSum | MstatusMxr | (3UL << 32) | MstatusSd;
    private const ulong SstatusWritable = MstatusSie | MstatusSpie | MstatusSpp | MstatusFs | MstatusSum | MstatusMxr;

    // Interrupt bits (mip/mie).
    public const int IrqSsi = 1 << 1, IrqMsi = 1 << 3, IrqSti = 1 << 5, IrqMti = 1 << 7, IrqSei = 1 << 9, IrqMei = 1 << 11;
    private const ulong InterruptBits = 0xaaa;
    private const ulong SupervisorInterrupts = (ulong)(IrqSsi | IrqSti | IrqSei);
    // Exceptions that can be delegated to S (ecall from M cannot; 10 and 14 are reserved).
    private const ulong DelegableExceptions = 0xb3ff;

    /// <summary>misa: RV64 (MXL=2) with A, C, D, F, I, M, S, U.</summary>
    public const ulong Misa = (2UL << 62) | (1 << 0) | (1 << 2) | (1 << 3) | (1 << 5) | (1 << 8) | (1 << 12) | (1 << 18) | (1 << 20);

    private ulong mstatus;
    private ulong medeleg, mideleg, mie;
    private ulong mipSoft; // the bits software writes: SSIP, STIP, SEIP
    private ulong mtvec, mscratch, mepc, mcause, mtval;
    private ulong stvec, sscratch, sepc, scause, stval, satp;
    private uint mcounteren, scounteren, mcountinhibit;
    private ulong menvcfg, senvcfg;
    private int fflags, frm;
    private ulong instret;

    private void ResetCsrs()
    {
        mstatus = MstatusXl;
        medeleg = mideleg = mie = mipSoft = 0;
        mtvec = mscratch = mepc = mcause = mtval = 0;
        stvec = sscratch = sepc = scause = stval = satp = 0;
        mcounteren = scounteren = mcountinhibit = 0;
        menvcfg = senvcfg = 0;
        fflags = frm = 0;
        instret = 0;
        Array.Clear(pmpCfg);
        Array.Clear(pmpAddr);
        pmpActive = 0;
    }

    /// <summary>mip as software sees it: device lines, the timer comparison, and the software-written bits.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private ulong ReadMip()
    {
        ulong v = mipSoft | (uint)Volatile.Read(ref irqLines);
        if (clint.TimerPending(Id)) v |= (ulong)IrqMti;
        return v;
    }

    private bool CounterAllowed(uint index)
    {
        if (priv == PrvM) return true;
        if ((mcounteren & (1u << (int)index)) == 0) return false;
        return priv == PrvS || (scounteren & (1u << (int)index)) != 0;
    }

    /// <summary>Read a CSR; false if it does not exist or may not be read at this privilege (beyond the number's own check).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private bool CsrRead(uint csr, out ulong v)
    {
        v = 0;
        switch (csr)
        {
            case 0x001: if ((mstatus & MstatusFs) == 0) return false; v = (ulong)fflags; return true;
            case 0x002: if ((mstatus & MstatusFs) == 0) return false; v = (ulong)frm; return true;
            case 0x003: if ((mstatus & MstatusFs) == 0) return false; v = (ulong)(fflags | (frm << 5)); return true;
            case >= 0xc00 and <= 0xc1f:
                if (!CounterAllowed(csr - 0xc00)) return false;
                v = csr switch { 0xc00 or 0xc02 => instret, 0xc01 => clint.Mtime, _ => 0 };
                return true;
            case 0x100: v = mstatus & SstatusReadable; return true;
            case 0x104: v = mie & mideleg; return true;
            case 0x105: v = stvec; return true;
            case 0x106: v = scounteren; return true;
            case 0x10a: v = senvcfg; return true;
            case 0x140: v = sscratch; return true;
            case 0x141: v = sepc; return true;
            case 0x142: v = scause; return true;
            case 0x143: v = stval; return true;
            case 0x144: v = ReadMip() & mideleg; return true;
            case 0x180:
                if (priv == PrvS && (mstatus & MstatusTvm) != 0) return false;
                v = satp;
                return true;
            case 0xf11: case 0xf12: case 0xf13: case 0xf15: v = 0; return true;
            case 0xf14: v = (ulong)Id; return true;
            case 0x300: v = mstatus; return true;
            case 0x301: v = Misa; return true;
            case 0x302: v = medeleg; return true;
            case 0x303: v = mideleg; return true;
            case 0x304: v = mie; return true;
            case 0x305: v = mtvec; return true;
            case 0x306: v = mcounteren; return true;
            case 0x30a: v = menvcfg; return true;
            case 0x320: v = mcountinhibit; return true;
            case >= 0x323 and <= 0x33f: v = 0; return true;
            case 0x340: v = mscratch; return true;
            case 0x341: v = mepc; return true;
            case 0x342: v = mcause; return true;
            case 0x343: v = mtval; return true;
            case 0x344: v = ReadMip(); return true;
            case 0x3a0: case 0x3a2:
            {
                int first = (int)(csr - 0x3a0) * 4;
                for (int k = 7; k >= 0; k--) v = (v << 8) | pmpCfg[first + k];
                return true;
            }
            case >= 0x3b0 and <= 0x3bf: v = pmpAddr[csr - 0x3b0]; return true;
            case 0xb00: case 0xb02: v = instret; return true;
            case >= 0xb03 and <= 0xb1f: v = 0; return true;
            default: return false;
        }
    }

    /// <summary>Write a CSR (WARL fields legalised as QEMU does); false if the write is illegal.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private bool CsrWrite(uint csr, ulong v, ulong writeMask = ulong.MaxValue)
    {
        switch (csr)
        {
            case 0x001: fflags = (int)(v & 0x1f); mstatus |= MstatusFs | MstatusSd; return true;
            case 0x002: frm = (int)(v & 7); mstatus |= MstatusFs | MstatusSd; return true;
            case 0x003: fflags = (int)(v & 0x1f); frm = (int)((v >> 5) & 7); mstatus |= MstatusFs | MstatusSd; return true;
            case 0x100: WriteMstatus((mstatus & ~SstatusWritable) | (v & SstatusWritable)); return true;
            case 0x104: mie = (mie & ~mideleg) | (v & mideleg & InterruptBits); return true;
            case 0x105: if ((v & 3) < 2) stvec = v; return true;
            case 0x106: scounteren = (uint)v; return true;
            case 0x10a: senvcfg = v & 1; return true;
            case 0x140: sscratch = v; return true;
            case 0x141: sepc = v & ~1UL; return true;
            case 0x142: scause = v; return true;
            case 0x143: stval = v; return true;
            case 0x144:
            {
                v = (mipSoft & ~writeMask) | (v & writeMask);
                ulong mask = (ulong)IrqSsi & mideleg;
                mipSoft = (mipSoft & ~mask) | (v & mask);
                return true;
            }
            case 0x180:
            {
                if (priv == PrvS && (mstatus & MstatusTvm) != 0) return false;
                ulong mode = v >> 60;
                if (mode is 0 or 8 or 9)
                {
                    satp = v;
                    FlushTlb();
                }
                return true;
            }
            case 0x300: WriteMstatus(v); return true;
            case 0x301: return true; // misa is not writable here (as QEMU's generic CPU)
            case 0x302: medeleg = v & DelegableExceptions; return true;
            case 0x303: mideleg = v & SupervisorInterrupts; return true;
            case 0x304: mie = v & InterruptBits; return true;
            case 0x305: if ((v & 3) < 2) mtvec = v; return true;
            case 0x306: mcounteren = (uint)v; return true;
            case 0x30a: menvcfg = v & 1; return true;
            case 0x320: mcountinhibit = (uint)v & ~2u; return true;
            case >= 0x323 and <= 0x33f: return true;
            case 0x340: mscratch = v; return true;
            case 0x341: mepc = v & ~1UL; return true;
            case 0x342: mcause = v; return true;
            case 0x343: mtval = v; return true;
            case 0x344:
            {
                v = (mipSoft & ~writeMask) | (v & writeMask);
                const ulong mask = SupervisorInterrupts;
                mipSoft = (mipSoft & ~mask) | (v & mask);
                return true;
            }
            case 0x3a0: case 0x3a2:
            {
                int first = (int)(csr - 0x3a0) * 4;
                for (int k = 0; k < 8; k++)
                {
                    if ((pmpCfg[first + k] & 0x80) == 0) pmpCfg[first + k] = (byte)((v >> (8 * k)) & 0x9f);
                }
                PmpChanged();
                return true;
            }
            case >= 0x3b0 and <= 0x3bf:
            {
                int idx = (int)(csr - 0x3b0);
                bool locked = (pmpCfg[idx] & 0x80) != 0
                    || (idx < 15 && (pmpCfg[idx + 1] & 0x80) != 0 && ((pmpCfg[idx + 1] >> 3) & 3) == 1);
                if (!locked) pmpAddr[idx] = v & ((1UL << 54) - 1);
                PmpChanged();
                return true;
            }
            case 0xb00: case 0xb02: instret = v; return true;
            case >= 0xb03 and <= 0xb1f: return true;
            default:
                return CsrRead(csr, out _);
        }
    }

    private void PmpChanged()
    {
        int active = 0;
        foreach (byte c in pmpCfg) if (((c >> 3) & 3) != 0) active++;
        pmpActive = active;
        FlushTlb();
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void WriteMstatus(ulong v)
    {
        ulong old = mstatus;
        ulong next = (old & ~MstatusWritable) | (v & MstatusWritable);
        if (((next >> 11) & 3) == 2) next = (next & ~MstatusMpp) | (old & MstatusMpp); // MPP=2 (H) is not a mode here
        next &= ~MstatusSd;
        if ((next & MstatusFs) == MstatusFs) next |= MstatusSd;
        mstatus = next | MstatusXl;
        if (((old ^ next) & (MstatusSum | MstatusMxr)) != 0) FlushTlb();
        UpdateMode();
    }
}
