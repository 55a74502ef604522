using System.Numerics;
using Ferry.Machine.Cpu;
using static Ferry.Machine.Cpu.FloatFlags;
using static Ferry.Machine.Cpu.RoundingMode;

namespace Ferry.Machine.Tests;

/// <summary>
/// SoftFloat against the RISC-V F/D rules: hand-picked edge cases with known answers, a bit-exact cross-check of RNE
/// against the host's IEEE arithmetic, and a check of the directed modes against the exact value (BigInteger).
/// </summary>
public class SoftFloatTests
{
    private const uint One32 = 0x3f80_0000, Max32 = 0x7f7f_ffff, Inf32 = 0x7f80_0000, QNaN32 = 0x7fc0_0000, SNaN32 = 0x7f80_0001;
    private const uint NegZero32 = 0x8000_0000, MinNormal32 = 0x0080_0000;
    private const ulong One64 = 0x3ff0_0000_0000_0000, Max64 = 0x7fef_ffff_ffff_ffff, Inf64 = 0x7ff0_0000_0000_0000;
    private const ulong SNaN64 = 0x7ff0_0000_0000_0001, QNaN64 = 0x7ff8_0000_0000_0000, NegZero64 = 0x8000_0000_0000_0000;
    private const ulong MinNormal64 = 0x0010_0000_0000_0000;

    private static uint B(float f) => BitConverter.SingleToUInt32Bits(f);
    private static ulong B(double d) => BitConverter.DoubleToUInt64Bits(d);
    private static float F(uint b) => BitConverter.UInt32BitsToSingle(b);
    private static double D(ulong b) => BitConverter.UInt64BitsToDouble(b);

    // ------------------------------------------------------------------ rounding modes on ties and non-ties

    [Theory]
    // 1 + 2^-24 is exactly halfway between 1 and 1+ulp.
    [InlineData(Rne, 0x3f80_0000u)]
    [InlineData(Rtz, 0x3f80_0000u)]
    [InlineData(Rdn, 0x3f80_0000u)]
    [InlineData(Rup, 0x3f80_0001u)]
    [InlineData(Rmm, 0x3f80_0001u)]
    public void F32AddRoundsAPositiveTiePerMode(int rm, uint expected)
    {
        int flags = 0;
        Assert.Equal(expected, SoftFloat.F32Add(One32, B(MathF.Pow(2, -24)), rm, ref flags));
        Assert.Equal(Inexact, flags);
    }

    [Theory]
    [InlineData(Rne, 0xbf80_0000u)]
    [InlineData(Rtz, 0xbf80_0000u)]
    [InlineData(Rdn, 0xbf80_0001u)]
    [InlineData(Rup, 0xbf80_0000u)]
    [InlineData(Rmm, 0xbf80_0001u)]
    public void F32SubRoundsANegativeTiePerMode(int rm, uint expected)
    {
        int flags = 0;
        Assert.Equal(expected, SoftFloat.F32Sub(0xbf80_0000, B(MathF.Pow(2, -24)), rm, ref flags));
        Assert.Equal(Inexact, flags);
    }

    [Fact]
    public void F32TieGoesToEvenInRneAndAwayInRmm()
    {
        // (1 + ulp) + ulp/2: halfway between 1+ulp (odd) and 1+2ulp (even); both modes go up.
        int flags = 0;
        Assert.Equal(0x3f80_0002u, SoftFloat.F32Add(0x3f80_0001, B(MathF.Pow(2, -24)), Rne, ref flags));
        Assert.Equal(0x3f80_0002u, SoftFloat.F32Add(0x3f80_0001, B(MathF.Pow(2, -24)), Rmm, ref flags));
        Assert.Equal(0x3f80_0001u, SoftFloat.F32Add(0x3f80_0001, B(MathF.Pow(2, -24)), Rtz, ref flags));
    }

    [Theory]
    // 1 + (2^-24 + 2^-30): just above the halfway point.
    [InlineData(Rne, 0x3f80_0001u)]
    [InlineData(Rtz, 0x3f80_0000u)]
    [InlineData(Rdn, 0x3f80_0000u)]
    [InlineData(Rup, 0x3f80_0001u)]
    [InlineData(Rmm, 0x3f80_0001u)]
    public void F32AddRoundsANonTiePerMode(int rm, uint expected)
    {
        int flags = 0;
        Assert.Equal(expected, SoftFloat.F32Add(One32, B(MathF.Pow(2, -24) + MathF.Pow(2, -30)), rm, ref flags));
        Assert.Equal(Inexact, flags);
    }

    [Theory]
    [InlineData(Rne, 0x3ff0_0000_0000_0000ul)]
    [InlineData(Rtz, 0x3ff0_0000_0000_0000ul)]
    [InlineData(Rdn, 0x3ff0_0000_0000_0000ul)]
    [InlineData(Rup, 0x3ff0_0000_0000_0001ul)]
    [InlineData(Rmm, 0x3ff0_0000_0000_0001ul)]
    public void F64AddRoundsATiePerMode(int rm, ulong expected)
    {
        int flags = 0;
        Assert.Equal(expected, SoftFloat.F64Add(One64, B(Math.Pow(2, -53)), rm, ref flags));
        Assert.Equal(Inexact, flags);
    }

    [Theory]
    // 1/3 = 0x3fd5555555555555 remainder 1/3 ulp: below half.
    [InlineData(Rne, 0x3fd5_5555_5555_5555ul)]
    [InlineData(Rtz, 0x3fd5_5555_5555_5555ul)]
    [InlineData(Rdn, 0x3fd5_5555_5555_5555ul)]
    [InlineData(Rup, 0x3fd5_5555_5555_5556ul)]
    [InlineData(Rmm, 0x3fd5_5555_5555_5555ul)]
    public void F64DivRoundsANonTiePerMode(int rm, ulong expected)
    {
        int flags = 0;
        Assert.Equal(expected, SoftFloat.F64Div(One64, B(3.0), rm, ref flags));
        Assert.Equal(Inexact, flags);
        flags = 0;
        // The mirror image: RDN of a negative quotient is RUP of the positive one.
        Assert.Equal(expected ^ NegZero64, SoftFloat.F64Div(One64, B(-3.0), rm is Rdn ? Rup : rm is Rup ? Rdn : rm, ref flags));
    }

    // ------------------------------------------------------------------ overflow

    [Theory]
    [InlineData(Rne, Inf32, 0xff80_0000u)]
    [InlineData(Rtz, Max32, 0xff7f_ffffu)]
    [InlineData(Rdn, Max32, 0xff80_0000u)]
    [InlineData(Rup, Inf32, 0xff7f_ffffu)]
    [InlineData(Rmm, Inf32, 0xff80_0000u)]
    public void F32OverflowGivesInfinityOrMaxFinitePerMode(int rm, uint positive, uint negative)
    {
        int flags = 0;
        Assert.Equal(positive, SoftFloat.F32Mul(Max32, B(2f), rm, ref flags));
        Assert.Equal(Overflow | Inexact, flags);
        flags = 0;
        Assert.Equal(negative, SoftFloat.F32Mul(Max32, B(-2f), rm, ref flags));
        Assert.Equal(Overflow | Inexact, flags);
    }

    [Theory]
    [InlineData(Rne, Inf64, 0xfff0_0000_0000_0000ul)]
    [InlineData(Rtz, Max64, 0xffef_ffff_ffff_fffful)]
    [InlineData(Rdn, Max64, 0xfff0_0000_0000_0000ul)]
    [InlineData(Rup, Inf64, 0xffef_ffff_ffff_fffful)]
    [InlineData(Rmm, Inf64, 0xfff0_0000_0000_0000ul)]
    public void F64OverflowGivesInfinityOrMaxFinitePerMode(int rm, ulong positive, ulong negative)
    {
        int flags = 0;
        Assert.Equal(positive, SoftFloat.F64Add(Max64, Max64, rm, ref flags));
        Assert.Equal(Overflow | Inexact, flags);
        flags = 0;
        Assert.Equal(negative, SoftFloat.F64Mul(Max64, B(-1.5), rm, ref flags));
        Assert.Equal(Overflow | Inexact, flags);
        flags = 0;
        Assert.Equal(positive, SoftFloat.F64MulAdd(Max64, B(1.0), Max64, rm, ref flags));
        Assert.Equal(Overflow | Inexact, flags);
    }

