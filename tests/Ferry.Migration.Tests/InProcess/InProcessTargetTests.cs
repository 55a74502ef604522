using System.Buffers.Binary;
using Ferry.Migration.Guest;
using Ferry.Migration.InProcess;
using Ferry.Migration.Memory;
using static Ferry.Migration.Tests.InProcess.GuestMemoryHelpers;

namespace Ferry.Migration.Tests.InProcess;

public class InProcessTargetTests
{
    private const ulong MiB = 1 << 20;

    [Fact]
    public void SavedStateAndCopiedMemoryPassSelfCheckOnTheTargetAndTheGuestKeepsRunningThere()
    {
        using var source = new InProcessGuest(new()
        {
            MemoryBytes = 8 * MiB, WriterThreads = 2, DirtyRatePagesPerSecond = InProcessGuestOptions.FullSpeed,
            Pattern = DirtyPattern.Hotset, Fill = MemoryFill.Random, SplitRegions = true, Seed = 42,
        });
        Assert.True(WaitUntil(() => source.PagesWritten > 20_000));
        source.Pause();
        var sections = source.SaveState();
        long writtenAtPause = source.PagesWritten;

        var factory = new InProcessTargetFactory();
        using var target = factory.Create(Guid.NewGuid(), Layout(source));
        Assert.Same(target, factory.LastCreated);
        Copy(source.Regions, target.Regions);
        target.LoadState(sections);
        var t = (InProcessTarget)target;
        Assert.Null(t.SelfCheck());
        Assert.Equal(MemoryDigest.Compute(source.Regions), MemoryDigest.Compute(target.Regions));

        target.Start();
        var guest = t.Guest!;
        Assert.True(guest.IsRunning);
        Assert.True(guest.PagesWritten >= writtenAtPause, "the write count restarted instead of carrying over");
        Assert.True(WaitUntil(() => guest.PagesWritten > writtenAtPause + 10_000), "the migrated workload did not carry on");
        guest.Pause();
        Assert.Null(t.SelfCheck());
        Assert.True(guest.PagesWritten > writtenAtPause);
    }

    [Theory]
    [InlineData(0.0)]
    [InlineData(0.3)] // the hot set's place travels with the workload: else the destination writes elsewhere
    public void MigratedDeterministicWorkloadContinuesExactlyWhereTheSourceStopped(double hotsetStart)
    {
        var options = new InProcessGuestOptions { MemoryBytes = 400 * 4096, WriterThreads = 0, Pattern = DirtyPattern.Hotset, SplitRegions = true, Seed = 3, HotsetStart = hotsetStart };
        using var reference = new InProcessGuest(options);
        reference.Step(3000);

        using var source = new InProcessGuest(options);
        source.Step(1700);
        source.Pause();
        using var target = new InProcessTargetFactory().Create(Guid.NewGuid(), Layout(source));
        Copy(source.Regions, target.Regions);
        target.LoadState(source.SaveState());
        target.Start();
        var moved = ((InProcessTarget)target).Guest!;
        moved.Step(1300);

        Assert.Equal(3000, moved.PagesWritten);
        Assert.Equal(MemoryDigest.Compute(reference.Regions), MemoryDigest.Compute(moved.Regions));
        Assert.Null(moved.SelfCheck());
    }

