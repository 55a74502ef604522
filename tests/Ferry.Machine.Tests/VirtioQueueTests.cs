using Ferry.Machine.Memory;
using Ferry.Machine.Virtio;
using static Ferry.Machine.Tests.VirtioDriverForTests;

namespace Ferry.Machine.Tests;

/// <summary>
/// Split-virtqueue processing, driven through virtio-rng (the simplest device: it serves requests inline): chains,
/// indirect tables, notification suppression, the dirty log, and a hostile driver's malformed chains.
/// </summary>
public sealed class VirtioQueueTests : IDisposable
{
    private readonly VirtioDriverForTests d = new(new VirtioRng());

    public void Dispose() => d.Dispose();

    [Fact]
    public void RngFillsEveryWritableBufferAndReportsTheLength()
    {
        Assert.True(d.Start(AllRingFeatures));
        ulong a = d.Alloc(64), b = d.Alloc(200);

        ushort head = d.Post(0, new Buf(a, 64, Write: true), new Buf(b, 200, Write: true));
        d.Kick(0);

        Assert.Equal(1, d.UsedIdx(0));
        Assert.Equal((head, 264u), d.UsedElem(0, 0));
        Assert.Contains(d.Get(a, 64), x => x != 0);
        Assert.Contains(d.Get(b, 200), x => x != 0);
        Assert.NotEqual(d.Get(a, 64), d.Get(b, 64));
    }

    [Fact]
    public void IndirectTablesAreFollowed()
    {
        Assert.True(d.Start(AllRingFeatures));
        ulong a = d.Alloc(32), b = d.Alloc(32);
        ulong table = d.Table(new Buf(a, 32, Write: true), new Buf(b, 32, Write: true));

        ushort head = d.Post(0, new Buf(table, 32, Flags: VIRTQ_DESC_F_INDIRECT));
        d.Kick(0);

        Assert.False(d.NeedsReset);
        Assert.Equal((head, 64u), d.UsedElem(0, 0));
        Assert.Contains(d.Get(b, 32), x => x != 0);
    }

    [Fact]
    public void AnIndirectDescriptorWithoutTheFeatureNeedsAReset()
    {
        Assert.True(d.Start(Version1));
        ulong table = d.Table(new Buf(d.Alloc(32), 32, Write: true));

        d.Post(0, new Buf(table, 16, Flags: VIRTQ_DESC_F_INDIRECT));
        d.Kick(0);

        Assert.True(d.NeedsReset);
        Assert.Equal(0, d.UsedIdx(0));
    }

