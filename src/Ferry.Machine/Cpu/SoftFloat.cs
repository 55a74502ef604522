using System.Numerics;
using System.Runtime.CompilerServices;

namespace Ferry.Machine.Cpu;

/// <summary>
/// IEEE 754-2008 binary32/binary64 arithmetic as RISC-V's F and D extensions define it: every operation takes raw bits,
/// a rounding mode (<see cref="RoundingMode"/>, already resolved from <c>frm</c> when the instruction says DYN) and
/// ORs the exception flags it raises into <c>flags</c> (<see cref="FloatFlags"/>). NaN results are the canonical NaN
/// (0x7fc00000 / 0x7ff8000000000000). Tininess is detected after rounding, as RISC-V requires.
/// </summary>
/// <remarks>
/// Pure functions, no state: safe from any hart thread. <c>rm</c> must be 0..4; anything else rounds like RTZ.
/// <para>How it is computed. Every inexact result funnels through <see cref="RoundPack"/> (Berkeley SoftFloat's
/// roundPack with after-rounding tininess), which takes a sign, an exponent and a 64-bit significand whose low bits
/// are round bits plus a sticky bit. The significand comes from:</para>
/// <list type="bullet">
/// <item>binary32 +, -, *, fma: exact in double (a float product has 48 bits; a double sum's rounding error is
/// recovered exactly by TwoSum), so the double result plus the sign of its error is the exact value.</item>
/// <item>binary32 /, sqrt and binary64 /, sqrt: the host's correctly rounded double quotient or root of the
/// significands, plus the sign of the exact remainder from <see cref="Math.FusedMultiplyAdd"/>. Division and square
/// root never land exactly halfway between two doubles, so "the double, nudged by one unit far below the rounding
/// point in the direction of the remainder" rounds exactly like the true value in every mode.</item>
/// <item>binary64 +, *, fma: integer arithmetic (64-bit with a sticky bit, 128-bit for fma).</item>
/// </list>
/// <para>Fast paths: in RNE the host's double arithmetic already gives the right bits; only NX needs work (an
/// error-free transformation), and each fast path stays inside exponent windows where that transformation is exact
/// and no underflow or overflow can occur. Everything else takes the slow path.</para>
/// </remarks>
public static class SoftFloat
{
    public const uint CanonicalNaN32 = 0x7fc00000;
    public const ulong CanonicalNaN64 = 0x7ff8000000000000;

    private const int Nx = FloatFlags.Inexact, Uf = FloatFlags.Underflow, Of = FloatFlags.Overflow;
    private const int Dz = FloatFlags.DivideByZero, Nv = FloatFlags.Invalid;

    private const uint Sign32 = 0x8000_0000, Inf32 = 0x7f80_0000, Frac32 = 0x007f_ffff, Quiet32 = 0x0040_0000;
    private const ulong Sign64 = 0x8000_0000_0000_0000, Inf64 = 0x7ff0_0000_0000_0000;
    private const ulong Frac64 = 0x000f_ffff_ffff_ffff, Quiet64 = 0x0008_0000_0000_0000, Hidden64 = 1UL << 52;

    // ---------------------------------------------------------------- binary32 arithmetic

    public static uint F32Add(uint a, uint b, int rm, ref int flags) => AddCore32(a, b, rm, ref flags);

    public static uint F32Sub(uint a, uint b, int rm, ref int flags) => AddCore32(a, b ^ Sign32, rm, ref flags);

    public static uint F32Mul(uint a, uint b, int rm, ref int flags)
    {
        if (IsNaN32(a) || IsNaN32(b)) return NaNResult32(a, b, ref flags);
        uint sign = (a ^ b) & Sign32;
        if (IsInf32(a) || IsInf32(b))
        {
            if (IsZero32(a) || IsZero32(b)) return Invalid32(ref flags);
            return sign | Inf32;
        }
        // Exact: 24x24 significand bits fit in 53, and 2^-298..2^256 is well inside double's range.
        double p = ToDouble(a) * ToDouble(b);
        if (p == 0) return sign;
        return RoundToF32(p, 0, rm, ref flags);
    }

    public static uint F32Div(uint a, uint b, int rm, ref int flags)
    {
        if (IsNaN32(a) || IsNaN32(b)) return NaNResult32(a, b, ref flags);
        uint sign = (a ^ b) & Sign32;
        if (IsInf32(a))
        {
            if (IsInf32(b)) return Invalid32(ref flags);
            return sign | Inf32;
        }
        if (IsInf32(b)) return sign;
        if (IsZero32(b))
        {
            if (IsZero32(a)) return Invalid32(ref flags);
            flags |= Dz;
            return sign | Inf32;
        }
        if (IsZero32(a)) return sign;
        double x = ToDouble(a), y = ToDouble(b);
        double q = x / y;
        // exact - q = rem / y; the remainder of a correctly rounded quotient is exact (no underflow this far
        // from double's limits), and even if it were not, its sign would be.
        double rem = Math.FusedMultiplyAdd(-q, y, x);
        int dir = rem == 0 ? 0 : (rem > 0) == (y > 0) ? 1 : -1;
        return RoundToF32(q, dir, rm, ref flags);
    }

    public static uint F32Sqrt(uint a, int rm, ref int flags)
    {
        if (IsNaN32(a)) return NaNResult32(a, a, ref flags);
        if (IsZero32(a)) return a; // sqrt(-0) = -0
        if ((a & Sign32) != 0) return Invalid32(ref flags);
        if (a == Inf32) return a;
        double x = ToDouble(a);
        double r = Math.Sqrt(x);
        double rem = Math.FusedMultiplyAdd(-r, r, x);
        return RoundToF32(r, Math.Sign(rem), rm, ref flags);
    }

