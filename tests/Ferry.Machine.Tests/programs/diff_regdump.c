/* diff_regdump (differential): prints every x register after a deterministic chain of integer operations, and
 * the CSR values that WARL rules decide after writes of all ones and of illegal values. The output must equal
 * QEMU's byte for byte. Fields that QEMU 7.2 exposes only because its CPU model carries H-extension or other
 * state even with h=false (a quirk, not the spec) are masked out and named where they are masked:
 *   - VS-level interrupt bits 2, 6, 10 and bit 13 (LCOFI) are writable in mie/mip/mideleg even with h=false and
 *     sscofpmf=false: interrupt CSRs are printed & 0xbbb (bits 0-11 minus the VS bits);
 *   - medeleg accepts bits 10 (ecall from VS), 11 (ecall from M: the spec says read-only zero) and 20-23 (guest
 *     page faults): medeleg is printed without them;
 *   - mstatus bits 38-39 (MPV, GVA) and 9-10 (VS) belong to H and V: mstatus is printed & MSTATUS_SPEC; QEMU
 *     also lets UXL be written (even to the reserved 3), so UXL is never written here;
 *   - mepc and sepc keep bit 0 as written (the spec: always zero with IALIGN 16): printed & ~1;
 *   - mcounteren/scounteren keep 64 written bits (the spec: 32-bit registers): printed & 0xffffffff;
 *   - satp accepts mode 10 (Sv57), which Ferry does not implement: only Sv39, bare and an invalid mode are written;
 *   - pmpcfg keeps the reserved R=0 W=1 combination as written: not written here;
 *   - misa is printed whole (0x800000000014112d: RV64 IMAFDC SU); mvendorid/marchid/mimpid are not printed.
 * Exit code: always 0 (the comparison is the test).
 */
#include "rt.h"

/* SIE SPIE MIE MPIE SPP MPP FS XS MPRV SUM MXR TVM TW TSR UXL SXL SBE MBE SD (UBE is bit 6). */
#define MSTATUS_SPEC 0x8000003f007ff9eaul

extern void compute_regs(u64 *out);
__asm__(
    "   .text\n"
    "compute_regs:\n"                      /* a0 = out[32]; every register but zero is overwritten and dumped */
    "   addi sp, sp, -16\n"
    "   sd ra, 0(sp)\n"
    "   sd a0, 8(sp)\n"
    "   la t0, saved_sp\n"
    "   sd sp, 0(t0)\n"
    "   li x1, 0x9e3779b97f4a7c15\n"
#define MIX(rd, rs, op, k) "   " #op " " #rd ", " #rs ", " #rs "\n   xori " #rd ", " #rd ", " #k "\n   add " #rd ", " #rd ", " #rs "\n"
    MIX(x2, x1, mul, 0x123)       MIX(x3, x2, mulh, -7)      MIX(x4, x3, mulhu, 0x7ff)   MIX(x5, x4, mulhsu, 1)
    MIX(x6, x5, divu, 0x35)       MIX(x7, x6, remu, -0x80)   MIX(x8, x7, div, 0x2aa)     MIX(x9, x8, rem, 0x155)
    MIX(x10, x9, mulw, 0x3c)      MIX(x11, x10, divw, -1)    MIX(x12, x11, remuw, 0x77)  MIX(x13, x12, sllw, 0x101)
    MIX(x14, x13, srlw, 0x202)    MIX(x15, x14, sraw, 0x404) MIX(x16, x15, addw, -0x404) MIX(x17, x16, sll, 0x11)
    MIX(x18, x17, srl, 0x22)      MIX(x19, x18, sra, 0x44)   MIX(x20, x19, sltu, 0x88)   MIX(x21, x20, xor, 0x111)
    MIX(x22, x21, or, 0x222)      MIX(x23, x22, and, 0x333)  MIX(x24, x23, divuw, 0x444) MIX(x25, x24, remw, 0x555)
    MIX(x26, x25, mul, 0x666)     MIX(x27, x26, mulhu, 0x777) MIX(x28, x27, sub, 0x7ff)  MIX(x29, x28, mulh, -0x800)
    MIX(x30, x29, slt, 0x1)       MIX(x31, x30, mul, 0x3ff)
    "   csrw mscratch, x31\n"            /* free one register to address the buffer */
    "   la x31, regbuf\n"
    ".irp n, 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30\n"
    "   sd x\\n, \\n*8(x31)\n"
    ".endr\n"
    "   csrr x30, mscratch\n"
    "   sd x30, 31*8(x31)\n"
    "   la t0, saved_sp\n"
    "   ld sp, 0(t0)\n"
    "   ld ra, 0(sp)\n"
    "   addi sp, sp, 16\n"
    "   ret\n");
u64 saved_sp;
u64 regbuf[32];

static void put_csr(const char *name, u64 v) { rt_print(name, v); }

