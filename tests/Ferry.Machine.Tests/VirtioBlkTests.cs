using System.Buffers.Binary;
using Ferry.Linux;
using Ferry.Machine.Board;
using Ferry.Machine.Memory;
using Ferry.Machine.Virtio;
using static Ferry.Machine.Tests.VirtioDriverForTests;
using static Ferry.Machine.Virtio.VirtioBlk;

namespace Ferry.Machine.Tests;

/// <summary>virtio-blk on a temporary raw image, driven through the transport as Linux's driver would.</summary>
public sealed class VirtioBlkTests : IDisposable
{
    private const int Sectors = 64;
    private readonly string dir = Directory.CreateTempSubdirectory("ferry-blk-").FullName;
    private readonly string image;
    private readonly byte[] content = new byte[Sectors * SectorSize];
    private readonly List<VirtioDriverForTests> drivers = [];

    public VirtioBlkTests()
    {
        image = Path.Combine(dir, "disk.img");
        for (int i = 0; i < content.Length; i++) content[i] = (byte)(i * 7 + i / SectorSize);
        File.WriteAllBytes(image, content);
    }

    public void Dispose()
    {
        foreach (VirtioDriverForTests d in drivers) d.Dispose();
        Directory.Delete(dir, recursive: true);
    }

    private VirtioDriverForTests Start(bool readOnly = false, string? serial = null, ulong? features = null)
    {
        var d = new VirtioDriverForTests(new VirtioBlk(image, readOnly, serial));
        drivers.Add(d);
        Assert.True(d.Start(features ?? AllRingFeatures | (readOnly ? VirtioFeatures.Bit(VIRTIO_BLK_F_RO) : 0)));
        return d;
    }

    private static ulong Header(VirtioDriverForTests d, uint type, ulong sector)
    {
        var h = new byte[16];
        BinaryPrimitives.WriteUInt32LittleEndian(h, type);
        BinaryPrimitives.WriteUInt64LittleEndian(h.AsSpan(8), sector);
        return d.Put(h);
    }

    /// <summary>Post header, <paramref name="data"/>, status byte; kick; wait for the worker; return the status.</summary>
    private static byte Submit(VirtioDriverForTests d, uint type, ulong sector, params Buf[] data)
    {
        ulong status = d.Alloc(1, fill: 0xff);
        int before = d.UsedIdx(0);
        d.Post(0, [new Buf(Header(d, type, sector), 16), .. data, new Buf(status, 1, Write: true)]);
        d.Kick(0);
        d.WaitUsed(0, before + 1);
        return d.Get(status, 1)[0];
    }

    /// <summary>
    /// The image's bytes once the device is disposed. .NET takes a shared flock to read a file, and a child process
    /// forked by another test in this process (QEMU, a VM process) holds the device's descriptor, and so its exclusive
    /// lock, until it execs: retry over that moment rather than fail on it.
    /// </summary>
    private byte[] ReadImage()
    {
        for (int attempt = 0; ; attempt++)
        {
            try
            {
                return File.ReadAllBytes(image);
            }
            catch (IOException) when (attempt < 100)
            {
                Thread.Sleep(20);
            }
        }
    }

    [Fact]
    public void ReadingSectorsCopiesTheImageIntoScatteredGuestBuffers()
    {
        VirtioDriverForTests d = Start();
        ulong a = d.Alloc(512), b = d.Alloc(1024);

        byte status = Submit(d, VIRTIO_BLK_T_IN, 2, new Buf(a, 512, Write: true), new Buf(b, 1024, Write: true));

        Assert.Equal(VIRTIO_BLK_S_OK, status);
        Assert.Equal(content[1024..1536], d.Get(a, 512));
        Assert.Equal(content[1536..2560], d.Get(b, 1024));
        Assert.Equal(1536u + 1, d.UsedElem(0, 0).Length);
        Assert.True(d.Line);
    }

