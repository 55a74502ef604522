using System.Runtime.CompilerServices;
namespace Ferry.Machine.Cpu;

internal sealed unsafe partial class Hart
{
    /// <summary>
    /// System, CSR, atomic and floating-point instructions, run out of the block loop with <see cref="pc"/> current.
    /// Returns <see cref="ResultNext"/>, <see cref="ResultLeave"/>, <see cref="ResultJumped"/> or an exception cause
    /// (with <see cref="faultTval"/> set).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private int ExecuteOther(Insn* i)
    {
        switch (i->Op)
        {
            case Op.Illegal: return IllegalInstruction(i);
            case Op.FenceI:
                DropAllCode();
                return ResultLeave;
            case Op.Ecall:
                faultTval = 0;
                return priv == PrvU ? CauseEcallU : priv == PrvS ? CauseEcallS : CauseEcallM;
            case Op.Ebreak:
                faultTval = pc;
                return CauseBreakpoint;
            case Op.Mret:
                if (priv != PrvM) return IllegalInstruction(i);
                Mret();
                return ResultJumped;
            case Op.Sret:
                if (priv == PrvU || (priv == PrvS && (mstatus & MstatusTsr) != 0)) return IllegalInstruction(i);
                Sret();
                return ResultJumped;
            case Op.Wfi:
                if (priv == PrvU || (priv == PrvS && (mstatus & MstatusTw) != 0)) return IllegalInstruction(i);
                // Retire wfi before parking: a pause may read the state while we wait.
                pc += i->Len;
                instret++;
                WaitForInterrupt();
                return ResultParked;
            case Op.SfenceVma:
                if (priv == PrvU || (priv == PrvS && (mstatus & MstatusTvm) != 0)) return IllegalInstruction(i);
                FlushTlb();
                return ResultLeave;
            case >= Op.Csrrw and <= Op.Csrrci:
                return ExecuteCsr(i);
            case >= Op.LrW and <= Op.AmomaxuD:
                return ExecuteAtomic(i);
            case >= Op.Flw and <= Op.FmvDX:
                if ((mstatus & MstatusFs) == 0) return IllegalInstruction(i);
                return ExecuteFloat(i);
            default:
                throw new InvalidOperationException($"unhandled op {i->Op}");
        }
    }

    private int IllegalInstruction(Insn* i)
    {
        faultTval = i->Op == Op.Illegal ? (ulong)i->Imm : RawBits(i);
        return CauseIllegal;
    }

    /// <summary>The instruction bits at pc, for mtval on an illegal instruction that decoded to a real operation.</summary>
    private ulong RawBits(Insn* i)
    {
        ulong saved = faultTval;
        int c = LoadFetchBits(pc, i->Len, out ulong bits);
        faultTval = saved;
        return c < 0 ? bits : 0;
    }

