using Ferry.Migration.Guest;
using Ferry.Migration.Memory;
using Ferry.Migration.Postcopy;
using Ferry.Migration.Protocol;

namespace Ferry.Migration.Tests.Postcopy;

/// <summary>
/// Nothing large is allocated once the guest runs on the destination: a large-object allocation there set off a
/// background collection in the guest's first milliseconds, whose pauses stop the fault path and the push.
/// </summary>
public class PostcopyAllocationTests
{
    /// <summary>The runtime's large-object threshold, bytes.</summary>
    private const long LargeObject = 85_000;

    [Fact]
    public void ASmallGuestsBookkeepingStaysOffTheLargeObjectHeapAndSamplesEveryPage()
    {
        // The switchover warm-up builds 40 of these for 4 pages each: 512 KiB of samples apiece before.
        const ulong Pages = 4;
        MemoryRegion[] regions = [new MemoryRegion(0, Pages * MemoryRegion.PageSize, 0)];
        long before = GC.GetAllocatedBytesForCurrentThread();
        var incoming = new PostcopyIncoming(regions, (_, _, _) => { }, null);
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < LargeObject);

        var missing = new DirtyBitmap(Pages);
        missing.SetAll();
        incoming.Begin([missing], verify: false);
        incoming.Attach(new RecordingMemory());
        for (ulong p = 0; p < Pages; p++) incoming.PageNeeded(0, p);
        incoming.InstallZero(0, 0, Pages); // every page sampled: one sample per page fits
        Assert.Equal(0, incoming.Missing);
        Assert.Equal(4, incoming.Faults);
        var (p50, p99, max) = incoming.Latency();
        Assert.True(p50 <= p99 && p99 <= max);
    }

    [Fact]
    public unsafe void AReaderPreparedForPostcopyAllocatesNothingLargeForItsFirstBatch()
    {
        const int Pages = 8;
        nint memory = (nint)System.Runtime.InteropServices.NativeMemory.AlignedAlloc(Pages * MemoryRegion.PageSize, MemoryRegion.PageSize);
        try
        {
            new Span<byte>((void*)memory, Pages * MemoryRegion.PageSize).Fill(7);
            MemoryRegion[] regions = [new MemoryRegion(0, Pages * MemoryRegion.PageSize, memory)];

            // Once unprepared, so that the code is compiled and the difference is the buffer alone.
            long unprepared = FirstBatchAllocation(regions, prepare: false);
            long prepared = FirstBatchAllocation(regions, prepare: true);
            Assert.True(unprepared >= 1 << 20, $"an unprepared reader allocated {unprepared} bytes for its first batch");
            Assert.True(prepared < LargeObject, $"a prepared reader allocated {prepared} bytes for its first batch");
        }
        finally
        {
            System.Runtime.InteropServices.NativeMemory.AlignedFree((void*)memory);
        }
    }

    // Bytes this thread allocated reading one post-copy batch of data pages with a fresh reader.
    private static long FirstBatchAllocation(MemoryRegion[] regions, bool prepare)
    {
        var (send, receive) = Ferry.Migration.Transport.InMemoryTransport.CreatePair("pages", capacity: 1 << 20);
        var missing = new DirtyBitmap(regions[0].Pages);
        missing.SetAll();
        var incoming = new PostcopyIncoming(regions, (_, _, _) => { }, null);
        incoming.Begin([missing], verify: false);
        var installed = new RecordingMemory();
        incoming.Attach(installed);
        var reader = new PageBatchReader(receive, regions) { Postcopy = incoming };
        if (prepare) reader.PreparePostcopy();
        new PageBatchWriter(send).WriteBatch(0, regions[0], [new PageRun(0, 4, PageEncoding.Normal)],
            PageBatchFlags.Postcopy | PageBatchFlags.DataChecksummed);
        long before = GC.GetAllocatedBytesForCurrentThread();
        reader.ReadNext();
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.Equal([(0UL, 4)], installed.Installs);
        return allocated;
    }
}
