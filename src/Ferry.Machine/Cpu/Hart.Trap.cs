using System.Runtime.CompilerServices;
namespace Ferry.Machine.Cpu;

internal sealed unsafe partial class Hart
{
    /// <summary>Take a synchronous exception at <see cref="pc"/>.</summary>
    private void RaiseException(int cause, ulong tval) => EnterTrap((ulong)cause, tval, interrupt: false);

    /// <summary>Take the highest-priority pending interrupt that is enabled at the current privilege, if any.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void CheckInterrupts()
    {
        ulong pending = ReadMip() & mie;
        if (pending == 0) return;
        ulong toM = pending & ~mideleg;
        if (toM != 0 && (priv < PrvM || (mstatus & MstatusMie) != 0))
        {
            EnterTrap(HighestPriority(toM), 0, interrupt: true);
            return;
        }
        ulong toS = pending & mideleg;
        if (toS != 0 && (priv < PrvS || (priv == PrvS && (mstatus & MstatusSie) != 0)))
        {
            EnterTrap(HighestPriority(toS), 0, interrupt: true);
        }
    }

    /// <summary>The spec's order: MEI, MSI, MTI, SEI, SSI, STI.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static ulong HighestPriority(ulong bits)
    {
        ReadOnlySpan<int> order = [11, 3, 7, 9, 1, 5];
        foreach (int cause in order)
        {
            if ((bits & (1UL << cause)) != 0) return (ulong)cause;
        }
        return 0;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void EnterTrap(ulong cause, ulong tval, bool interrupt)
    {
        ulong deleg = interrupt ? mideleg : medeleg;
        bool toS = priv <= PrvS && ((deleg >> (int)cause) & 1) != 0;
        ulong code = interrupt ? (1UL << 63) | cause : cause;
        if (toS)
        {
            scause = code;
            sepc = pc;
            stval = tval;
            ulong s = mstatus & ~(MstatusSpie | MstatusSie | MstatusSpp);
            if ((mstatus & MstatusSie) != 0) s |= MstatusSpie;
            if (priv == PrvS) s |= MstatusSpp;
            mstatus = s;
            pc = (stvec & ~3UL) + (interrupt && (stvec & 3) == 1 ? 4 * cause : 0);
            priv = PrvS;
        }
        else
        {
            mcause = code;
            mepc = pc;
            mtval = tval;
            ulong s = mstatus & ~(MstatusMpie | MstatusMie | MstatusMpp);
            if ((mstatus & MstatusMie) != 0) s |= MstatusMpie;
            s |= (ulong)priv << 11;
            mstatus = s;
            pc = (mtvec & ~3UL) + (interrupt && (mtvec & 3) == 1 ? 4 * cause : 0);
            priv = PrvM;
        }
        reservation = null;
        UpdateMode();
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Mret()
    {
        int next = (int)((mstatus >> 11) & 3);
        ulong s = mstatus & ~(MstatusMie | MstatusMpp);
        if ((mstatus & MstatusMpie) != 0) s |= MstatusMie;
        s |= MstatusMpie; // MPP becomes U (0)
        if (next != PrvM) s &= ~MstatusMprv;
        mstatus = s;
        priv = next;
        pc = mepc;
        reservation = null;
        UpdateMode();
        Interlocked.Or(ref signal, SigCheck);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Sret()
    {
        int next = (mstatus & MstatusSpp) != 0 ? PrvS : PrvU;
        ulong s = mstatus & ~(MstatusSie | MstatusSpp | MstatusMprv);
        if ((mstatus & MstatusSpie) != 0) s |= MstatusSie;
        s |= MstatusSpie;
        mstatus = s;
        priv = next;
        pc = sepc;
        reservation = null;
        UpdateMode();
        Interlocked.Or(ref signal, SigCheck);
    }
}