long main(long hart)
{
    (void)hart;
    u64 mscratch = csr_read(mscratch);
    compute_regs(regbuf);
    csr_write(mscratch, mscratch);
    for (int i = 1; i < 32; i++)
    {
        char name[4] = { 'x', (char)('0' + i / 10), (char)('0' + i % 10), 0 };
        rt_print(name, regbuf[i]);
    }

    *(volatile u64 *)(CLINT_BASE + CLINT_MTIMECMP) = -1UL;   /* QEMU resets mtimecmp to 0: MTIP would read 1 */
    put_csr("misa", csr_read(misa));

    u64 ms = csr_read(mstatus);
    csr_write(mstatus, -1UL & ~(u64)MSTATUS_MIE & ~(3ul << 32));   /* UXL: see the header */
    put_csr("mstatus.ones", csr_read(mstatus) & MSTATUS_SPEC);
    put_csr("sstatus.ones", csr_read(sstatus) & MSTATUS_SPEC);
    csr_write(mstatus, MSTATUS_FS | MSTATUS_SUM | MSTATUS_MPIE);   /* MPP = U */
    put_csr("mstatus.some", csr_read(mstatus) & MSTATUS_SPEC);
    csr_write(sstatus, 0);
    put_csr("mstatus.sclr", csr_read(mstatus) & MSTATUS_SPEC);
    csr_write(mstatus, ms);

    csr_write(fcsr, -1UL);
    put_csr("fcsr", csr_read(fcsr));
    put_csr("frm", csr_read(frm));
    csr_write(fflags, 0x15);
    put_csr("fcsr2", csr_read(fcsr));
    csr_write(fcsr, 0);

    csr_write(mie, -1UL);
    put_csr("mie", csr_read(mie) & 0xbbb);
    put_csr("sie", csr_read(sie) & 0xbbb);
    csr_write(mie, 0);
    csr_write(mideleg, -1UL);
    put_csr("mideleg", csr_read(mideleg) & 0xbbb);
    csr_write(mie, -1UL);
    put_csr("sie.deleg", csr_read(sie) & 0xbbb);
    csr_write(mie, 0);
    csr_write(mip, -1UL);
    put_csr("mip", csr_read(mip) & 0xbbb);
    put_csr("sip", csr_read(sip) & 0xbbb);
    csr_write(mip, 0);
    csr_write(sip, -1UL);                                      /* only SSIP is writable through sip */
    put_csr("mip.sip", csr_read(mip) & 0xbbb);
    csr_write(mip, 0);
    csr_write(mideleg, 0);
    put_csr("sie.nodeleg", csr_read(sie) & 0xbbb);
    csr_write(medeleg, -1UL);
    put_csr("medeleg", csr_read(medeleg) & ~((1ul << 10) | (1ul << 11) | (0xful << 20)));
    csr_write(medeleg, 0);

    u64 sv39 = (8ul << 60) | (0xfffful << 44) | 0x80123ul;
    csr_write(satp, sv39);
    put_csr("satp.sv39", csr_read(satp));
    csr_write(satp, (1ul << 60) | 0x80456ul);                  /* reserved mode: the write is ignored */
    put_csr("satp.mode1", csr_read(satp));
    csr_write(satp, 0);
    put_csr("satp.bare", csr_read(satp));

    u64 tv = csr_read(mtvec);
    csr_write(mtvec, 0x80001003ul);                            /* mode 3 reserved */
    put_csr("mtvec.mode3", csr_read(mtvec));
    csr_write(mtvec, 0x80001101ul);                            /* vectored */
    put_csr("mtvec.vec", csr_read(mtvec));
    csr_write(mtvec, tv);
    csr_write(stvec, 0x80002002ul);
    put_csr("stvec.mode2", csr_read(stvec));
    csr_write(stvec, 0x80002005ul);                            /* vectored, base bits 1:0 come from the value */
    put_csr("stvec.vec", csr_read(stvec));
    csr_write(mepc, 0x80000003ul);                             /* IALIGN 16: bit 0 reads as zero */
    put_csr("mepc", csr_read(mepc) & ~1ul);
    csr_write(sepc, -1UL);
    put_csr("sepc", csr_read(sepc) & ~1ul);
    csr_write(mcounteren, -1UL);
    put_csr("mcounteren", csr_read(mcounteren) & 0xffffffff);
    csr_write(scounteren, -1UL);
    put_csr("scounteren", csr_read(scounteren) & 0xffffffff);
    csr_write(mscratch, mscratch);
    u64 cfg = csr_read(pmpcfg0);
    csr_write(pmpcfg0, (cfg & 0xff) | (0x0dul << 8) | (0x1ful << 16));   /* entry 1: TOR R+X, entry 2: NAPOT RWX */
    put_csr("pmpcfg0", csr_read(pmpcfg0));
    csr_write(pmpcfg0, cfg);
    csr_write(pmpaddr1, 0x123456789ul);
    put_csr("pmpaddr1", csr_read(pmpaddr1));
    put_csr("mhartid", csr_read(mhartid));
    return 0;
}
