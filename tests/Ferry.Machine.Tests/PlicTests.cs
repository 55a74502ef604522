using System.Buffers.Binary;
using Ferry.Machine.Board;
using Ferry.Machine.Cpu;

namespace Ferry.Machine.Tests;

/// <summary>The SiFive PLIC driven through its registers, as a guest kernel and the board's devices drive it.</summary>
public sealed class PlicTests
{
    // Context numbers for the default two-hart PLIC.
    private const int Hart0M = 0, Hart0S = 1, Hart1M = 2, Hart1S = 3;

    private readonly List<(int Hart, int Bit, bool Level)> calls = [];
    private readonly Plic plic;

    public PlicTests()
    {
        plic = new Plic(2, (h, bit, level) => calls.Add((h, bit, level)));
    }

    private static ulong PriorityReg(int source) => Plic.PriorityBase + 4 * (ulong)source;

    private static ulong EnableReg(int ctx, int word) => Plic.EnableBase + Plic.EnableStride * (ulong)ctx + 4 * (ulong)word;

    private static ulong ThresholdReg(int ctx) => Plic.ContextBase + Plic.ContextStride * (ulong)ctx + Plic.ThresholdOffset;

    private static ulong ClaimReg(int ctx) => Plic.ContextBase + Plic.ContextStride * (ulong)ctx + Plic.ClaimOffset;

    private void SetPriority(int source, uint p) => plic.Write(PriorityReg(source), 4, p);

    private void Enable(int ctx, params int[] sources)
    {
        foreach (int s in sources)
        {
            ulong reg = EnableReg(ctx, s / 32);
            plic.Write(reg, 4, plic.Read(reg, 4) | (1UL << (s % 32)));
        }
    }

    private uint Claim(int ctx) => (uint)plic.Read(ClaimReg(ctx), 4);

    private void Complete(int ctx, uint source) => plic.Write(ClaimReg(ctx), 4, source);

    private bool Pending(int source) => (plic.Read(Plic.PendingBase + 4 * (ulong)(source / 32), 4) & (1UL << (source % 32))) != 0;

    [Fact]
    public void PriorityRegistersKeepThreeBitsAndSourceZeroStaysZero()
    {
        SetPriority(5, 3);
        SetPriority(6, 9); // WARL: 9 % 8
        SetPriority(0, 7);

        Assert.Equal(3UL, plic.Read(PriorityReg(5), 4));
        Assert.Equal(1UL, plic.Read(PriorityReg(6), 4));
        Assert.Equal(0UL, plic.Read(PriorityReg(0), 4));
        Assert.Equal(0UL, plic.Read(PriorityReg(95), 4));
    }

    [Fact]
    public void ClaimReturnsTheHighestPriorityAndTheLowestIdAmongEquals()
    {
        SetPriority(3, 2);
        SetPriority(40, 5);
        SetPriority(70, 5);
        Enable(Hart0S, 3, 40, 70);
        plic.SetLevel(3, true);
        plic.SetLevel(70, true);
        plic.SetLevel(40, true);

        Assert.Equal(40u, Claim(Hart0S));
        Assert.Equal(70u, Claim(Hart0S));
        Assert.Equal(3u, Claim(Hart0S));
        Assert.Equal(0u, Claim(Hart0S));
    }

    [Fact]
    public void ThresholdMasksSourcesAtOrBelowItFromTheOutputAndFromClaims()
    {
        SetPriority(7, 3);
        Enable(Hart0M, 7);
        plic.Write(ThresholdReg(Hart0M), 4, 3);
        plic.SetLevel(7, true);

        Assert.False(plic.OutputLevel(Hart0M));
        Assert.Equal(0u, Claim(Hart0M));
        Assert.True(Pending(7));

        plic.Write(ThresholdReg(Hart0M), 4, 2);
        Assert.True(plic.OutputLevel(Hart0M));
        Assert.Equal(2UL, plic.Read(ThresholdReg(Hart0M), 4));
        plic.Write(ThresholdReg(Hart0M), 4, 9); // WARL: 9 % 8
        Assert.Equal(1UL, plic.Read(ThresholdReg(Hart0M), 4));
        Assert.Equal(7u, Claim(Hart0M));
    }

    [Fact]
    public void PriorityZeroNeverInterrupts()
    {
        Enable(Hart0M, 9);
        plic.SetLevel(9, true);

        Assert.True(Pending(9));
        Assert.False(plic.OutputLevel(Hart0M));
        Assert.Equal(0u, Claim(Hart0M));
    }

