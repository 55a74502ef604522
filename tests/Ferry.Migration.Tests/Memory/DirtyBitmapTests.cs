using Ferry.Migration.Memory;

namespace Ferry.Migration.Tests.Memory;

public class DirtyBitmapTests
{
    [Fact]
    public void SetTestAndClearTouchOnlyTheirBit()
    {
        var b = new DirtyBitmap(130);
        b.Set(0);
        b.Set(63);
        b.Set(64);
        b.Set(129);
        Assert.True(b.Test(0) && b.Test(63) && b.Test(64) && b.Test(129));
        Assert.False(b.Test(1) || b.Test(65) || b.Test(128));
        Assert.Equal(4UL, b.Count());
        b.Clear(63);
        Assert.False(b.Test(63));
        Assert.Equal(3UL, b.Count());
        Assert.Throws<ArgumentOutOfRangeException>(() => b.Set(130));
    }

    [Fact]
    public void SetAllCountsExactlyBitCountEvenWithAPartialLastWord()
    {
        var b = new DirtyBitmap(1000);
        b.SetAll();
        Assert.Equal(1000UL, b.Count());
        Assert.Equal((1UL << (1000 - 960)) - 1, b.Words[^1]);
        b.ClearAll();
        Assert.Equal(0UL, b.Count());
    }

    [Fact]
    public void OrFromDropsBitsPastTheEnd()
    {
        var b = new DirtyBitmap(70);
        b.OrFrom([0x5UL, ulong.MaxValue, ulong.MaxValue]);
        Assert.Equal(2UL + 6, b.Count());
        var other = new DirtyBitmap(70);
        other.Set(69);
        other.Set(3);
        b.ClearAll();
        b.OrFrom(other);
        Assert.True(b.Test(69) && b.Test(3));
        Assert.Throws<ArgumentException>(() => b.OrFrom(new DirtyBitmap(71)));
    }

    [Fact]
    public void RangeOperationsAgreeWithBitByBitReference()
    {
        var rng = new Random(7);
        for (int round = 0; round < 300; round++)
        {
            ulong bits = (ulong)rng.Next(1, 700);
            var b = new DirtyBitmap(bits);
            var reference = new bool[bits];
            for (int op = 0; op < 6; op++)
            {
                ulong start = (ulong)rng.NextInt64(0, (long)bits + 1);
                ulong end = (ulong)rng.NextInt64((long)start, (long)bits + 1);
                bool set = rng.Next(2) == 0;
                if (set)
                {
                    b.SetRange(start, end);
                }
                else
                {
                    b.ClearRange(start, end);
                }

                for (ulong i = start; i < end; i++)
                {
                    reference[i] = set;
                }
            }

            ulong from = (ulong)rng.NextInt64(0, (long)bits + 1);
            ulong to = (ulong)rng.NextInt64((long)from, (long)bits + 1);
            Assert.Equal((ulong)reference.Skip((int)from).Take((int)(to - from)).Count(x => x), b.Count(from, to));
            Assert.Equal((ulong)reference.Count(x => x), b.Count());
            for (ulong i = 0; i < bits; i++)
            {
                Assert.Equal(reference[i], b.Test(i));
            }
        }
    }

    [Fact]
    public void ClearRangeAtomicClearsTheRangeAndCountsWhatWasSet()
    {
        var rng = new Random(5);
        for (int round = 0; round < 300; round++)
        {
            ulong bits = (ulong)rng.Next(1, 700);
            var b = new DirtyBitmap(bits);
            var reference = new bool[bits];
            for (ulong i = 0; i < bits; i++)
            {
                if (rng.Next(3) == 0) continue;
                b.Set(i);
                reference[i] = true;
            }
            ulong start = (ulong)rng.NextInt64(0, (long)bits + 1);
            ulong end = (ulong)rng.NextInt64((long)start, (long)bits + 1);
            ulong expected = (ulong)reference.Skip((int)start).Take((int)(end - start)).Count(x => x);
            Assert.Equal(expected, b.ClearRangeAtomic(start, end));
            for (ulong i = 0; i < bits; i++) Assert.Equal(reference[i] && (i < start || i >= end), b.Test(i));
        }
    }

    [Fact]
    public void RunsMatchANaiveScanForRandomBitmapsAndRanges()
    {
        var rng = new Random(11);
        for (int round = 0; round < 400; round++)
        {
            ulong bits = (ulong)rng.Next(1, 1500);
            var b = new DirtyBitmap(bits);
            // Mix densities: sparse singles, long runs, and full words.
            double density = rng.NextDouble();
            for (ulong i = 0; i < bits; i++)
            {
                if (rng.NextDouble() < density * density)
                {
                    b.Set(i);
                }
            }

            if (rng.Next(3) == 0)
            {
                ulong s = (ulong)rng.NextInt64(0, (long)bits);
                b.SetRange(s, Math.Min(bits, s + (ulong)rng.Next(1, 300)));
            }

            ulong start = (ulong)rng.NextInt64(0, (long)bits + 1);
            ulong end = (ulong)rng.NextInt64((long)start, (long)bits + 1);
            ulong max = rng.Next(4) == 0 ? (ulong)rng.Next(1, 100) : ulong.MaxValue;

            var got = new List<DirtyRun>();
            foreach (var run in b.Runs(start, end, max))
            {
                got.Add(run);
            }

            Assert.Equal(NaiveRuns(b, start, end, max), got);
        }
    }