    /// <summary>a*b+c with one rounding. fmsub/fnmsub/fnmadd are this with sign bits of the inputs flipped.</summary>
    public static uint F32MulAdd(uint a, uint b, uint c, int rm, ref int flags)
    {
        if (IsNaN32(a) || IsNaN32(b) || IsNaN32(c))
        {
            if (IsSNaN32(a) || IsSNaN32(b) || IsSNaN32(c)) flags |= Nv;
            // RISC-V (and IEEE 754 as an option): inf*0 is invalid even when c is a quiet NaN.
            if ((IsInf32(a) && IsZero32(b)) || (IsZero32(a) && IsInf32(b))) flags |= Nv;
            return CanonicalNaN32;
        }
        double p = ToDouble(a) * ToDouble(b); // exact, see F32Mul
        if (double.IsNaN(p)) return Invalid32(ref flags); // inf * 0
        return Sum32(p, ToDouble(c), rm, ref flags);
    }

    private static uint AddCore32(uint a, uint b, int rm, ref int flags)
    {
        if (IsNaN32(a) || IsNaN32(b)) return NaNResult32(a, b, ref flags);
        return Sum32(ToDouble(a), ToDouble(b), rm, ref flags);
    }

    /// <summary>x + y rounded once to binary32, where x and y are exact non-NaN values (floats or a float product).</summary>
    private static uint Sum32(double x, double y, int rm, ref int flags)
    {
        double s = x + y;
        if (double.IsNaN(s)) return Invalid32(ref flags); // inf - inf
        // Finite operands here are below 2^257, so an infinite sum comes only from an infinite operand: exact.
        if (double.IsInfinity(s)) return s > 0 ? Inf32 : Sign32 | Inf32;
        if (s == 0)
        {
            // Operands are multiples of 2^-298, so a zero double sum is an exact zero. x + (-x) is +0 except in RDN;
            // zeros of the same sign keep it.
            if (double.IsNegative(x) == double.IsNegative(y)) return double.IsNegative(x) ? Sign32 : 0;
            return rm == RoundingMode.Rdn ? Sign32 : 0;
        }
        // TwoSum: err = (x + y) - s exactly; no overflow or underflow is possible at these magnitudes.
        double bv = s - x;
        double av = s - bv;
        double err = (x - av) + (y - bv);
        return RoundToF32(s, Math.Sign(err), rm, ref flags);
    }

    /// <summary>
    /// Rounds the exact value r + e to binary32, where r is a normal double and e is a value of sign
    /// <paramref name="dir"/> smaller than half an ulp of r (and never exactly half: see the remarks on the class).
    /// </summary>
    private static uint RoundToF32(double r, int dir, int rm, ref int flags)
    {
        ulong rb = BitConverter.DoubleToUInt64Bits(r);
        if (rm == RoundingMode.Rne)
        {
            float f = (float)r;
            uint fb = BitConverter.SingleToUInt32Bits(f);
            uint e8 = (fb >> 23) & 0xff;
            // The host's rounding of r is the rounding of r + e unless r sits exactly halfway between two floats
            // (double rounding). Exponent 2..254: the result is normal, at least twice the smallest normal (so not
            // tiny whatever the exact value) and finite.
            if (e8 - 2 <= 252 && (dir == 0 || (rb & 0x1fff_ffff) != 0x1000_0000))
            {
                if (dir != 0 || (double)f != r) flags |= Nx;
                return fb;
            }
        }
        bool sign = (rb & Sign64) != 0;
        int e11 = (int)(rb >> 52) & 0x7ff;
        ulong mant = (rb & Frac64) | Hidden64;
        // Stand in for the exact value by r's significand shifted up 8 bits and nudged by one unit towards it:
        // every rounding boundary is at least 4 units away from r unless it is r itself, so both round alike.
        int magDir = sign ? -dir : dir;
        ulong sig = (mant << 8) + (ulong)(long)magDir;
        // value = sig * 2^(e11 - 1075 - 8); RoundPack32's scale is sig * 2^(e - 188).
        return NormRoundPack32(sign, e11 - 895, sig, rm, ref flags);
    }

    // ---------------------------------------------------------------- binary64 arithmetic

    public static ulong F64Add(ulong a, ulong b, int rm, ref int flags)
    {
        if (rm == RoundingMode.Rne)
        {
            double x = BitConverter.UInt64BitsToDouble(a), y = BitConverter.UInt64BitsToDouble(b);
            double s = x + y;
            // A finite sum means finite operands and no overflow; subnormal sums are always exact, so no UF.
            if (double.IsFinite(s))
            {
                if (AddError(x, y, s) != 0) flags |= Nx;
                return BitConverter.DoubleToUInt64Bits(s);
            }
        }
        return F64AddSlow(a, b, rm, ref flags);
    }

    public static ulong F64Sub(ulong a, ulong b, int rm, ref int flags) => F64Add(a, b ^ Sign64, rm, ref flags);

    public static ulong F64Mul(ulong a, ulong b, int rm, ref int flags)
    {
        if (rm == RoundingMode.Rne && InFastWindow(a) && InFastWindow(b))
        {
            // |a|,|b| in [2^-450, 2^450): the product is normal and finite, and its rounding error is a multiple of
            // 2^-1004 or more (the product of the operands' ulps), above 2^-1074, so the FMA gives it exactly.
            double x = BitConverter.UInt64BitsToDouble(a), y = BitConverter.UInt64BitsToDouble(b);
            double p = x * y;
            if (Math.FusedMultiplyAdd(x, y, -p) != 0) flags |= Nx;
            return BitConverter.DoubleToUInt64Bits(p);
        }
        return F64MulSlow(a, b, rm, ref flags);
    }

