using Ferry.Migration.Guest;
using Ferry.Migration.Precopy;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Tests.Precopy;

public class PageSenderTests
{
    [Fact]
    public void StoppingASenderWhoseThreadNeverStartedReturnsAtOnce()
    {
        // A migration that fails during setup stops senders it created but never started.
        var (a, b) = InMemoryTransport.CreatePair("pages-0", capacity: 64 << 10);
        using (a)
        using (b)
        {
            var sender = new PageSender(0, 1, a, [new MemoryRegion(0, 4096, 0)], (_, _) => { }, CancellationToken.None);
            var stop = Record.Exception(() => sender.Stop(TimeSpan.FromSeconds(5)));
            Assert.Null(stop);
        }
    }

    [Fact]
    public void StoppingAnIdleStartedSenderEndsItsThread()
    {
        var (a, b) = InMemoryTransport.CreatePair("pages-0", capacity: 64 << 10);
        using (a)
        using (b)
        {
            var sender = new PageSender(0, 1, a, [new MemoryRegion(0, 4096, 0)], (_, _) => { }, CancellationToken.None);
            sender.StartThread();
            var clock = System.Diagnostics.Stopwatch.StartNew();
            sender.Stop(TimeSpan.FromSeconds(5));
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(4), $"Stop took {clock.Elapsed}: the idle thread did not end");
        }
    }
}