    [Fact]
    public void CorruptingOnePageMakesSelfCheckNameThatPage()
    {
        using var source = NewSteppedGuest(out var target);
        ulong written = FirstPageWith(source, seq => seq > 0, from: 150);
        ulong untouched = FirstPageWith(source, seq => seq == 0, from: 0);

        // A flipped bit in the data word, a stale copy (one write lost), and a page moved to the wrong place.
        unsafe
        {
            nint page = PageAddress(target.Regions, written);
            byte[] saved = new ReadOnlySpan<byte>((void*)page, 4096).ToArray();
            for (int offset = 16; offset < 4096; offset += 8)
            {
                ulong word = *(ulong*)(page + offset);
                if (word != 0)
                {
                    *(ulong*)(page + offset) ^= 1UL << 40;
                    break;
                }
            }

            Assert.Equal(written, target.SelfCheck()?.Page);
            saved.CopyTo(new Span<byte>((void*)page, 4096));
            Assert.Null(target.SelfCheck());

            *(ulong*)page -= 1;
            Assert.Equal(written, target.SelfCheck()?.Page);
            saved.CopyTo(new Span<byte>((void*)page, 4096));

            new ReadOnlySpan<byte>((void*)page, 4096).CopyTo(new Span<byte>((void*)PageAddress(target.Regions, untouched), 4096));
            var failure = target.SelfCheck();
            Assert.Equal(Math.Min(written, untouched), failure?.Page);
            Assert.Contains("page", failure!.ToString());
        }

        target.Dispose();
    }

    [Fact]
    public void TargetMemoryStartsZeroAndANeverCopiedWrittenPageIsCaught()
    {
        using var source = new InProcessGuest(new() { MemoryBytes = 64 * 4096, WriterThreads = 0, Pattern = DirtyPattern.Sequential });
        source.Step(10);
        source.Pause();
        using var target = new InProcessTargetFactory().Create(Guid.NewGuid(), Layout(source));
        Assert.True(target.Regions.All(r => Enumerable.Range(0, (int)r.Pages).All(p => ZeroPage.IsZero(r.PageAddress((ulong)p)))));
        target.LoadState(source.SaveState());
        // Nothing copied: memory is consistent with nothing written (counters and pages all zero), but the writers
        // made 10 writes, so the counter sum names the counter pages.
        var failure = ((InProcessTarget)target).SelfCheck();
        Assert.Equal(source.Options.FirstCounterPage, failure?.Page);
        Assert.Contains("add up to 0 writes but the writers made 10", failure!.Reason);
    }

    [Fact]
    public void DataPagesCopiedWithoutTheirCounterPagesAreCaughtAtTheFirstWrittenPage()
    {
        using var source = new InProcessGuest(new() { MemoryBytes = 64 * 4096, WriterThreads = 0, Pattern = DirtyPattern.Sequential });
        source.Step(10);
        source.Pause();
        using var target = (InProcessTarget)new InProcessTargetFactory().Create(Guid.NewGuid(), Layout(source));
        Copy(source.Regions, target.Regions);
        target.LoadState(source.SaveState());
        Assert.Null(target.SelfCheck());
        unsafe
        {
            new Span<byte>((void*)PageAddress(target.Regions, source.Options.FirstCounterPage), 4096).Clear();
        }

        Assert.Equal(0UL, target.SelfCheck()?.Page);
    }

    public static TheoryData<string> BadSectionCases() =>
    [
        "missing device", "missing workload", "unknown section", "duplicate workload", "workload version 2", "workload version 4", "device version 0",
        "workload truncated", "workload byte flipped", "workload extended", "device short", "device byte flipped",
        "different layout", "empty",
    ];

    [Theory]
    [MemberData(nameof(BadSectionCases))]
    public void BadSectionsAreRejectedAndNothingIsLoaded(string corruption)
    {
        using var source = new InProcessGuest(new() { MemoryBytes = 32 * 4096, WriterThreads = 0, Seed = 8 });
        source.Step(100);
        source.Pause();
        var good = source.SaveState();
        var workload = good.Single(s => s.Name == "workload");
        var device = good.Single(s => s.Name == "device");
        IReadOnlyList<(ulong, ulong)> layout = Layout(source);
        IReadOnlyList<StateSection> sections = corruption switch
        {
            "missing device" => [workload],
            "missing workload" => [device],
            "unknown section" => [workload, device, new StateSection("vcpu0", 1, new byte[16])],
            "duplicate workload" => [workload, device, workload],
            "workload version 2" => [workload with { Version = 2 }, device],
            "workload version 4" => [workload with { Version = 4 }, device],
            "device version 0" => [workload, device with { Version = 0 }],
            "workload truncated" => [workload with { Data = workload.Data[..^8] }, device],
            "workload byte flipped" => [workload with { Data = Flip(workload.Data, 100) }, device],
            "workload extended" => [workload with { Data = Resealed(workload.Data, extraBytes: 4) }, device],
            "device short" => [workload, device with { Data = device.Data[..1024] }],
            "device byte flipped" => [workload, device with { Data = Flip(device.Data, 7) }],
            "different layout" => [workload, device],
            _ => [],
        };
        if (corruption == "different layout")
        {
            layout = [(0UL, 64UL * 4096)];
        }

        using var target = (InProcessTarget)new InProcessTargetFactory().Create(Guid.NewGuid(), layout);
        Assert.Throws<InvalidDataException>(() => target.LoadState(sections));
        Assert.False(target.IsLoaded);
        Assert.Throws<InvalidOperationException>(target.Start);
    }