    public static ulong F64Div(ulong a, ulong b, int rm, ref int flags)
    {
        if (rm == RoundingMode.Rne && InFastWindow(a) && InFastWindow(b))
        {
            // Same window: the quotient is normal and finite, and a - q*b is exact in the FMA.
            double x = BitConverter.UInt64BitsToDouble(a), y = BitConverter.UInt64BitsToDouble(b);
            double q = x / y;
            if (Math.FusedMultiplyAdd(-q, y, x) != 0) flags |= Nx;
            return BitConverter.DoubleToUInt64Bits(q);
        }
        return F64DivSlow(a, b, rm, ref flags);
    }

    public static ulong F64Sqrt(ulong a, int rm, ref int flags)
    {
        // Positive, finite, exponent at least 2^-923: a - r*r is exact in the FMA; a root never over/underflows.
        if (rm == RoundingMode.Rne && a - (100UL << 52) < (0x7ffUL - 100) << 52)
        {
            double x = BitConverter.UInt64BitsToDouble(a);
            double r = Math.Sqrt(x);
            if (Math.FusedMultiplyAdd(-r, r, x) != 0) flags |= Nx;
            return BitConverter.DoubleToUInt64Bits(r);
        }
        return F64SqrtSlow(a, rm, ref flags);
    }

    public static ulong F64MulAdd(ulong a, ulong b, ulong c, int rm, ref int flags)
    {
        if (IsNaN64(a) || IsNaN64(b) || IsNaN64(c))
        {
            if (IsSNaN64(a) || IsSNaN64(b) || IsSNaN64(c)) flags |= Nv;
            if ((IsInf64(a) && IsZero64(b)) || (IsZero64(a) && IsInf64(b))) flags |= Nv;
            return CanonicalNaN64;
        }
        bool signP = ((a ^ b) & Sign64) != 0, signC = (c & Sign64) != 0;
        if (IsInf64(a) || IsInf64(b))
        {
            if (IsZero64(a) || IsZero64(b)) return Invalid64(ref flags);
            if (IsInf64(c) && signC != signP) return Invalid64(ref flags);
            return (signP ? Sign64 : 0) | Inf64;
        }
        if (IsInf64(c)) return c;
        if (IsZero64(a) || IsZero64(b))
        {
            if (!IsZero64(c)) return c;
            if (signP == signC) return c;
            return rm == RoundingMode.Rdn ? Sign64 : 0;
        }
        if (IsZero64(c)) return F64MulSlow(a, b, rm, ref flags); // the product rounded once; its sign wins

        ulong sigA = Normalize64(a, out int ea), sigB = Normalize64(b, out int eb), sigC = Normalize64(c, out int ec);
        // Both terms in a 128-bit frame with their leading bit at 124..125: the product (106 bits) << 20 has
        // unit 2^(ea+eb-2170), c (53 bits) << 72 has unit 2^(ec-1147). The one with the larger unit is at least as
        // large, so shifting the other right with a sticky bit keeps every bit that can matter (72+ guard bits).
        UInt128 x = ((UInt128)sigA * sigB) << 20, y = (UInt128)sigC << 72;
        int ex = ea + eb - 2170, ey = ec - 1147;
        bool sx = signP, sy = signC;
        if (ex < ey)
        {
            (x, y) = (y, x);
            (ex, ey) = (ey, ex);
            (sx, sy) = (sy, sx);
        }
        y = ShiftRightJam128(y, ex - ey);
        UInt128 r;
        bool sign = sx;
        if (sx == sy) r = x + y;
        else if (x >= y) r = x - y;
        else
        {
            r = y - x;
            sign = sy;
        }
        if (r == UInt128.Zero) return rm == RoundingMode.Rdn ? Sign64 : 0; // exact cancellation
        int lz = (int)UInt128.LeadingZeroCount(r);
        r <<= lz;
        ulong sig = (ulong)(r >> 64) | ((ulong)r != 0 ? 1UL : 0);
        // value = sig * 2^(ex - lz + 64); RoundPack64's scale is sig * 2^(e - 1084).
        return NormRoundPack64(sign, ex - lz + 1148, sig, rm, ref flags);
    }

    internal static ulong F64AddSlow(ulong a, ulong b, int rm, ref int flags)
    {
        if (IsNaN64(a) || IsNaN64(b)) return NaNResult64(a, b, ref flags);
        bool sa = (a & Sign64) != 0, sb = (b & Sign64) != 0;
        if (IsInf64(a))
        {
            if (IsInf64(b) && sa != sb) return Invalid64(ref flags);
            return a;
        }
        if (IsInf64(b)) return b;
        if (IsZero64(a))
        {
            if (!IsZero64(b) || sa == sb) return b;
            return rm == RoundingMode.Rdn ? Sign64 : 0;
        }
        if (IsZero64(b)) return a;

        ulong sigA = Normalize64(a, out int ea), sigB = Normalize64(b, out int eb);
        if (ea < eb || (ea == eb && sigA < sigB))
        {
            (sigA, sigB) = (sigB, sigA);
            (ea, eb) = (eb, ea);
            (sa, sb) = (sb, sa);
        }
        // 9 guard bits below the 53-bit significands (leading bit at 61, room for a carry into 62). A sticky bit
        // from the alignment shift only appears when the exponents differ by 10+, and then subtraction cancels at
        // most one bit, so it stays below the round bits.
        ulong x = sigA << 9, y = ShiftRightJam64(sigB << 9, ea - eb);
        ulong s = sa == sb ? x + y : x - y;
        if (s == 0) return rm == RoundingMode.Rdn ? Sign64 : 0; // x + (-x)
        // value = s * 2^(ea - 1075 - 9) = s * 2^(ea - 1084).
        return NormRoundPack64(sa, ea, s, rm, ref flags);
    }

