using Ferry.Migration.Guest;
using Ferry.Migration.Memory;
using Ferry.Migration.Postcopy;

namespace Ferry.Migration.Tests.Postcopy;

/// <summary>The destination's requests: one page for a lone fault, growing runs for faults that walk through memory.</summary>
public class FaultAroundTests
{
    internal const ulong Pages = 10_000;

    // Regions are only counted here (nothing is installed): no host memory behind them.
    internal static (PostcopyIncoming Incoming, List<(int Region, ulong First, uint Count)> Requests) Make()
    {
        var requests = new List<(int, ulong, uint)>();
        var incoming = new PostcopyIncoming([new MemoryRegion(0, Pages * MemoryRegion.PageSize, 0)], (r, p, n) => requests.Add((r, p, n)), null);
        var missing = new DirtyBitmap(Pages);
        missing.SetAll();
        incoming.Begin([missing], verify: false);
        return (incoming, requests);
    }

    [Fact]
    public void ALoneFaultAsksForItsPageOnly()
    {
        var (incoming, requests) = Make();
        incoming.PageNeeded(0, 100);
        incoming.PageNeeded(0, 5000);
        incoming.PageNeeded(0, 300);
        Assert.Equal([(0, 100UL, 1u), (0, 5000UL, 1u), (0, 300UL, 1u)], requests);
        Assert.Equal(3, incoming.Faults);
    }

    [Fact]
    public void FaultsWalkingForwardAskForRunsThatDoubleUpToTheLimit()
    {
        var (incoming, requests) = Make();
        ulong page = 1000;
        for (int i = 0; i < 9; i++)
        {
            incoming.PageNeeded(0, page);
            page = requests[^1].First + requests[^1].Count; // the next page the walk finds missing
        }
        Assert.Equal([1u, 2, 4, 8, 16, 32, 64, 64, 64], requests.Select(r => r.Count));
        // One run after another, no page asked for twice.
        for (int i = 1; i < requests.Count; i++) Assert.Equal(requests[i - 1].First + requests[i - 1].Count, requests[i].First);
    }

    [Fact]
    public void TwoThreadsInterleavingTheirPagesAreOneStream()
    {
        // As the in-process guest's writers: one touches the even pages, the other the odd ones, side by side.
        var (incoming, requests) = Make();
        incoming.PageNeeded(0, 2000);
        incoming.PageNeeded(0, 2001 + 2); // the other thread, a step ahead
        Assert.Equal(2u, requests[^1].Count);
    }

    [Fact]
    public void ARunStopsAtAPageThatLandedOrWasAskedForAndNeverCrossesTheRegionsEnd()
    {
        var (incoming, requests) = Make();
        incoming.PageNeeded(0, 100);
        incoming.PageNeeded(0, 101); // run of 2: 101, 102
        incoming.PageNeeded(0, 110); // a lone fault ahead, asked for already
        incoming.PageNeeded(0, 103); // would be 4 pages; stops before nothing here (103..106)
        Assert.Equal((0, 103UL, 4u), requests[^1]);
        incoming.PageNeeded(0, 107); // would be 8 (107..114) but 110 was asked for: 107..109
        Assert.Equal((0, 107UL, 3u), requests[^1]);

        incoming.PageNeeded(0, Pages - 3);
        incoming.PageNeeded(0, Pages - 2); // 2 wanted, 2 left
        incoming.PageNeeded(0, Pages - 1); // asked for already
        Assert.Equal((0, Pages - 2, 2u), requests[^1]);
    }

    [Fact]
    public void APageAskedForAheadOfAFaultCountsAsAFaultWhenAThreadWaitsForItAndIsNotAskedForAgain()
    {
        var (incoming, requests) = Make();
        incoming.PageNeeded(0, 500);
        incoming.PageNeeded(0, 501); // 501, 502
        int asked = requests.Count;
        incoming.PageNeeded(0, 502); // on its way: a fault, no new request
        Assert.Equal(asked, requests.Count);
        Assert.Equal(3, incoming.Faults);
        incoming.PageNeeded(0, 502); // the same thread again, or another one: counted once
        Assert.Equal(3, incoming.Faults);
    }

    [Fact]
    public void AfterAReconnectPagesAskedForAheadOfAFaultAreForgottenAndFaultedOnesAskedForAgain()
    {
        var (incoming, requests) = Make();
        incoming.PageNeeded(0, 700);
        incoming.PageNeeded(0, 701); // 701, 702: 702 asked for ahead of a fault
        requests.Clear();
        Assert.Equal(2, incoming.RequestPendingAgain());
        Assert.Equal([(0, 700UL, 1u), (0, 701UL, 1u)], requests);
        requests.Clear();
        incoming.PageNeeded(0, 702); // lost with the connection: asked for now
        Assert.Equal(702UL, Assert.Single(requests).First);
    }
}

