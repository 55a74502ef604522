using System.Runtime.CompilerServices;
namespace Ferry.Machine.Cpu;

/// <summary>
/// Decodes RV64GC instruction bits into <see cref="Insn"/>. Pure and allocation-free; anything that is not a valid
/// RV64IMAFDC+Zicsr+Zifencei encoding becomes <see cref="Op.Illegal"/> with its raw bits in <see cref="Insn.Imm"/>
/// (QEMU reports those bits in <c>mtval</c>).
/// </summary>
internal static class Decoder
{
    private const byte Sink = Hart.SinkRegister;

    /// <summary>The destination index for an integer register: x0 becomes the sink slot.</summary>
    private static byte IntRd(uint r) => r == 0 ? Sink : (byte)r;

    private static Insn Make(Op op, uint rd, uint rs1, uint rs2, long imm, byte len) =>
        new() { Op = op, Rd = IntRd(rd), Rs1 = (byte)rs1, Rs2 = (byte)rs2, Imm = imm, Len = len };

    /// <summary>Same as <see cref="Make"/> but the destination is a floating-point register (f0 is a real register).</summary>
    private static Insn MakeF(Op op, uint rd, uint rs1, uint rs2, long imm, byte len, uint rm = 0) =>
        new() { Op = op, Rd = (byte)rd, Rs1 = (byte)rs1, Rs2 = (byte)rs2, Imm = imm, Len = len, Rm = (byte)rm };

