using System.Buffers.Binary;
using Ferry.Machine.Virtio;
using static Ferry.Machine.Tests.VirtioDriverForTests;
using static Ferry.Machine.Virtio.VirtioMmio;

namespace Ferry.Machine.Tests;

/// <summary>The virtio-mmio transport's registers, status machine, interrupt line and state section.</summary>
public sealed class VirtioMmioTests : IDisposable
{
    private readonly VirtioDriverForTests d = new(new VirtioRng());

    public void Dispose() => d.Dispose();

    [Fact]
    public void AnEmptySlotReadsTheMagicVersionTwoAndDeviceIdZero()
    {
        using var empty = new VirtioDriverForTests(null);

        Assert.Equal(0x74726976u, empty.Reg(VIRTIO_MMIO_MAGIC_VALUE));
        Assert.Equal(2u, empty.Reg(VIRTIO_MMIO_VERSION));
        Assert.Equal(0u, empty.Reg(VIRTIO_MMIO_DEVICE_ID));
        empty.SetReg(VIRTIO_MMIO_STATUS, 1);
        Assert.Equal(0u, empty.Reg(VIRTIO_MMIO_STATUS));
        Assert.Equal(0u, empty.Reg(VIRTIO_MMIO_QUEUE_NUM_MAX));
    }