    [Fact]
    public void WritingSectorsReachesTheImageWithTheHeaderSplitAcrossDescriptors()
    {
        VirtioDriverForTests d = Start();
        byte[] data = Enumerable.Range(0, 1024).Select(i => (byte)(255 - i)).ToArray();
        ulong header = Header(d, VIRTIO_BLK_T_OUT, 5);
        ulong status = d.Alloc(1, fill: 0xff);

        d.Post(0, new Buf(header, 8), new Buf(header + 8, 8), new Buf(d.Put(data), 1024), new Buf(status, 1, Write: true));
        d.Kick(0);
        d.WaitUsed(0, 1);

        Assert.Equal(VIRTIO_BLK_S_OK, d.Get(status, 1)[0]);
        Assert.Equal(1u, d.UsedElem(0, 0).Length);
        d.Mmio.Dispose();
        byte[] file = ReadImage();
        Assert.Equal(data, file[(5 * 512)..(7 * 512)]);
        Assert.Equal(content[..(5 * 512)], file[..(5 * 512)]);
    }

    [Fact]
    public void AWriteTheHostRefusesWithAnErrorOtherThanAnIOErrorIsAnIOErrorToTheGuest()
    {
        // A host error .NET reports as something other than IOException (EBADF, EACCES, EPERM: an
        // UnauthorizedAccessException; an NFS mount's expired credentials, a FUSE file system): the guest gets IOERR and
        // the device serves on. Uncaught, it ended the device's worker thread, and with it the process. Here the
        // image's descriptor is swapped for one open for reading only.
        VirtioDriverForTests d = Start();
        int fd = OpenDescriptorOf(image);
        int readOnly = Libc.open("/dev/zero", 0);
        Assert.True(readOnly >= 0);
        try
        {
            Assert.Equal(fd, dup2(readOnly, fd));
        }
        finally
        {
            Libc.close(readOnly);
        }
        Assert.Equal(VIRTIO_BLK_S_IOERR, Submit(d, VIRTIO_BLK_T_OUT, 0, new Buf(d.Alloc(512, fill: 1), 512)));
        // And serves the next request (a read of /dev/zero now: zeros).
        ulong buffer = d.Alloc(512, fill: 0x55);
        Assert.Equal(VIRTIO_BLK_S_OK, Submit(d, VIRTIO_BLK_T_IN, 0, new Buf(buffer, 512, Write: true)));
        Assert.Equal(new byte[512], d.Get(buffer, 512));
        Assert.False(d.NeedsReset);
    }

    /// <summary>This process's descriptor open on <paramref name="path"/> (the device's).</summary>
    private static int OpenDescriptorOf(string path)
    {
        foreach (string link in Directory.EnumerateFileSystemEntries("/proc/self/fd"))
        {
            try
            {
                if (new FileInfo(link).LinkTarget == path) return int.Parse(Path.GetFileName(link), System.Globalization.CultureInfo.InvariantCulture);
            }
            catch (IOException)
            {
                // Closed meanwhile.
            }
        }
        throw new InvalidOperationException($"no descriptor open on {path}");
    }

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    private static extern int dup2(int oldfd, int newfd);

    [Fact]
    public void FlushSucceeds()
    {
        VirtioDriverForTests d = Start();

        Assert.Equal(VIRTIO_BLK_S_OK, Submit(d, VIRTIO_BLK_T_FLUSH, 0));
    }

    [Fact]
    public void ARequestInAnIndirectTableIsServed()
    {
        VirtioDriverForTests d = Start();
        ulong data = d.Alloc(512);
        ulong status = d.Alloc(1, fill: 0xff);
        ulong table = d.Table(new Buf(Header(d, VIRTIO_BLK_T_IN, 1), 16), new Buf(data, 512, Write: true), new Buf(status, 1, Write: true));

        d.Post(0, new Buf(table, 48, Flags: VIRTQ_DESC_F_INDIRECT));
        d.Kick(0);
        d.WaitUsed(0, 1);

        Assert.Equal(VIRTIO_BLK_S_OK, d.Get(status, 1)[0]);
        Assert.Equal(content[512..1024], d.Get(data, 512));
    }

