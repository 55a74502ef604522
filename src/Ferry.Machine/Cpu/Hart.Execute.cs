using System.Runtime.CompilerServices;

namespace Ferry.Machine.Cpu;

internal sealed unsafe partial class Hart
{
    /// <summary>Instructions a block may run through jumps inside its page before the hart looks at its signal.</summary>
    private const long BlockBudget = 4096;

    /// <summary>
    /// Run instructions of <paramref name="page"/> from <paramref name="start"/> until control leaves the page, the
    /// budget ends, an instruction needs the hart's attention, or a trap. Updates <see cref="pc"/> and instret.
    /// </summary>
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void ExecuteBlock(CodePage page, ulong start)
    {
        ulong* x = this.x;
        Insn* insns = page.Insns;
        ulong pcv = start;
        ulong pageVa = page.Host == null ? 1 : start & ~0xfffUL; // the scratch page matches no jump target
        TlbEntry* tr = tlbRead;
        TlbEntry* tw = tlbWrite;
        // n counts every instruction of this block, the budget's measure; counted is how many of them instret has
        // (out-of-line instructions bring it up to date first). Reset instead, n let a loop with an atomic in it (the
        // demo's dirtier: an amoswap per page) run 100,000s of instructions in one block: no timer, no pause, no kick
        // for up to 2 ms.
        long n = 0, counted = 0;
        int cause;
        while (true)
        {
            Insn* i = insns + ((pcv & 0xfff) >> 1);
            switch (i->Op)
            {
                case Op.Undecoded:
                    if (page.Host == null) goto leave;
                    DecodeSlot(page, pcv);
                    continue;
                case Op.Addi: x[i->Rd] = x[i->Rs1] + (ulong)i->Imm; break;
                case Op.Add: x[i->Rd] = x[i->Rs1] + x[i->Rs2]; break;
                case Op.Sub: x[i->Rd] = x[i->Rs1] - x[i->Rs2]; break;
                case Op.Lui: x[i->Rd] = (ulong)i->Imm; break;
                case Op.Auipc: x[i->Rd] = pcv + (ulong)i->Imm; break;
                case Op.Slti: x[i->Rd] = (long)x[i->Rs1] < i->Imm ? 1UL : 0; break;
                case Op.Sltiu: x[i->Rd] = x[i->Rs1] < (ulong)i->Imm ? 1UL : 0; break;
                case Op.Xori: x[i->Rd] = x[i->Rs1] ^ (ulong)i->Imm; break;
                case Op.Ori: x[i->Rd] = x[i->Rs1] | (ulong)i->Imm; break;
                case Op.Andi: x[i->Rd] = x[i->Rs1] & (ulong)i->Imm; break;
                case Op.Slli: x[i->Rd] = x[i->Rs1] << (int)i->Imm; break;
                case Op.Srli: x[i->Rd] = x[i->Rs1] >> (int)i->Imm; break;
                case Op.Srai: x[i->Rd] = (ulong)((long)x[i->Rs1] >> (int)i->Imm); break;
                case Op.Sll: x[i->Rd] = x[i->Rs1] << (int)(x[i->Rs2] & 63); break;
                case Op.Slt: x[i->Rd] = (long)x[i->Rs1] < (long)x[i->Rs2] ? 1UL : 0; break;
                case Op.Sltu: x[i->Rd] = x[i->Rs1] < x[i->Rs2] ? 1UL : 0; break;
                case Op.Xor: x[i->Rd] = x[i->Rs1] ^ x[i->Rs2]; break;
                case Op.Srl: x[i->Rd] = x[i->Rs1] >> (int)(x[i->Rs2] & 63); break;
                case Op.Sra: x[i->Rd] = (ulong)((long)x[i->Rs1] >> (int)(x[i->Rs2] & 63)); break;
                case Op.Or: x[i->Rd] = x[i->Rs1] | x[i->Rs2]; break;
                case Op.And: x[i->Rd] = x[i->Rs1] & x[i->Rs2]; break;
                case Op.Addiw: x[i->Rd] = (ulong)(long)(int)(x[i->Rs1] + (ulong)i->Imm); break;
                case Op.Slliw: x[i->Rd] = (ulong)(long)(int)((uint)x[i->Rs1] << (int)i->Imm); break;
                case Op.Srliw: x[i->Rd] = (ulong)(long)(int)((uint)x[i->Rs1] >> (int)i->Imm); break;
                case Op.Sraiw: x[i->Rd] = (ulong)(long)((int)x[i->Rs1] >> (int)i->Imm); break;
                case Op.Addw: x[i->Rd] = (ulong)(long)(int)(x[i->Rs1] + x[i->Rs2]); break;
                case Op.Subw: x[i->Rd] = (ulong)(long)(int)(x[i->Rs1] - x[i->Rs2]); break;
                case Op.Sllw: x[i->Rd] = (ulong)(long)(int)((uint)x[i->Rs1] << (int)(x[i->Rs2] & 31)); break;
                case Op.Srlw: x[i->Rd] = (ulong)(long)(int)((uint)x[i->Rs1] >> (int)(x[i->Rs2] & 31)); break;
                case Op.Sraw: x[i->Rd] = (ulong)(long)((int)x[i->Rs1] >> (int)(x[i->Rs2] & 31)); break;

                case Op.Jal:
                    x[i->Rd] = pcv + i->Len;
                    pcv += (ulong)i->Imm;
                    goto jumped;
                case Op.Jalr:
                {
                    ulong target = (x[i->Rs1] + (ulong)i->Imm) & ~1UL;
                    x[i->Rd] = pcv + i->Len;
                    pcv = target;
                    goto jumped;
                }
                case Op.Beq: if (x[i->Rs1] == x[i->Rs2]) { pcv += (ulong)i->Imm; goto jumped; } break;
                case Op.Bne: if (x[i->Rs1] != x[i->Rs2]) { pcv += (ulong)i->Imm; goto jumped; } break;
                case Op.Blt: if ((long)x[i->Rs1] < (long)x[i->Rs2]) { pcv += (ulong)i->Imm; goto jumped; } break;
                case Op.Bge: if ((long)x[i->Rs1] >= (long)x[i->Rs2]) { pcv += (ulong)i->Imm; goto jumped; } break;
                case Op.Bltu: if (x[i->Rs1] < x[i->Rs2]) { pcv += (ulong)i->Imm; goto jumped; } break;
                case Op.Bgeu: if (x[i->Rs1] >= x[i->Rs2]) { pcv += (ulong)i->Imm; goto jumped; } break;

                case Op.Lb: case Op.Lh: case Op.Lw: case Op.Ld: case Op.Lbu: case Op.Lhu: case Op.Lwu:
                {
                    ulong va = x[i->Rs1] + (ulong)i->Imm;
                    int size = LoadSize(i->Op);
                    TlbEntry* e = tr + ((va >> 12) & TlbMask);
                    ulong v;
                    if (e->Tag == (va & ~0xfffUL) && (va & 0xfff) <= (ulong)(0x1000 - size))
                    {
                        byte* h = (byte*)(e->Addend + (long)va);
                        v = size == 8 ? *(ulong*)h : size == 4 ? *(uint*)h : size == 2 ? *(ushort*)h : *h;
                    }
                    else
                    {
                        this.pc = pcv;
                        cause = LoadSlow(va, size, out v);
                        if (cause >= 0) goto trap;
                    }
                    x[i->Rd] = i->Op switch
                    {
                        Op.Lb => (ulong)(long)(sbyte)v,
                        Op.Lh => (ulong)(long)(short)v,
                        Op.Lw => (ulong)(long)(int)v,
                        _ => v,
                    };
                    if (stopBlock) goto nextAndLeave;
                    break;
                }
                case Op.Sb: case Op.Sh: case Op.Sw: case Op.Sd:
                {
                    ulong va = x[i->Rs1] + (ulong)i->Imm;
                    int size = 1 << (i->Op - Op.Sb);
                    TlbEntry* e = tw + ((va >> 12) & TlbMask);
                    ulong v = x[i->Rs2];
                    if (e->Tag == (va & ~0xfffUL) && (va & 0xfff) <= (ulong)(0x1000 - size))
                    {
                        byte* h = (byte*)(e->Addend + (long)va);
                        switch (size)
                        {
                            case 8: *(ulong*)h = v; break;
                            case 4: *(uint*)h = (uint)v; break;
                            case 2: *(ushort*)h = (ushort)v; break;
                            default: *h = (byte)v; break;
                        }
                    }
                    else
                    {
                        this.pc = pcv;
                        cause = StoreSlow(va, size, v);
                        if (cause >= 0) goto trap;
                        if (stopBlock) goto nextAndLeave;
                    }
                    break;
                }

                case Op.Mul: x[i->Rd] = x[i->Rs1] * x[i->Rs2]; break;
                case Op.Mulh: x[i->Rd] = (ulong)Math.BigMul((long)x[i->Rs1], (long)x[i->Rs2], out _); break;
                case Op.Mulhu: x[i->Rd] = Math.BigMul(x[i->Rs1], x[i->Rs2], out _); break;
                case Op.Mulhsu: x[i->Rd] = MulHsu(x[i->Rs1], x[i->Rs2]); break;
                case Op.Div:
                {
                    long a = (long)x[i->Rs1], b = (long)x[i->Rs2];
                    x[i->Rd] = b == 0 ? ulong.MaxValue : (a == long.MinValue && b == -1) ? (ulong)a : (ulong)(a / b);
                    break;
                }
                case Op.Divu:
                {
                    ulong b = x[i->Rs2];
                    x[i->Rd] = b == 0 ? ulong.MaxValue : x[i->Rs1] / b;
                    break;
                }
                case Op.Rem:
                {
                    long a = (long)x[i->Rs1], b = (long)x[i->Rs2];
                    x[i->Rd] = b == 0 ? (ulong)a : (a == long.MinValue && b == -1) ? 0 : (ulong)(a % b);
                    break;
                }
                case Op.Remu:
                {
                    ulong b = x[i->Rs2];
                    x[i->Rd] = b == 0 ? x[i->Rs1] : x[i->Rs1] % b;
                    break;
                }
                case Op.Mulw: x[i->Rd] = (ulong)(long)((int)x[i->Rs1] * (int)x[i->Rs2]); break;
                case Op.Divw:
                {
                    int a = (int)x[i->Rs1], b = (int)x[i->Rs2];
                    x[i->Rd] = (ulong)(long)(b == 0 ? -1 : (a == int.MinValue && b == -1) ? a : a / b);
                    break;
                }
                case Op.Divuw:
                {
                    uint a = (uint)x[i->Rs1], b = (uint)x[i->Rs2];
                    x[i->Rd] = (ulong)(long)(int)(b == 0 ? uint.MaxValue : a / b);
                    break;
                }
                case Op.Remw:
                {
                    int a = (int)x[i->Rs1], b = (int)x[i->Rs2];
                    x[i->Rd] = (ulong)(long)(b == 0 ? a : (a == int.MinValue && b == -1) ? 0 : a % b);
                    break;
                }
                case Op.Remuw:
                {
                    uint a = (uint)x[i->Rs1], b = (uint)x[i->Rs2];
                    x[i->Rd] = (ulong)(long)(int)(b == 0 ? a : a % b);
                    break;
                }

                case Op.CrossPage:
                    this.pc = pcv;
                    instret += (ulong)(n - counted);
                    ExecuteCrossPage(page);
                    return;

                case Op.Fence: break;

                default:
                {
                    // Everything else (system, CSR, atomics, floating point) runs out of line with the hart's fields
                    // up to date: it may read instret or pc, trap, or change the privilege the block was entered with.
                    this.pc = pcv;
                    instret += (ulong)(n - counted);
                    counted = n;
                    int r = ExecuteOther(i);
                    if (r >= 0) { cause = r; goto trap; }
                    if (r == ResultJumped) { instret++; return; }
                    if (r == ResultParked) return;
                    if (r == ResultLeave || stopBlock) goto nextAndLeave;
                    break;
                }
            }
            pcv += i->Len;
            n++;
            if ((pcv & 0xfff) == 0) goto leave; // ran off the page's end
            continue;
        jumped:
            n++;
            if ((pcv & ~0xfffUL) != pageVa || n >= BlockBudget) goto leave;
        }
    nextAndLeave:
        pcv += ((Insn*)(insns + ((pcv & 0xfff) >> 1)))->Len;
        n++;
    leave:
        stopBlock = false;
        this.pc = pcv;
        instret += (ulong)(n - counted);
        // The slots are the page's native memory, freed when the page is collected: it must outlive the walk above.
        GC.KeepAlive(page);
        return;
    trap:
        stopBlock = false;
        this.pc = pcv;
        instret += (ulong)(n - counted);
        GC.KeepAlive(page);
        // A missing post-copy page, and the wait for it interrupted: the instruction has not happened and runs again.
        if (cause == CauseRetry) return;
        RaiseException(cause, faultTval);
    }

    private const int ResultNext = -1;    // continue with the next instruction
    private const int ResultLeave = -2;   // done; end the block after it (mode, mapping or interrupt state changed)
    private const int ResultJumped = -3;  // done and pc set (xret); end the block
    private const int ResultParked = -4;  // wfi: retired and pc set already; end the block

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int LoadSize(Op op) => op switch
    {
        Op.Lb or Op.Lbu => 1,
        Op.Lh or Op.Lhu => 2,
        Op.Lw or Op.Lwu => 4,
        _ => 8,
    };

    private static ulong MulHsu(ulong a, ulong b)
    {
        ulong hi = Math.BigMul(a, b, out _);
        // a is signed: subtract b from the high half when a is negative.
        return (long)a < 0 ? hi - b : hi;
    }
}