    [Fact]
    public void WorkloadWithAConsistentChecksumButImpossibleOptionsIsRejected()
    {
        using var source = new InProcessGuest(new() { MemoryBytes = 32 * 4096, WriterThreads = 0 });
        source.Pause();
        var sections = source.SaveState();
        var workload = sections[0];
        var bytes = workload.Data.ToArray();
        BinaryPrimitives.WriteInt32LittleEndian(bytes.AsSpan(16), 100_000); // writer threads
        using var target = new InProcessTargetFactory().Create(Guid.NewGuid(), Layout(source));
        var e = Assert.Throws<InvalidDataException>(() => target.LoadState([workload with { Data = Resealed(bytes, 0) }, sections[1]]));
        Assert.Contains("WriterThreads", e.Message);
    }

    [Fact]
    public void DisposingATargetThatNeverStartedUnmapsItsMemory()
    {
        var target = new InProcessTargetFactory().Create(Guid.NewGuid(), [(0, 16 * 4096), (1UL << 32, 16 * 4096)]);
        Assert.Equal(2, target.Regions.Count);
        Assert.Equal(1UL << 32, target.Regions[1].GuestPhysicalAddress);
        target.Dispose();
        target.Dispose();
        Assert.Throws<ObjectDisposedException>(() => target.LoadState([]));
    }

    private static InProcessGuest NewSteppedGuest(out InProcessTarget target)
    {
        var source = new InProcessGuest(new() { MemoryBytes = 300 * 4096, WriterThreads = 0, SplitRegions = true, Seed = 77 });
        source.Step(200);
        source.Pause();
        target = (InProcessTarget)new InProcessTargetFactory().Create(Guid.NewGuid(), Layout(source));
        Copy(source.Regions, target.Regions);
        target.LoadState(source.SaveState());
        Assert.Null(target.SelfCheck());
        return source;
    }

    private static ulong FirstPageWith(InProcessGuest guest, Func<ulong, bool> predicate, ulong from)
    {
        for (ulong p = from; p < guest.TotalPages; p++)
        {
            if (predicate(Seq(guest.Regions, p)))
            {
                return p;
            }
        }

        throw new InvalidOperationException("no such page");
    }

    private static (ulong, ulong)[] Layout(InProcessGuest guest) =>
        [.. guest.Regions.Select(r => (r.GuestPhysicalAddress, r.Size))];

    private static byte[] Flip(ReadOnlyMemory<byte> data, int index)
    {
        var copy = data.ToArray();
        copy[index] ^= 0x04;
        return copy;
    }

    /// <summary>Append bytes (or none) and recompute the trailing CRC-32, so only the structural check can object.</summary>
    private static byte[] Resealed(ReadOnlyMemory<byte> data, int extraBytes)
    {
        var body = data[..^4].ToArray().Concat(new byte[extraBytes]).ToArray();
        var sealedData = new byte[body.Length + 4];
        body.CopyTo(sealedData, 0);
        BinaryPrimitives.WriteUInt32LittleEndian(sealedData.AsSpan(body.Length), System.IO.Hashing.Crc32.HashToUInt32(body));
        return sealedData;
    }
}