    private static Insn Illegal(uint raw, byte len) => new() { Op = Op.Illegal, Imm = raw, Len = len, Rd = Sink };

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static Insn Decode32(uint raw)
    {
        uint opcode = raw & 0x7f;
        uint rd = (raw >> 7) & 31;
        uint f3 = (raw >> 12) & 7;
        uint rs1 = (raw >> 15) & 31;
        uint rs2 = (raw >> 20) & 31;
        uint f7 = raw >> 25;
        long immI = (int)raw >> 20;
        switch (opcode)
        {
            case 0x37: return Make(Op.Lui, rd, 0, 0, (int)(raw & 0xfffff000), 4);
            case 0x17: return Make(Op.Auipc, rd, 0, 0, (int)(raw & 0xfffff000), 4);
            case 0x6f:
            {
                uint u = ((raw >> 31) << 20) | (raw & 0xff000) | ((raw >> 9) & 0x800) | ((raw >> 20) & 0x7fe);
                long imm = ((long)u << 43) >> 43;
                return Make(Op.Jal, rd, 0, 0, imm, 4);
            }
            case 0x67: return f3 == 0 ? Make(Op.Jalr, rd, rs1, 0, immI, 4) : Illegal(raw, 4);
            case 0x63:
            {
                uint u = ((raw >> 31) << 12) | ((raw << 4) & 0x800) | ((raw >> 20) & 0x7e0) | ((raw >> 7) & 0x1e);
                long imm = ((long)u << 51) >> 51;
                Op op = f3 switch { 0 => Op.Beq, 1 => Op.Bne, 4 => Op.Blt, 5 => Op.Bge, 6 => Op.Bltu, 7 => Op.Bgeu, _ => Op.Illegal };
                return op == Op.Illegal ? Illegal(raw, 4) : Make(op, 0, rs1, rs2, imm, 4);
            }
            case 0x03:
            {
                Op op = f3 switch { 0 => Op.Lb, 1 => Op.Lh, 2 => Op.Lw, 3 => Op.Ld, 4 => Op.Lbu, 5 => Op.Lhu, 6 => Op.Lwu, _ => Op.Illegal };
                return op == Op.Illegal ? Illegal(raw, 4) : Make(op, rd, rs1, 0, immI, 4);
            }
            case 0x23:
            {
                long imm = ((long)(((raw >> 25) << 5) | ((raw >> 7) & 31)) << 52) >> 52;
                Op op = f3 switch { 0 => Op.Sb, 1 => Op.Sh, 2 => Op.Sw, 3 => Op.Sd, _ => Op.Illegal };
                return op == Op.Illegal ? Illegal(raw, 4) : Make(op, 0, rs1, rs2, imm, 4);
            }
            case 0x13:
                switch (f3)
                {
                    case 0: return Make(Op.Addi, rd, rs1, 0, immI, 4);
                    case 2: return Make(Op.Slti, rd, rs1, 0, immI, 4);
                    case 3: return Make(Op.Sltiu, rd, rs1, 0, immI, 4);
                    case 4: return Make(Op.Xori, rd, rs1, 0, immI, 4);
                    case 6: return Make(Op.Ori, rd, rs1, 0, immI, 4);
                    case 7: return Make(Op.Andi, rd, rs1, 0, immI, 4);
                    case 1: return (raw >> 26) == 0 ? Make(Op.Slli, rd, rs1, 0, (raw >> 20) & 63, 4) : Illegal(raw, 4);
                    default:
                        return (raw >> 26) switch
                        {
                            0 => Make(Op.Srli, rd, rs1, 0, (raw >> 20) & 63, 4),
                            0x10 => Make(Op.Srai, rd, rs1, 0, (raw >> 20) & 63, 4),
                            _ => Illegal(raw, 4),
                        };
                }
            case 0x1b:
                switch (f3)
                {
                    case 0: return Make(Op.Addiw, rd, rs1, 0, immI, 4);
                    case 1: return f7 == 0 ? Make(Op.Slliw, rd, rs1, 0, rs2, 4) : Illegal(raw, 4);
                    case 5:
                        return f7 switch
                        {
                            0 => Make(Op.Srliw, rd, rs1, 0, rs2, 4),
                            0x20 => Make(Op.Sraiw, rd, rs1, 0, rs2, 4),
                            _ => Illegal(raw, 4),
                        };
                    default: return Illegal(raw, 4);
                }
            case 0x33:
            {
                Op op = (f7, f3) switch
                {
                    (0, 0) => Op.Add, (0x20, 0) => Op.Sub, (0, 1) => Op.Sll, (0, 2) => Op.Slt, (0, 3) => Op.Sltu,
                    (0, 4) => Op.Xor, (0, 5) => Op.Srl, (0x20, 5) => Op.Sra, (0, 6) => Op.Or, (0, 7) => Op.And,
                    (1, 0) => Op.Mul, (1, 1) => Op.Mulh, (1, 2) => Op.Mulhsu, (1, 3) => Op.Mulhu,
                    (1, 4) => Op.Div, (1, 5) => Op.Divu, (1, 6) => Op.Rem, (1, 7) => Op.Remu,
                    _ => Op.Illegal,
                };
                return op == Op.Illegal ? Illegal(raw, 4) : Make(op, rd, rs1, rs2, 0, 4);
            }
            case 0x3b:
            {
                Op op = (f7, f3) switch
                {
                    (0, 0) => Op.Addw, (0x20, 0) => Op.Subw, (0, 1) => Op.Sllw, (0, 5) => Op.Srlw, (0x20, 5) => Op.Sraw,
                    (1, 0) => Op.Mulw, (1, 4) => Op.Divw, (1, 5) => Op.Divuw, (1, 6) => Op.Remw, (1, 7) => Op.Remuw,
                    _ => Op.Illegal,
                };
                return op == Op.Illegal ? Illegal(raw, 4) : Make(op, rd, rs1, rs2, 0, 4);
            }
            case 0x0f:
                // FENCE's fm/pred/succ and the reserved fields are ignored, as the spec asks of implementations.
                return f3 switch
                {
                    0 => Make(Op.Fence, 0, 0, 0, 0, 4),
                    1 => Make(Op.FenceI, 0, 0, 0, 0, 4),
                    _ => Illegal(raw, 4),
                };
            case 0x73: return DecodeSystem(raw, rd, f3, rs1, rs2, f7);
            case 0x2f: return DecodeAmo(raw, rd, f3, rs1, rs2);
            case 0x07:
                return f3 switch
                {
                    2 => MakeF(Op.Flw, rd, rs1, 0, immI, 4),
                    3 => MakeF(Op.Fld, rd, rs1, 0, immI, 4),
                    _ => Illegal(raw, 4),
                };
            case 0x27:
            {
                long imm = ((long)(((raw >> 25) << 5) | ((raw >> 7) & 31)) << 52) >> 52;
                return f3 switch
                {
                    2 => MakeF(Op.Fsw, 0, rs1, rs2, imm, 4),
                    3 => MakeF(Op.Fsd, 0, rs1, rs2, imm, 4),
                    _ => Illegal(raw, 4),
                };
            }
            case 0x43: case 0x47: case 0x4b: case 0x4f:
            {
                if (!ValidRm(f3)) return Illegal(raw, 4);
                uint fmt = f7 & 3;
                int k = (int)(opcode - 0x43) >> 2;
                Op op = fmt switch
                {
                    0 => (Op)((int)Op.FmaddS + k),
                    1 => (Op)((int)Op.FmaddD + k),
                    _ => Op.Illegal,
                };
                if (op == Op.Illegal) return Illegal(raw, 4);
                Insn i = MakeF(op, rd, rs1, rs2, 0, 4, f3);
                i.Rs3 = (byte)(raw >> 27);
                return i;
            }
            case 0x53: return DecodeOpFp(raw, rd, f3, rs1, rs2, f7);
            default: return Illegal(raw, 4);
        }
    }