    [Fact]
    public void MaxFinitePlusLessThanHalfAnUlpDoesNotOverflowInRne()
    {
        int flags = 0;
        Assert.Equal(Max64, SoftFloat.F64Add(Max64, B(Math.Pow(2, 969)), Rne, ref flags)); // ulp(max) = 2^971
        Assert.Equal(Inexact, flags);
        flags = 0;
        Assert.Equal(Inf64, SoftFloat.F64Add(Max64, B(Math.Pow(2, 969)), Rup, ref flags));
        Assert.Equal(Overflow | Inexact, flags);
    }

    // ------------------------------------------------------------------ underflow, tininess after rounding

    [Fact]
    public void TinyBeforeButNotAfterRoundingRaisesNoUnderflow()
    {
        // (1 + 2^-52) * 2^-1022 (1 - 2^-52) = 2^-1022 (1 - 2^-104): rounds to the smallest normal even with an
        // unbounded exponent, so it is not tiny after rounding: NX only (before-rounding hardware would say UF).
        int flags = 0;
        Assert.Equal(MinNormal64, SoftFloat.F64Mul(0x3ff0_0000_0000_0001, 0x000f_ffff_ffff_ffff, Rne, ref flags));
        Assert.Equal(Inexact, flags);
        flags = 0;
        Assert.Equal(MinNormal64, SoftFloat.F64Mul(0x3ff0_0000_0000_0001, 0x000f_ffff_ffff_ffff, Rup, ref flags));
        Assert.Equal(Inexact, flags);
        // Towards zero the same value rounds below 2^-1022: tiny, and inexact.
        flags = 0;
        Assert.Equal(0x000f_ffff_ffff_ffffUL, SoftFloat.F64Mul(0x3ff0_0000_0000_0001, 0x000f_ffff_ffff_ffff, Rtz, ref flags));
        Assert.Equal(Underflow | Inexact, flags);

        flags = 0;
        Assert.Equal(MinNormal32, SoftFloat.F32Mul(0x3f80_0001, 0x007f_ffff, Rne, ref flags));
        Assert.Equal(Inexact, flags);
        flags = 0;
        Assert.Equal(0x007f_ffffu, SoftFloat.F32Mul(0x3f80_0001, 0x007f_ffff, Rtz, ref flags));
        Assert.Equal(Underflow | Inexact, flags);
    }

    [Fact]
    public void TinyAfterRoundingButRoundedUpToMinNormalRaisesUnderflow()
    {
        // 2^-1022 (1 - 2^-53) is a 53-bit number below 2^-1022 (tiny after rounding) that the subnormal grid
        // rounds (a tie, to even) up to 2^-1022.
        int flags = 0;
        Assert.Equal(MinNormal64, SoftFloat.F64Mul(MinNormal64, 0x3fef_ffff_ffff_ffff, Rne, ref flags));
        Assert.Equal(Underflow | Inexact, flags);
        flags = 0;
        Assert.Equal(MinNormal32, SoftFloat.F32Mul(MinNormal32, 0x3f7f_ffff, Rne, ref flags));
        Assert.Equal(Underflow | Inexact, flags);
    }

    [Fact]
    public void ExactSubnormalResultsRaiseNothing()
    {
        int flags = 0;
        Assert.Equal(1u, SoftFloat.F32Mul(2, B(0.5f), Rne, ref flags));
        Assert.Equal(1ul, SoftFloat.F64Mul(2, B(0.5), Rne, ref flags));
        Assert.Equal(0x0000_0003ul, SoftFloat.F64Add(1, 2, Rdn, ref flags));
        Assert.Equal(0x0000_0001u, SoftFloat.F32Sub(MinNormal32, 0x007f_ffff, Rtz, ref flags));
        Assert.Equal(0, flags);
    }

    [Theory]
    // Half the smallest subnormal: a tie between 0 (even) and 2^-149.
    [InlineData(Rne, 0u)]
    [InlineData(Rtz, 0u)]
    [InlineData(Rdn, 0u)]
    [InlineData(Rup, 1u)]
    [InlineData(Rmm, 1u)]
    public void HalfTheSmallestSubnormalRoundsPerModeWithUnderflow(int rm, uint expected)
    {
        int flags = 0;
        Assert.Equal(expected, SoftFloat.F32Mul(1, B(0.5f), rm, ref flags));
        Assert.Equal(Underflow | Inexact, flags);
        flags = 0;
        Assert.Equal((ulong)expected, SoftFloat.F64Mul(1, B(0.5), rm, ref flags));
        Assert.Equal(Underflow | Inexact, flags);
    }

    // ------------------------------------------------------------------ signed zeros

    [Fact]
    public void XMinusXIsPositiveZeroExceptInRdn()
    {
        foreach (int rm in new[] { Rne, Rtz, Rup, Rmm })
        {
            int flags = 0;
            Assert.Equal(0u, SoftFloat.F32Sub(One32, One32, rm, ref flags));
            Assert.Equal(0ul, SoftFloat.F64Add(One64, One64 | NegZero64, rm, ref flags));
            Assert.Equal(0ul, SoftFloat.F64MulAdd(One64, One64, One64 | NegZero64, rm, ref flags));
            Assert.Equal(0u, SoftFloat.F32MulAdd(One32, One32, One32 | NegZero32, rm, ref flags));
            Assert.Equal(0u, SoftFloat.F32Add(0, NegZero32, rm, ref flags));
            Assert.Equal(0, flags);
        }
        int f = 0;
        Assert.Equal(NegZero32, SoftFloat.F32Sub(One32, One32, Rdn, ref f));
        Assert.Equal(NegZero64, SoftFloat.F64Add(One64, One64 | NegZero64, Rdn, ref f));
        Assert.Equal(NegZero64, SoftFloat.F64MulAdd(One64, One64, One64 | NegZero64, Rdn, ref f));
        Assert.Equal(NegZero32, SoftFloat.F32MulAdd(One32, One32, One32 | NegZero32, Rdn, ref f));
        Assert.Equal(NegZero32, SoftFloat.F32Add(0, NegZero32, Rdn, ref f));
        Assert.Equal(NegZero64, SoftFloat.F64MulAdd(0, NegZero64, 0, Rdn, ref f));
        Assert.Equal(0, f);
    }

    [Fact]
    public void ZeroSignsFollowTheOperands()
    {
        int flags = 0;
        Assert.Equal(NegZero32, SoftFloat.F32Add(NegZero32, NegZero32, Rne, ref flags));
        Assert.Equal(NegZero64, SoftFloat.F64Mul(NegZero64, B(5.0), Rne, ref flags));
        Assert.Equal(NegZero32, SoftFloat.F32Div(0, B(-5f), Rne, ref flags));
        Assert.Equal(NegZero64, SoftFloat.F64Sqrt(NegZero64, Rne, ref flags));
        Assert.Equal(NegZero32, SoftFloat.F32Sqrt(NegZero32, Rup, ref flags));
        // -0 * x + -0 is -0 in every mode.
        Assert.Equal(NegZero64, SoftFloat.F64MulAdd(NegZero64, One64, NegZero64, Rne, ref flags));
        // A product that underflows to zero keeps the product's sign.
        Assert.Equal(NegZero64, SoftFloat.F64MulAdd(1, 0x8000_0000_0000_0001, 0, Rne, ref flags));
        Assert.Equal(Underflow | Inexact, flags);
    }

    // ------------------------------------------------------------------ NaNs, invalid, divide by zero

