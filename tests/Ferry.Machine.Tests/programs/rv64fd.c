/* rv64fd: F and D edge cases. Registers are handled as raw 64-bit patterns (a single is NaN-boxed: upper 32 bits
 * all ones), so every check compares exact bits and exact fflags. Exit codes:
 *  1-19  rounding: the five static modes and the same through frm (rm = dyn), on ties and negative ties
 * 20-29  fflags: NX, NV (sqrt of negative, 0/0), DZ, OF, UF; tininess is detected after rounding (a product just
 *        below the smallest normal that rounds up to it raises NX only); flags accumulate until cleared
 * 30-39  NaN-boxing: a single read from a register whose upper half is not all ones is the canonical NaN
 *        (arithmetic, fsgnj, fclass), fmv.x.w moves the raw low bits sign-extended, flw boxes
 * 40-59  fcvt to w/wu/l/lu of NaN, +-inf, out of range (saturate, NV), -0.5 to unsigned (0, NX only), -1 to
 *        unsigned (0, NV), rounding up into overflow
 * 60-69  fmin/fmax: one NaN returns the other operand, two NaNs the canonical NaN, signalling NaN raises NV, -0 < +0
 * 70-79  fclass: all ten classes
 * 80-89  fmadd/fmsub/fnmsub/fnmadd signs, a single rounding (fused differs from mul then add), inf*0+qNaN raises NV
 * 90-99  fsgnj/fsgnjn/fsgnjx keep NaN payloads, fcvt.s.d rounding and NaN canonicalisation, fcvt.d.s of sNaN
 * 100-109 feq/flt/fle with NaNs (quiet compare vs signalling compare), fsqrt(-0), exact int to float
 * 110-119 illegal rounding modes (static 5 and frm = 5 with dyn) trap as illegal instructions; FS = Off makes FP
 *        instructions illegal; an FP write makes mstatus.FS Dirty and SD set
 */
#include "rt.h"

#define BOX(x) (0xffffffff00000000ul | (u32)(x))
#define S_ONE 0x3f800000u
#define D_ONE 0x3ff0000000000000ul
#define S_QNAN BOX(0x7fc00000)
#define D_QNAN 0x7ff8000000000000ul
#define NX 1
#define UF 2
#define OF 4
#define DZ 8
#define NV 16

#define F2(insn, rm, a, b) ({ u64 __r; __asm__ volatile("fmv.d.x ft0, %1\n fmv.d.x ft1, %2\n " insn " ft2, ft0, ft1" rm "\n fmv.x.d %0, ft2" \
    : "=r"(__r) : "r"((u64)(a)), "r"((u64)(b)) : "ft0", "ft1", "ft2", "memory"); __r; })
#define F1(insn, rm, a) ({ u64 __r; __asm__ volatile("fmv.d.x ft0, %1\n " insn " ft2, ft0" rm "\n fmv.x.d %0, ft2" \
    : "=r"(__r) : "r"((u64)(a)) : "ft0", "ft2", "memory"); __r; })
#define F3(insn, a, b, c) ({ u64 __r; __asm__ volatile("fmv.d.x ft0, %1\n fmv.d.x ft1, %2\n fmv.d.x ft3, %3\n " insn " ft2, ft0, ft1, ft3\n fmv.x.d %0, ft2" \
    : "=r"(__r) : "r"((u64)(a)), "r"((u64)(b)), "r"((u64)(c)) : "ft0", "ft1", "ft2", "ft3", "memory"); __r; })
#define FTOI(insn, rm, a) ({ u64 __r; __asm__ volatile("fmv.d.x ft0, %1\n " insn " %0, ft0" rm : "=r"(__r) : "r"((u64)(a)) : "ft0", "memory"); __r; })
#define ITOF(insn, rm, x) ({ u64 __r; __asm__ volatile(insn " ft2, %1" rm "\n fmv.x.d %0, ft2" : "=r"(__r) : "r"((u64)(x)) : "ft2", "memory"); __r; })
#define FCMP(insn, a, b) ({ u64 __r; __asm__ volatile("fmv.d.x ft0, %1\n fmv.d.x ft1, %2\n " insn " %0, ft0, ft1" : "=r"(__r) : "r"((u64)(a)), "r"((u64)(b)) : "ft0", "ft1", "memory"); __r; })