    internal static ulong F64MulSlow(ulong a, ulong b, int rm, ref int flags)
    {
        if (IsNaN64(a) || IsNaN64(b)) return NaNResult64(a, b, ref flags);
        ulong sign = (a ^ b) & Sign64;
        if (IsInf64(a) || IsInf64(b))
        {
            if (IsZero64(a) || IsZero64(b)) return Invalid64(ref flags);
            return sign | Inf64;
        }
        if (IsZero64(a) || IsZero64(b)) return sign;
        ulong sigA = Normalize64(a, out int ea), sigB = Normalize64(b, out int eb);
        // The 106-bit product, top 64 bits kept with the rest as a sticky bit.
        ulong hi = Math.BigMul(sigA, sigB, out ulong lo);
        ulong sig = (hi << 22) | (lo >> 42) | ((lo & ((1UL << 42) - 1)) != 0 ? 1UL : 0);
        // value = sigA*sigB * 2^(ea + eb - 2150) = sig * 2^(ea + eb - 2108).
        return NormRoundPack64(sign != 0, ea + eb - 1024, sig, rm, ref flags);
    }

    internal static ulong F64DivSlow(ulong a, ulong b, int rm, ref int flags)
    {
        if (IsNaN64(a) || IsNaN64(b)) return NaNResult64(a, b, ref flags);
        ulong sign = (a ^ b) & Sign64;
        if (IsInf64(a))
        {
            if (IsInf64(b)) return Invalid64(ref flags);
            return sign | Inf64;
        }
        if (IsInf64(b)) return sign;
        if (IsZero64(b))
        {
            if (IsZero64(a)) return Invalid64(ref flags);
            flags |= Dz;
            return sign | Inf64;
        }
        if (IsZero64(a)) return sign;
        ulong sigA = Normalize64(a, out int ea), sigB = Normalize64(b, out int eb);
        // Divide the significands (exact as doubles) in the host, where nothing can overflow or underflow; the
        // exponents are handled here and RoundPack does the final rounding in the requested mode.
        double x = (long)sigA, y = (long)sigB;
        double q = x / y;
        double rem = Math.FusedMultiplyAdd(-q, y, x);
        return NudgedRoundPack64(sign != 0, q, Math.Sign(rem), ea - eb, rm, ref flags);
    }

    internal static ulong F64SqrtSlow(ulong a, int rm, ref int flags)
    {
        if (IsNaN64(a)) return NaNResult64(a, a, ref flags);
        if (IsZero64(a)) return a;
        if ((a & Sign64) != 0) return Invalid64(ref flags);
        if (a == Inf64) return a;
        ulong sig = Normalize64(a, out int e);
        // value = sig * 2^k with k made even so the root is sqrt(sig or 2*sig) * 2^(k/2).
        int k = e - 1075;
        double x = (long)sig;
        if ((k & 1) != 0)
        {
            x *= 2;
            k--;
        }
        double r = Math.Sqrt(x);
        double rem = Math.FusedMultiplyAdd(-r, r, x);
        return NudgedRoundPack64(false, r, Math.Sign(rem), k / 2, rm, ref flags);
    }

    /// <summary>
    /// Rounds (r + e) * 2^scale to binary64, where r is a positive normal double that is the host's correctly
    /// rounded quotient or root and e has sign <paramref name="dir"/> (see the remarks on the class).
    /// </summary>
    private static ulong NudgedRoundPack64(bool sign, double r, int dir, int scale, int rm, ref int flags)
    {
        ulong rb = BitConverter.DoubleToUInt64Bits(r);
        int er = (int)(rb >> 52);
        ulong sig = (((rb & Frac64) | Hidden64) << 8) + (ulong)(long)dir;
        // value = sig * 2^(er - 1075 - 8 + scale); RoundPack64's scale is sig * 2^(e - 1084).
        return NormRoundPack64(sign, er + 1 + scale, sig, rm, ref flags);
    }

    // ---------------------------------------------------------------- min, max, compare, classify

    /// <summary>fmin.s: -0 &lt; +0; one NaN gives the other operand; any sNaN raises NV; two NaNs give the canonical NaN.</summary>
    public static uint F32Min(uint a, uint b, ref int flags)
    {
        if (IsNaN32(a) || IsNaN32(b)) return NaNMinMax32(a, b, ref flags);
        return OrderKey32(a) <= OrderKey32(b) ? a : b;
    }

    public static uint F32Max(uint a, uint b, ref int flags)
    {
        if (IsNaN32(a) || IsNaN32(b)) return NaNMinMax32(a, b, ref flags);
        return OrderKey32(a) >= OrderKey32(b) ? a : b;
    }

    /// <summary>feq.s: quiet (NV only for sNaN).</summary>
    public static bool F32Eq(uint a, uint b, ref int flags)
    {
        if (IsNaN32(a) || IsNaN32(b))
        {
            if (IsSNaN32(a) || IsSNaN32(b)) flags |= Nv;
            return false;
        }
        return a == b || ((a | b) << 1) == 0;
    }

    /// <summary>flt.s: signaling (NV for any NaN).</summary>
    public static bool F32Lt(uint a, uint b, ref int flags)
    {
        if (IsNaN32(a) || IsNaN32(b))
        {
            flags |= Nv;
            return false;
        }
        return CompareKey32(a) < CompareKey32(b);
    }