    [Fact]
    public void NaNResultsAreCanonicalWithoutPayload()
    {
        int flags = 0;
        Assert.Equal(SoftFloat.CanonicalNaN32, SoftFloat.F32Add(0xffc1_2345, One32, Rne, ref flags));
        Assert.Equal(SoftFloat.CanonicalNaN64, SoftFloat.F64Mul(0xfff8_0000_dead_beef, One64, Rne, ref flags));
        Assert.Equal(SoftFloat.CanonicalNaN64, SoftFloat.F32ToF64(0xffc1_2345, ref flags));
        Assert.Equal(SoftFloat.CanonicalNaN32, SoftFloat.F64ToF32(0xfff8_0000_dead_beef, Rne, ref flags));
        Assert.Equal(0, flags);
        Assert.Equal(SoftFloat.CanonicalNaN64, SoftFloat.F32ToF64(SNaN32, ref flags));
        Assert.Equal(Invalid, flags);
        flags = 0;
        Assert.Equal(SoftFloat.CanonicalNaN32, SoftFloat.F64ToF32(SNaN64, Rne, ref flags));
        Assert.Equal(Invalid, flags);
        flags = 0;
        Assert.Equal(SoftFloat.CanonicalNaN64, SoftFloat.F64Add(SNaN64, QNaN64, Rne, ref flags));
        Assert.Equal(Invalid, flags);
    }

    [Fact]
    public void InfinityTimesZeroPlusQuietNaNIsInvalid()
    {
        int flags = 0;
        Assert.Equal(SoftFloat.CanonicalNaN64, SoftFloat.F64MulAdd(Inf64, 0, QNaN64, Rne, ref flags));
        Assert.Equal(Invalid, flags);
        flags = 0;
        Assert.Equal(SoftFloat.CanonicalNaN32, SoftFloat.F32MulAdd(0, Inf32, 0x7fc0_1234, Rne, ref flags));
        Assert.Equal(Invalid, flags);
        // Any other quiet NaN operand is quiet.
        flags = 0;
        Assert.Equal(SoftFloat.CanonicalNaN64, SoftFloat.F64MulAdd(Inf64, One64, QNaN64, Rne, ref flags));
        Assert.Equal(SoftFloat.CanonicalNaN32, SoftFloat.F32MulAdd(QNaN32, 0, One32, Rne, ref flags));
        Assert.Equal(0, flags);
        Assert.Equal(SoftFloat.CanonicalNaN32, SoftFloat.F32MulAdd(One32, One32, SNaN32, Rne, ref flags));
        Assert.Equal(Invalid, flags);
    }

    [Fact]
    public void MulAddOfInfinitiesIsInvalidOnlyWhenTheySubtract()
    {
        int flags = 0;
        Assert.Equal(SoftFloat.CanonicalNaN64, SoftFloat.F64MulAdd(Inf64, One64, Inf64 | NegZero64, Rne, ref flags));
        Assert.Equal(Invalid, flags);
        flags = 0;
        Assert.Equal(SoftFloat.CanonicalNaN32, SoftFloat.F32MulAdd(Inf32, 0, One32, Rne, ref flags));
        Assert.Equal(Invalid, flags);
        flags = 0;
        Assert.Equal(Inf64, SoftFloat.F64MulAdd(Inf64, One64, Inf64, Rne, ref flags));
        Assert.Equal(Inf32 | NegZero32, SoftFloat.F32MulAdd(One32, One32, Inf32 | NegZero32, Rne, ref flags));
        Assert.Equal(0, flags);
    }

    [Fact]
    public void SqrtOfANegativeNumberIsInvalid()
    {
        int flags = 0;
        Assert.Equal(SoftFloat.CanonicalNaN32, SoftFloat.F32Sqrt(B(-1f), Rne, ref flags));
        Assert.Equal(Invalid, flags);
        flags = 0;
        Assert.Equal(SoftFloat.CanonicalNaN64, SoftFloat.F64Sqrt(0x8000_0000_0000_0001, Rne, ref flags));
        Assert.Equal(Invalid, flags);
        flags = 0;
        Assert.Equal(SoftFloat.CanonicalNaN64, SoftFloat.F64Sqrt(Inf64 | NegZero64, Rne, ref flags));
        Assert.Equal(Invalid, flags);
        flags = 0;
        Assert.Equal(SoftFloat.CanonicalNaN64, SoftFloat.F64Sqrt(QNaN64 | NegZero64, Rne, ref flags));
        Assert.Equal(Inf64, SoftFloat.F64Sqrt(Inf64, Rne, ref flags));
        Assert.Equal(0, flags);
    }

    [Fact]
    public void SqrtIsCorrectlyRoundedInEveryMode()
    {
        int flags = 0;
        Assert.Equal(B(1.4142135f), SoftFloat.F32Sqrt(B(2f), Rne, ref flags));
        Assert.Equal(Inexact, flags);
        flags = 0;
        Assert.Equal(B(3.0), SoftFloat.F64Sqrt(B(9.0), Rdn, ref flags));
        Assert.Equal(0, flags);
        ulong down = SoftFloat.F64Sqrt(B(2.0), Rdn, ref flags), up = SoftFloat.F64Sqrt(B(2.0), Rup, ref flags);
        // sqrt(2) = 1.41421356237309504880...; the nearest double, 1.41421356237309514547..., is above it.
        Assert.Equal(B(Math.Sqrt(2.0)), up);
        Assert.Equal(up - 1, down);
        Assert.Equal(down, SoftFloat.F64Sqrt(B(2.0), Rtz, ref flags));
        // Smallest subnormal: sqrt(2^-1074) = 2^-537 exactly.
        flags = 0;
        Assert.Equal(B(Math.Pow(2, -537)), SoftFloat.F64Sqrt(1, Rup, ref flags));
        Assert.Equal(0, flags);
    }

    [Fact]
    public void DivisionByZeroRaisesDzAndGivesSignedInfinity()
    {
        int flags = 0;
        Assert.Equal(Inf32, SoftFloat.F32Div(One32, 0, Rne, ref flags));
        Assert.Equal(DivideByZero, flags);
        flags = 0;
        Assert.Equal(Inf64 | NegZero64, SoftFloat.F64Div(B(-1.0), 0, Rtz, ref flags));
        Assert.Equal(DivideByZero, flags);
        flags = 0;
        Assert.Equal(Inf64 | NegZero64, SoftFloat.F64Div(1, NegZero64, Rne, ref flags)); // subnormal / -0
        Assert.Equal(DivideByZero, flags);
        flags = 0;
        Assert.Equal(SoftFloat.CanonicalNaN32, SoftFloat.F32Div(0, NegZero32, Rne, ref flags));
        Assert.Equal(Invalid, flags);
        flags = 0;
        Assert.Equal(SoftFloat.CanonicalNaN64, SoftFloat.F64Div(Inf64, Inf64, Rne, ref flags));
        Assert.Equal(Invalid, flags);
        flags = 0;
        Assert.Equal(Inf64, SoftFloat.F64Div(Inf64, 0, Rne, ref flags)); // infinity is exact: no DZ
        Assert.Equal(0ul, SoftFloat.F64Div(One64, Inf64, Rne, ref flags));
        Assert.Equal(0, flags);
    }

    // ------------------------------------------------------------------ min / max / compare / class

    [Fact]
    public void MinMaxReturnTheNumberWhenTheOtherIsNaN()
    {
        int flags = 0;
        Assert.Equal(One32, SoftFloat.F32Min(QNaN32, One32, ref flags));
        Assert.Equal(One64, SoftFloat.F64Max(One64, QNaN64, ref flags));
        Assert.Equal(0, flags);
        Assert.Equal(One32, SoftFloat.F32Max(SNaN32, One32, ref flags));
        Assert.Equal(Invalid, flags);
        flags = 0;
        Assert.Equal(One64, SoftFloat.F64Min(One64, SNaN64, ref flags));
        Assert.Equal(Invalid, flags);
    }

    [Fact]
    public void MinMaxOfTwoNaNsIsCanonical()
    {
        int flags = 0;
        Assert.Equal(SoftFloat.CanonicalNaN32, SoftFloat.F32Min(0x7fc0_0001, 0xffc0_0002, ref flags));
        Assert.Equal(SoftFloat.CanonicalNaN64, SoftFloat.F64Max(QNaN64 | 5, QNaN64, ref flags));
        Assert.Equal(0, flags);
        Assert.Equal(SoftFloat.CanonicalNaN64, SoftFloat.F64Min(SNaN64, QNaN64, ref flags));
        Assert.Equal(Invalid, flags);
        flags = 0;
        Assert.Equal(SoftFloat.CanonicalNaN32, SoftFloat.F32Max(QNaN32, SNaN32, ref flags));
        Assert.Equal(Invalid, flags);
    }