    private static bool ValidRm(uint rm) => rm is not 5 and not 6;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static Insn DecodeSystem(uint raw, uint rd, uint f3, uint rs1, uint rs2, uint f7)
    {
        if (f3 == 0)
        {
            switch (raw)
            {
                case 0x00000073: return Make(Op.Ecall, 0, 0, 0, 0, 4);
                case 0x00100073: return Make(Op.Ebreak, 0, 0, 0, 0, 4);
                case 0x30200073: return Make(Op.Mret, 0, 0, 0, 0, 4);
                case 0x10200073: return Make(Op.Sret, 0, 0, 0, 0, 4);
                case 0x10500073: return Make(Op.Wfi, 0, 0, 0, 0, 4);
            }
            if (f7 == 0x09 && rd == 0) return Make(Op.SfenceVma, 0, rs1, rs2, 0, 4);
            return Illegal(raw, 4);
        }
        long csr = raw >> 20;
        Op op = f3 switch
        {
            1 => Op.Csrrw, 2 => Op.Csrrs, 3 => Op.Csrrc, 5 => Op.Csrrwi, 6 => Op.Csrrsi, 7 => Op.Csrrci, _ => Op.Illegal,
        };
        if (op == Op.Illegal) return Illegal(raw, 4);
        // Rs2 keeps the real rd (0 included): csrrw with rd=x0 must not read the CSR (no side effects of the read).
        Insn i = Make(op, rd, rs1, rd, csr, 4);
        return i;
    }

    private static Insn DecodeAmo(uint raw, uint rd, uint f3, uint rs1, uint rs2)
    {
        if (f3 is not 2 and not 3) return Illegal(raw, 4);
        bool d = f3 == 3;
        uint f5 = raw >> 27;
        Op op = f5 switch
        {
            0x02 when rs2 == 0 => d ? Op.LrD : Op.LrW,
            0x03 => d ? Op.ScD : Op.ScW,
            0x01 => d ? Op.AmoswapD : Op.AmoswapW,
            0x00 => d ? Op.AmoaddD : Op.AmoaddW,
            0x04 => d ? Op.AmoxorD : Op.AmoxorW,
            0x0c => d ? Op.AmoandD : Op.AmoandW,
            0x08 => d ? Op.AmoorD : Op.AmoorW,
            0x10 => d ? Op.AmominD : Op.AmominW,
            0x14 => d ? Op.AmomaxD : Op.AmomaxW,
            0x18 => d ? Op.AmominuD : Op.AmominuW,
            0x1c => d ? Op.AmomaxuD : Op.AmomaxuW,
            _ => Op.Illegal,
        };
        if (op == Op.Illegal) return Illegal(raw, 4);
        Insn i = Make(op, rd, rs1, rs2, 0, 4);
        i.Rm = (byte)((raw >> 25) & 3);
        return i;
    }

