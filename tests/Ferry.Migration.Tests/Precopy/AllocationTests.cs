using Ferry.Migration.InProcess;
using Ferry.Migration.Transport;
using static Ferry.Migration.Tests.Precopy.MigrationHarness;

namespace Ferry.Migration.Tests.Precopy;

[Collection(MigrationCollection.Name)]
public class AllocationTests
{
    private static long AllocatedByMigration(ulong mib)
    {
        // Idle, random-filled (every page goes as data), with a 1 MiB working set so the guest's own per-page state
        // (the workload section) stays the same size whatever the memory size: what scales is only the engine.
        using var guest = new InProcessGuest(new InProcessGuestOptions
        {
            MemoryBytes = mib << 20, WriterThreads = 1, Fill = MemoryFill.Random, WorkingSetBytes = 1 << 20,
        });
        using var transport = new InMemoryTransport();
        long before = GC.GetTotalAllocatedBytes(precise: true);
        var outcome = Migrate(guest, transport.Connector, transport.Listener, Options(verify: false));
        long allocated = GC.GetTotalAllocatedBytes(precise: true) - before;
        outcome.Target?.Dispose();
        Assert.Equal(MigrationStatus.Completed, outcome.Stats.Status);
        return allocated;
    }

    [Fact]
    public void AllocationDoesNotGrowWithThePageCount()
    {
        AllocatedByMigration(4); // warm up: JIT, type loads, thread statics
        // The count is process-wide, and test classes outside this collection run meanwhile: their allocations can
        // only add, so the least of three runs is the migration's own figure.
        long small = Enumerable.Range(0, 3).Min(_ => AllocatedByMigration(16));   // 4 096 pages
        long large = Enumerable.Range(0, 3).Min(_ => AllocatedByMigration(64));   // 16 384 pages
        double perExtraPage = (double)(large - small) / (16384 - 4096);
        // The one per-page structure is the dirty bitmap (1 bit per page, 2 of them: source and guest); one object
        // per page would cost >= 24 bytes. 4 bytes per page leaves room for GC accounting noise only (measured: 1.2).
        Assert.True(perExtraPage < 4, $"{perExtraPage:F2} bytes allocated per extra page (16 MiB: {small} B, 64 MiB: {large} B)");
    }
}