    [Fact]
    public void AReadOnlyImageOffersRoAndAnswersWritesWithAnIoError()
    {
        VirtioDriverForTests d = Start(readOnly: true);
        d.SetReg(VirtioMmio.VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        Assert.NotEqual(0u, d.Reg(VirtioMmio.VIRTIO_MMIO_DEVICE_FEATURES) & (1u << VIRTIO_BLK_F_RO));

        Assert.Equal(VIRTIO_BLK_S_IOERR, Submit(d, VIRTIO_BLK_T_OUT, 0, new Buf(d.Alloc(512, fill: 1), 512)));
        Assert.Equal(VIRTIO_BLK_S_IOERR, Submit(d, VIRTIO_BLK_T_WRITE_ZEROES, 0, new Buf(d.Put(new byte[16]), 16)));
        ulong back = d.Alloc(512);
        Assert.Equal(VIRTIO_BLK_S_OK, Submit(d, VIRTIO_BLK_T_IN, 0, new Buf(back, 512, Write: true)));
        Assert.Equal(content[..512], d.Get(back, 512));
        Assert.Equal(content, ReadImage());
    }

    [Fact]
    public void GetIdReturnsTheSerialPaddedToTwentyBytes()
    {
        VirtioDriverForTests d = Start(serial: "ferry-disk-0");
        ulong id = d.Alloc(IdBytes, fill: 0xee);

        Assert.Equal(VIRTIO_BLK_S_OK, Submit(d, VIRTIO_BLK_T_GET_ID, 0, new Buf(id, IdBytes, Write: true)));

        Assert.Equal("ferry-disk-0"u8.ToArray().Concat(new byte[8]), d.Get(id, IdBytes));
        Assert.Equal((uint)IdBytes + 1, d.UsedElem(0, 0).Length);
    }

    [Theory]
    [InlineData(Sectors, 512)] // first sector past the end
    [InlineData(Sectors - 1, 1024)] // runs past the end
    [InlineData(0, 100)] // not whole sectors
    [InlineData(ulong.MaxValue, 512)] // sector * 512 overflows
    public void AReadOutsideTheDiskIsAnIoError(ulong sector, uint length)
    {
        VirtioDriverForTests d = Start();

        Assert.Equal(VIRTIO_BLK_S_IOERR, Submit(d, VIRTIO_BLK_T_IN, sector, new Buf(d.Alloc((int)length), length, Write: true)));
        Assert.Equal(1u, d.UsedElem(0, 0).Length);
    }

    [Fact]
    public void AnUnknownRequestTypeIsUnsupported()
    {
        VirtioDriverForTests d = Start();

        Assert.Equal(VIRTIO_BLK_S_UNSUPP, Submit(d, 99, 0));
    }

    [Fact]
    public void WriteZeroesMakesTheRangeReadAsZerosAndKeepsTheSize()
    {
        VirtioDriverForTests d = Start();
        var segment = new byte[16];
        BinaryPrimitives.WriteUInt64LittleEndian(segment, 8);
        BinaryPrimitives.WriteUInt32LittleEndian(segment.AsSpan(8), 16);

        Assert.Equal(VIRTIO_BLK_S_OK, Submit(d, VIRTIO_BLK_T_WRITE_ZEROES, 0, new Buf(d.Put(segment), 16)));
        Assert.Equal(VIRTIO_BLK_S_OK, Submit(d, VIRTIO_BLK_T_DISCARD, 0, new Buf(d.Put(segment), 16)));

        d.Mmio.Dispose();
        byte[] file = ReadImage();
        Assert.Equal(content.Length, file.Length);
        Assert.All(file[(8 * 512)..(24 * 512)], b => Assert.Equal(0, b));
        Assert.Equal(content[(24 * 512)..], file[(24 * 512)..]);
    }

    [Fact]
    public void ARequestWithoutAStatusByteNeedsAReset()
    {
        VirtioDriverForTests d = Start();

        d.Post(0, new Buf(Header(d, VIRTIO_BLK_T_IN, 0), 16));
        d.Kick(0);

        VirtioDriverForTests.WaitFor(() => d.NeedsReset, "DEVICE_NEEDS_RESET");
        Assert.Equal(0, d.UsedIdx(0));
    }

    [Fact]
    public void ReadsIntoGuestMemoryReachTheDirtyLog()
    {
        VirtioDriverForTests d = Start();
        ulong buf = RamBase + 0x70_0000;
        d.Ram.StartDirtyLog();

        Assert.Equal(VIRTIO_BLK_S_OK, Submit(d, VIRTIO_BLK_T_IN, 0, new Buf(buf, 8192, Write: true)));

        ulong[] dirty = d.Ram.SwapDirtyLog(new ulong[d.Ram.DirtyWords]);
        int page = (int)((buf - RamBase) / MemoryRegion.PageSize);
        Assert.NotEqual(0UL, dirty[page / 64] & (1UL << page));
        Assert.NotEqual(0UL, dirty[(page + 1) / 64] & (1UL << (page + 1)));
    }

    [Fact]
    public void WritesAndWriteZeroesReachTheDisksOwnDirtyLogAtTheCallersBitOffsetAndItsBlockReads()
    {
        VirtioDriverForTests d = Start();
        var blk = (VirtioBlk)d.Device!;
        blk.StartDirtyLog();
        byte[] data = Enumerable.Range(0, 512).Select(i => (byte)(i ^ 0x5a)).ToArray();
        var segment = new byte[16];
        BinaryPrimitives.WriteUInt64LittleEndian(segment, 40); // block 5
        BinaryPrimitives.WriteUInt32LittleEndian(segment.AsSpan(8), 8);

        Assert.Equal(VIRTIO_BLK_S_OK, Submit(d, VIRTIO_BLK_T_OUT, 9, new Buf(d.Put(data), 512))); // block 1
        Assert.Equal(VIRTIO_BLK_S_OK, Submit(d, VIRTIO_BLK_T_WRITE_ZEROES, 0, new Buf(d.Put(segment), 16)));
        Assert.Equal(VIRTIO_BLK_S_OK, Submit(d, VIRTIO_BLK_T_IN, 16, new Buf(d.Alloc(512), 512, Write: true))); // a read: not logged

        // A migration's bitmap holds RAM's pages first: the disk's blocks start at the bit it is given.
        var bitmap = new ulong[2];
        bitmap[0] = 1; // the caller's own bits are kept
        blk.HarvestDirty(bitmap, 61);
        Assert.Equal(1UL | (1UL << 62), bitmap[0]);
        Assert.Equal(1UL << 2, bitmap[1]);
        unsafe
        {
            // What a migration reads of block 1 is what the device wrote there.
            byte[] block = new byte[VirtioBlk.BlockSize];
            fixed (byte* b = block) blk.ReadBlocks(1, 1, (nint)b);
            Assert.Equal(data, block[512..1024]);
        }

        Array.Clear(bitmap);
        long allocated = GC.GetAllocatedBytesForCurrentThread();
        blk.HarvestDirty(bitmap, 61);
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - allocated);
        Assert.Equal([0UL, 0UL], bitmap);

        blk.StopDirtyLog();
        Assert.Equal(VIRTIO_BLK_S_OK, Submit(d, VIRTIO_BLK_T_OUT, 0, new Buf(d.Put(data), 512)));
        blk.HarvestDirty(bitmap, 0);
        Assert.Equal([0UL, 0UL], bitmap);
    }