    [Fact]
    public void MinMaxOrderNegativeZeroBelowPositiveZero()
    {
        int flags = 0;
        Assert.Equal(NegZero32, SoftFloat.F32Min(0, NegZero32, ref flags));
        Assert.Equal(NegZero32, SoftFloat.F32Min(NegZero32, 0, ref flags));
        Assert.Equal(0u, SoftFloat.F32Max(NegZero32, 0, ref flags));
        Assert.Equal(0u, SoftFloat.F32Max(0, NegZero32, ref flags));
        Assert.Equal(NegZero64, SoftFloat.F64Min(0, NegZero64, ref flags));
        Assert.Equal(0ul, SoftFloat.F64Max(NegZero64, 0, ref flags));
        Assert.Equal(B(-2.0), SoftFloat.F64Min(B(-2.0), B(-1.0), ref flags));
        Assert.Equal(B(-1f), SoftFloat.F32Max(B(-2f), B(-1f), ref flags));
        Assert.Equal(Inf64 | NegZero64, SoftFloat.F64Min(Inf64 | NegZero64, B(-1.0), ref flags));
        Assert.Equal(0, flags);
    }

    [Fact]
    public void EqIsQuietAndLtLeAreSignaling()
    {
        int flags = 0;
        Assert.True(SoftFloat.F32Eq(0, NegZero32, ref flags));
        Assert.False(SoftFloat.F32Lt(NegZero32, 0, ref flags));
        Assert.True(SoftFloat.F64Le(NegZero64, 0, ref flags));
        Assert.True(SoftFloat.F64Lt(B(-3.0), B(-2.0), ref flags));
        Assert.False(SoftFloat.F64Lt(B(-2.0), B(-3.0), ref flags));
        Assert.True(SoftFloat.F32Lt(B(-1f), 1, ref flags));
        Assert.False(SoftFloat.F32Eq(QNaN32, QNaN32, ref flags));
        Assert.False(SoftFloat.F64Eq(QNaN64, One64, ref flags));
        Assert.Equal(0, flags);
        Assert.False(SoftFloat.F32Eq(SNaN32, One32, ref flags));
        Assert.Equal(Invalid, flags);
        flags = 0;
        Assert.False(SoftFloat.F32Lt(QNaN32, One32, ref flags));
        Assert.Equal(Invalid, flags);
        flags = 0;
        Assert.False(SoftFloat.F64Le(One64, QNaN64, ref flags));
        Assert.Equal(Invalid, flags);
        flags = 0;
        Assert.False(SoftFloat.F64Lt(QNaN64, QNaN64, ref flags));
        Assert.Equal(Invalid, flags);
    }

    [Fact]
    public void ClassGivesOneBitPerKind()
    {
        Assert.Equal(1ul << 0, SoftFloat.F32Class(Inf32 | NegZero32));
        Assert.Equal(1ul << 1, SoftFloat.F32Class(B(-1f)));
        Assert.Equal(1ul << 2, SoftFloat.F32Class(0x8000_0001));
        Assert.Equal(1ul << 3, SoftFloat.F32Class(NegZero32));
        Assert.Equal(1ul << 4, SoftFloat.F32Class(0));
        Assert.Equal(1ul << 5, SoftFloat.F32Class(0x007f_ffff));
        Assert.Equal(1ul << 6, SoftFloat.F32Class(MinNormal32));
        Assert.Equal(1ul << 7, SoftFloat.F32Class(Inf32));
        Assert.Equal(1ul << 8, SoftFloat.F32Class(SNaN32));
        Assert.Equal(1ul << 9, SoftFloat.F32Class(QNaN32 | NegZero32));
        Assert.Equal(1ul << 0, SoftFloat.F64Class(Inf64 | NegZero64));
        Assert.Equal(1ul << 1, SoftFloat.F64Class(B(-Math.PI)));
        Assert.Equal(1ul << 2, SoftFloat.F64Class(NegZero64 | 1));
        Assert.Equal(1ul << 3, SoftFloat.F64Class(NegZero64));
        Assert.Equal(1ul << 4, SoftFloat.F64Class(0));
        Assert.Equal(1ul << 5, SoftFloat.F64Class(0x000f_ffff_ffff_ffff));
        Assert.Equal(1ul << 6, SoftFloat.F64Class(Max64));
        Assert.Equal(1ul << 7, SoftFloat.F64Class(Inf64));
        Assert.Equal(1ul << 8, SoftFloat.F64Class(0x7ff7_ffff_ffff_ffff));
        Assert.Equal(1ul << 9, SoftFloat.F64Class(QNaN64));
    }

    // ------------------------------------------------------------------ float -> integer

    public enum Cvt { W, WU, L, LU }

    private static ulong ToInt64Bits(Cvt to, bool fromDouble, double v, int rm, ref int flags)
    {
        if (fromDouble)
        {
            ulong a = B(v);
            return to switch
            {
                Cvt.W => (ulong)SoftFloat.F64ToI32(a, rm, ref flags),
                Cvt.WU => (ulong)SoftFloat.F64ToU32(a, rm, ref flags),
                Cvt.L => (ulong)SoftFloat.F64ToI64(a, rm, ref flags),
                _ => SoftFloat.F64ToU64(a, rm, ref flags),
            };
        }
        uint s = double.IsNaN(v) ? (B(v) == SNaN64 ? SNaN32 : QNaN32) : B((float)v);
        return to switch
        {
            Cvt.W => (ulong)SoftFloat.F32ToI32(s, rm, ref flags),
            Cvt.WU => (ulong)SoftFloat.F32ToU32(s, rm, ref flags),
            Cvt.L => (ulong)SoftFloat.F32ToI64(s, rm, ref flags),
            _ => SoftFloat.F32ToU64(s, rm, ref flags),
        };
    }

    private const ulong IMax32 = 0x7fff_ffff, IMin32 = 0xffff_ffff_8000_0000, UMax32 = 0xffff_ffff_ffff_ffff;
    private const ulong IMax64 = 0x7fff_ffff_ffff_ffff, IMin64 = 0x8000_0000_0000_0000, UMax64 = ulong.MaxValue;

    [Theory]
    [InlineData(Cvt.W, IMax32, IMax32, IMin32, 0x4f00_0000u, 0xcf00_0001u)] // 2^31, -(2^31 + 256)
    [InlineData(Cvt.WU, UMax32, UMax32, 0ul, 0x4f80_0000u, 0xbf80_0000u)]   // 2^32, -1
    [InlineData(Cvt.L, IMax64, IMax64, IMin64, 0x5f00_0000u, 0xdf00_0001u)] // 2^63, -(2^63 + 2^40)
    [InlineData(Cvt.LU, UMax64, UMax64, 0ul, 0x5f80_0000u, 0xbf80_0000u)]   // 2^64, -1
    public void FloatToIntSaturatesNaNInfinitiesAndOutOfRange(Cvt to, ulong nan, ulong max, ulong min, uint tooBig, uint tooSmall)
    {
        foreach (bool fromDouble in new[] { false, true })
        {
            foreach (int rm in new[] { Rne, Rtz, Rdn, Rup, Rmm })
            {
                Expect(nan, double.NaN);
                Expect(nan, D(SNaN64));
                Expect(max, double.PositiveInfinity);
                Expect(min, double.NegativeInfinity);
                Expect(max, F(tooBig));
                Expect(min, F(tooSmall));
                Expect(max, 1e30);
                Expect(min, -1e30);

                void Expect(ulong expected, double v)
                {
                    int flags = 0;
                    Assert.Equal(expected, ToInt64Bits(to, fromDouble, v, rm, ref flags));
                    Assert.Equal(Invalid, flags);
                }
            }
        }
    }