    public static bool F32Le(uint a, uint b, ref int flags)
    {
        if (IsNaN32(a) || IsNaN32(b))
        {
            flags |= Nv;
            return false;
        }
        return CompareKey32(a) <= CompareKey32(b);
    }

    /// <summary>fclass.s: the one-hot 10-bit mask.</summary>
    public static ulong F32Class(uint a)
    {
        bool neg = (a & Sign32) != 0;
        uint e = (a >> 23) & 0xff, f = a & Frac32;
        return Classify(neg, e == 0xff, e == 0, f == 0, (f & Quiet32) != 0);
    }

    /// <inheritdoc cref="F32Min"/>
    public static ulong F64Min(ulong a, ulong b, ref int flags)
    {
        if (IsNaN64(a) || IsNaN64(b)) return NaNMinMax64(a, b, ref flags);
        return OrderKey64(a) <= OrderKey64(b) ? a : b;
    }

    public static ulong F64Max(ulong a, ulong b, ref int flags)
    {
        if (IsNaN64(a) || IsNaN64(b)) return NaNMinMax64(a, b, ref flags);
        return OrderKey64(a) >= OrderKey64(b) ? a : b;
    }

    public static bool F64Eq(ulong a, ulong b, ref int flags)
    {
        if (IsNaN64(a) || IsNaN64(b))
        {
            if (IsSNaN64(a) || IsSNaN64(b)) flags |= Nv;
            return false;
        }
        return a == b || ((a | b) << 1) == 0;
    }

    public static bool F64Lt(ulong a, ulong b, ref int flags)
    {
        if (IsNaN64(a) || IsNaN64(b))
        {
            flags |= Nv;
            return false;
        }
        return CompareKey64(a) < CompareKey64(b);
    }

    public static bool F64Le(ulong a, ulong b, ref int flags)
    {
        if (IsNaN64(a) || IsNaN64(b))
        {
            flags |= Nv;
            return false;
        }
        return CompareKey64(a) <= CompareKey64(b);
    }

    public static ulong F64Class(ulong a)
    {
        bool neg = (a & Sign64) != 0;
        ulong e = (a >> 52) & 0x7ff, f = a & Frac64;
        return Classify(neg, e == 0x7ff, e == 0, f == 0, (f & Quiet64) != 0);
    }

    private static ulong Classify(bool neg, bool maxExp, bool zeroExp, bool zeroFrac, bool quiet)
    {
        int bit;
        if (maxExp) bit = zeroFrac ? (neg ? 0 : 7) : quiet ? 9 : 8;
        else if (zeroExp) bit = zeroFrac ? (neg ? 3 : 4) : (neg ? 2 : 5);
        else bit = neg ? 1 : 6;
        return 1UL << bit;
    }

    // ---------------------------------------------------------------- float -> integer

    /// <summary>fcvt.w.s: saturating (NaN gives the largest positive), NV on out of range or NaN, NX when inexact; result sign-extended to 64 bits.</summary>
    public static long F32ToI32(uint a, int rm, ref int flags)
    {
        if (IsNaN32(a)) return InvalidI32(false, ref flags);
        bool sign = (a & Sign32) != 0;
        ulong mag = RoundToIntegerMagnitude(sign, Unpack32(a, out int q), q, rm, out bool inexact, out bool huge);
        return SaturateI32(sign, mag, inexact, huge, ref flags);
    }

    /// <summary>fcvt.wu.s; the 32-bit result sign-extended to 64 bits as the ISA says.</summary>
    public static long F32ToU32(uint a, int rm, ref int flags)
    {
        if (IsNaN32(a)) return InvalidU32(false, ref flags);
        bool sign = (a & Sign32) != 0;
        ulong mag = RoundToIntegerMagnitude(sign, Unpack32(a, out int q), q, rm, out bool inexact, out bool huge);
        return SaturateU32(sign, mag, inexact, huge, ref flags);
    }

    public static long F32ToI64(uint a, int rm, ref int flags)
    {
        if (IsNaN32(a)) return InvalidI64(false, ref flags);
        bool sign = (a & Sign32) != 0;
        ulong mag = RoundToIntegerMagnitude(sign, Unpack32(a, out int q), q, rm, out bool inexact, out bool huge);
        return SaturateI64(sign, mag, inexact, huge, ref flags);
    }

    public static ulong F32ToU64(uint a, int rm, ref int flags)
    {
        if (IsNaN32(a)) return InvalidU64(false, ref flags);
        bool sign = (a & Sign32) != 0;
        ulong mag = RoundToIntegerMagnitude(sign, Unpack32(a, out int q), q, rm, out bool inexact, out bool huge);
        return SaturateU64(sign, mag, inexact, huge, ref flags);
    }

    public static long F64ToI32(ulong a, int rm, ref int flags)
    {
        if (IsNaN64(a)) return InvalidI32(false, ref flags);
        bool sign = (a & Sign64) != 0;
        ulong mag = RoundToIntegerMagnitude(sign, Unpack64(a, out int q), q, rm, out bool inexact, out bool huge);
        return SaturateI32(sign, mag, inexact, huge, ref flags);
    }

    public static long F64ToU32(ulong a, int rm, ref int flags)
    {
        if (IsNaN64(a)) return InvalidU32(false, ref flags);
        bool sign = (a & Sign64) != 0;
        ulong mag = RoundToIntegerMagnitude(sign, Unpack64(a, out int q), q, rm, out bool inexact, out bool huge);
        return SaturateU32(sign, mag, inexact, huge, ref flags);
    }