    [Fact]
    public void TheRegistersIdentifyAModernDeviceOfferingVersion1AndTheRingFeatures()
    {
        Assert.Equal(MagicValue, d.Reg(VIRTIO_MMIO_MAGIC_VALUE));
        Assert.Equal(2u, d.Reg(VIRTIO_MMIO_VERSION));
        Assert.Equal(VirtioRng.VIRTIO_ID_RNG, d.Reg(VIRTIO_MMIO_DEVICE_ID));
        Assert.Equal(0x554d4551u, d.Reg(VIRTIO_MMIO_VENDOR_ID));
        d.SetReg(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        uint low = d.Reg(VIRTIO_MMIO_DEVICE_FEATURES);
        d.SetReg(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        uint high = d.Reg(VIRTIO_MMIO_DEVICE_FEATURES);
        Assert.Equal(AllRingFeatures, low | ((ulong)high << 32));
        d.SetReg(VIRTIO_MMIO_QUEUE_SEL, 0);
        Assert.Equal(VirtioRng.QueueSize, d.Reg(VIRTIO_MMIO_QUEUE_NUM_MAX));
        d.SetReg(VIRTIO_MMIO_QUEUE_SEL, 1);
        Assert.Equal(0u, d.Reg(VIRTIO_MMIO_QUEUE_NUM_MAX));
    }

    [Fact]
    public void FeaturesOkDoesNotStickWithoutVersion1()
    {
        Assert.False(d.Start(VirtioFeatures.Bit(VirtioFeatures.VIRTIO_RING_F_EVENT_IDX)));
    }

    [Fact]
    public void FeaturesOkDoesNotStickForAFeatureTheDeviceDidNotOffer()
    {
        Assert.False(d.Start(Version1 | VirtioFeatures.Bit(VirtioBlk.VIRTIO_BLK_F_FLUSH)));
        Assert.True(d.Start(Version1));
        Assert.Equal(Version1, d.Mmio.NegotiatedFeatures);
    }

    [Fact]
    public void ARingOutsideRamMakesTheDeviceNeedAReset()
    {
        Assert.True(d.Start(AllRingFeatures));
        d.SetReg(VIRTIO_MMIO_STATUS, 0);
        d.SetReg(VIRTIO_MMIO_STATUS, VirtioFeatures.ACKNOWLEDGE | VirtioFeatures.DRIVER);
        d.SetReg(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        d.SetReg(VIRTIO_MMIO_DRIVER_FEATURES, 1);
        d.SetReg(VIRTIO_MMIO_STATUS, VirtioFeatures.ACKNOWLEDGE | VirtioFeatures.DRIVER | VirtioFeatures.FEATURES_OK);

        d.SetUpQueue(0, 16, desc: RamBase + RamSize - 0x80);

        Assert.True(d.NeedsReset);
        Assert.Equal(0u, d.Reg(VIRTIO_MMIO_QUEUE_READY));
        Assert.Contains("outside RAM", d.Mmio.FailureReason, StringComparison.Ordinal);
    }

    [Fact]
    public void AQueueSizeThatIsNotAPowerOfTwoIsRefused()
    {
        Assert.True(d.Start(AllRingFeatures));
        d.SetReg(VIRTIO_MMIO_STATUS, 0);
        d.SetReg(VIRTIO_MMIO_QUEUE_SEL, 0);
        d.SetReg(VIRTIO_MMIO_QUEUE_NUM, 12);
        d.SetReg(VIRTIO_MMIO_QUEUE_READY, 1);

        Assert.True(d.NeedsReset);
    }

    [Fact]
    public void StatusZeroResetsStatusQueuesFeaturesAndTheInterrupt()
    {
        Assert.True(d.Start(AllRingFeatures));
        d.Post(0, new VirtioDriverForTests.Buf(d.Alloc(16), 16, Write: true));
        d.Kick(0);
        Assert.True(d.Line);

        d.SetReg(VIRTIO_MMIO_STATUS, 0);

        Assert.False(d.Line);
        Assert.Equal(0u, d.Reg(VIRTIO_MMIO_STATUS));
        Assert.Equal(0u, d.Reg(VIRTIO_MMIO_INTERRUPT_STATUS));
        Assert.Equal(0u, d.Reg(VIRTIO_MMIO_QUEUE_READY));
        Assert.Equal(0UL, d.Mmio.NegotiatedFeatures);
    }

    [Fact]
    public void TheLineIsHighWhileInterruptStatusIsNonzeroAndDropsOnAck()
    {
        Assert.True(d.Start(Version1));
        d.Post(0, new VirtioDriverForTests.Buf(d.Alloc(16), 16, Write: true));
        d.Kick(0);

        Assert.Equal(VirtioFeatures.VIRTIO_MMIO_INT_VRING, d.Reg(VIRTIO_MMIO_INTERRUPT_STATUS));
        Assert.True(d.Line);
        d.SetReg(VIRTIO_MMIO_INTERRUPT_ACK, VirtioFeatures.VIRTIO_MMIO_INT_VRING);
        Assert.False(d.Line);
        Assert.Equal(1, d.Raises);
    }

    [Fact]
    public void ConfigurationSpaceReadsLittleEndianAtEveryWidth()
    {
        string path = Path.GetTempFileName();
        try
        {
            File.WriteAllBytes(path, new byte[0x12_3400]); // 0x91a sectors
            using var blk = new VirtioDriverForTests(new VirtioBlk(path));
            Assert.Equal(0x91aUL, blk.Mmio.Read(VIRTIO_MMIO_CONFIG, 8));
            Assert.Equal(0x91aUL, blk.Mmio.Read(VIRTIO_MMIO_CONFIG, 4));
            Assert.Equal(0x1aUL, blk.Mmio.Read(VIRTIO_MMIO_CONFIG, 1));
            Assert.Equal(0x09UL, blk.Mmio.Read(VIRTIO_MMIO_CONFIG + 1, 1));
            Assert.Equal(VirtioBlk.SegMax, blk.Mmio.Read(VIRTIO_MMIO_CONFIG + 12, 4));
            // Beyond the configuration space, and registers read at the wrong width, read zero.
            Assert.Equal(0UL, blk.Mmio.Read(VIRTIO_MMIO_CONFIG + 0x100, 4));
            Assert.Equal(0UL, blk.Mmio.Read(VIRTIO_MMIO_MAGIC_VALUE, 2));
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void SaveAndLoadCarryTheRegistersAndTheQueuePositions()
    {
        Assert.True(d.Start(AllRingFeatures));
        for (int i = 0; i < 3; i++) d.Post(0, new VirtioDriverForTests.Buf(d.Alloc(8), 8, Write: true));
        d.Kick(0);
        Assert.Equal(3, d.UsedIdx(0));
        // A fourth request is made available while the machine is paused, and must be served after the load.
        d.Mmio.Pause();
        d.Post(0, new VirtioDriverForTests.Buf(d.Alloc(8), 8, Write: true));
        d.Kick(0);
        Assert.Equal(3, d.UsedIdx(0));
        byte[] state = d.Mmio.SaveState();

        using var target = new VirtioDriverForTests(new VirtioRng(), d.Ram);
        target.Mmio.LoadState(state);

        Assert.Equal(d.Reg(VIRTIO_MMIO_STATUS), target.Reg(VIRTIO_MMIO_STATUS));
        Assert.Equal(AllRingFeatures, target.Mmio.NegotiatedFeatures);
        Assert.True(target.Line);
        // Served once, from where the source stopped: a lost position would serve all four again (used index 7).
        Assert.Equal(4, d.UsedIdx(0));
        Assert.Equal((3u, 8u), d.UsedElem(0, 3));
    }

    [Fact]
    public void LoadRejectsASectionOfAnotherDeviceTypeOrVersionAndLeavesTheTransportAlone()
    {
        Assert.True(d.Start(AllRingFeatures));
        byte[] state = d.Mmio.SaveState();
        using var empty = new VirtioDriverForTests(null);
        Assert.Throws<InvalidDataException>(() => empty.Mmio.LoadState(state));

        byte[] versioned = (byte[])state.Clone();
        BinaryPrimitives.WriteUInt16LittleEndian(versioned.AsSpan(4), 9);
        using var fresh = new VirtioDriverForTests(new VirtioRng());
        var e = Assert.Throws<InvalidDataException>(() => fresh.Mmio.LoadState(versioned));
        Assert.Contains("version 9", e.Message, StringComparison.Ordinal);
        Assert.Throws<InvalidDataException>(() => fresh.Mmio.LoadState(state.AsSpan(0, state.Length - 1)));
        Assert.Equal(0u, fresh.Reg(VIRTIO_MMIO_STATUS));
    }

    [Fact]
    public void LoadRejectsARingOutsideRam()
    {
        Assert.True(d.Start(AllRingFeatures));
        byte[] state = d.Mmio.SaveState();
        // The queue's descriptor address (after the fixed part and the queue's size and ready byte).
        const int descAt = 4 + 2 + 2 + 4 + 16 + 8 + 12 + 1 + 2 + 2 + 1;
        BinaryPrimitives.WriteUInt64LittleEndian(state.AsSpan(descAt), 0x1000);
        using var fresh = new VirtioDriverForTests(new VirtioRng());

        var e = Assert.Throws<InvalidDataException>(() => fresh.Mmio.LoadState(state));
        Assert.Contains("outside RAM", e.Message, StringComparison.Ordinal);
    }
}