static void clear_flags(void) { csr_write(fflags, 0); }
static u64 flags(void) { return csr_read(fflags); }

/* Check a result and the exact flags it raised (flags cleared before the operation by the caller's expression). */
#define RES(code, expr, want, wantflags) do { clear_flags(); u64 __v = (expr); u64 __f = flags(); \
    CHECK_EQ(code, __v, want); CHECK_EQ(code, __f, wantflags); } while (0)

long main(long hart)
{
    (void)hart;
    /* ---- rounding. 1 + 2^-24 is the tie between 1 and 1 + 2^-23 in single precision. */
    const u64 s_tiny = BOX(0x33800000);             /* 2^-24 */
    const u64 s_up = BOX(0x3f800001);               /* 1 + 2^-23 */
    const u64 s_m1 = BOX(0xbf800000);
    const u64 s_mup = BOX(0xbf800001);
    RES(1, F2("fadd.s", ", rne", BOX(S_ONE), s_tiny), BOX(S_ONE), NX);
    RES(2, F2("fadd.s", ", rtz", BOX(S_ONE), s_tiny), BOX(S_ONE), NX);
    RES(3, F2("fadd.s", ", rdn", BOX(S_ONE), s_tiny), BOX(S_ONE), NX);
    RES(4, F2("fadd.s", ", rup", BOX(S_ONE), s_tiny), s_up, NX);
    RES(5, F2("fadd.s", ", rmm", BOX(S_ONE), s_tiny), s_up, NX);
    RES(6, F2("fsub.s", ", rdn", s_m1, s_tiny), s_mup, NX);
    RES(7, F2("fsub.s", ", rup", s_m1, s_tiny), s_m1, NX);
    RES(8, F2("fsub.s", ", rmm", s_m1, s_tiny), s_mup, NX);
    /* 2.5 and -2.5 to integer in every mode: RNE 2/-2, RTZ 2/-2, RDN 2/-3, RUP 3/-2, RMM 3/-3. */
    const u64 d25 = 0x4004000000000000ul, dm25 = 0xc004000000000000ul;
    static const i64 want_pos[5] = { 2, 2, 2, 3, 3 }, want_neg[5] = { -2, -2, -3, -2, -3 };
    for (int rm = 0; rm < 5; rm++)
    {
        csr_write(frm, rm);
        RES(10 + rm, FTOI("fcvt.l.d", "", d25), want_pos[rm], NX);
        RES(10 + rm, FTOI("fcvt.w.d", ", dyn", dm25), want_neg[rm], NX);
    }
    csr_write(frm, 0);
    RES(15, FTOI("fcvt.w.d", ", rup", dm25), -2, NX);   /* a static rm overrides frm */
    csr_write(frm, 3);
    RES(16, FTOI("fcvt.w.d", ", rne", d25), 2, NX);
    RES(17, FTOI("fcvt.w.d", "", d25), 3, NX);            /* the assembler's default rm is dyn */
    CHECK_EQ(18, csr_read(fcsr), (3 << 5) | NX);
    csr_write(frm, 0);

    /* ---- flags */
    RES(20, F1("fsqrt.d", "", 0xbff0000000000000ul), D_QNAN, NV);
    RES(21, F2("fdiv.d", "", 0, 0), D_QNAN, NV);
    RES(22, F2("fdiv.d", "", D_ONE, 0x8000000000000000ul), 0xfff0000000000000ul, DZ);
    RES(23, F2("fmul.d", "", 0x7fefffffffffffffull, 0x4000000000000000ul), 0x7ff0000000000000ul, OF | NX);
    RES(24, F2("fmul.d", ", rtz", 0x7fefffffffffffffull, 0x4000000000000000ul), 0x7fefffffffffffffull, OF | NX);
    RES(25, F2("fmul.s", "", BOX(0x00800000), BOX(0x3f000000)), BOX(0x00400000), 0);     /* exact subnormal: no UF */
    RES(26, F2("fmul.s", "", BOX(0x00800001), BOX(0x3f000000)), BOX(0x00400000), UF | NX);
    RES(27, F2("fmul.s", "", BOX(0x3f800001), BOX(0x007fffff)), BOX(0x00800000), NX);   /* tiny only before rounding */
    clear_flags();
    (void)F2("fdiv.d", "", D_ONE, 0);
    (void)F2("fadd.s", "", BOX(S_ONE), s_tiny);
    CHECK_EQ(28, flags(), DZ | NX);                                                       /* accumulate */

    /* ---- NaN-boxing */
    RES(30, F2("fadd.s", "", 0x0000000040000000ul, BOX(S_ONE)), S_QNAN, 0);              /* unboxed 2.0f reads as qNaN */
    RES(31, F2("fsgnj.s", "", 0x00000000bf800000ul, BOX(S_ONE)), BOX(0x7fc00000), 0);
    RES(32, FTOI("fclass.s", "", 0xfffffffe3f800000ul), 1 << 9, 0);
    RES(33, FTOI("fmv.x.w", "", 0x0000000080000001ul), 0xffffffff80000001ul, 0);          /* raw bits, no box check */
    RES(34, ITOF("fmv.w.x", "", 0x12345678abcdef01ul), BOX(0xabcdef01), 0);
    RES(35, F1("fcvt.d.s", "", 0x000000003f800000ul), D_QNAN, 0);
    {
        volatile u32 mem = 0x7f800001;                                                     /* sNaN survives flw */
        u64 r;
        __asm__ volatile("flw ft0, 0(%1)\n fmv.x.d %0, ft0" : "=r"(r) : "r"(&mem) : "ft0", "memory");
        CHECK_EQ(36, r, BOX(0x7f800001));
    }

    /* ---- fcvt of special values */
    const u64 s_inf = BOX(0x7f800000), s_ninf = BOX(0xff800000), s_nan = BOX(0x7fc12345);
    const u64 d_inf = 0x7ff0000000000000ul, d_ninf = 0xfff0000000000000ul, d_nan = 0x7ff8000000001234ul;
    RES(40, FTOI("fcvt.w.s", ", rtz", s_nan), 0x7fffffff, NV);
    RES(41, FTOI("fcvt.w.s", ", rtz", s_inf), 0x7fffffff, NV);
    RES(42, FTOI("fcvt.w.s", ", rtz", s_ninf), 0xffffffff80000000ul, NV);
    RES(43, FTOI("fcvt.w.s", ", rtz", BOX(0x4f32d05e)), 0x7fffffff, NV);                  /* 3e9 */
    RES(44, FTOI("fcvt.wu.s", ", rtz", s_nan), 0xfffffffffffffffful, NV);                 /* 0xffffffff sign-extended */
    RES(45, FTOI("fcvt.wu.s", ", rtz", s_ninf), 0, NV);
    RES(46, FTOI("fcvt.wu.s", ", rtz", BOX(0xbf000000)), 0, NX);                          /* -0.5 truncates to 0: inexact only */
    RES(47, FTOI("fcvt.wu.s", ", rtz", s_m1), 0, NV);
    RES(48, FTOI("fcvt.wu.d", ", rtz", 0x41efffffffe00000ul), 0xffffffffffffffffull, 0);  /* 4294967295 exact */
    RES(49, FTOI("fcvt.wu.d", ", rne", 0x41efffffffffffffull), 0xffffffffffffffffull, NV); /* rounds to 2^32: out of range */
    RES(50, FTOI("fcvt.l.d", ", rtz", d_nan), 0x7fffffffffffffffull, NV);
    RES(51, FTOI("fcvt.l.d", ", rtz", d_ninf), 0x8000000000000000ull, NV);
    RES(52, FTOI("fcvt.lu.d", ", rtz", d_nan), 0xffffffffffffffffull, NV);
    RES(53, FTOI("fcvt.lu.d", ", rtz", d_inf), 0xffffffffffffffffull, NV);
    RES(54, FTOI("fcvt.lu.d", ", rtz", d_ninf), 0, NV);
    RES(55, FTOI("fcvt.l.d", ", rtz", 0x43e0000000000000ul), 0x7fffffffffffffffull, NV);   /* 2^63 */
    RES(56, FTOI("fcvt.l.d", ", rtz", 0xc3e0000000000000ul), 0x8000000000000000ull, 0);    /* -2^63 exact */
    RES(57, FTOI("fcvt.lu.s", ", rtz", BOX(0xbf000000)), 0, NX);
    RES(58, FTOI("fcvt.w.d", ", rtz", 0xc1e0000000080000ul), 0xffffffff80000000ul, NX);    /* -2^31 - 0.25 truncates in range */

    /* ---- fmin / fmax */
    const u64 d_snan = 0x7ff4000000000000ul;
    RES(60, F2("fmin.d", "", d_nan, D_ONE), D_ONE, 0);
    RES(61, F2("fmax.d", "", D_ONE, d_nan), D_ONE, 0);
    RES(62, F2("fmin.d", "", d_nan, d_nan), D_QNAN, 0);
    RES(63, F2("fmin.d", "", d_snan, D_ONE), D_ONE, NV);
    RES(64, F2("fmin.d", "", 0x8000000000000000ul, 0), 0x8000000000000000ul, 0);
    RES(65, F2("fmax.d", "", 0x8000000000000000ul, 0), 0, 0);
    RES(66, F2("fmin.s", "", 0, BOX(0x80000000)), BOX(0x80000000), 0);
    RES(67, F2("fmax.s", "", s_nan, BOX(0x7f800001)), S_QNAN, NV);

    /* ---- fclass */
    static const u64 cls_in[10] = { 0xfff0000000000000ul, 0xbff0000000000000ul, 0x800fffffffffffffull,
        0x8000000000000000ul, 0, 1, D_ONE, 0x7ff0000000000000ul, 0x7ff0000000000001ul, 0x7ff8000000000000ul };
    for (int i = 0; i < 10; i++) RES(70 + i, FTOI("fclass.d", "", cls_in[i]), 1u << i, 0);

    /* ---- fused multiply-add */
    const u64 d2 = 0x4000000000000000ul, d3 = 0x4008000000000000ul;
    RES(80, F3("fmadd.d", d2, d3, D_ONE), 0x401c000000000000ul, 0);        /* 7 */
    RES(81, F3("fmsub.d", d2, d3, D_ONE), 0x4014000000000000ul, 0);        /* 5 */
    RES(82, F3("fnmsub.d", d2, d3, D_ONE), 0xc014000000000000ul, 0);       /* -(2*3) + 1 = -5 */
    RES(83, F3("fnmadd.d", d2, d3, D_ONE), 0xc01c000000000000ul, 0);       /* -(2*3) - 1 = -7 */
    /* (1 + 2^-27)(1 - 2^-27) - 1 = -2^-54 exactly when fused; a separate multiply would round to 1 and give 0. */
    RES(84, F3("fmadd.d", 0x3ff0000002000000ul, 0x3feffffffc000000ul, 0xbff0000000000000ul), 0xbc90000000000000ul, 0);
    RES(85, F3("fmadd.d", d_inf, 0, D_QNAN), D_QNAN, NV);
    RES(86, F3("fmadd.s", BOX(0x40000000), BOX(0x40400000), BOX(S_ONE)), BOX(0x40e00000), 0);
    RES(87, F3("fnmadd.s", BOX(0), BOX(0), BOX(0)), BOX(0x80000000), 0);    /* -(0*0) - 0 = -0 */

    /* ---- sign injection and conversions between widths */
    RES(90, F2("fsgnjn.d", "", d_nan, d_nan), 0xfff8000000001234ul, 0);     /* payload kept, no flags */
    RES(91, F2("fsgnjx.d", "", 0xbff0000000000000ul, 0x8000000000000000ul), D_ONE, 0);
    RES(92, F2("fsgnj.s", "", BOX(0x7f800001), BOX(0x80000000)), BOX(0xff800001), 0);
    RES(93, F1("fcvt.s.d", "", 0x3ff0000010000000ul), BOX(S_ONE), NX);     /* 1 + 2^-24: tie to even */
    RES(94, F1("fcvt.s.d", ", rup", 0x3ff0000010000000ul), s_up, NX);
    RES(95, F1("fcvt.s.d", "", d_nan), S_QNAN, 0);
    RES(96, F1("fcvt.d.s", "", BOX(0x7f800001)), D_QNAN, NV);
    RES(97, F1("fcvt.s.d", "", 0x47f0000000000000ul), s_inf, OF | NX);    /* 2^128 */
    RES(98, F1("fcvt.s.d", ", rtz", 0x47f0000000000000ul), BOX(0x7f7fffff), OF | NX);

    /* ---- compares and the rest */
    RES(100, FCMP("feq.d", d_nan, d_nan), 0, 0);
    RES(101, FCMP("flt.d", d_nan, D_ONE), 0, NV);
    RES(102, FCMP("fle.d", D_ONE, d_nan), 0, NV);
    RES(103, FCMP("feq.d", d_snan, D_ONE), 0, NV);
    RES(104, FCMP("feq.d", 0x8000000000000000ul, 0), 1, 0);
    RES(105, FCMP("flt.s", BOX(0x80000000), BOX(0)), 0, 0);
    RES(106, F1("fsqrt.d", "", 0x8000000000000000ul), 0x8000000000000000ul, 0);
    RES(107, ITOF("fcvt.s.l", "", 0x7fffffffffffffffull), BOX(0x5f000000), NX);
    RES(108, ITOF("fcvt.d.wu", "", 0xffffffff80000000ul), 0x41e0000000000000ul, 0);   /* upper bits ignored */
    RES(109, ITOF("fcvt.s.w", "", 0xffffffff), BOX(0xbf800000), 0);

    /* ---- illegal rounding modes and FS */
    rt_trap_count = 0;
    rt_trap_cause = -1;
    __asm__ volatile(".insn r 0x53, 5, 0, ft2, ft0, ft1" ::: "ft2", "memory");     /* fadd.s with rm = 5 */
    CHECK_EQ(110, rt_trap_cause, 2);
    CHECK_EQ(111, rt_trap_tval, 0x00105153);                                        /* mtval: the instruction */
    csr_write(frm, 5);
    rt_trap_cause = -1;
    __asm__ volatile("fadd.s ft2, ft0, ft1, dyn" ::: "ft2", "memory");
    CHECK_EQ(112, rt_trap_cause, 2);
    csr_write(frm, 0);
    csr_clear(mstatus, MSTATUS_FS);
    rt_trap_cause = -1;
    __asm__ volatile("fmv.d.x ft0, zero" ::: "ft0", "memory");
    CHECK_EQ(113, rt_trap_cause, 2);
    rt_trap_cause = -1;
    (void)csr_read(fcsr);                                                           /* fcsr too */
    CHECK_EQ(114, rt_trap_cause, 2);
    CHECK_EQ(115, rt_trap_count, 4);
    csr_set(mstatus, 1 << 13);                                                      /* Initial */
    CHECK_EQ(116, csr_read(mstatus) >> 63, 0);
    __asm__ volatile("fmv.d.x ft0, zero" ::: "ft0", "memory");
    CHECK_EQ(117, (csr_read(mstatus) >> 13) & 3, 3);
    CHECK_EQ(118, csr_read(mstatus) >> 63, 1);
    return 0;
}