    [Fact]
    public void ClaimClearsPendingAndASourceInServiceDoesNotPendAgainUntilCompleted()
    {
        SetPriority(10, 1);
        Enable(Hart0S, 10);
        plic.SetLevel(10, true);

        Assert.Equal(10u, Claim(Hart0S));
        Assert.False(Pending(10));
        Assert.False(plic.OutputLevel(Hart0S));

        // The line toggles while the source is in service: no new request.
        plic.SetLevel(10, false);
        plic.SetLevel(10, true);
        Assert.False(Pending(10));
        Assert.Equal(0u, Claim(Hart0S));

        // Completed with the line still high: pending again at once.
        Complete(Hart0S, 10);
        Assert.True(Pending(10));
        Assert.True(plic.OutputLevel(Hart0S));
        Assert.Equal(10u, Claim(Hart0S));

        // Completed after the device lowered its line: quiet.
        plic.SetLevel(10, false);
        Complete(Hart0S, 10);
        Assert.False(Pending(10));
        Assert.False(plic.OutputLevel(Hart0S));
    }

    [Fact]
    public void ALineThatDropsBeforeTheClaimLeavesNothingToClaim()
    {
        SetPriority(12, 1);
        Enable(Hart0M, 12);
        plic.SetLevel(12, true);
        plic.SetLevel(12, false);

        Assert.False(Pending(12));
        Assert.False(plic.OutputLevel(Hart0M));
        Assert.Equal(0u, Claim(Hart0M));
    }

    [Fact]
    public void CompletingASourceNotInServiceChangesNothing()
    {
        SetPriority(4, 1);
        Enable(Hart0M, 4);
        plic.SetLevel(4, true);

        Complete(Hart0M, 4);
        Complete(Hart0M, 0);
        Complete(Hart0M, 200);

        Assert.True(Pending(4));
        Assert.Equal(4u, Claim(Hart0M));
    }

    [Fact]
    public void EnableBitsArePerContext()
    {
        SetPriority(33, 1);
        Enable(Hart1S, 33);
        plic.SetLevel(33, true);

        Assert.True(plic.OutputLevel(Hart1S));
        Assert.False(plic.OutputLevel(Hart0M));
        Assert.False(plic.OutputLevel(Hart0S));
        Assert.False(plic.OutputLevel(Hart1M));
        Assert.Equal(0u, Claim(Hart0S));
        Assert.Equal(33u, Claim(Hart1S));
        Assert.Equal(1UL << 1, plic.Read(EnableReg(Hart1S, 1), 4));
        Assert.Equal(0UL, plic.Read(EnableReg(Hart0S, 1), 4));
    }

    [Fact]
    public void SourceZeroCannotBeEnabled()
    {
        plic.Write(EnableReg(Hart0M, 0), 4, 0xffff_ffff);
        Assert.Equal(0xffff_fffeUL, plic.Read(EnableReg(Hart0M, 0), 4));
    }

    [Fact]
    public void ASourceClaimedByOneContextIsNotOfferedToAnother()
    {
        SetPriority(20, 1);
        Enable(Hart0S, 20);
        Enable(Hart1S, 20);
        plic.SetLevel(20, true);
        Assert.True(plic.OutputLevel(Hart0S));
        Assert.True(plic.OutputLevel(Hart1S));

        Assert.Equal(20u, Claim(Hart1S));

        Assert.False(plic.OutputLevel(Hart0S));
        Assert.Equal(0u, Claim(Hart0S));
    }

    [Fact]
    public void OutputsDriveMeipOfMContextsAndSeipOfSContextsOnTheirOwnHart()
    {
        SetPriority(1, 1);
        SetPriority(2, 1);
        Enable(Hart1M, 1);
        Enable(Hart0S, 2);

        plic.SetLevel(1, true);
        plic.SetLevel(2, true);
        Assert.Equal([(1, Hart.IrqMei, true), (0, Hart.IrqSei, true)], calls);

        calls.Clear();
        Assert.Equal(1u, Claim(Hart1M));
        Assert.Equal([(1, Hart.IrqMei, false)], calls);
    }

    [Fact]
    public void TheCallbackRunsOnlyWhenAnOutputChanges()
    {
        SetPriority(1, 1);
        SetPriority(2, 2);
        Enable(Hart0M, 1, 2);

        plic.SetLevel(1, true);
        plic.SetLevel(1, true);
        plic.SetLevel(2, true);
        SetPriority(2, 3);
        plic.Write(ThresholdReg(Hart0M), 4, 0);
        Assert.Single(calls);

        Assert.Equal(2u, Claim(Hart0M)); // source 1 still pending: the output stays high
        Assert.Single(calls);
    }

