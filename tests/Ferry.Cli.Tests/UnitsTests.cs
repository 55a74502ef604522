namespace Ferry.Cli.Tests;

public class UnitsTests
{
    [Theory]
    [InlineData("4096", 4096UL)]
    [InlineData("64K", 64UL << 10)]
    [InlineData("512M", 512UL << 20)]
    [InlineData("512m", 512UL << 20)]
    [InlineData("1G", 1UL << 30)]
    [InlineData("2GiB", 2UL << 30)]
    [InlineData("64MiB", 64UL << 20)]
    [InlineData("1.5G", 3UL << 29)]
    [InlineData("1T", 1UL << 40)]
    [InlineData("100B", 100UL)]
    [InlineData(" 8M ", 8UL << 20)]
    public void SizesUseBinarySuffixes(string text, ulong expected)
    {
        Assert.True(Units.TryParseSize(text, out var bytes, out var reason), reason);
        Assert.Equal(expected, bytes);
    }

    [Theory]
    [InlineData("")]
    [InlineData("G")]
    [InlineData("12X")]
    [InlineData("1GB")]
    [InlineData("-1G")]
    [InlineData("1 G B")]
    [InlineData("0.3B")]
    [InlineData("99999999999999999999T")]
    public void MalformedSizesAreRefusedWithAReason(string text)
    {
        Assert.False(Units.TryParseSize(text, out _, out var reason));
        Assert.False(string.IsNullOrWhiteSpace(reason));
    }

    [Theory]
    [InlineData("50ms", 50_000)]
    [InlineData("2s", 2_000_000)]
    [InlineData("1m", 60_000_000)]
    [InlineData("1.5s", 1_500_000)]
    [InlineData("250us", 250)]
    [InlineData("1h", 3_600_000_000)]
    [InlineData("0ms", 0)]
    public void DurationsNeedAUnit(string text, long expectedMicroseconds)
    {
        Assert.True(Units.TryParseDuration(text, out var duration, out var reason), reason);
        Assert.Equal(expectedMicroseconds, duration.Ticks / 10);
    }

    [Theory]
    [InlineData("50")]
    [InlineData("ms")]
    [InlineData("fast")]
    [InlineData("-5s")]
    [InlineData("5 days")]
    public void MalformedDurationsAreRefused(string text) =>
        Assert.False(Units.TryParseDuration(text, out _, out _));

    [Fact]
    public void ABareNumberDurationIsRefusedForWantOfAUnit()
    {
        Assert.False(Units.TryParseDuration("50", out _, out var reason));
        Assert.Contains("unit", reason, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("0", 0L)]
    [InlineData("500M", 500L << 20)]
    [InlineData("1G/s", 1L << 30)]
    [InlineData("125000000", 125_000_000L)]
    public void BandwidthIsBytesPerSecondAndZeroIsUnlimited(string text, long expected)
    {
        Assert.True(Units.TryParseBandwidth(text, out var rate, out var reason), reason);
        Assert.Equal(expected, rate);
    }

    [Theory]
    [InlineData("20000", 20_000L)]
    [InlineData("20k", 20_000L)]
    [InlineData("1.5M", 1_500_000L)]
    [InlineData("0", 0L)]
    public void CountsUseDecimalSuffixes(string text, long expected)
    {
        Assert.True(Units.TryParseCount(text, out var count, out var reason), reason);
        Assert.Equal(expected, count);
    }

    [Theory]
    [InlineData("-5")]
    [InlineData("1.5")]
    [InlineData("lots")]
    [InlineData("99999999999999999999M")]
    public void MalformedCountsAreRefused(string text) => Assert.False(Units.TryParseCount(text, out _, out _));

    [Theory]
    [InlineData(0, "0 B")]
    [InlineData(1023, "1023 B")]
    [InlineData(4096, "4 KiB")]
    [InlineData(1 << 30, "1 GiB")]
    [InlineData(13_107_200, "12.5 MiB")]
    public void BytesAreFormattedInTheLargestBinaryUnit(double bytes, string expected) =>
        Assert.Equal(expected, Units.FormatBytes(bytes));
}
