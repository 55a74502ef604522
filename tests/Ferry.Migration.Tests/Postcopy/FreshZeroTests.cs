using Ferry.Migration.Guest;
using Ferry.Migration.Memory;
using Ferry.Migration.Postcopy;
using Ferry.Migration.Protocol;

namespace Ferry.Migration.Tests.Postcopy;

/// <summary>
/// Zero runs in post-copy: pages that never received data read as zero on the destination already (fresh target
/// memory is zero by contract) and are only made present; pages that held pre-copy data are zeroed.
/// </summary>
public class FreshZeroTests
{
    private const ulong Pages = 64;

    private static (PostcopyIncoming Incoming, RecordingMemory Memory) Make(ReceivedPageMap? received)
    {
        MemoryRegion[] regions = [new MemoryRegion(0, Pages * MemoryRegion.PageSize, 0)];
        var incoming = new PostcopyIncoming(regions, (_, _, _) => { }, null, received);
        var missing = new DirtyBitmap(Pages);
        missing.SetAll();
        incoming.Begin([missing], verify: false);
        var memory = new RecordingMemory();
        incoming.Attach(memory);
        return (incoming, memory);
    }

    [Fact]
    public void OnlyThePagesThatHeldPrecopyDataAreWritten()
    {
        var received = new ReceivedPageMap([new MemoryRegion(0, Pages * MemoryRegion.PageSize, 0)]);
        received.MarkHeld(0, 10, 2); // a hybrid's pre-copy pages, dirtied since and zero now
        received.MarkHeld(0, 20, 1);
        var (incoming, memory) = Make(received);

        incoming.InstallZero(0, 8, 16);

        Assert.Equal([(8UL, 2), (10UL, 2), (12UL, 8), (20UL, 1), (21UL, 3)], memory.Installs);
        Assert.Equal([(8UL, 2), (12UL, 8), (21UL, 3)], memory.FreshZeros);
        Assert.Equal((long)Pages - 16, incoming.Missing);
    }

    [Fact]
    public void WithoutAMapOfReceivedPagesEveryZeroPageIsWritten()
    {
        var (incoming, memory) = Make(received: null);
        incoming.InstallZero(0, 0, Pages);
        Assert.Equal([(0UL, (int)Pages)], memory.Installs);
        Assert.Empty(memory.FreshZeros);
        Assert.True(incoming.AllLanded.IsSet);
    }

    [Fact]
    public void APageClaimedAlreadyIsNotInstalledAgain()
    {
        var (incoming, memory) = Make(new ReceivedPageMap([new MemoryRegion(0, Pages * MemoryRegion.PageSize, 0)]));
        incoming.InstallZero(0, 4, 2);
        incoming.InstallZero(0, 0, 8);
        Assert.Equal([(4UL, 2), (0UL, 4), (6UL, 2)], memory.FreshZeros);
        Assert.Equal(2, incoming.Duplicates);
    }
}