    [Theory]
    [InlineData(Cvt.W)]
    [InlineData(Cvt.WU)]
    [InlineData(Cvt.L)]
    [InlineData(Cvt.LU)]
    public void FloatToIntRoundsPerModeWithInexact(Cvt to)
    {
        bool signed = to is Cvt.W or Cvt.L;
        {
            Expect(2, 2.5, Rne, Inexact);
            Expect(3, 2.5, Rmm, Inexact);
            Expect(2, 2.5, Rtz, Inexact);
            Expect(2, 2.5, Rdn, Inexact);
            Expect(3, 2.5, Rup, Inexact);
            Expect(4, 3.5, Rne, Inexact);
            Expect(3, 3.25, Rmm, Inexact);
            Expect(7, 7.0, Rup, 0);
            Expect(0, -0.0, Rdn, 0);
            // Negative values that round to zero are in range even for unsigned targets: NX only.
            Expect(0, -0.3, Rtz, Inexact);
            Expect(0, -0.3, Rne, Inexact);
            Expect(0, -0.3, Rup, Inexact);
            Expect(signed ? ulong.MaxValue : 0, -0.3, Rdn, signed ? Inexact : Invalid);
            Expect(signed ? unchecked((ulong)-3L) : 0, -2.5, Rmm, signed ? Inexact : Invalid);
            Expect(signed ? unchecked((ulong)-2L) : 0, -2.5, Rne, signed ? Inexact : Invalid);
        }

        void Expect(ulong expected, double v, int rm, int expectedFlags)
        {
            foreach (bool fromDouble in new[] { false, true })
            {
                int flags = 0;
                Assert.Equal(expected, ToInt64Bits(to, fromDouble, v, rm, ref flags));
                Assert.Equal(expectedFlags, flags);
            }
        }
    }

    [Fact]
    public void FloatToIntBoundariesAreExact()
    {
        int flags = 0;
        Assert.Equal(int.MinValue, SoftFloat.F64ToI32(B(-2147483648.0), Rne, ref flags));
        Assert.Equal(int.MaxValue, SoftFloat.F64ToI32(B(2147483647.0), Rne, ref flags));
        Assert.Equal(int.MinValue, SoftFloat.F64ToI32(B(-2147483648.9), Rtz, ref flags));
        Assert.Equal(Inexact, flags);
        flags = 0;
        Assert.Equal(int.MaxValue, SoftFloat.F64ToI32(B(2147483647.4), Rne, ref flags));
        Assert.Equal(Inexact, flags);
        flags = 0;
        // 2^31 - 0.5 rounds (to even) up to 2^31: out of range.
        Assert.Equal(int.MaxValue, SoftFloat.F64ToI32(B(2147483647.5), Rne, ref flags));
        Assert.Equal(Invalid, flags);
        flags = 0;
        Assert.Equal(int.MinValue, SoftFloat.F64ToI32(B(-2147483649.0), Rtz, ref flags));
        Assert.Equal(Invalid, flags);
        flags = 0;
        // The U32 result is sign-extended: 3e9 = 0xb2d05e00.
        Assert.Equal(unchecked((long)0xffff_ffff_b2d0_5e00), SoftFloat.F64ToU32(B(3e9), Rne, ref flags));
        Assert.Equal(unchecked((long)0xffff_ffff_ffff_ffff), SoftFloat.F64ToU32(B(4294967295.0), Rne, ref flags));
        Assert.Equal(long.MinValue, SoftFloat.F32ToI64(0xdf00_0000, Rne, ref flags)); // -2^63
        Assert.Equal(0xffff_ff00_0000_0000ul, SoftFloat.F32ToU64(0x5f7f_ffff, Rne, ref flags)); // largest float < 2^64
        Assert.Equal(0xffff_ffff_ffff_f800ul, SoftFloat.F64ToU64(0x43ef_ffff_ffff_ffff, Rne, ref flags));
        Assert.Equal(0, flags);
        Assert.Equal(0, SoftFloat.F64ToI64(1, Rne, ref flags)); // smallest subnormal
        Assert.Equal(Inexact, flags);
        flags = 0;
        Assert.Equal(1, SoftFloat.F32ToI32(1, Rup, ref flags));
        Assert.Equal(-1, SoftFloat.F32ToI32(0x8000_0001, Rdn, ref flags));
        Assert.Equal(Inexact, flags);
    }

    // ------------------------------------------------------------------ integer -> float, float <-> float

    [Fact]
    public void IntToFloatRoundsPerMode()
    {
        int flags = 0;
        const long TwoTo24Plus1 = (1 << 24) + 1;
        Assert.Equal(B(16777216f), SoftFloat.I64ToF32(TwoTo24Plus1, Rne, ref flags));
        Assert.Equal(B(16777218f), SoftFloat.I64ToF32(TwoTo24Plus1, Rup, ref flags));
        Assert.Equal(B(16777218f), SoftFloat.I32ToF32((int)TwoTo24Plus1, Rmm, ref flags));
        Assert.Equal(B(-16777218f), SoftFloat.I32ToF32(-(int)TwoTo24Plus1, Rdn, ref flags));
        Assert.Equal(B(-16777216f), SoftFloat.I32ToF32(-(int)TwoTo24Plus1, Rtz, ref flags));
        Assert.Equal(Inexact, flags);
        flags = 0;
        Assert.Equal(B(-2147483648f), SoftFloat.I32ToF32(int.MinValue, Rne, ref flags));
        Assert.Equal(B(-9223372036854775808.0), SoftFloat.I64ToF64(long.MinValue, Rne, ref flags));
        Assert.Equal(B(4294967295.0), SoftFloat.U32ToF64(uint.MaxValue, Rtz, ref flags));
        Assert.Equal(B(-1.0), SoftFloat.I32ToF64(-1, Rup, ref flags));
        Assert.Equal(0u, SoftFloat.I32ToF32(0, Rdn, ref flags));
        Assert.Equal(0, flags);
        Assert.Equal(B(18446744073709551616.0), SoftFloat.U64ToF64(ulong.MaxValue, Rne, ref flags));
        Assert.Equal(0x43ef_ffff_ffff_fffful, SoftFloat.U64ToF64(ulong.MaxValue, Rtz, ref flags));
        Assert.Equal(B(4294967296f), SoftFloat.U32ToF32(uint.MaxValue, Rne, ref flags));
        Assert.Equal(0x4f7f_ffffu, SoftFloat.U32ToF32(uint.MaxValue, Rdn, ref flags));
        Assert.Equal(Inexact, flags);
    }

    [Fact]
    public void DoubleToFloatRoundsOverflowsAndUnderflowsPerMode()
    {
        int flags = 0;
        Assert.Equal(B(1.1f), SoftFloat.F64ToF32(B(1.1), Rne, ref flags));
        Assert.Equal(Inexact, flags);
        flags = 0;
        Assert.Equal(Max32, SoftFloat.F64ToF32(B(1e39), Rtz, ref flags));
        Assert.Equal(Overflow | Inexact, flags);
        flags = 0;
        Assert.Equal(Inf32 | NegZero32, SoftFloat.F64ToF32(B(-1e39), Rne, ref flags));
        Assert.Equal(Overflow | Inexact, flags);
        flags = 0;
        Assert.Equal(1u, SoftFloat.F64ToF32(B(1e-50), Rup, ref flags));
        Assert.Equal(Underflow | Inexact, flags);
        flags = 0;
        Assert.Equal(NegZero32, SoftFloat.F64ToF32(NegZero64 | 1, Rne, ref flags));
        Assert.Equal(Underflow | Inexact, flags);
        flags = 0;
        Assert.Equal(1u, SoftFloat.F64ToF32(B(Math.Pow(2, -149)), Rdn, ref flags));
        Assert.Equal(Inf32, SoftFloat.F64ToF32(Inf64, Rtz, ref flags));
        Assert.Equal(B(Math.Pow(2, -149)), SoftFloat.F32ToF64(1, ref flags));
        Assert.Equal(0, flags);
    }

    // ------------------------------------------------------------------ randomized: RNE against the host

    private const int RandomPairs = 200_000;

    // Func can't take ref parameters; these adapt the API to "bits in, bits out" for the randomized checks.
    private delegate uint Op32(uint a, uint b, int rm, ref int flags);
    private delegate ulong Op64(ulong a, ulong b, int rm, ref int flags);

