using System.IO.Hashing;
using Ferry.Linux;
using Ferry.Migration.Guest;
using Ferry.Migration.Memory;

namespace Ferry.Migration.Tests.Memory;

public sealed unsafe class MemoryDigestTests : IDisposable
{
    private readonly GuestMemoryMapping _a = GuestMemoryMapping.Create(64 * 4096);
    private readonly GuestMemoryMapping _b = GuestMemoryMapping.Create(64 * 4096);

    [Fact]
    public void DigestIsXxHash128OfEachRegionsBaseSizeAndBytes()
    {
        Fill(_a, 1);
        var regions = new[] { new MemoryRegion(0, 32 * 4096, _a.Address), new MemoryRegion(1UL << 32, 32 * 4096, _a.Address + (32 * 4096)) };

        var expected = new XxHash128();
        foreach (var r in regions)
        {
            expected.Append(BitConverter.GetBytes(r.GuestPhysicalAddress));
            expected.Append(BitConverter.GetBytes(r.Size));
            expected.Append(new ReadOnlySpan<byte>((byte*)r.HostAddress, (int)r.Size));
        }

        Assert.Equal(expected.GetCurrentHashAsUInt128(), MemoryDigest.Compute(regions));
    }

    [Fact]
    public void EqualMemoryGivesEqualDigestAndOneFlippedByteChangesIt()
    {
        Fill(_a, 2);
        Fill(_b, 2);
        var a = new[] { new MemoryRegion(0, _a.Length, _a.Address) };
        var b = new[] { new MemoryRegion(0, _b.Length, _b.Address) };
        Assert.Equal(MemoryDigest.Compute(a), MemoryDigest.Compute(b));

        ((byte*)_b.Address)[(40 * 4096) + 123] ^= 0x10;
        Assert.NotEqual(MemoryDigest.Compute(a), MemoryDigest.Compute(b));
    }

    [Fact]
    public void SameBytesAtADifferentGuestAddressOrSplitGiveADifferentDigest()
    {
        Fill(_a, 3);
        var whole = new[] { new MemoryRegion(0, _a.Length, _a.Address) };
        var moved = new[] { new MemoryRegion(1 << 20, _a.Length, _a.Address) };
        var split = new[] { new MemoryRegion(0, 32 * 4096, _a.Address), new MemoryRegion(32 * 4096, 32 * 4096, _a.Address + (32 * 4096)) };
        UInt128 d = MemoryDigest.Compute(whole);
        Assert.NotEqual(d, MemoryDigest.Compute(moved));
        Assert.NotEqual(d, MemoryDigest.Compute(split));
    }

    [Fact]
    public void HexIsThirtyTwoLowercaseDigitsMostSignificantFirst()
    {
        Assert.Equal("000000000000000100000000000000ff", MemoryDigest.ToHex(new UInt128(1, 0xff)));
    }

    public void Dispose()
    {
        _a.Dispose();
        _b.Dispose();
    }

    private static void Fill(GuestMemoryMapping m, int seed) =>
        new Random(seed).NextBytes(new Span<byte>((byte*)m.Address, (int)m.Length));
}
