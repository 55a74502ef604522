namespace Ferry.Migration.InProcess;

/// <summary>
/// One logical writer's resumable state: its random generator (xoshiro256**, chosen because its whole state is four
/// words that can be saved and restored exactly, unlike <see cref="Random"/>), its sequential cursor and its count.
/// Writer <c>w</c> of <c>L</c> owns the working-set pages <c>p</c> with <c>p % L == w</c>, so no two writers ever
/// write the same page and a page's sequence number has a single author.
/// </summary>
internal sealed class WriterState
{
    /// <summary>Bytes of one writer in the "workload" section: four RNG words, the cursor and the count.</summary>
    public const int SerializedSize = 6 * 8;

    public ulong S0, S1, S2, S3;

    /// <summary>Next index into this writer's own pages for <see cref="DirtyPattern.Sequential"/>.</summary>
    public ulong Cursor;

    /// <summary>Pages this writer has written (read by other threads with <see cref="Volatile"/>).</summary>
    public long Written;

    /// <summary>Seed writer <paramref name="index"/> from the guest seed with SplitMix64 (xoshiro's recommended seeder).</summary>
    public static WriterState Seeded(ulong seed, int index)
    {
        ulong x = seed ^ (0x9E3779B97F4A7C15UL * (ulong)(index + 1));
        var w = new WriterState { S0 = SplitMix(ref x), S1 = SplitMix(ref x), S2 = SplitMix(ref x), S3 = SplitMix(ref x) };
        if ((w.S0 | w.S1 | w.S2 | w.S3) == 0)
        {
            w.S0 = 1; // xoshiro's only forbidden state
        }

        return w;
    }

    public ulong Next()
    {
        ulong result = ulong.RotateLeft(S1 * 5, 7) * 9;
        ulong t = S1 << 17;
        S2 ^= S0;
        S3 ^= S1;
        S1 ^= S2;
        S0 ^= S3;
        S2 ^= t;
        S3 = ulong.RotateLeft(S3, 45);
        return result;
    }

    /// <summary>Uniform in [0, n) by multiply-high (Lemire); the bias, at most n / 2^64, is irrelevant here.</summary>
    public ulong NextBelow(ulong n) => Math.BigMul(Next(), n, out _);

    /// <summary>Uniform in [0, 1) with 53 random bits.</summary>
    public double NextDouble() => (Next() >> 11) * (1.0 / (1UL << 53));

    private static ulong SplitMix(ref ulong x)
    {
        ulong z = x += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}