    [Fact]
    public void F32RneBinaryOpsMatchHostArithmeticBitForBit()
    {
        var rng = new Random(3232);
        (Op32 op, Func<float, float, float> host, string name)[] ops =
        [
            (SoftFloat.F32Add, (x, y) => x + y, "add"),
            (SoftFloat.F32Sub, (x, y) => x - y, "sub"),
            (SoftFloat.F32Mul, (x, y) => x * y, "mul"),
            (SoftFloat.F32Div, (x, y) => x / y, "div"),
        ];
        for (int i = 0; i < RandomPairs; i++)
        {
            uint a = RandomF32(rng), b = RandomPartner32(rng, a);
            foreach (var (op, host, name) in ops)
            {
                int flags = 0;
                uint soft = op(a, b, Rne, ref flags);
                float expected = host(F(a), F(b));
                if (float.IsNaN(expected) ? soft != SoftFloat.CanonicalNaN32 : soft != B(expected))
                    Assert.Fail($"{name}({a:x8}, {b:x8}): host {B(expected):x8}, soft {soft:x8}");
            }
            int f = 0;
            uint root = SoftFloat.F32Sqrt(a, Rne, ref f);
            float hostRoot = MathF.Sqrt(F(a));
            Assert.True(float.IsNaN(hostRoot) ? root == SoftFloat.CanonicalNaN32 : root == B(hostRoot), $"sqrt({a:x8})");
            ulong d = RandomF64(rng);
            uint narrowed = SoftFloat.F64ToF32(d, Rne, ref f);
            float hostNarrowed = (float)D(d);
            Assert.True(float.IsNaN(hostNarrowed) ? narrowed == SoftFloat.CanonicalNaN32 : narrowed == B(hostNarrowed), $"f64tof32({d:x16})");
        }
    }

    [Fact]
    public void F32RneMulAddMatchesHostFusedMultiplyAdd()
    {
        var rng = new Random(323232);
        for (int i = 0; i < RandomPairs; i++)
        {
            uint a = RandomF32(rng), b = RandomPartner32(rng, a);
            // c near -a*b half of the time, to exercise cancellation.
            uint c = rng.Next(2) == 0 ? RandomPartner32(rng, B(-(F(a) * F(b)))) : RandomF32(rng);
            int flags = 0;
            uint soft = SoftFloat.F32MulAdd(a, b, c, Rne, ref flags);
            float host = MathF.FusedMultiplyAdd(F(a), F(b), F(c));
            if (float.IsNaN(host) ? soft != SoftFloat.CanonicalNaN32 : soft != B(host))
                Assert.Fail($"fma({a:x8}, {b:x8}, {c:x8}): host {B(host):x8}, soft {soft:x8}");
        }
    }

    [Fact]
    public void F64RneMatchesHostArithmeticBitForBitOnFastAndSlowPaths()
    {
        var rng = new Random(64);
        (Op64 op, Func<double, double, double> host, string name)[] ops =
        [
            (SoftFloat.F64Add, (x, y) => x + y, "add"),
            (SoftFloat.F64AddSlow, (x, y) => x + y, "add-slow"),
            (SoftFloat.F64Sub, (x, y) => x - y, "sub"),
            (SoftFloat.F64Mul, (x, y) => x * y, "mul"),
            (SoftFloat.F64MulSlow, (x, y) => x * y, "mul-slow"),
            (SoftFloat.F64Div, (x, y) => x / y, "div"),
            (SoftFloat.F64DivSlow, (x, y) => x / y, "div-slow"),
        ];
        for (int i = 0; i < RandomPairs; i++)
        {
            ulong a = RandomF64(rng), b = RandomPartner64(rng, a);
            foreach (var (op, host, name) in ops)
            {
                int flags = 0;
                ulong soft = op(a, b, Rne, ref flags);
                double expected = host(D(a), D(b));
                if (double.IsNaN(expected) ? soft != SoftFloat.CanonicalNaN64 : soft != B(expected))
                    Assert.Fail($"{name}({a:x16}, {b:x16}): host {B(expected):x16}, soft {soft:x16}");
            }
            int f = 0;
            double hostRoot = Math.Sqrt(D(a));
            ulong fast = SoftFloat.F64Sqrt(a, Rne, ref f), slow = SoftFloat.F64SqrtSlow(a, Rne, ref f);
            ulong expectedRoot = double.IsNaN(hostRoot) ? SoftFloat.CanonicalNaN64 : B(hostRoot);
            Assert.True(fast == expectedRoot && slow == expectedRoot, $"sqrt({a:x16}): {fast:x16} {slow:x16}");
            // Widening is exact and must agree with the host too.
            uint s = RandomF32(rng);
            Assert.True(float.IsNaN(F(s)) || SoftFloat.F32ToF64(s, ref f) == B((double)F(s)), $"f32tof64({s:x8})");
        }
    }

    [Fact]
    public void F64RneMulAddMatchesHostFusedMultiplyAdd()
    {
        var rng = new Random(646464);
        for (int i = 0; i < RandomPairs; i++)
        {
            ulong a = RandomF64(rng), b = RandomPartner64(rng, a);
            ulong c = rng.Next(2) == 0 ? RandomPartner64(rng, B(-(D(a) * D(b)))) : RandomF64(rng);
            int flags = 0;
            ulong soft = SoftFloat.F64MulAdd(a, b, c, Rne, ref flags);
            double host = Math.FusedMultiplyAdd(D(a), D(b), D(c));
            if (double.IsNaN(host) ? soft != SoftFloat.CanonicalNaN64 : soft != B(host))
                Assert.Fail($"fma({a:x16}, {b:x16}, {c:x16}): host {B(host):x16}, soft {soft:x16}");
        }
    }

    [Fact]
    public void IntToFloatRneMatchesHostConversions()
    {
        var rng = new Random(99);
        for (int i = 0; i < RandomPairs; i++)
        {
            long v = rng.NextInt64() >> rng.Next(64);
            if (rng.Next(2) == 0) v = -v;
            int f = 0;
            Assert.Equal(B((float)v), SoftFloat.I64ToF32(v, Rne, ref f));
            Assert.Equal(B((double)v), SoftFloat.I64ToF64(v, Rne, ref f));
            Assert.Equal(B((float)(ulong)v), SoftFloat.U64ToF32((ulong)v, Rne, ref f));
            Assert.Equal(B((double)(ulong)v), SoftFloat.U64ToF64((ulong)v, Rne, ref f));
            Assert.Equal(B((float)(int)v), SoftFloat.I32ToF32((int)v, Rne, ref f));
            Assert.Equal(B((float)(uint)v), SoftFloat.U32ToF32((uint)v, Rne, ref f));
            Assert.Equal(B((double)(int)v), SoftFloat.I32ToF64((int)v, Rne, ref f));
            Assert.Equal(B((double)(uint)v), SoftFloat.U32ToF64((uint)v, Rne, ref f));
        }
    }

    // ------------------------------------------------------------------ randomized: every mode against the exact value

    private const int DirectedPairs = 40_000;

    [Fact]
    public void F64DirectedModesBracketTheExactResult()
    {
        var rng = new Random(6464);
        for (int i = 0; i < DirectedPairs; i++)
        {
            ulong a = RandomF64(rng), b = RandomPartner64(rng, a);
            ulong c = rng.Next(2) == 0 ? RandomPartner64(rng, B(-(D(a) * D(b)))) : RandomF64(rng);
            Exact ea = Exact.Of(D(a)), eb = Exact.Of(D(b)), ec = Exact.Of(D(c));
            string args = $"({a:x16}, {b:x16}, {c:x16})";
            if (AllFinite(D(a), D(b)))
            {
                CheckModes64("add" + args, rm => Run(SoftFloat.F64Add, a, b, rm), q => Exact.Compare(q, ea + eb));
                CheckModes64("mul" + args, rm => Run(SoftFloat.F64Mul, a, b, rm), q => Exact.Compare(q, ea * eb));
                if (D(b) != 0)
                    CheckModes64("div" + args, rm => Run(SoftFloat.F64Div, a, b, rm), q => Exact.Compare(q * eb, ea) * Math.Sign(D(b)));
                if (D(a) >= 0)
                    CheckModes64("sqrt" + args, rm => Run((x, _, m, ref fl) => SoftFloat.F64Sqrt(x, m, ref fl), a, 0, rm), q => Exact.Compare(q * q, ea));
            }
            if (AllFinite(D(a), D(b), D(c)))
                CheckModes64("fma" + args, rm => Run((x, y, m, ref fl) => SoftFloat.F64MulAdd(x, y, c, m, ref fl), a, b, rm), q => Exact.Compare(q, ea * eb + ec));
            long v = rng.NextInt64() >> rng.Next(64);
            CheckModes64($"i64tof64({v})", rm => Run((_, _, m, ref fl) => SoftFloat.I64ToF64(v, m, ref fl), 0, 0, rm), q => Exact.Compare(q, new Exact(v, 0)));
            CheckModes64($"u64tof64({(ulong)v})", rm => Run((_, _, m, ref fl) => SoftFloat.U64ToF64((ulong)v, m, ref fl), 0, 0, rm), q => Exact.Compare(q, new Exact((ulong)v, 0)));
        }

        static (ulong, int) Run(Op64 op, ulong a, ulong b, int rm)
        {
            int flags = 0;
            ulong r = op(a, b, rm, ref flags);
            return (r, flags);
        }
    }

