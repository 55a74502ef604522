/* diff_fp (differential): a floating-point torture loop. A xorshift PRNG draws an operation (every F and D
 * arithmetic, fused, sign-injection, min/max, compare, classify, convert and move instruction), a rounding mode (all
 * five, through frm with rm = dyn) and operands (a third special values: zeros, infinities, quiet and signalling
 * NaNs with payloads, subnormals, extremes, ties, integer limits; otherwise random with exponents near 1 or near the
 * edges; singles are NaN-boxed except one time in 16). Each result's bits and the flags it raised are hashed; every
 * 512 operations the program prints the hash and the OR of the flags so far, so a difference is located to within
 * 512 operations. Exit code: always 0 (the comparison with QEMU is the test).
 */
#include "rt.h"

#define ITERATIONS 16384
#define REPORT_EVERY 512

static u64 rng_state = 0x243f6a8885a308d3ul;
static u64 rng(void)
{
    u64 x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    rng_state = x;
    return x * 0x2545f4914f6cdd1dul;
}

static const u64 special_d[] = {
    0, 0x8000000000000000ul, 0x3ff0000000000000ul, 0xbff0000000000000ul, 0x7ff0000000000000ul, 0xfff0000000000000ul,
    0x7ff8000000000000ul, 0x7ff0000000000001ul, 0xfff8000000abcdeful, 0x7ff4000000000000ul, 1, 0x000ffffffffffffful,
    0x0010000000000000ul, 0x7fefffffffffffffull, 0x43e0000000000000ul, 0xc3e0000000000000ul, 0x43f0000000000000ul,
    0x41e0000000000000ul, 0xc1e0000000200000ul, 0x3fe0000000000000ul, 0x3ff8000000000000ul, 0x4004000000000000ul,
    0xc004000000000000ul, 0x41efffffffe00000ul, 0x41effffffff00000ul, 0x3ff0000010000000ul, 0x3ff0000000000001ul,
    0x47efffffe0000000ul, 0x36a0000000000000ul, 0x380fffffffffffffull, 0xc3dfffffffffffffull,
};
static const u32 special_s[] = {
    0, 0x80000000, 0x3f800000, 0xbf800000, 0x7f800000, 0xff800000, 0x7fc00000, 0x7f800001, 0xffc12345, 0x7fa00000,
    1, 0x007fffff, 0x00800000, 0x7f7fffff, 0x5f000000, 0xdf000000, 0x5f800000, 0x4f000000, 0xcf000001, 0x3f000000,
    0x3fc00000, 0x40200000, 0xc0200000, 0x4f7fffff, 0x33800000, 0x3f800001, 0x34000000,
};

static u64 operand_d(void)
{
    u64 r = rng();
    if ((r & 3) == 0) return special_d[(r >> 8) % (sizeof special_d / sizeof special_d[0])];
    u64 sign = r & (1ul << 63);
    u64 e;
    switch ((r >> 2) & 3)
    {
    case 0: e = 1023 - 40 + ((r >> 4) % 80); break;          /* near 1 */
    case 1: e = (r >> 4) % 60; break;                        /* near the subnormals */
    case 2: e = 2047 - 1 - (r >> 4) % 60; break;             /* near overflow */
    default: e = 1023 + 20 + (r >> 4) % 50; break;           /* near the integer limits */
    }
    u64 m = rng();
    if (r & (1ul << 20)) m &= 0x000ff000000000fful;      /* few mantissa bits: exact results, ties */
    return sign | (e << 52) | (m & 0xffffffffffffful);
}

static u64 operand_s(void)
{
    u64 r = rng();
    u32 v;
    if ((r & 3) == 0) v = special_s[(r >> 8) % (sizeof special_s / sizeof special_s[0])];
    else
    {
        u32 sign = (u32)(r >> 32) & 0x80000000u;
        u32 e;
        switch ((r >> 2) & 3)
        {
        case 0: e = 127 - 20 + (u32)((r >> 4) % 40); break;
        case 1: e = (u32)((r >> 4) % 30); break;
        case 2: e = 254 - (u32)((r >> 4) % 30); break;
        default: e = 127 + 10 + (u32)((r >> 4) % 60); break;
        }
        u32 m = (u32)rng();
        if (r & (1ul << 20)) m &= 0x7f0003;
        v = sign | (e << 23) | (m & 0x7fffff);
    }
    if (((r >> 24) & 15) == 0) return (((r >> 28) & 0x7ul) << 32) | v;    /* upper half not all ones: unboxed */
    return 0xffffffff00000000ul | v;
}

static u64 operand_int(void)
{
    u64 r = rng();
    switch (r & 7)
    {
    case 0: return 0;
    case 1: return -1ul;
    case 2: return 0x8000000000000000ul;
    case 3: return 0x7ffffffffffffffful;
    case 4: return 0xffffffff80000000ul;
    case 5: return (r >> 8) & 0xffffff;                      /* exactly representable */
    default: return rng();
    }
}

#define F2(insn) __asm__ volatile("fmv.d.x ft0, %1\n fmv.d.x ft1, %2\n " insn " ft2, ft0, ft1\n fmv.x.d %0, ft2" \
    : "=r"(res) : "r"(a), "r"(b) : "ft0", "ft1", "ft2", "memory")
