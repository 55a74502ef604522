using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Ferry.Migration.Memory;

namespace Ferry.Migration.Tests.Memory;

public sealed unsafe class ZeroPageTests : IDisposable
{
    // Two pages plus slack so the page can also start at an odd (unaligned) address.
    private readonly byte* _buffer = (byte*)NativeMemory.AlignedAlloc(3 * 4096, 4096);

    public enum Path
    {
        Dispatch,
        Vector512,
        Vector256,
        Scalar,
    }

    public static TheoryData<Path, int, int> PositionClasses()
    {
        var data = new TheoryData<Path, int, int>();
        // First byte, end of the first cache line, first byte after it, a 256-byte block edge, middle, last byte.
        int[] positions = [0, 63, 64, 255, 256, 2047, 2048, 4031, 4095];
        foreach (Path path in Enum.GetValues<Path>())
        {
            foreach (int position in positions)
            {
                data.Add(path, position, 0);
                data.Add(path, position, 1);
            }
        }

        return data;
    }

    [Theory]
    [InlineData(Path.Dispatch, 0)]
    [InlineData(Path.Vector512, 0)]
    [InlineData(Path.Vector256, 0)]
    [InlineData(Path.Scalar, 0)]
    [InlineData(Path.Dispatch, 1)]
    [InlineData(Path.Vector512, 1)]
    [InlineData(Path.Vector256, 1)]
    [InlineData(Path.Scalar, 1)]
    public void AllZeroPageIsZeroOnEveryPath(Path path, int misalignment)
    {
        byte* page = Page(misalignment);
        Assert.SkipUnless(Supported(path), $"{path} not accelerated on this CPU");
        Assert.True(IsZero(path, page));
    }

    [Theory]
    [MemberData(nameof(PositionClasses))]
    public void SingleNonZeroByteAnywhereMakesThePageNonZero(Path path, int position, int misalignment)
    {
        Assert.SkipUnless(Supported(path), $"{path} not accelerated on this CPU");
        byte* page = Page(misalignment);
        page[position] = 0x01;
        Assert.False(IsZero(path, page));
        page[position] = 0x80;
        Assert.False(IsZero(path, page));
    }

    [Fact]
    public void BytesJustOutsideThePageAreIgnored()
    {
        byte* page = Page(1);
        page[-1] = 0xFF;
        page[4096] = 0xFF;
        Assert.True(ZeroPage.IsZero((nint)page));
        Assert.True(ZeroPage.IsZeroVector256(page));
        Assert.True(ZeroPage.IsZeroScalar(page));
    }

    [Fact]
    public void SpanOverloadRejectsAnythingButOnePage()
    {
        Assert.Throws<ArgumentException>(() => ZeroPage.IsZero(new byte[4095]));
        Assert.True(ZeroPage.IsZero(new byte[4096]));
        var page = new byte[4096];
        page[4095] = 1;
        Assert.False(ZeroPage.IsZero(page));
    }

    public void Dispose() => NativeMemory.AlignedFree(_buffer);

    private byte* Page(int misalignment)
    {
        new Span<byte>(_buffer, 3 * 4096).Clear();
        return _buffer + 4096 + misalignment;
    }

    private static bool Supported(Path path) => path switch
    {
        Path.Vector512 => Vector512.IsHardwareAccelerated,
        Path.Vector256 => Vector256.IsHardwareAccelerated,
        _ => true,
    };

    private static bool IsZero(Path path, byte* page) => path switch
    {
        Path.Vector512 => ZeroPage.IsZeroVector512(page),
        Path.Vector256 => ZeroPage.IsZeroVector256(page),
        Path.Scalar => ZeroPage.IsZeroScalar(page),
        _ => ZeroPage.IsZero((nint)page),
    };
}