    public static long F64ToI64(ulong a, int rm, ref int flags)
    {
        if (IsNaN64(a)) return InvalidI64(false, ref flags);
        bool sign = (a & Sign64) != 0;
        ulong mag = RoundToIntegerMagnitude(sign, Unpack64(a, out int q), q, rm, out bool inexact, out bool huge);
        return SaturateI64(sign, mag, inexact, huge, ref flags);
    }

    public static ulong F64ToU64(ulong a, int rm, ref int flags)
    {
        if (IsNaN64(a)) return InvalidU64(false, ref flags);
        bool sign = (a & Sign64) != 0;
        ulong mag = RoundToIntegerMagnitude(sign, Unpack64(a, out int q), q, rm, out bool inexact, out bool huge);
        return SaturateU64(sign, mag, inexact, huge, ref flags);
    }

    /// <summary>
    /// Rounds (-1)^sign * mant * 2^q (mant &lt; 2^53; an infinity comes in as q = int.MaxValue) to an integer and
    /// returns its magnitude; <paramref name="huge"/> when that is 2^64 or more.
    /// </summary>
    private static ulong RoundToIntegerMagnitude(bool sign, ulong mant, int q, int rm, out bool inexact, out bool huge)
    {
        inexact = false;
        huge = false;
        if (mant == 0) return 0;
        if (q >= 0)
        {
            if (q >= 64 || (q > 0 && (mant >> (64 - q)) != 0))
            {
                huge = true;
                return 0;
            }
            return mant << q;
        }
        int s = -q;
        ulong ip, frac; // integer part, and the fraction as a 64-bit binary fraction (sticky when beyond)
        if (s < 64)
        {
            ip = mant >> s;
            frac = mant << (64 - s);
        }
        else
        {
            ip = 0;
            frac = s == 64 ? mant : 1; // below 2^-11: nonzero and less than a half is all that matters
        }
        const ulong Half = 1UL << 63;
        bool up = rm switch
        {
            RoundingMode.Rne => frac > Half || (frac == Half && (ip & 1) != 0),
            RoundingMode.Rdn => sign && frac != 0,
            RoundingMode.Rup => !sign && frac != 0,
            RoundingMode.Rmm => frac >= Half,
            _ => false,
        };
        inexact = frac != 0;
        return ip + (up ? 1UL : 0); // ip < 2^53: no carry out
    }

    private static long SaturateI32(bool sign, ulong mag, bool inexact, bool huge, ref int flags)
    {
        if (!huge && (sign ? mag <= 1UL << 31 : mag <= int.MaxValue))
        {
            if (inexact) flags |= Nx;
            return sign ? -(long)mag : (long)mag;
        }
        return InvalidI32(sign, ref flags);
    }

    private static long SaturateU32(bool sign, ulong mag, bool inexact, bool huge, ref int flags)
    {
        // A negative value that rounds to 0 (-0.3 in RTZ) is in range: 0 with only NX.
        if (!huge && (sign ? mag == 0 : mag <= uint.MaxValue))
        {
            if (inexact) flags |= Nx;
            return (int)(uint)mag;
        }
        return InvalidU32(sign, ref flags);
    }

    private static long SaturateI64(bool sign, ulong mag, bool inexact, bool huge, ref int flags)
    {
        if (!huge && (sign ? mag <= 1UL << 63 : mag <= long.MaxValue))
        {
            if (inexact) flags |= Nx;
            return sign ? (long)(0 - mag) : (long)mag;
        }
        return InvalidI64(sign, ref flags);
    }

    private static ulong SaturateU64(bool sign, ulong mag, bool inexact, bool huge, ref int flags)
    {
        if (!huge && (!sign || mag == 0))
        {
            if (inexact) flags |= Nx;
            return mag;
        }
        return InvalidU64(sign, ref flags);
    }

    // Out of range or NaN: NV alone (no NX), saturated towards the sign; NaN counts as positive.
    private static long InvalidI32(bool negative, ref int flags)
    {
        flags |= Nv;
        return negative ? int.MinValue : int.MaxValue;
    }

    private static long InvalidU32(bool negative, ref int flags)
    {
        flags |= Nv;
        return negative ? 0 : -1; // 0xffffffff sign-extended
    }

    private static long InvalidI64(bool negative, ref int flags)
    {
        flags |= Nv;
        return negative ? long.MinValue : long.MaxValue;
    }

    private static ulong InvalidU64(bool negative, ref int flags)
    {
        flags |= Nv;
        return negative ? 0 : ulong.MaxValue;
    }

    // ---------------------------------------------------------------- integer -> float

    // A nonzero integer m is m * 2^0: in RoundPack's scales that is exponent 188 (binary32) or 1084 (binary64).
    public static uint I32ToF32(int v, int rm, ref int flags) =>
        v == 0 ? 0 : (uint)NormRoundPack32(v < 0, 188, (ulong)Math.Abs((long)v), rm, ref flags);

    public static uint U32ToF32(uint v, int rm, ref int flags) =>
        v == 0 ? 0 : (uint)NormRoundPack32(false, 188, v, rm, ref flags);

    public static uint I64ToF32(long v, int rm, ref int flags) =>
        v == 0 ? 0 : (uint)NormRoundPack32(v < 0, 188, v < 0 ? 0 - (ulong)v : (ulong)v, rm, ref flags);

    public static uint U64ToF32(ulong v, int rm, ref int flags) =>
        v == 0 ? 0 : (uint)NormRoundPack32(false, 188, v, rm, ref flags);

    // 32-bit integers fit in 53 bits: exact.
    public static ulong I32ToF64(int v, int rm, ref int flags) => BitConverter.DoubleToUInt64Bits(v);