    private int LoadFetchBits(ulong va, int len, out ulong bits)
    {
        bits = 0;
        for (int k = 0; k < len; k += 2)
        {
            int c = Translate(va + (ulong)k, AccFetch, priv, 2, out ulong pa);
            if (c >= 0) return c;
            Memory.MemoryRegion? r = bus.RegionAt(pa, 2);
            if (r == null) return CauseFetchAccess;
            if (!PageReady(r, pa, system: true)) return CauseRetry;
            bits |= (ulong)*(ushort*)(r.Host + (pa - r.Base)) << (8 * k);
        }
        return -1;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private int ExecuteCsr(Insn* i)
    {
        uint csr = (uint)i->Imm;
        bool immediate = i->Op >= Op.Csrrwi;
        ulong src = immediate ? i->Rs1 : x[i->Rs1];
        Op kind = immediate ? i->Op - 3 : i->Op;
        bool write = kind == Op.Csrrw || i->Rs1 != 0;
        if (((csr >> 8) & 3) > (uint)priv) return IllegalInstruction(i);
        if (write && (csr >> 10) == 3) return IllegalInstruction(i);
        if (!CsrRead(csr, out ulong old)) return IllegalInstruction(i);
        if (write)
        {
            ulong value = kind == Op.Csrrw ? src : kind == Op.Csrrs ? old | src : old & ~src;
            // csrrs/csrrc change only the bits set in rs1 (as QEMU's write mask): for mip that keeps a pending
            // device line, which the read includes, from being latched into the software-written bits.
            ulong writeMask = kind == Op.Csrrw ? ulong.MaxValue : src;
            if (!CsrWrite(csr, value, writeMask)) return IllegalInstruction(i);
        }
        x[i->Rd] = old;
        if (!write) return ResultNext;
        Interlocked.Or(ref signal, SigCheck); // enables, masks or pending bits may have changed
        return ResultLeave;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private int ExecuteAtomic(Insn* i)
    {
        ulong va = x[i->Rs1];
        bool d = i->Op >= Op.LrD;
        int size = d ? 8 : 4;
        Op op = d ? i->Op - (Op.LrD - Op.LrW) : i->Op;
        int cause;
        if (op == Op.LrW)
        {
            byte* h = ReserveAddress(va, size, out cause);
            if (h == null) return cause;
            ulong v = d ? Volatile.Read(ref *(ulong*)h) : Volatile.Read(ref *(uint*)h);
            reservation = h;
            reservationVa = va;
            reservationValue = v;
            x[i->Rd] = d ? v : (ulong)(long)(int)v;
            return ResultNext;
        }
        if (op == Op.ScW)
        {
            // As QEMU: an sc to another address than the reservation fails without touching memory.
            if (reservation == null || reservationVa != va)
            {
                reservation = null;
                x[i->Rd] = 1;
                return ResultNext;
            }
            byte* h = AtomicAddress(va, size, out cause);
            if (h == null) return cause;
            bool ok = h == reservation && (d
                ? Interlocked.CompareExchange(ref *(long*)h, (long)x[i->Rs2], (long)reservationValue) == (long)reservationValue
                : Interlocked.CompareExchange(ref *(int*)h, (int)x[i->Rs2], (int)reservationValue) == (int)reservationValue);
            reservation = null;
            x[i->Rd] = ok ? 0UL : 1UL;
            return ResultNext;
        }
        byte* p = AtomicAddress(va, size, out cause);
        if (p == null) return cause;
        ulong src = x[i->Rs2];
        ulong old;
        if (d)
        {
            ref long m = ref *(long*)p;
            long s = (long)src;
            old = (ulong)(op switch
            {
                Op.AmoswapW => Interlocked.Exchange(ref m, s),
                Op.AmoaddW => Interlocked.Add(ref m, s) - s,
                Op.AmoandW => Interlocked.And(ref m, s),
                Op.AmoorW => Interlocked.Or(ref m, s),
                _ => AmoLoop64(ref m, s, op),
            });
        }
        else
        {
            ref int m = ref *(int*)p;
            int s = (int)src;
            old = (ulong)(long)(op switch
            {
                Op.AmoswapW => Interlocked.Exchange(ref m, s),
                Op.AmoaddW => Interlocked.Add(ref m, s) - s,
                Op.AmoandW => Interlocked.And(ref m, s),
                Op.AmoorW => Interlocked.Or(ref m, s),
                _ => AmoLoop32(ref m, s, op),
            });
        }
        x[i->Rd] = old;
        return ResultNext;
    }

    private ulong reservationVa;

    private static long AmoLoop64(ref long m, long s, Op op)
    {
        while (true)
        {
            long cur = Volatile.Read(ref m);
            long next = op switch
            {
                Op.AmoxorW => cur ^ s,
                Op.AmominW => Math.Min(cur, s),
                Op.AmomaxW => Math.Max(cur, s),
                Op.AmominuW => (long)Math.Min((ulong)cur, (ulong)s),
                _ => (long)Math.Max((ulong)cur, (ulong)s),
            };
            if (Interlocked.CompareExchange(ref m, next, cur) == cur) return cur;
        }
    }

    private static int AmoLoop32(ref int m, int s, Op op)
    {
        while (true)
        {
            int cur = Volatile.Read(ref m);
            int next = op switch
            {
                Op.AmoxorW => cur ^ s,
                Op.AmominW => Math.Min(cur, s),
                Op.AmomaxW => Math.Max(cur, s),
                Op.AmominuW => (int)Math.Min((uint)cur, (uint)s),
                _ => (int)Math.Max((uint)cur, (uint)s),
            };
            if (Interlocked.CompareExchange(ref m, next, cur) == cur) return cur;
        }
    }

    /// <summary>A load of <paramref name="size"/> bytes through the TLB or the slow path (for FP loads).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private int LoadData(ulong va, int size, out ulong v)
    {
        TlbEntry* e = tlbRead + ((va >> 12) & TlbMask);
        if (e->Tag == (va & ~0xfffUL) && (va & 0xfff) <= (ulong)(0x1000 - size))
        {
            byte* h = (byte*)(e->Addend + (long)va);
            v = size == 8 ? *(ulong*)h : *(uint*)h;
            return -1;
        }
        return LoadSlow(va, size, out v);
    }

    private int StoreData(ulong va, int size, ulong v)
    {
        TlbEntry* e = tlbWrite + ((va >> 12) & TlbMask);
        if (e->Tag == (va & ~0xfffUL) && (va & 0xfff) <= (ulong)(0x1000 - size))
        {
            byte* h = (byte*)(e->Addend + (long)va);
            if (size == 8) *(ulong*)h = v;
            else *(uint*)h = (uint)v;
            return -1;
        }
        return StoreSlow(va, size, v);
    }

    private const ulong Box = 0xffff_ffff_0000_0000UL;

    /// <summary>A single-precision operand: a value not NaN-boxed reads as the canonical NaN.</summary>
    private uint S(int r)
    {
        ulong v = fr[r];
        return (v & Box) == Box ? (uint)v : SoftFloat.CanonicalNaN32;
    }

    private void SetS(int r, uint v)
    {
        fr[r] = Box | v;
        mstatus |= MstatusFs | MstatusSd;
    }

    private void SetD(int r, ulong v)
    {
        fr[r] = v;
        mstatus |= MstatusFs | MstatusSd;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private int ExecuteFloat(Insn* i)
    {
        int cause;
        switch (i->Op)
        {
            case Op.Flw:
            {
                cause = LoadData(x[i->Rs1] + (ulong)i->Imm, 4, out ulong v);
                if (cause >= 0) return cause;
                SetS(i->Rd, (uint)v);
                return ResultNext;
            }
            case Op.Fld:
            {
                cause = LoadData(x[i->Rs1] + (ulong)i->Imm, 8, out ulong v);
                if (cause >= 0) return cause;
                SetD(i->Rd, v);
                return ResultNext;
            }
            case Op.Fsw: return StoreData(x[i->Rs1] + (ulong)i->Imm, 4, fr[i->Rs2]) is var c1 && c1 >= 0 ? c1 : ResultNext;
            case Op.Fsd: return StoreData(x[i->Rs1] + (ulong)i->Imm, 8, fr[i->Rs2]) is var c2 && c2 >= 0 ? c2 : ResultNext;
        }
        int rm = i->Rm == RoundingMode.Dyn ? frm : i->Rm;
        int fl = 0;
        int rd = i->Rd, a = i->Rs1, b = i->Rs2, c = i->Rs3;
        const uint Sign32 = 0x8000_0000;
        const ulong Sign64 = 0x8000_0000_0000_0000;
        switch (i->Op)
        {
            // Operations that round: the dynamic mode must be valid.
            case Op.FmaddS: case Op.FmsubS: case Op.FnmsubS: case Op.FnmaddS:
            case Op.FaddS: case Op.FsubS: case Op.FmulS: case Op.FdivS: case Op.FsqrtS:
            case Op.FcvtWS: case Op.FcvtWuS: case Op.FcvtLS: case Op.FcvtLuS:
            case Op.FcvtSW: case Op.FcvtSWu: case Op.FcvtSL: case Op.FcvtSLu:
            case Op.FmaddD: case Op.FmsubD: case Op.FnmsubD: case Op.FnmaddD:
            case Op.FaddD: case Op.FsubD: case Op.FmulD: case Op.FdivD: case Op.FsqrtD:
            case Op.FcvtSD: case Op.FcvtDS:
            case Op.FcvtWD: case Op.FcvtWuD: case Op.FcvtLD: case Op.FcvtLuD:
            case Op.FcvtDW: case Op.FcvtDWu: case Op.FcvtDL: case Op.FcvtDLu:
                if (rm > RoundingMode.Rmm) return IllegalInstruction(i);
                break;
        }
        switch (i->Op)
        {
            case Op.FmaddS: SetS(rd, SoftFloat.F32MulAdd(S(a), S(b), S(c), rm, ref fl)); break;
            case Op.FmsubS: SetS(rd, SoftFloat.F32MulAdd(S(a), S(b), S(c) ^ Sign32, rm, ref fl)); break;
            case Op.FnmsubS: SetS(rd, SoftFloat.F32MulAdd(S(a) ^ Sign32, S(b), S(c), rm, ref fl)); break;
            case Op.FnmaddS: SetS(rd, SoftFloat.F32MulAdd(S(a) ^ Sign32, S(b), S(c) ^ Sign32, rm, ref fl)); break;
            case Op.FaddS: SetS(rd, SoftFloat.F32Add(S(a), S(b), rm, ref fl)); break;
            case Op.FsubS: SetS(rd, SoftFloat.F32Sub(S(a), S(b), rm, ref fl)); break;
            case Op.FmulS: SetS(rd, SoftFloat.F32Mul(S(a), S(b), rm, ref fl)); break;
            case Op.FdivS: SetS(rd, SoftFloat.F32Div(S(a), S(b), rm, ref fl)); break;
            case Op.FsqrtS: SetS(rd, SoftFloat.F32Sqrt(S(a), rm, ref fl)); break;
            case Op.FsgnjS: SetS(rd, (S(a) & ~Sign32) | (S(b) & Sign32)); break;
            case Op.FsgnjnS: SetS(rd, (S(a) & ~Sign32) | (~S(b) & Sign32)); break;
            case Op.FsgnjxS: SetS(rd, S(a) ^ (S(b) & Sign32)); break;
            case Op.FminS: SetS(rd, SoftFloat.F32Min(S(a), S(b), ref fl)); break;
            case Op.FmaxS: SetS(rd, SoftFloat.F32Max(S(a), S(b), ref fl)); break;
            case Op.FcvtWS: x[rd] = (ulong)SoftFloat.F32ToI32(S(a), rm, ref fl); break;
            case Op.FcvtWuS: x[rd] = (ulong)SoftFloat.F32ToU32(S(a), rm, ref fl); break;
            case Op.FcvtLS: x[rd] = (ulong)SoftFloat.F32ToI64(S(a), rm, ref fl); break;
            case Op.FcvtLuS: x[rd] = SoftFloat.F32ToU64(S(a), rm, ref fl); break;
            case Op.FmvXW: x[rd] = (ulong)(long)(int)fr[a]; break;
            case Op.FclassS: x[rd] = SoftFloat.F32Class(S(a)); break;
            case Op.FeqS: x[rd] = SoftFloat.F32Eq(S(a), S(b), ref fl) ? 1UL : 0; break;
            case Op.FltS: x[rd] = SoftFloat.F32Lt(S(a), S(b), ref fl) ? 1UL : 0; break;
            case Op.FleS: x[rd] = SoftFloat.F32Le(S(a), S(b), ref fl) ? 1UL : 0; break;
            case Op.FcvtSW: SetS(rd, SoftFloat.I32ToF32((int)x[a], rm, ref fl)); break;
            case Op.FcvtSWu: SetS(rd, SoftFloat.U32ToF32((uint)x[a], rm, ref fl)); break;
            case Op.FcvtSL: SetS(rd, SoftFloat.I64ToF32((long)x[a], rm, ref fl)); break;
            case Op.FcvtSLu: SetS(rd, SoftFloat.U64ToF32(x[a], rm, ref fl)); break;
            case Op.FmvWX: SetS(rd, (uint)x[a]); break;

            case Op.FmaddD: SetD(rd, SoftFloat.F64MulAdd(fr[a], fr[b], fr[c], rm, ref fl)); break;
            case Op.FmsubD: SetD(rd, SoftFloat.F64MulAdd(fr[a], fr[b], fr[c] ^ Sign64, rm, ref fl)); break;
            case Op.FnmsubD: SetD(rd, SoftFloat.F64MulAdd(fr[a] ^ Sign64, fr[b], fr[c], rm, ref fl)); break;
            case Op.FnmaddD: SetD(rd, SoftFloat.F64MulAdd(fr[a] ^ Sign64, fr[b], fr[c] ^ Sign64, rm, ref fl)); break;
            case Op.FaddD: SetD(rd, SoftFloat.F64Add(fr[a], fr[b], rm, ref fl)); break;
            case Op.FsubD: SetD(rd, SoftFloat.F64Sub(fr[a], fr[b], rm, ref fl)); break;
            case Op.FmulD: SetD(rd, SoftFloat.F64Mul(fr[a], fr[b], rm, ref fl)); break;
            case Op.FdivD: SetD(rd, SoftFloat.F64Div(fr[a], fr[b], rm, ref fl)); break;
            case Op.FsqrtD: SetD(rd, SoftFloat.F64Sqrt(fr[a], rm, ref fl)); break;
            case Op.FsgnjD: SetD(rd, (fr[a] & ~Sign64) | (fr[b] & Sign64)); break;
            case Op.FsgnjnD: SetD(rd, (fr[a] & ~Sign64) | (~fr[b] & Sign64)); break;
            case Op.FsgnjxD: SetD(rd, fr[a] ^ (fr[b] & Sign64)); break;
            case Op.FminD: SetD(rd, SoftFloat.F64Min(fr[a], fr[b], ref fl)); break;
            case Op.FmaxD: SetD(rd, SoftFloat.F64Max(fr[a], fr[b], ref fl)); break;
            case Op.FcvtSD: SetS(rd, SoftFloat.F64ToF32(fr[a], rm, ref fl)); break;
            case Op.FcvtDS: SetD(rd, SoftFloat.F32ToF64(S(a), ref fl)); break;
            case Op.FcvtWD: x[rd] = (ulong)SoftFloat.F64ToI32(fr[a], rm, ref fl); break;
            case Op.FcvtWuD: x[rd] = (ulong)SoftFloat.F64ToU32(fr[a], rm, ref fl); break;
            case Op.FcvtLD: x[rd] = (ulong)SoftFloat.F64ToI64(fr[a], rm, ref fl); break;
            case Op.FcvtLuD: x[rd] = SoftFloat.F64ToU64(fr[a], rm, ref fl); break;
            case Op.FmvXD: x[rd] = fr[a]; break;
            case Op.FclassD: x[rd] = SoftFloat.F64Class(fr[a]); break;
            case Op.FeqD: x[rd] = SoftFloat.F64Eq(fr[a], fr[b], ref fl) ? 1UL : 0; break;
            case Op.FltD: x[rd] = SoftFloat.F64Lt(fr[a], fr[b], ref fl) ? 1UL : 0; break;
            case Op.FleD: x[rd] = SoftFloat.F64Le(fr[a], fr[b], ref fl) ? 1UL : 0; break;
            case Op.FcvtDW: SetD(rd, SoftFloat.I32ToF64((int)x[a], rm, ref fl)); break;
            case Op.FcvtDWu: SetD(rd, SoftFloat.U32ToF64((uint)x[a], rm, ref fl)); break;
            case Op.FcvtDL: SetD(rd, SoftFloat.I64ToF64((long)x[a], rm, ref fl)); break;
            case Op.FcvtDLu: SetD(rd, SoftFloat.U64ToF64(x[a], rm, ref fl)); break;
            case Op.FmvDX: SetD(rd, x[a]); break;
            default: throw new InvalidOperationException($"unhandled op {i->Op}");
        }
        if (fl != 0)
        {
            fflags |= fl;
            mstatus |= MstatusFs | MstatusSd;
        }
        return ResultNext;
    }
}