    [Fact]
    public void F32DirectedModesBracketTheExactResult()
    {
        var rng = new Random(3264);
        for (int i = 0; i < DirectedPairs; i++)
        {
            uint a = RandomF32(rng), b = RandomPartner32(rng, a);
            uint c = rng.Next(2) == 0 ? RandomPartner32(rng, B(-(F(a) * F(b)))) : RandomF32(rng);
            Exact ea = Exact.Of(F(a)), eb = Exact.Of(F(b)), ec = Exact.Of(F(c));
            string args = $"({a:x8}, {b:x8}, {c:x8})";
            if (AllFinite(F(a), F(b)))
            {
                CheckModes32("add" + args, rm => Run(SoftFloat.F32Add, a, b, rm), q => Exact.Compare(q, ea + eb));
                CheckModes32("sub" + args, rm => Run(SoftFloat.F32Sub, a, b, rm), q => Exact.Compare(q, ea - eb));
                CheckModes32("mul" + args, rm => Run(SoftFloat.F32Mul, a, b, rm), q => Exact.Compare(q, ea * eb));
                if (F(b) != 0)
                    CheckModes32("div" + args, rm => Run(SoftFloat.F32Div, a, b, rm), q => Exact.Compare(q * eb, ea) * Math.Sign(F(b)));
                if (F(a) >= 0)
                    CheckModes32("sqrt" + args, rm => Run((x, _, m, ref fl) => SoftFloat.F32Sqrt(x, m, ref fl), a, 0, rm), q => Exact.Compare(q * q, ea));
            }
            if (AllFinite(F(a), F(b), F(c)))
                CheckModes32("fma" + args, rm => Run((x, y, m, ref fl) => SoftFloat.F32MulAdd(x, y, c, m, ref fl), a, b, rm), q => Exact.Compare(q, ea * eb + ec));
            ulong d = RandomF64(rng);
            if (double.IsFinite(D(d)))
                CheckModes32($"f64tof32({d:x16})", rm => Run((_, _, m, ref fl) => SoftFloat.F64ToF32(d, m, ref fl), 0, 0, rm), q => Exact.Compare(q, Exact.Of(D(d))));
            long v = rng.NextInt64() >> rng.Next(64);
            CheckModes32($"i64tof32({v})", rm => Run((_, _, m, ref fl) => SoftFloat.I64ToF32(v, m, ref fl), 0, 0, rm), q => Exact.Compare(q, new Exact(v, 0)));
            CheckModes32($"u32tof32({(uint)v})", rm => Run((_, _, m, ref fl) => SoftFloat.U32ToF32((uint)v, m, ref fl), 0, 0, rm), q => Exact.Compare(q, new Exact((uint)v, 0)));
        }

        static (ulong, int) Run(Op32 op, uint a, uint b, int rm)
        {
            int flags = 0;
            uint r = op(a, b, rm, ref flags);
            return (r, flags);
        }
    }

    [Fact]
    public void FloatToIntMatchesTheExactRoundingInEveryMode()
    {
        var rng = new Random(7);
        for (int i = 0; i < DirectedPairs; i++)
        {
            // Values around the integer limits and small values with fractions.
            double v = rng.Next(4) switch
            {
                0 => (rng.NextDouble() - 0.5) * 16,
                1 => (rng.NextDouble() - 0.5) * Math.Pow(2, rng.Next(1, 67)),
                2 => Math.Round(rng.NextDouble() * 8) / 2 - 2, // ties
                _ => D(RandomF64(rng)),
            };
            foreach (bool fromDouble in new[] { false, true })
            {
                double x = fromDouble ? v : (float)v;
                foreach (Cvt to in Enum.GetValues<Cvt>())
                {
                    foreach (int rm in new[] { Rne, Rtz, Rdn, Rup, Rmm })
                    {
                        int flags = 0;
                        ulong got = ToInt64Bits(to, fromDouble, x, rm, ref flags);
                        var (expected, expectedFlags) = ExpectedConversion(to, x, rm);
                        if (got != expected || flags != expectedFlags)
                            Assert.Fail($"{to} {(fromDouble ? "d" : "s")} {x:R} rm={rm}: got {got:x16}/{flags}, expected {expected:x16}/{expectedFlags}");
                    }
                }
            }
        }
    }

    // An independent model of fcvt: round with Math (exact on doubles), then check the range with BigInteger.
    private static (ulong, int) ExpectedConversion(Cvt to, double x, int rm)
    {
        (BigInteger lo, BigInteger hi, ulong nanValue) = to switch
        {
            Cvt.W => (new BigInteger(int.MinValue), new BigInteger(int.MaxValue), IMax32),
            Cvt.WU => (BigInteger.Zero, new BigInteger(uint.MaxValue), UMax32),
            Cvt.L => (new BigInteger(long.MinValue), new BigInteger(long.MaxValue), IMax64),
            _ => (BigInteger.Zero, new BigInteger(ulong.MaxValue), UMax64),
        };
        if (double.IsNaN(x)) return (nanValue, Invalid);
        ulong Wrap(BigInteger value) => to == Cvt.WU ? (ulong)(long)(int)(uint)value : (ulong)(value & ulong.MaxValue);
        if (double.IsInfinity(x)) return (Wrap(x > 0 ? hi : lo), Invalid);
        double r = rm switch
        {
            Rne => Math.Round(x, MidpointRounding.ToEven),
            Rtz => Math.Truncate(x),
            Rdn => Math.Floor(x),
            Rup => Math.Ceiling(x),
            _ => Math.Round(x, MidpointRounding.AwayFromZero),
        };
        var value = new BigInteger(r);
        if (value < lo) return (Wrap(lo), Invalid);
        if (value > hi) return (Wrap(hi), Invalid);
        return (Wrap(value), r != x ? Inexact : 0);
    }

    // ------------------------------------------------------------------ the directed-mode checker