    [Fact]
    public void PendingBitsAreReadOnly()
    {
        plic.Write(Plic.PendingBase, 4, 0xffff_ffff);
        Assert.Equal(0UL, plic.Read(Plic.PendingBase, 4));
    }

    [Theory]
    [InlineData(0x2000UL + 0x80 * 4, 4)]      // enable words of a context past the last (two harts: four contexts)
    [InlineData(0x2000UL + 0xc, 4)]           // enable word 3 of context 0: only three words exist
    [InlineData(0x20_0000UL + 0x1000 * 4, 4)] // threshold of a context past the last
    [InlineData(0x20_0008UL, 4)]              // a context's word past claim/complete
    [InlineData(0x1000UL + 0xc, 4)]           // pending word 3
    [InlineData(0x5f_fffcUL, 4)]              // the window's last word
    [InlineData(0x10UL, 1)]                   // a priority register, but a byte access
    [InlineData(0x10UL, 8)]                   // and a doubleword access
    [InlineData(0x12UL, 4)]                   // misaligned
    public void AccessesOutsideTheRegisterMapReadZeroAndWritesAreIgnored(ulong offset, int size)
    {
        SetPriority(3, 1);
        Enable(Hart0M, 3);
        byte[] before = plic.SaveState();

        plic.Write(offset, size, 0xffff_ffff_ffff_ffffUL);

        Assert.Equal(0UL, plic.Read(offset, size));
        Assert.Equal(before, plic.SaveState());
        Assert.Empty(calls);
    }

    [Fact]
    public void ClaimReadOfAContextPastTheLastClaimsNothing()
    {
        SetPriority(3, 1);
        Enable(Hart0M, 3);
        plic.SetLevel(3, true);

        Assert.Equal(0UL, plic.Read(ClaimReg(4), 4));
        Assert.True(Pending(3));
    }

    [Fact]
    public void StateRoundTripsAndLoadingDrivesTheOutputs()
    {
        SetPriority(5, 2);
        SetPriority(6, 7);
        SetPriority(64, 1);
        Enable(Hart0M, 5);
        Enable(Hart1S, 6, 64);
        plic.Write(ThresholdReg(Hart1M), 4, 4);
        plic.SetLevel(5, true);
        plic.SetLevel(6, true);
        plic.SetLevel(64, true);
        Assert.Equal(6u, Claim(Hart1S)); // 6 in service with its line high
        byte[] saved = plic.SaveState();
        Assert.Equal(plic.StateSize, saved.Length);

        var driven = new List<(int, int, bool)>();
        var copy = new Plic(2, (h, bit, level) => driven.Add((h, bit, level)));
        copy.LoadState(saved);

        Assert.Equal(saved, copy.SaveState());
        Assert.Equal([(0, Hart.IrqMei, true), (1, Hart.IrqSei, true)], driven);
        // The line level came along: completing 6 re-pends it.
        Assert.Equal(64u, (uint)copy.Read(ClaimReg(Hart1S), 4));
        copy.Write(ClaimReg(Hart1S), 4, 6);
        Assert.Equal(6u, (uint)copy.Read(ClaimReg(Hart1S), 4));
    }

    [Fact]
    public void LoadingAQuietStateLowersOutputsThatWereHigh()
    {
        byte[] quiet = plic.SaveState();
        SetPriority(5, 1);
        Enable(Hart0S, 5);
        plic.SetLevel(5, true);
        calls.Clear();

        plic.LoadState(quiet);

        Assert.Equal([(0, Hart.IrqSei, false)], calls);
        Assert.False(plic.OutputLevel(Hart0S));
    }