    [Fact]
    public void PopulatedBlocksAreTheImagesDataNotItsHoles()
    {
        string sparse = Path.Combine(dir, "sparse.img");
        using (var f = new FileStream(sparse, FileMode.CreateNew))
        {
            f.SetLength(1 << 20);
            f.Position = 3 * 4096;
            f.Write(new byte[4096].Select(_ => (byte)1).ToArray());
            f.Position = 100 * 4096;
            f.Write(new byte[8192].Select(_ => (byte)2).ToArray());
        }
        using var blk = new VirtioBlk(sparse);
        var bitmap = new ulong[8];

        blk.GetPopulatedBlocks(bitmap, 64);

        bool Populated(int block) => (bitmap[(64 + block) / 64] & (1UL << ((64 + block) % 64))) != 0;
        Assert.True(Populated(3));
        Assert.True(Populated(100));
        Assert.True(Populated(101));
        Assert.False(Populated(50));
        Assert.Equal(0UL, bitmap[0]);
        long populated = bitmap.Sum(w => (long)System.Numerics.BitOperations.PopCount(w));
        Assert.True(populated < 64, $"{populated} of 256 blocks reported populated in an image of 3 written blocks");
    }

    [Fact]
    public void AnImageTruncatedUnderTheVmHasItsLostBlocksReadForACopyAndTheirReadFailsNamingItAndTheOffset()
    {
        using var blk = new VirtioBlk(image);
        // As another tool would, behind the device's lock: 8 blocks down to 3.
        HostCommand.Run("truncate", $"-s {3 * BlockSize} {image}", "coreutils' truncate");

        // The 5 blocks gone are no hole: a copy must read them (and fail), not send them as zeros unread.
        var bitmap = new ulong[1];
        blk.GetPopulatedBlocks(bitmap, 0);
        Assert.Equal(0xffUL, bitmap[0]);

        byte[] read = new byte[4 * BlockSize];
        IOException e;
        unsafe
        {
            fixed (byte* b = read)
            {
                nint at = (nint)b;
                blk.ReadBlocks(0, 3, at);
                Assert.Equal(content[..(3 * BlockSize)], read[..(3 * BlockSize)]);
                e = Assert.Throws<IOException>(() => blk.ReadBlocks(1, 4, at));
            }
        }
        Assert.Equal($"{image}: cannot read the disk image at offset {3 * BlockSize}: the file ends at {3 * BlockSize} bytes, " +
            $"{8 * BlockSize} when the VM opened it (truncated under the VM)", e.Message);
    }

