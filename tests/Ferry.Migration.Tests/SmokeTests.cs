using Ferry.Migration.Guest;

namespace Ferry.Migration.Tests;

public class MemoryRegionTests
{
    [Fact]
    public void PageAddressIsBasePlusPageTimesPageSize()
    {
        var r = new MemoryRegion(0x10000, 8 * 4096, 0x7000_0000);
        Assert.Equal(8UL, r.Pages);
        Assert.Equal((nint)0x7000_0000 + 3 * 4096, r.PageAddress(3));
    }
}