    public static TheoryData<string, Func<byte[], byte[]>> BadSections => new()
    {
        { "short", s => s[..20] },
        { "long", s => [.. s, 0] },
        { "magic", s => Patch(s, b => b[0] ^= 1) },
        { "version", s => Patch(s, b => BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(4), 2)) },
        { "size field", s => Patch(s, b => BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(6), 99)) },
        { "source count", s => Patch(s, b => BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(8), 64)) },
        { "priority above 7", s => Patch(s, b => b[12 + 5] = 8) },
        { "priority of source 0", s => Patch(s, b => b[12] = 1) },
        { "pending and in service", s => Patch(s, b => { b[12 + 96 + 12] |= 2; b[12 + 96 + 24] |= 2; }) },
        { "source 0 enabled", s => Patch(s, b => b[12 + 96 + 36] |= 1) },
        { "threshold above 7", s => Patch(s, b => b[12 + 96 + 36 + 12] = 8) },
    };

    private static byte[] Patch(byte[] s, Action<byte[]> change)
    {
        byte[] copy = [.. s];
        change(copy);
        return copy;
    }

    [Theory]
    [MemberData(nameof(BadSections))]
    public void ABadSectionIsRejectedAndLeavesThePlicUnchanged(string what, Func<byte[], byte[]> spoil)
    {
        SetPriority(5, 3);
        Enable(Hart0M, 5);
        plic.SetLevel(5, true);
        byte[] good = plic.SaveState();
        calls.Clear();

        var e = Assert.Throws<InvalidDataException>(() => plic.LoadState(spoil(good)));

        Assert.False(string.IsNullOrEmpty(e.Message), what);
        Assert.Equal(good, plic.SaveState());
        Assert.Empty(calls);
    }

    [Fact]
    public void ASectionFromAPlicWithAnotherHartCountIsRejected()
    {
        byte[] fourHarts = new Plic(4, (_, _, _) => { }).SaveState();
        var e = Assert.Throws<InvalidDataException>(() => plic.LoadState(fourHarts));
        Assert.Contains("bytes", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void DeviceThreadsAndAClaimingHartAgreeOnEveryRequest()
    {
        // Four devices each raise their line 2000 times; one "hart" claims, has the device lower its line (as a
        // driver's handler does), then completes. Every raise is claimed exactly once and the output ends low.
        const int Devices = 4, Rounds = 2000;
        int outputHigh = 0;
        var p = new Plic(1, (_, bit, level) =>
        {
            if (bit == Hart.IrqMei) Volatile.Write(ref outputHigh, level ? 1 : 0);
        });
        var served = new SemaphoreSlim[Devices];
        var lowered = new SemaphoreSlim[Devices];
        for (int d = 0; d < Devices; d++)
        {
            int source = 1 + 31 * d; // spread over all three bitmap words
            p.Write(PriorityReg(source), 4, (uint)(1 + d % 7));
            p.Write(EnableReg(0, source / 32), 4, p.Read(EnableReg(0, source / 32), 4) | (1UL << (source % 32)));
            served[d] = new SemaphoreSlim(0);
            lowered[d] = new SemaphoreSlim(0);
        }
        CancellationToken cancel = TestContext.Current.CancellationToken;
        var claims = new int[Devices];
        var devices = new Thread[Devices];
        for (int d = 0; d < Devices; d++)
        {
            int dev = d;
            devices[d] = new Thread(() =>
            {
                for (int r = 0; r < Rounds; r++)
                {
                    p.SetLevel(1 + 31 * dev, true);
                    served[dev].Wait(cancel);
                    p.SetLevel(1 + 31 * dev, false);
                    lowered[dev].Release();
                }
            }) { IsBackground = true }; // a lost request leaves it blocked: it must not keep the test host alive
            devices[d].Start();
        }
        int total = 0;
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20); // 8000 requests take well under a second
        while (total < Devices * Rounds)
        {
            Assert.True(DateTime.UtcNow < deadline, $"only {total} requests served");
            uint source = (uint)p.Read(ClaimReg(0), 4);
            if (source == 0)
            {
                Thread.Yield();
                continue;
            }
            int dev = (int)(source - 1) / 31;
            claims[dev]++;
            total++;
            served[dev].Release();
            lowered[dev].Wait(cancel);
            p.Write(ClaimReg(0), 4, source);
        }
        foreach (Thread t in devices) t.Join();

        Assert.All(claims, c => Assert.Equal(Rounds, c));
        Assert.Equal(0u, (uint)p.Read(ClaimReg(0), 4));
        Assert.Equal(0, Volatile.Read(ref outputHigh));
        Assert.False(p.OutputLevel(0));
    }

    [Fact]
    public void TheConstructorRejectsImpossibleHartCounts()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new Plic(0, (_, _, _) => { }));
        Assert.Throws<ArgumentOutOfRangeException>(() => new Plic(Plic.MaxHarts + 1, (_, _, _) => { }));
        Assert.Equal(Plic.PlicSize, Plic.ContextBase + Plic.ContextStride * 2 * Plic.MaxHarts);
    }
}