    [Fact]
    public void TheLockMovesFromADeviceThatReleasesItToOneOpenedWithItDeferredAndBack()
    {
        using var source = new VirtioBlk(image);
        var destination = new VirtioBlk(image, lockDeferred: true);
        Assert.False(destination.LockHeld);
        Assert.False(destination.AcquireLock(TimeSpan.Zero));

        source.ReleaseLock();
        Assert.False(source.LockHeld);
        Assert.True(destination.AcquireLock(TimeSpan.FromSeconds(2)));
        Assert.Throws<MachineConfigException>(() => new VirtioBlk(image));

        // The source takes it back in the background once the destination lets go.
        Assert.False(source.AcquireLock(TimeSpan.Zero, keepTrying: true));
        destination.Dispose();
        VirtioDriverForTests.WaitFor(() => source.LockHeld, "the source's lock retry");
        Assert.Throws<MachineConfigException>(() => new VirtioBlk(image));
    }

    [Fact]
    public void ASecondVmCannotOpenAnImageInUse()
    {
        using var first = new VirtioBlk(image);

        var e = Assert.Throws<MachineConfigException>(() => new VirtioBlk(image));
        Assert.Equal($"{image}: disk image is in use by another VM (flock LOCK_EX|LOCK_NB would block)", e.Message);
        Assert.Throws<MachineConfigException>(() => new VirtioBlk(image, readOnly: true));
    }

    [Fact]
    public void ReadOnlyUsersShareAnImage()
    {
        using var first = new VirtioBlk(image, readOnly: true);
        using var second = new VirtioBlk(image, readOnly: true);

        Assert.Throws<MachineConfigException>(() => new VirtioBlk(image));
    }

    [Fact]
    public void AMissingImageIsAConfigurationError()
    {
        string missing = Path.Combine(dir, "missing.img");

        var e = Assert.Throws<MachineConfigException>(() => new VirtioBlk(missing));
        Assert.Equal($"{missing}: no such file", e.Message);
    }

    [Fact]
    public void StateLoadRefusesADiskOfAnotherSize()
    {
        using var blk = new VirtioBlk(image);
        byte[] state = blk.SaveState();
        string other = Path.Combine(dir, "other.img");
        File.WriteAllBytes(other, new byte[SectorSize * 8]);
        using var small = new VirtioBlk(other);

        small.LoadState(small.SaveState());
        var e = Assert.Throws<InvalidDataException>(() => small.LoadState(state));
        Assert.Contains("64 sectors", e.Message, StringComparison.Ordinal);
    }
}
