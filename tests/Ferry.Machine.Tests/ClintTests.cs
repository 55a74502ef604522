using Ferry.Machine.Board;

namespace Ferry.Machine.Tests;

/// <summary>
/// The CLINT's conversion of a compare value to the host instant a timer is due: harts parked in wfi sleep exactly
/// until then (never before: a guest that finds its timer not yet due goes back to sleep).
/// </summary>
public class ClintTests
{
    private const ulong Mtime = 0xbff8;

    [Theory]
    [InlineData(null)]                       // mtime counting from the CLINT's creation
    [InlineData(5UL)]                        // the guest set it back near 0: a negative offset
    [InlineData(123_456_789_000UL)]          // the guest (or a migration) set it far ahead
    public void AComparesDeadlineIsTheFirstHostInstantMtimeReachesIt(ulong? written)
    {
        var clint = new Clint(1);
        if (written is { } value) clint.Write(Mtime, 8, value);
        foreach (ulong ahead in new ulong[] { 1, 7, 12_345, 10_000_000 })
        {
            ulong compare = clint.Mtime + ahead;
            long deadline = clint.HostDeadline(compare);
            Assert.True(clint.MtimeAt(deadline) >= compare, $"{ahead} ticks ahead: due too early");
            Assert.True(clint.MtimeAt(deadline - 1) < compare, $"{ahead} ticks ahead: due later than needed");
        }
    }

    [Fact]
    public void APassedCompareIsDueNowAndTheLargestNever()
    {
        var clint = new Clint(1);
        clint.Write(Mtime, 8, 1_000_000);
        Assert.True(clint.HostDeadline(999_999) <= System.Diagnostics.Stopwatch.GetTimestamp());
        Assert.True(clint.HostDeadline(0) <= System.Diagnostics.Stopwatch.GetTimestamp());
        Assert.Equal(long.MaxValue, clint.HostDeadline(ulong.MaxValue));
        clint.Write(Mtime, 8, 5); // negative offset: the compare plus it must not wrap around to "due now"
        Assert.Equal(long.MaxValue, clint.HostDeadline(ulong.MaxValue));
    }
}