/// <summary>The count of faults a reply is due for (what the urgent receiver polls for: UrgentPoll).</summary>
public class AwaitedFaultTests
{
    [Fact]
    public void AFaultIsAwaitedUntilItsPageLandsByWhicheverChannel()
    {
        var (incoming, requests) = FaultAroundTests.Make();
        incoming.Attach(new RecordingMemory());
        incoming.PageNeeded(0, 100);
        incoming.PageNeeded(0, 101);           // asks for 101 and 102
        Assert.Equal(2, incoming.Awaited);
        incoming.PageNeeded(0, 101);           // the same page again: one fault
        Assert.Equal(2, incoming.Awaited);
        incoming.InstallZero(0, 100, 1);       // the urgent reply
        Assert.Equal(1, incoming.Awaited);
        incoming.InstallZero(0, 102, 1);       // asked for ahead of a fault: nobody waits for it
        Assert.Equal(1, incoming.Awaited);
        incoming.InstallZero(0, 96, 8);        // the push brings 101 (again 100, 102: duplicates)
        Assert.Equal(0, incoming.Awaited);
        incoming.PageNeeded(0, 101);           // present: no fault
        Assert.Equal(0, incoming.Awaited);
        Assert.Equal(2, requests.Count);       // 100, then 101 with 102; nothing after
    }
}

/// <summary>Guest memory that only notes what was installed where (one installing thread at a time).</summary>
internal sealed class RecordingMemory : IPostcopyMemory
{
    public readonly List<(ulong First, int Count)> Installs = [];
    /// <summary>Zero runs over pages that never received data, which need no write (also in <see cref="Installs"/>).</summary>
    public readonly List<(ulong First, int Count)> FreshZeros = [];
    public void Install(int region, ulong firstPage, int count, nint source) => Installs.Add((firstPage, count));
    public void InstallZero(int region, ulong firstPage, ulong count) => Installs.Add((firstPage, (int)count));
    public void InstallFreshZero(int region, ulong firstPage, ulong count)
    {
        Installs.Add((firstPage, (int)count));
        FreshZeros.Add((firstPage, (int)count));
    }
    public long BlockedTicks => 0;
    public long WorkingSetPages => 0;
    public void Abort(string reason) { }
    public void Dispose() { }
}

/// <summary>The source's side of a run asked for with a fault.</summary>
public class UrgentRunTests
{
    [Fact]
    public unsafe void TheFaultedPageGoesInABatchOfItsOwnAheadOfTheRestOfItsRun()
    {
        const int Pages = 16;
        nint memory = (nint)System.Runtime.InteropServices.NativeMemory.AlignedAlloc(Pages * MemoryRegion.PageSize, MemoryRegion.PageSize);
        try
        {
            new Span<byte>((void*)memory, Pages * MemoryRegion.PageSize).Fill(7); // data, not zero pages
            MemoryRegion[] regions = [new MemoryRegion(0, Pages * MemoryRegion.PageSize, memory)];
            var (send, receive) = Ferry.Migration.Transport.InMemoryTransport.CreatePair("urgent", capacity: 1 << 20);
            var toSend = new DirtyBitmap(Pages);
            toSend.SetAll();
            var urgent = new UrgentSender(send, regions, new Prepager(toSend, new ulong[] { Pages }, PrepagingStrategy.Bubble));
            var missing = new DirtyBitmap(Pages);
            missing.SetAll();
            var incoming = new PostcopyIncoming(regions, (_, _, _) => { }, null);
            incoming.Begin([missing], verify: false);
            var installed = new RecordingMemory();
            incoming.Attach(installed);
            var reader = new Ferry.Migration.Protocol.PageBatchReader(receive, regions) { Postcopy = incoming };

            urgent.Send(0, 5, 4);
            reader.ReadNext();
            Assert.Equal([(5UL, 1)], installed.Installs); // the waiting thread's page, alone
            reader.ReadNext();
            Assert.Equal([(5UL, 1), (6UL, 3)], installed.Installs);
            Assert.Equal(4, urgent.Pages);
            Assert.Equal(Pages - 4, (int)toSend.Count()); // claimed from the push
        }
        finally
        {
            System.Runtime.InteropServices.NativeMemory.AlignedFree((void*)memory);
        }
    }

    [Fact]
    public unsafe void TheSystemPagesPushStopsBetweenBatchesWhenAskedAndTheRestGoesLater()
    {
        // As the switchover runs it: until Ready, then once the guest runs. Zero pages: batches of runs only.
        const int Pages = 1024;
        nint memory = (nint)System.Runtime.InteropServices.NativeMemory.AlignedAlloc(Pages * MemoryRegion.PageSize, MemoryRegion.PageSize);
        try
        {
            new Span<byte>((void*)memory, Pages * MemoryRegion.PageSize).Clear();
            PushSystemInSteps(new MemoryRegion(0, Pages * MemoryRegion.PageSize, memory), Pages);
        }
        finally
        {
            System.Runtime.InteropServices.NativeMemory.AlignedFree((void*)memory);
        }
    }

    private static void PushSystemInSteps(MemoryRegion region, ulong pages)
    {
        MemoryRegion[] regions = [region];
        var (send, receive) = Ferry.Migration.Transport.InMemoryTransport.CreatePair("urgent", capacity: 1 << 20);
        var toSend = new DirtyBitmap(pages);
        toSend.SetAll();
        var system = new DirtyBitmap(pages);
        system.SetRange(0, 200); // four batches' worth
        var urgent = new UrgentSender(send, regions, new Prepager(toSend, new ulong[] { pages }, PrepagingStrategy.Bubble, system: system));
        int asked = 0;
        long first = urgent.PushSystem(() => ++asked > 1); // Ready after the first batch
        Assert.Equal(UrgentSender.SystemBatchPages, first);
        Assert.Equal(0, urgent.PushSystem(() => true)); // Ready already in: not one more batch
        Assert.Equal(200 - UrgentSender.SystemBatchPages, urgent.PushSystem());
        Assert.Equal(pages - 200, toSend.Count()); // the system pages went once, the rest is the push's
        receive.Dispose();
    }
}