    /// <summary>
    /// Given the results of one operation in all five modes and a comparison of a candidate with the exact result,
    /// checks RDN &lt;= exact &lt;= RUP, that they are adjacent and differ iff NX, RTZ/RNE/RMM pick the right one of
    /// the two, and the UF/OF flags are consistent with the results.
    /// </summary>
    private static void CheckModes(string what, Func<int, (ulong r, int flags)> run, Func<Exact, int> compareWithExact,
        Func<ulong, double> value, Func<double, double> nextUp, double minNormal, double maxFinite)
    {
        var res = new (ulong r, int flags)[5];
        for (int rm = 0; rm < 5; rm++) res[rm] = run(rm);
        string Describe() => $"{what}: " + string.Join(", ", res.Select((x, m) => $"rm{m}={x.r:x}/{x.flags}"));

        if (double.IsNaN(value(res[Rne].r)))
        {
            for (int rm = 0; rm < 5; rm++)
                Assert.True(res[rm] == res[Rne], Describe());
            return;
        }
        const int ModeIndependent = Inexact | Invalid | DivideByZero;
        bool nx = (res[Rne].flags & Inexact) != 0;
        for (int rm = 0; rm < 5; rm++)
        {
            int fl = res[rm].flags;
            double q = value(res[rm].r);
            Assert.True((fl & ModeIndependent) == (res[Rne].flags & ModeIndependent), "flags differ by mode: " + Describe());
            Assert.True((fl & (Underflow | Overflow)) == 0 || (fl & Inexact) != 0, "UF/OF without NX: " + Describe());
            if ((fl & Underflow) != 0) Assert.True(Math.Abs(q) <= minNormal, "UF on a normal result: " + Describe());
            if (nx && Math.Abs(q) < minNormal) Assert.True((fl & Underflow) != 0, "inexact subnormal without UF: " + Describe());
            if ((fl & Overflow) != 0) Assert.True(Math.Abs(q) >= maxFinite, "OF on a small result: " + Describe());
            if (double.IsInfinity(q)) Assert.True((fl & Overflow) != 0, "infinity from finite operands without OF: " + Describe());
        }
        double lo = value(res[Rdn].r), hi = value(res[Rup].r);
        if (!nx)
        {
            for (int rm = 0; rm < 5; rm++)
            {
                // Exact results agree in every mode, except the sign of an exact zero sum in RDN.
                bool same = res[rm].r == res[Rne].r || (value(res[rm].r) == 0 && value(res[Rne].r) == 0);
                Assert.True(same, "exact result differs by mode: " + Describe());
            }
            Assert.True(double.IsInfinity(lo) || compareWithExact(Exact.Of(lo)) == 0, "exact result is not exact: " + Describe());
            return;
        }
        Assert.True(lo < hi, "RDN not below RUP: " + Describe());
        Assert.True(nextUp(lo) == hi, "RDN and RUP not adjacent: " + Describe());
        if (!double.IsInfinity(lo)) Assert.True(compareWithExact(Exact.Of(lo)) < 0, "RDN above exact: " + Describe());
        if (!double.IsInfinity(hi)) Assert.True(compareWithExact(Exact.Of(hi)) > 0, "RUP below exact: " + Describe());
        bool positive = hi > 0 && !(lo < 0);
        Assert.True(res[Rtz].r == (positive ? res[Rdn].r : res[Rup].r), "RTZ: " + Describe());
        Assert.True(res[Rne].r == res[Rdn].r || res[Rne].r == res[Rup].r, "RNE neither neighbour: " + Describe());
        if (double.IsInfinity(lo) || double.IsInfinity(hi)) return;
        int mid = compareWithExact((Exact.Of(lo) + Exact.Of(hi)).Half());
        ulong nearest = mid < 0 ? res[Rup].r : res[Rdn].r;
        if (mid != 0)
        {
            Assert.True(res[Rne].r == nearest, "RNE not nearest: " + Describe());
            Assert.True(res[Rmm].r == nearest, "RMM not nearest: " + Describe());
        }
        else
        {
            Assert.True(res[Rne].r == ((res[Rdn].r & 1) == 0 ? res[Rdn].r : res[Rup].r), "RNE tie not even: " + Describe());
            Assert.True(res[Rmm].r == (positive ? res[Rup].r : res[Rdn].r), "RMM tie not away: " + Describe());
        }
    }

    private static void CheckModes64(string what, Func<int, (ulong, int)> run, Func<Exact, int> cmp) =>
        CheckModes(what, run, cmp, D, Math.BitIncrement, double.Epsilon * Math.Pow(2, 52), double.MaxValue);

    private static void CheckModes32(string what, Func<int, (ulong, int)> run, Func<Exact, int> cmp) =>
        CheckModes(what, run, cmp, r => F((uint)r), x => MathF.BitIncrement((float)x), float.Epsilon * MathF.Pow(2, 23), float.MaxValue);

    private static bool AllFinite(params double[] xs) => xs.All(double.IsFinite);

    // ------------------------------------------------------------------ operand generators

    private static readonly uint[] Specials32 =
        [0, NegZero32, One32, 0xbf80_0000, Inf32, Inf32 | NegZero32, QNaN32, SNaN32, Max32, Max32 | NegZero32, MinNormal32, 1, 0x8000_0001, 0x007f_ffff];

    private static readonly ulong[] Specials64 =
        [0, NegZero64, One64, One64 | NegZero64, Inf64, Inf64 | NegZero64, QNaN64, SNaN64, Max64, Max64 | NegZero64, MinNormal64, 1, NegZero64 | 1, 0x000f_ffff_ffff_ffff];

    /// <summary>Random bits biased to the interesting places: subnormals, both ends of the exponent range, 1.0,
    /// significands with few bits (exact results and ties) and special values.</summary>
    private static uint RandomF32(Random rng)
    {
        uint sign = rng.Next(2) == 0 ? 0 : 0x8000_0000u;
        uint frac = (uint)rng.Next() & 0x7f_ffff;
        if (rng.Next(4) == 0) frac &= 0x7f_ffffu << rng.Next(24); // short significands
        uint exp = rng.Next(8) switch
        {
            0 => (uint)rng.Next(0, 3),
            1 => (uint)rng.Next(0, 30),
            2 => (uint)rng.Next(225, 256),
            3 => (uint)rng.Next(117, 137),
            4 => Specials32[rng.Next(Specials32.Length)] >> 23 & 0xff,
            _ => (uint)rng.Next(0, 256),
        };
        if (rng.Next(16) == 0) return Specials32[rng.Next(Specials32.Length)];
        return sign | exp << 23 | frac;
    }

    private static uint RandomPartner32(Random rng, uint a) => rng.Next(3) switch
    {
        // Close to a (cancellation, ties at the edge of the significand) or anywhere.
        0 => (a + (uint)rng.Next(-64, 64)) ^ (rng.Next(2) == 0 ? 0x8000_0000u : 0),
        1 => (a & 0x8000_0000) ^ (uint)Math.Clamp((a & 0x7fff_ffff) + (long)rng.Next(-30, 30) * (1 << 23), 0, 0x7f7f_ffff) ^ ((uint)rng.Next(2) << 31),
        _ => RandomF32(rng),
    };

    private static ulong RandomF64(Random rng)
    {
        ulong sign = rng.Next(2) == 0 ? 0 : NegZero64;
        ulong frac = (ulong)rng.NextInt64() & 0xf_ffff_ffff_ffff;
        if (rng.Next(4) == 0) frac &= 0xf_ffff_ffff_ffffUL << rng.Next(53);
        ulong exp = rng.Next(8) switch
        {
            0 => (ulong)rng.Next(0, 3),
            1 => (ulong)rng.Next(0, 60),
            2 => (ulong)rng.Next(1990, 2048),
            3 => (ulong)rng.Next(1003, 1043),
            4 => (ulong)rng.Next(500, 600), // around the fast-path windows' edges
            5 => (ulong)rng.Next(1450, 1550),
            _ => (ulong)rng.Next(0, 2048),
        };
        if (rng.Next(16) == 0) return Specials64[rng.Next(Specials64.Length)];
        return sign | exp << 52 | frac;
    }

    private static ulong RandomPartner64(Random rng, ulong a) => rng.Next(3) switch
    {
        0 => (a + (ulong)rng.Next(-64, 64)) ^ (rng.Next(2) == 0 ? NegZero64 : 0),
        1 => (a & NegZero64) ^ (ulong)Math.Clamp((long)(a & 0x7fff_ffff_ffff_ffff) + rng.Next(-60, 60) * (1L << 52), 0, (long)Max64) ^ ((ulong)rng.Next(2) << 63),
        _ => RandomF64(rng),
    };

    /// <summary>An exact binary value m * 2^e, for comparisons with rounded results.</summary>
    private readonly record struct Exact(BigInteger M, int E)
    {
        public static Exact Of(double d)
        {
            if (d == 0) return new Exact(0, 0);
            ulong b = BitConverter.DoubleToUInt64Bits(d);
            int field = (int)(b >> 52) & 0x7ff;
            long mant = (long)(b & 0xf_ffff_ffff_ffff) | (field == 0 ? 0 : 1L << 52);
            return new Exact(d < 0 ? -mant : mant, (field == 0 ? 1 : field) - 1075);
        }

        public static Exact operator +(Exact x, Exact y)
        {
            int e = Math.Min(x.E, y.E);
            return new Exact((x.M << (x.E - e)) + (y.M << (y.E - e)), e);
        }

        public static Exact operator -(Exact x, Exact y) => x + new Exact(-y.M, y.E);
        public static Exact operator *(Exact x, Exact y) => new(x.M * y.M, x.E + y.E);
        public Exact Half() => new(M, E - 1);
        public static int Compare(Exact x, Exact y) => (x - y).M.Sign;
    }
}