    public static ulong U32ToF64(uint v, int rm, ref int flags) => BitConverter.DoubleToUInt64Bits(v);

    public static ulong I64ToF64(long v, int rm, ref int flags) =>
        v == 0 ? 0 : NormRoundPack64(v < 0, 1084, v < 0 ? 0 - (ulong)v : (ulong)v, rm, ref flags);

    public static ulong U64ToF64(ulong v, int rm, ref int flags) =>
        v == 0 ? 0 : NormRoundPack64(false, 1084, v, rm, ref flags);

    // ---------------------------------------------------------------- float <-> float

    /// <summary>fcvt.d.s (exact; sNaN raises NV; NaN gives the canonical NaN).</summary>
    public static ulong F32ToF64(uint a, ref int flags)
    {
        if (IsNaN32(a))
        {
            if (IsSNaN32(a)) flags |= Nv;
            return CanonicalNaN64;
        }
        return BitConverter.DoubleToUInt64Bits(BitConverter.UInt32BitsToSingle(a));
    }

    /// <summary>fcvt.s.d.</summary>
    public static uint F64ToF32(ulong a, int rm, ref int flags)
    {
        if (IsNaN64(a))
        {
            if (IsSNaN64(a)) flags |= Nv;
            return CanonicalNaN32;
        }
        double d = BitConverter.UInt64BitsToDouble(a);
        if (rm == RoundingMode.Rne)
        {
            float f = (float)d;
            uint fb = BitConverter.SingleToUInt32Bits(f);
            // Normal, not tiny, finite: the host's single rounding is right; only NX to find.
            if (((fb >> 23) & 0xff) - 2 <= 252)
            {
                if ((double)f != d) flags |= Nx;
                return fb;
            }
        }
        bool sign = (a & Sign64) != 0;
        if (IsInf64(a) || IsZero64(a)) return (sign ? Sign32 : 0) | (IsInf64(a) ? Inf32 : 0);
        ulong sig = Normalize64(a, out int e);
        // value = sig * 2^(e - 1075); RoundPack32's scale is sig * 2^(e' - 188).
        return NormRoundPack32(sign, e - 887, sig, rm, ref flags);
    }

    // ---------------------------------------------------------------- rounding core

    // Two instantiations of the generic body below, with its format constants folded in by the JIT.
    private static uint NormRoundPack32(bool sign, int exp, ulong sig, int rm, ref int flags) =>
        (uint)NormRoundPack(sign, exp, sig, rm, 39, 0xfd, 23, ref flags);

    private static ulong NormRoundPack64(bool sign, int exp, ulong sig, int rm, ref int flags) =>
        NormRoundPack(sign, exp, sig, rm, 10, 0x7fd, 52, ref flags);

    /// <summary>
    /// Moves a nonzero <paramref name="sig"/> so its leading bit is bit 62 (adjusting <paramref name="exp"/>), then
    /// rounds. A bit-63 significand is shifted right with its lost bit kept as sticky.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong NormRoundPack(bool sign, int exp, ulong sig, int rm, int roundBits, int maxExp, int fracBits, ref int flags)
    {
        int lz = BitOperations.LeadingZeroCount(sig);
        if (lz == 0)
        {
            sig = (sig >> 1) | (sig & 1);
            exp++;
        }
        else
        {
            sig <<= lz - 1;
            exp -= lz - 1;
        }
        return RoundPack(sign, exp, sig, rm, roundBits, maxExp, fracBits, ref flags);
    }

    /// <summary>
    /// Berkeley SoftFloat's roundPackToF32/F64 with tininess after rounding. <paramref name="sig"/> has its leading
    /// bit at 62 and <paramref name="roundBits"/> bits below the result's last bit (the lowest being sticky);
    /// the value is sig * 2^(exp - bias - 62 + 1), i.e. <paramref name="exp"/> is the biased exponent minus one
    /// (packing adds the leading bit into the exponent field).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong RoundPack(bool sign, int exp, ulong sig, int rm, int roundBits, int maxExp, int fracBits, ref int flags)
    {
        ulong mask = (1UL << roundBits) - 1, half = 1UL << (roundBits - 1);
        ulong increment = rm is RoundingMode.Rne or RoundingMode.Rmm ? half
            : rm == (sign ? RoundingMode.Rdn : RoundingMode.Rup) ? mask
            : 0;
        ulong signBit = sign ? 1UL << (fracBits == 52 ? 63 : 31) : 0;
        ulong low = sig & mask;
        if ((uint)exp >= (uint)maxExp)
        {
            if (exp < 0)
            {
                // Tiny if below the smallest normal even after rounding with an unbounded exponent.
                bool tiny = exp < -1 || sig + increment < 1UL << 63;
                sig = ShiftRightJam64(sig, -exp);
                exp = 0;
                low = sig & mask;
                if (tiny && low != 0) flags |= Uf;
            }
            else if (exp > maxExp || sig + increment >= 1UL << 63)
            {
                flags |= Of | Nx;
                // Infinity, or the largest finite number when the mode rounds towards zero for this sign.
                ulong inf = (ulong)(maxExp + 2) << fracBits;
                return signBit | (increment == 0 ? inf - 1 : inf);
            }
        }
        sig = (sig + increment) >> roundBits;
        if (low != 0) flags |= Nx;
        if (low == half && rm == RoundingMode.Rne) sig &= ~1UL; // tie: to even
        if (sig == 0) exp = 0;
        return signBit | (((ulong)exp << fracBits) + sig);
    }

    private static ulong ShiftRightJam64(ulong a, int dist) =>
        dist < 64 ? (a >> dist) | ((a & ((1UL << dist) - 1)) != 0 ? 1UL : 0) : (a != 0 ? 1UL : 0);