#define F1(insn) __asm__ volatile("fmv.d.x ft0, %1\n " insn " ft2, ft0\n fmv.x.d %0, ft2" : "=r"(res) : "r"(a) : "ft0", "ft2", "memory")
#define F3(insn) __asm__ volatile("fmv.d.x ft0, %1\n fmv.d.x ft1, %2\n fmv.d.x ft3, %3\n " insn " ft2, ft0, ft1, ft3\n fmv.x.d %0, ft2" \
    : "=r"(res) : "r"(a), "r"(b), "r"(c) : "ft0", "ft1", "ft2", "ft3", "memory")
#define FX(insn) __asm__ volatile("fmv.d.x ft0, %1\n " insn " %0, ft0" : "=r"(res) : "r"(a) : "ft0", "memory")
#define XF(insn) __asm__ volatile(insn " ft2, %1\n fmv.x.d %0, ft2" : "=r"(res) : "r"(i) : "ft2", "memory")
#define FC(insn) __asm__ volatile("fmv.d.x ft0, %1\n fmv.d.x ft1, %2\n " insn " %0, ft0, ft1" : "=r"(res) : "r"(a), "r"(b) : "ft0", "ft1", "memory")

#define NOPS 70

long main(long hart)
{
    (void)hart;
    u64 hash = 0xcbf29ce484222325ul, allflags = 0;
    for (int n = 1; n <= ITERATIONS; n++)
    {
        u64 r = rng();
        int op = (int)(r % NOPS);
        csr_write(frm, (r >> 8) % 5);
        int single = op < 35;
        u64 a = single ? operand_s() : operand_d();
        u64 b = single ? operand_s() : operand_d();
        u64 c = single ? operand_s() : operand_d();
        u64 i = operand_int();
        u64 res = 0;
        csr_write(fflags, 0);
        switch (op)
        {
        case 0: F2("fadd.s"); break;
        case 1: F2("fsub.s"); break;
        case 2: F2("fmul.s"); break;
        case 3: F2("fdiv.s"); break;
        case 4: F1("fsqrt.s"); break;
        case 5: F2("fmin.s"); break;
        case 6: F2("fmax.s"); break;
        case 7: F3("fmadd.s"); break;
        case 8: F3("fmsub.s"); break;
        case 9: F3("fnmadd.s"); break;
        case 10: F3("fnmsub.s"); break;
        case 11: F2("fsgnj.s"); break;
        case 12: F2("fsgnjn.s"); break;
        case 13: F2("fsgnjx.s"); break;
        case 14: FC("feq.s"); break;
        case 15: FC("flt.s"); break;
        case 16: FC("fle.s"); break;
        case 17: FX("fclass.s"); break;
        case 18: FX("fcvt.w.s"); break;
        case 19: FX("fcvt.wu.s"); break;
        case 20: FX("fcvt.l.s"); break;
        case 21: FX("fcvt.lu.s"); break;
        case 22: XF("fcvt.s.w"); break;
        case 23: XF("fcvt.s.wu"); break;
        case 24: XF("fcvt.s.l"); break;
        case 25: XF("fcvt.s.lu"); break;
        case 26: FX("fmv.x.w"); break;
        case 27: XF("fmv.w.x"); break;
        case 28: F1("fcvt.d.s"); break;
        case 29: F2("fmul.s"); break;
        case 30: F3("fmadd.s"); break;
        case 31: F2("fadd.s"); break;
        case 32: F2("fdiv.s"); break;
        case 33: FX("fcvt.w.s"); break;
        case 34: F1("fsqrt.s"); break;
        case 35: F2("fadd.d"); break;
        case 36: F2("fsub.d"); break;
        case 37: F2("fmul.d"); break;
        case 38: F2("fdiv.d"); break;
        case 39: F1("fsqrt.d"); break;
        case 40: F2("fmin.d"); break;
        case 41: F2("fmax.d"); break;
        case 42: F3("fmadd.d"); break;
        case 43: F3("fmsub.d"); break;
        case 44: F3("fnmadd.d"); break;
        case 45: F3("fnmsub.d"); break;
        case 46: F2("fsgnj.d"); break;
        case 47: F2("fsgnjn.d"); break;
        case 48: F2("fsgnjx.d"); break;
        case 49: FC("feq.d"); break;
        case 50: FC("flt.d"); break;
        case 51: FC("fle.d"); break;
        case 52: FX("fclass.d"); break;
        case 53: FX("fcvt.w.d"); break;
        case 54: FX("fcvt.wu.d"); break;
        case 55: FX("fcvt.l.d"); break;
        case 56: FX("fcvt.lu.d"); break;
        case 57: XF("fcvt.d.w"); break;
        case 58: XF("fcvt.d.wu"); break;
        case 59: XF("fcvt.d.l"); break;
        case 60: XF("fcvt.d.lu"); break;
        case 61: FX("fmv.x.d"); break;
        case 62: XF("fmv.d.x"); break;
        case 63: F1("fcvt.s.d"); break;
        case 64: F2("fmul.d"); break;
        case 65: F3("fmadd.d"); break;
        case 66: F2("fadd.d"); break;
        case 67: F2("fdiv.d"); break;
        case 68: FX("fcvt.l.d"); break;
        default: F3("fnmsub.d"); break;
        }
        u64 fl = csr_read(fflags);
        allflags |= fl;
        hash = (hash ^ res ^ (fl << 59) ^ (u64)op) * 0x100000001b3ul;
        if (n % REPORT_EVERY == 0)
        {
            rt_puthex((u64)n);
            rt_putc(' ');
            rt_puthex(hash);
            rt_putc(' ');
            rt_puthex(allflags);
            rt_putc('\n');
        }
    }
    return 0;
}