    [Fact]
    public void RunsAreClippedToTheRangeAndSplitAtTheLimit()
    {
        var b = new DirtyBitmap(512);
        b.SetRange(10, 300);
        Assert.Equal([new DirtyRun(64, 100)], Collect(b.Runs(64, 164)));
        Assert.Equal([new DirtyRun(10, 128), new DirtyRun(138, 128), new DirtyRun(266, 34)], Collect(b.Runs(0, 512, 128)));
        Assert.Empty(Collect(b.Runs(300, 512)));
        Assert.Empty(Collect(b.Runs(5, 5)));
    }

    [Fact]
    public void WalkingRunsAllocatesNothing()
    {
        var b = new DirtyBitmap(1 << 16);
        for (ulong i = 0; i < 1 << 16; i += 3)
        {
            b.Set(i);
        }

        ulong sum = SumRuns(b); // warm up (JIT)
        long before = GC.GetAllocatedBytesForCurrentThread();
        sum += SumRuns(b);
        long after = GC.GetAllocatedBytesForCurrentThread();
        Assert.Equal(0, after - before);
        Assert.Equal(2 * b.Count(), sum);
    }

    [Fact]
    public void PerChannelChunkWalksTogetherCoverEveryRunExactlyOnce()
    {
        // The engine's split: page p of region r goes to channel ((p >> 9) + r) % N, with 2 MiB (512-page) chunks.
        ulong[] regionPages = [1000, 3000];
        ulong total = regionPages[0] + regionPages[1];
        var b = new DirtyBitmap(total);
        var rng = new Random(3);
        for (ulong i = 0; i < total; i++)
        {
            if (rng.Next(4) == 0)
            {
                b.Set(i);
            }
        }

        const int channels = 3;
        var seen = new DirtyBitmap(total);
        for (int ch = 0; ch < channels; ch++)
        {
            ulong first = 0;
            for (int r = 0; r < regionPages.Length; r++)
            {
                for (ulong chunk = 0; chunk << 9 < regionPages[r]; chunk++)
                {
                    if ((int)((chunk + (ulong)r) % channels) != ch)
                    {
                        continue;
                    }

                    ulong start = first + (chunk << 9);
                    ulong end = Math.Min(first + regionPages[r], start + 512);
                    foreach (var run in b.Runs(start, end))
                    {
                        for (ulong p = run.Start; p < run.End; p++)
                        {
                            Assert.False(seen.Test(p));
                            seen.Set(p);
                        }
                    }
                }

                first += regionPages[r];
            }
        }

        Assert.Equal(b.Words.ToArray(), seen.Words.ToArray());
    }

    private static ulong SumRuns(DirtyBitmap b)
    {
        ulong sum = 0;
        foreach (var run in b.Runs(0, b.BitCount, 64))
        {
            sum += run.Length;
        }

        return sum;
    }

    private static List<DirtyRun> Collect(DirtyBitmap.RunEnumerator runs)
    {
        var list = new List<DirtyRun>();
        foreach (var run in runs)
        {
            list.Add(run);
        }

        return list;
    }

    [Fact]
    public void AndAndClearFromCombineBitByBitAndRefuseAnotherSize()
    {
        var a = new DirtyBitmap(200);
        var b = new DirtyBitmap(200);
        foreach (ulong bit in (ulong[])[1, 63, 64, 130, 199]) a.Set(bit);
        foreach (ulong bit in (ulong[])[63, 130, 150]) b.Set(bit);
        var and = new DirtyBitmap(200);
        and.OrFrom(a);
        and.AndFrom(b);
        Assert.Equal([63UL, 130], Bits(and));
        a.ClearFrom(b);
        Assert.Equal([1UL, 64, 199], Bits(a));
        Assert.Throws<ArgumentException>(() => a.AndFrom(new DirtyBitmap(201)));
        Assert.Throws<ArgumentException>(() => a.ClearFrom(new DirtyBitmap(64)));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(3)]   // inside the first word
    [InlineData(5)]   // the first word exactly
    [InlineData(6)]   // inside a later word, with words after it to clear
    [InlineData(100)] // more than there are: all kept
    public void KeepFirstKeepsTheLowestBitsAndClearsTheRest(int max)
    {
        ulong[] set = [0, 5, 17, 40, 63, 64, 65, 128, 300, 999];
        var b = new DirtyBitmap(1000);
        foreach (ulong bit in set) b.Set(bit);
        ulong kept = b.KeepFirst((ulong)max);
        Assert.Equal((ulong)Math.Min(max, set.Length), kept);
        Assert.Equal(set.Take(max), Bits(b));
    }

    private static List<ulong> Bits(DirtyBitmap b)
    {
        var bits = new List<ulong>();
        for (ulong i = 0; i < b.BitCount; i++)
        {
            if (b.Test(i)) bits.Add(i);
        }

        return bits;
    }

    private static List<DirtyRun> NaiveRuns(DirtyBitmap b, ulong start, ulong end, ulong max)
    {
        var runs = new List<DirtyRun>();
        ulong i = start;
        while (i < end)
        {
            if (!b.Test(i))
            {
                i++;
                continue;
            }

            ulong s = i;
            while (i < end && b.Test(i) && i - s < max)
            {
                i++;
            }

            runs.Add(new DirtyRun(s, i - s));
        }

        return runs;
    }
}