    [Fact]
    public void AnIndirectTableInsideAnIndirectTableNeedsAReset()
    {
        Assert.True(d.Start(AllRingFeatures));
        ulong inner = d.Table(new Buf(d.Alloc(32), 32, Write: true));
        ulong outer = d.Table(new Buf(inner, 16, Flags: VIRTQ_DESC_F_INDIRECT));

        d.Post(0, new Buf(outer, 16, Flags: VIRTQ_DESC_F_INDIRECT));
        d.Kick(0);

        Assert.True(d.NeedsReset);
        Assert.Contains("inside an indirect table", d.Mmio.FailureReason, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(RamBase + RamSize, 16u)] // just past RAM
    [InlineData(RamBase + RamSize - 8, 16u)] // crossing the end
    [InlineData(RamBase - 0x1000, 16u)] // below RAM
    [InlineData(0xffff_ffff_ffff_fff0, 0x20u)] // wraps around 2^64
    [InlineData(RamBase, uint.MaxValue)] // longer than RAM
    public void ABufferOutsideRamNeedsAResetAndIsNeverTouched(ulong address, uint length)
    {
        Assert.True(d.Start(AllRingFeatures));

        d.Post(0, new Buf(d.Alloc(8), 8, Write: true), new Buf(address, length, Write: true));
        d.Kick(0);

        Assert.True(d.NeedsReset);
        Assert.Equal(0, d.UsedIdx(0));
        Assert.Contains("outside RAM", d.Mmio.FailureReason, StringComparison.Ordinal);
    }

    [Fact]
    public void ALoopingChainNeedsAReset()
    {
        Assert.True(d.Start(AllRingFeatures));
        ulong buf = d.Alloc(8);
        d.WriteDesc(Desc(0), 0, buf, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
        d.WriteDesc(Desc(0), 1, buf, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 0);

        d.Publish(0, 0);
        d.Kick(0);

        Assert.True(d.NeedsReset);
        Assert.Contains("loops", d.Mmio.FailureReason, StringComparison.Ordinal);
    }

    [Fact]
    public void ALoopInsideAnIndirectTableNeedsAReset()
    {
        Assert.True(d.Start(AllRingFeatures));
        ulong table = d.Alloc(32);
        d.WriteDesc(table, 0, d.Alloc(8), 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
        d.WriteDesc(table, 1, d.Alloc(8), 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 0);

        d.Post(0, new Buf(table, 32, Flags: VIRTQ_DESC_F_INDIRECT));
        d.Kick(0);

        Assert.True(d.NeedsReset);
    }

    [Fact]
    public void AChainAsLongAsTheQueueIsServedButNoLonger()
    {
        Assert.True(d.Start(AllRingFeatures, queueSize: 4));
        var bufs = Enumerable.Range(0, 4).Select(_ => new Buf(d.Alloc(4), 4, Write: true)).ToArray();

        d.Post(0, bufs);
        d.Kick(0);

        Assert.False(d.NeedsReset);
        Assert.Equal(16u, d.UsedElem(0, 0).Length);
    }

    [Fact]
    public void AHeadOrNextIndexBeyondTheTableNeedsAReset()
    {
        Assert.True(d.Start(AllRingFeatures));
        d.Publish(0, 16);
        d.Kick(0);
        Assert.True(d.NeedsReset);

        Assert.True(d.Start(AllRingFeatures));
        d.WriteDesc(Desc(0), 0, d.Alloc(8), 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 300);
        d.Publish(0, 0);
        d.Kick(0);
        Assert.True(d.NeedsReset);
    }

    [Fact]
    public void AnAvailableIndexMoreThanAQueueAheadNeedsAReset()
    {
        Assert.True(d.Start(AllRingFeatures));
        d.SetU16(Avail(0) + 2, 17);
        d.Kick(0);

        Assert.True(d.NeedsReset);
    }

    [Fact]
    public void AReadableBufferAfterAWritableOneNeedsAReset()
    {
        Assert.True(d.Start(AllRingFeatures));
        d.Post(0, new Buf(d.Alloc(8), 8, Write: true), new Buf(d.Alloc(8), 8));
        d.Kick(0);

        Assert.True(d.NeedsReset);
    }

    [Fact]
    public void ABrokenDeviceRaisesAConfigurationInterruptAndWorksAgainAfterAReset()
    {
        Assert.True(d.Start(AllRingFeatures));
        d.Post(0, new Buf(RamBase + RamSize, 8, Write: true));
        d.Kick(0);
        Assert.True(d.NeedsReset);
        Assert.Equal(VirtioFeatures.VIRTIO_MMIO_INT_CONFIG, d.Reg(VirtioMmio.VIRTIO_MMIO_INTERRUPT_STATUS));
        // More work is ignored while broken.
        d.Post(0, new Buf(d.Alloc(8), 8, Write: true));
        d.Kick(0);
        Assert.Equal(0, d.UsedIdx(0));

        Assert.True(d.Start(AllRingFeatures));
        d.Post(0, new Buf(d.Alloc(8), 8, Write: true));
        d.Kick(0);

        Assert.Null(d.Mmio.FailureReason);
        Assert.False(d.NeedsReset);
        Assert.Equal(1, d.UsedIdx(0));
    }

    [Fact]
    public void WithEventIdxTheInterruptWaitsForTheUsedEventTheDriverAsked()
    {
        Assert.True(d.Start(AllRingFeatures));
        // The first decision after a reset always interrupts (QEMU's signalled_used_valid), whatever used_event says.
        d.SetUsedEvent(0, 5);
        d.Post(0, new Buf(d.Alloc(8), 8, Write: true));
        d.Kick(0);
        Assert.True(d.Line);
        d.Ack();
        // "Interrupt me when you have used the entry at index 2" (the third).
        d.SetUsedEvent(0, 2);
        d.Post(0, new Buf(d.Alloc(8), 8, Write: true));
        d.Kick(0);
        Assert.Equal(2, d.UsedIdx(0));
        Assert.False(d.Line);

        d.Post(0, new Buf(d.Alloc(8), 8, Write: true));
        d.Kick(0);

        Assert.True(d.Line);
        Assert.Equal(2, d.Raises);
    }

    [Fact]
    public void WithEventIdxTheDevicePublishesAvailEventSoTheNextBufferIsNotified()
    {
        Assert.True(d.Start(AllRingFeatures));
        for (int i = 0; i < 3; i++) d.Post(0, new Buf(d.Alloc(8), 8, Write: true));

        d.Kick(0);

        Assert.Equal(3, d.UsedIdx(0));
        Assert.Equal(3, d.AvailEvent(0));
    }

    [Fact]
    public void WithoutEventIdxNoInterruptFlagSuppressesTheInterrupt()
    {
        Assert.True(d.Start(Version1));
        d.SetAvailFlags(0, 1);
        d.Post(0, new Buf(d.Alloc(8), 8, Write: true));
        d.Kick(0);
        Assert.Equal(1, d.UsedIdx(0));
        Assert.False(d.Line);

        d.SetAvailFlags(0, 0);
        d.Post(0, new Buf(d.Alloc(8), 8, Write: true));
        d.Kick(0);
        Assert.True(d.Line);
    }

    [Fact]
    public void DeviceWritesToBuffersAndTheUsedRingReachTheDirtyLog()
    {
        Assert.True(d.Start(AllRingFeatures));
        ulong buf = RamBase + 0x60_0000;
        d.Post(0, new Buf(buf, 4096 + 16, Write: true));
        d.Ram.StartDirtyLog();

        d.Kick(0);

        ulong[] dirty = d.Ram.SwapDirtyLog(new ulong[d.Ram.DirtyWords]);
        bool Dirty(ulong gpa) => (dirty[(gpa - RamBase) / MemoryRegion.PageSize / 64] & (1UL << (int)((gpa - RamBase) / MemoryRegion.PageSize))) != 0;
        Assert.True(Dirty(buf));
        Assert.True(Dirty(buf + 4096)); // the buffer's second page
        Assert.True(Dirty(Used(0)));
        Assert.False(Dirty(Avail(0))); // the device only reads the available ring
        Assert.Equal(3, GuestRam.CountPages(dirty));
    }

    [Fact]
    public void PauseStopsServingAndResumeServesWhatWasNotified()
    {
        Assert.True(d.Start(AllRingFeatures));
        d.Mmio.Pause();
        d.Post(0, new Buf(d.Alloc(8), 8, Write: true));
        d.Kick(0);
        Assert.Equal(0, d.UsedIdx(0));

        d.Mmio.Resume();

        Assert.Equal(1, d.UsedIdx(0));
    }

    [Fact]
    public void QueuesAreNotServedBeforeDriverOk()
    {
        d.SetReg(VirtioMmio.VIRTIO_MMIO_STATUS, VirtioFeatures.ACKNOWLEDGE | VirtioFeatures.DRIVER);
        d.SetReg(VirtioMmio.VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        d.SetReg(VirtioMmio.VIRTIO_MMIO_DRIVER_FEATURES, 1);
        d.SetReg(VirtioMmio.VIRTIO_MMIO_STATUS, VirtioFeatures.ACKNOWLEDGE | VirtioFeatures.DRIVER | VirtioFeatures.FEATURES_OK);
        d.SetUpQueue(0, 16);
        d.Post(0, new Buf(d.Alloc(8), 8, Write: true));
        d.Kick(0);
        Assert.Equal(0, d.UsedIdx(0));

        d.SetReg(VirtioMmio.VIRTIO_MMIO_STATUS, VirtioFeatures.ACKNOWLEDGE | VirtioFeatures.DRIVER | VirtioFeatures.FEATURES_OK | VirtioFeatures.DRIVER_OK);

        Assert.Equal(1, d.UsedIdx(0));
    }
}
