using System.Runtime.InteropServices;

namespace Ferry.Machine.Cpu;

/// <summary>
/// One decoded instruction, 16 bytes: the interpreter dispatches on <see cref="Op"/> and never looks at the raw bits
/// again. Compressed instructions decode to the same operations as their 32-bit forms (with <see cref="Len"/> 2).
/// Register numbers are ready to index the register file: a destination x0 becomes <see cref="Hart.SinkRegister"/>
/// so writes need no test; sources keep 0, which always reads as zero.
/// </summary>
[StructLayout(LayoutKind.Sequential)]
internal struct Insn
{
    /// <summary>Immediate, sign-extended; the CSR number for CSR instructions; the raw bits for illegal ones.</summary>
    public long Imm;
    public Op Op;
    public byte Rd;
    public byte Rs1;
    public byte Rs2;
    public byte Rs3;
    /// <summary>2 or 4.</summary>
    public byte Len;
    /// <summary>The rounding-mode field of floating-point instructions; the aq/rl bits of atomics.</summary>
    public byte Rm;
}

/// <summary>Interpreter operations. <see cref="Undecoded"/> (0) marks a cache slot not decoded yet.</summary>
internal enum Op : ushort
{
    Undecoded = 0,
    Illegal,
    /// <summary>A 32-bit instruction whose second half lies on the next page: fetched and run through the slow path.</summary>
    CrossPage,
    Lui, Auipc, Jal, Jalr,
    Beq, Bne, Blt, Bge, Bltu, Bgeu,
    Lb, Lh, Lw, Ld, Lbu, Lhu, Lwu,
    Sb, Sh, Sw, Sd,
    Addi, Slti, Sltiu, Xori, Ori, Andi, Slli, Srli, Srai,
    Add, Sub, Sll, Slt, Sltu, Xor, Srl, Sra, Or, And,
    Addiw, Slliw, Srliw, Sraiw,
    Addw, Subw, Sllw, Srlw, Sraw,
    Fence, FenceI, Ecall, Ebreak, Mret, Sret, Wfi, SfenceVma,
    Csrrw, Csrrs, Csrrc, Csrrwi, Csrrsi, Csrrci,
    Mul, Mulh, Mulhsu, Mulhu, Div, Divu, Rem, Remu,
    Mulw, Divw, Divuw, Remw, Remuw,
    LrW, ScW, AmoswapW, AmoaddW, AmoxorW, AmoandW, AmoorW, AmominW, AmomaxW, AmominuW, AmomaxuW,
    LrD, ScD, AmoswapD, AmoaddD, AmoxorD, AmoandD, AmoorD, AmominD, AmomaxD, AmominuD, AmomaxuD,
    Flw, Fsw, Fld, Fsd,
    FmaddS, FmsubS, FnmsubS, FnmaddS,
    FaddS, FsubS, FmulS, FdivS, FsqrtS, FsgnjS, FsgnjnS, FsgnjxS, FminS, FmaxS,
    FcvtWS, FcvtWuS, FcvtLS, FcvtLuS, FmvXW, FclassS, FeqS, FltS, FleS,
    FcvtSW, FcvtSWu, FcvtSL, FcvtSLu, FmvWX,
    FmaddD, FmsubD, FnmsubD, FnmaddD,
    FaddD, FsubD, FmulD, FdivD, FsqrtD, FsgnjD, FsgnjnD, FsgnjxD, FminD, FmaxD,
    FcvtSD, FcvtDS,
    FcvtWD, FcvtWuD, FcvtLD, FcvtLuD, FmvXD, FclassD, FeqD, FltD, FleD,
    FcvtDW, FcvtDWu, FcvtDL, FcvtDLu, FmvDX,
}