    private static UInt128 ShiftRightJam128(UInt128 a, int dist) =>
        dist == 0 ? a
        : dist < 128 ? (a >> dist) | ((a << (128 - dist)) != UInt128.Zero ? UInt128.One : UInt128.Zero)
        : a != UInt128.Zero ? UInt128.One : UInt128.Zero;

    // ---------------------------------------------------------------- helpers

    private static bool IsNaN32(uint a) => (a & ~Sign32) > Inf32;
    private static bool IsSNaN32(uint a) => IsNaN32(a) && (a & Quiet32) == 0;
    private static bool IsInf32(uint a) => (a & ~Sign32) == Inf32;
    private static bool IsZero32(uint a) => (a & ~Sign32) == 0;
    private static bool IsNaN64(ulong a) => (a & ~Sign64) > Inf64;
    private static bool IsSNaN64(ulong a) => IsNaN64(a) && (a & Quiet64) == 0;
    private static bool IsInf64(ulong a) => (a & ~Sign64) == Inf64;
    private static bool IsZero64(ulong a) => (a & ~Sign64) == 0;

    private static double ToDouble(uint a) => BitConverter.UInt32BitsToSingle(a);

    // |v| in [2^-450, 2^450): products and quotients of two such are normal and finite with exact FMA residues.
    private static bool InFastWindow(ulong v) => (((uint)(v >> 52) & 0x7ff) - 573u) < 900u;

    /// <summary>The rounding error of s = x + y (Fast2Sum, ordered by magnitude so it is exact).</summary>
    private static double AddError(double x, double y, double s) =>
        Math.Abs(x) >= Math.Abs(y) ? y - (s - x) : x - (s - y);

    /// <summary>Finite nonzero binary64: significand with bit 52 set and e with value = sig * 2^(e - 1075).</summary>
    private static ulong Normalize64(ulong a, out int e)
    {
        int field = (int)(a >> 52) & 0x7ff;
        ulong frac = a & Frac64;
        if (field != 0)
        {
            e = field;
            return frac | Hidden64;
        }
        int shift = BitOperations.LeadingZeroCount(frac) - 11;
        e = 1 - shift;
        return frac << shift;
    }

    /// <summary>Non-NaN binary32 as mant * 2^q (mant 0 for zeros; infinities give q = int.MaxValue).</summary>
    private static ulong Unpack32(uint a, out int q)
    {
        int field = (int)(a >> 23) & 0xff;
        ulong frac = a & Frac32;
        if (field == 0xff)
        {
            q = int.MaxValue;
            return 1;
        }
        q = (field == 0 ? 1 : field) - 150;
        return field == 0 ? frac : frac | (1UL << 23);
    }

    /// <summary>Non-NaN binary64 as mant * 2^q (mant 0 for zeros; infinities give q = int.MaxValue).</summary>
    private static ulong Unpack64(ulong a, out int q)
    {
        int field = (int)(a >> 52) & 0x7ff;
        ulong frac = a & Frac64;
        if (field == 0x7ff)
        {
            q = int.MaxValue;
            return 1;
        }
        q = (field == 0 ? 1 : field) - 1075;
        return field == 0 ? frac : frac | Hidden64;
    }

    // Ordering keys for non-NaN values. Compare: -0 and +0 equal. Order (min/max): -0 below +0.
    private static int CompareKey32(uint a) => (a & Sign32) != 0 ? -(int)(a & ~Sign32) : (int)a;
    private static int OrderKey32(uint a) => (a & Sign32) != 0 ? -(int)(a & ~Sign32) - 1 : (int)a;
    private static long CompareKey64(ulong a) => (a & Sign64) != 0 ? -(long)(a & ~Sign64) : (long)a;
    private static long OrderKey64(ulong a) => (a & Sign64) != 0 ? -(long)(a & ~Sign64) - 1 : (long)a;

    private static uint NaNMinMax32(uint a, uint b, ref int flags)
    {
        if (IsSNaN32(a) || IsSNaN32(b)) flags |= Nv;
        if (IsNaN32(a)) return IsNaN32(b) ? CanonicalNaN32 : b;
        return a;
    }

    private static ulong NaNMinMax64(ulong a, ulong b, ref int flags)
    {
        if (IsSNaN64(a) || IsSNaN64(b)) flags |= Nv;
        if (IsNaN64(a)) return IsNaN64(b) ? CanonicalNaN64 : b;
        return a;
    }

    private static uint NaNResult32(uint a, uint b, ref int flags)
    {
        if (IsSNaN32(a) || IsSNaN32(b)) flags |= Nv;
        return CanonicalNaN32;
    }

    private static ulong NaNResult64(ulong a, ulong b, ref int flags)
    {
        if (IsSNaN64(a) || IsSNaN64(b)) flags |= Nv;
        return CanonicalNaN64;
    }

    private static uint Invalid32(ref int flags)
    {
        flags |= Nv;
        return CanonicalNaN32;
    }

    private static ulong Invalid64(ref int flags)
    {
        flags |= Nv;
        return CanonicalNaN64;
    }
}

/// <summary>RISC-V rounding modes (the <c>rm</c> field and <c>frm</c>); 5 and 6 are reserved, 7 is DYN in an instruction.</summary>
public static class RoundingMode
{
    public const int Rne = 0, Rtz = 1, Rdn = 2, Rup = 3, Rmm = 4, Dyn = 7;
}

/// <summary>The bits of <c>fflags</c>.</summary>
public static class FloatFlags
{
    public const int Inexact = 1, Underflow = 2, Overflow = 4, DivideByZero = 8, Invalid = 16;
}