    private static Insn DecodeOpFp(uint raw, uint rd, uint f3, uint rs1, uint rs2, uint f7)
    {
        // Operations with a rounding mode check it here for the static reserved values; DYN is checked when run.
        switch (f7)
        {
            case 0x00: case 0x01: case 0x04: case 0x05: case 0x08: case 0x09: case 0x0c: case 0x0d:
            {
                if (!ValidRm(f3)) return Illegal(raw, 4);
                bool dbl = (f7 & 1) != 0;
                Op op = (f7 >> 2) switch
                {
                    0 => dbl ? Op.FaddD : Op.FaddS,
                    1 => dbl ? Op.FsubD : Op.FsubS,
                    2 => dbl ? Op.FmulD : Op.FmulS,
                    _ => dbl ? Op.FdivD : Op.FdivS,
                };
                return MakeF(op, rd, rs1, rs2, 0, 4, f3);
            }
            case 0x2c: case 0x2d:
                if (!ValidRm(f3) || rs2 != 0) return Illegal(raw, 4);
                return MakeF(f7 == 0x2c ? Op.FsqrtS : Op.FsqrtD, rd, rs1, 0, 0, 4, f3);
            case 0x10: case 0x11:
            {
                bool dbl = f7 == 0x11;
                Op op = f3 switch
                {
                    0 => dbl ? Op.FsgnjD : Op.FsgnjS,
                    1 => dbl ? Op.FsgnjnD : Op.FsgnjnS,
                    2 => dbl ? Op.FsgnjxD : Op.FsgnjxS,
                    _ => Op.Illegal,
                };
                return op == Op.Illegal ? Illegal(raw, 4) : MakeF(op, rd, rs1, rs2, 0, 4);
            }
            case 0x14: case 0x15:
            {
                bool dbl = f7 == 0x15;
                Op op = f3 switch
                {
                    0 => dbl ? Op.FminD : Op.FminS,
                    1 => dbl ? Op.FmaxD : Op.FmaxS,
                    _ => Op.Illegal,
                };
                return op == Op.Illegal ? Illegal(raw, 4) : MakeF(op, rd, rs1, rs2, 0, 4);
            }
            case 0x20:
                return rs2 == 1 && ValidRm(f3) ? MakeF(Op.FcvtSD, rd, rs1, 0, 0, 4, f3) : Illegal(raw, 4);
            case 0x21:
                return rs2 == 0 && ValidRm(f3) ? MakeF(Op.FcvtDS, rd, rs1, 0, 0, 4, f3) : Illegal(raw, 4);
            case 0x50: case 0x51:
            {
                bool dbl = f7 == 0x51;
                Op op = f3 switch
                {
                    0 => dbl ? Op.FleD : Op.FleS,
                    1 => dbl ? Op.FltD : Op.FltS,
                    2 => dbl ? Op.FeqD : Op.FeqS,
                    _ => Op.Illegal,
                };
                return op == Op.Illegal ? Illegal(raw, 4) : Make(op, rd, rs1, rs2, 0, 4);
            }
            case 0x60: case 0x61:
            {
                if (!ValidRm(f3) || rs2 > 3) return Illegal(raw, 4);
                Op op = (Op)((int)(f7 == 0x61 ? Op.FcvtWD : Op.FcvtWS) + (int)rs2);
                Insn i = Make(op, rd, rs1, 0, 0, 4);
                i.Rm = (byte)f3;
                return i;
            }
            case 0x68: case 0x69:
            {
                if (!ValidRm(f3) || rs2 > 3) return Illegal(raw, 4);
                Op op = (Op)((int)(f7 == 0x69 ? Op.FcvtDW : Op.FcvtSW) + (int)rs2);
                return MakeF(op, rd, rs1, 0, 0, 4, f3);
            }
            case 0x70: case 0x71:
                if (rs2 != 0) return Illegal(raw, 4);
                return f3 switch
                {
                    0 => Make(f7 == 0x70 ? Op.FmvXW : Op.FmvXD, rd, rs1, 0, 0, 4),
                    1 => Make(f7 == 0x70 ? Op.FclassS : Op.FclassD, rd, rs1, 0, 0, 4),
                    _ => Illegal(raw, 4),
                };
            case 0x78: case 0x79:
                if (rs2 != 0 || f3 != 0) return Illegal(raw, 4);
                return MakeF(f7 == 0x78 ? Op.FmvWX : Op.FmvDX, rd, rs1, 0, 0, 4);
            default:
                return Illegal(raw, 4);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static Insn Decode16(uint raw)
    {
        uint f3 = (raw >> 13) & 7;
        uint rdp = ((raw >> 2) & 7) + 8;   // rd' / rs2'
        uint rs1p = ((raw >> 7) & 7) + 8;  // rs1' / rd'
        uint rd = (raw >> 7) & 31;
        uint rs2 = (raw >> 2) & 31;
        long imm6 = ((long)(((raw >> 7) & 0x20) | ((raw >> 2) & 0x1f)) << 58) >> 58;
        switch (raw & 3)
        {
            case 0:
                switch (f3)
                {
                    case 0:
                    {
                        uint imm = ((raw >> 7) & 0x30) | ((raw >> 1) & 0x3c0) | ((raw >> 4) & 4) | ((raw >> 2) & 8);
                        return imm == 0 ? Illegal(raw, 2) : Make(Op.Addi, rdp, 2, 0, imm, 2);
                    }
                    case 1: return MakeF(Op.Fld, rdp, rs1p, 0, UimmD(raw), 2);
                    case 2: return Make(Op.Lw, rdp, rs1p, 0, UimmW(raw), 2);
                    case 3: return Make(Op.Ld, rdp, rs1p, 0, UimmD(raw), 2);
                    case 5: return MakeF(Op.Fsd, 0, rs1p, rdp, UimmD(raw), 2);
                    case 6: return Make(Op.Sw, 0, rs1p, rdp, UimmW(raw), 2);
                    case 7: return Make(Op.Sd, 0, rs1p, rdp, UimmD(raw), 2);
                    default: return Illegal(raw, 2);
                }
            case 1:
                switch (f3)
                {
                    case 0: return Make(Op.Addi, rd, rd, 0, imm6, 2);
                    case 1: return rd == 0 ? Illegal(raw, 2) : Make(Op.Addiw, rd, rd, 0, imm6, 2);
                    case 2: return Make(Op.Addi, rd, 0, 0, imm6, 2);
                    case 3:
                        if (rd == 2)
                        {
                            long imm = ((long)(((raw >> 3) & 0x200) | ((raw >> 2) & 0x10) | ((raw << 1) & 0x40)
                                | ((raw << 4) & 0x180) | ((raw << 3) & 0x20)) << 54) >> 54;
                            return imm == 0 ? Illegal(raw, 2) : Make(Op.Addi, 2, 2, 0, imm, 2);
                        }
                        return imm6 == 0 ? Illegal(raw, 2) : Make(Op.Lui, rd, 0, 0, imm6 << 12, 2);
                    case 4:
                        switch ((raw >> 10) & 3)
                        {
                            case 0: return Make(Op.Srli, rs1p, rs1p, 0, imm6 & 63, 2);
                            case 1: return Make(Op.Srai, rs1p, rs1p, 0, imm6 & 63, 2);
                            case 2: return Make(Op.Andi, rs1p, rs1p, 0, imm6, 2);
                            default:
                            {
                                Op op = (((raw >> 12) & 1) << 2 | ((raw >> 5) & 3)) switch
                                {
                                    0 => Op.Sub, 1 => Op.Xor, 2 => Op.Or, 3 => Op.And, 4 => Op.Subw, 5 => Op.Addw,
                                    _ => Op.Illegal,
                                };
                                return op == Op.Illegal ? Illegal(raw, 2) : Make(op, rs1p, rs1p, rdp, 0, 2);
                            }
                        }
                    case 5:
                    {
                        long imm = ((long)(((raw >> 1) & 0x800) | ((raw >> 7) & 0x10) | ((raw >> 1) & 0x300)
                            | ((raw << 2) & 0x400) | ((raw >> 1) & 0x40) | ((raw << 1) & 0x80) | ((raw >> 2) & 0xe)
                            | ((raw << 3) & 0x20)) << 52) >> 52;
                        return Make(Op.Jal, 0, 0, 0, imm, 2);
                    }
                    default:
                    {
                        long imm = ((long)(((raw >> 4) & 0x100) | ((raw >> 7) & 0x18) | ((raw << 1) & 0xc0)
                            | ((raw >> 2) & 6) | ((raw << 3) & 0x20)) << 55) >> 55;
                        return Make(f3 == 6 ? Op.Beq : Op.Bne, 0, rs1p, 0, imm, 2);
                    }
                }
            case 2:
                switch (f3)
                {
                    case 0: return Make(Op.Slli, rd, rd, 0, imm6 & 63, 2);
                    case 1: return MakeF(Op.Fld, rd, 2, 0, UimmLdsp(raw), 2);
                    case 2:
                    {
                        uint imm = ((raw >> 7) & 0x20) | ((raw >> 2) & 0x1c) | ((raw << 4) & 0xc0);
                        return rd == 0 ? Illegal(raw, 2) : Make(Op.Lw, rd, 2, 0, imm, 2);
                    }
                    case 3: return rd == 0 ? Illegal(raw, 2) : Make(Op.Ld, rd, 2, 0, UimmLdsp(raw), 2);
                    case 4:
                        if (((raw >> 12) & 1) == 0)
                        {
                            if (rs2 == 0) return rd == 0 ? Illegal(raw, 2) : Make(Op.Jalr, 0, rd, 0, 0, 2);
                            return Make(Op.Add, rd, 0, rs2, 0, 2);
                        }
                        if (rs2 == 0) return rd == 0 ? Make(Op.Ebreak, 0, 0, 0, 0, 2) : Make(Op.Jalr, 1, rd, 0, 0, 2);
                        return Make(Op.Add, rd, rd, rs2, 0, 2);
                    case 5: return MakeF(Op.Fsd, 0, 2, rs2, UimmSdsp(raw), 2);
                    case 6:
                    {
                        uint imm = ((raw >> 7) & 0x3c) | ((raw >> 1) & 0xc0);
                        return Make(Op.Sw, 0, 2, rs2, imm, 2);
                    }
                    default: return Make(Op.Sd, 0, 2, rs2, UimmSdsp(raw), 2);
                }
            default:
                return Illegal(raw, 2);
        }
    }

    // c.lw/c.sw: uimm[5:3] = bits 12:10, uimm[2] = bit 6, uimm[6] = bit 5.
    private static uint UimmW(uint raw) => ((raw >> 7) & 0x38) | ((raw >> 4) & 4) | ((raw << 1) & 0x40);

    // c.ld/c.sd/c.fld/c.fsd: uimm[5:3] = bits 12:10, uimm[7:6] = bits 6:5.
    private static uint UimmD(uint raw) => ((raw >> 7) & 0x38) | ((raw << 1) & 0xc0);

    // c.ldsp/c.fldsp: uimm[5] = bit 12, uimm[4:3] = bits 6:5, uimm[8:6] = bits 4:2.
    private static uint UimmLdsp(uint raw) => ((raw >> 7) & 0x20) | ((raw >> 2) & 0x18) | ((raw << 4) & 0x1c0);

    // c.sdsp/c.fsdsp: uimm[5:3] = bits 12:10, uimm[8:6] = bits 9:7.
    private static uint UimmSdsp(uint raw) => ((raw >> 7) & 0x38) | ((raw >> 1) & 0x1c0);
}
