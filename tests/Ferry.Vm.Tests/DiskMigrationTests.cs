using System.Buffers.Binary;
using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using Ferry.Machine;
using Ferry.Machine.Board;
using Ferry.Machine.Tests;
using Ferry.Machine.Virtio;
using Ferry.Linux;
using Ferry.Migration;
using Microsoft.Win32.SafeHandles;

namespace Ferry.Vm.Tests;

/// <summary>
/// The guest's virtio-blk disk across a live migration of the built-in Linux guest, whose disk writer keeps writing
/// (O_DIRECT | O_DSYNC) while the migration runs and whose <c>diskcheck</c> rereads every block it wrote: on shared
/// storage (one image, the lock moves) and copied block by block into the destination's own image.
/// </summary>
public sealed partial class DiskMigrationTests(ITestOutputHelper output) : IDisposable
{
    private static readonly TimeSpan Boot = TimeSpan.FromSeconds(90);
    private const ulong Memory = 256UL << 20;
    // The writer's region: blocks of the first 16 MiB, 200 a second.
    private const string DiskArgs = "ferry.disk=1 ferry.diskrate=200 ferry.disksize=16M";
    private const ulong WriterRegion = 16UL << 20;
    private const ulong DiskGolden = 0xC2B2AE3D27D4EB4F;
    private readonly string dir = Directory.CreateTempSubdirectory("ferry-vmdisk-").FullName;

    public void Dispose() => Directory.Delete(dir, recursive: true);

    [GeneratedRegex(@"diskcheck ok blocks=(\d+) writes=(\d+)")]
    private static partial Regex DiskCheckOk();

    private string Image(string name, long bytes)
    {
        string path = Path.Combine(dir, name);
        using var f = new FileStream(path, FileMode.CreateNew);
        f.SetLength(bytes);
        return path;
    }

    /// <summary>A new image of <paramref name="bytes"/> random bytes: none of its blocks a hole or zeros, so that every block travels as data.</summary>
    private string RandomImage(string name, long bytes, int seed)
    {
        string path = Image(name, bytes);
        var random = new Random(seed);
        byte[] chunk = new byte[1 << 20];
        using var f = new FileStream(path, FileMode.Open, FileAccess.Write);
        for (long at = 0; at < bytes; at += chunk.Length)
        {
            random.NextBytes(chunk);
            f.Write(chunk);
        }
        return path;
    }

    /// <summary>Boot the guest on <paramref name="disk"/> and wait until its disk writer has written <paramref name="writes"/> blocks.</summary>
    private VirtMachine BootWriting(SerialLog console, string disk, long writes, out (long Blocks, long Writes) written)
    {
        VirtMachine m = LinuxGuest.Boot(console, $"console=ttyS0 ferry.heartbeat=100 ferry.ws=8M ferry.rate=2000 {DiskArgs}", 2, Memory, disk);
        try
        {
            console.WaitFor("disk: /dev/vda", Boot);
            written = WaitForWrites(m, console, writes);
            return m;
        }
        catch
        {
            m.Dispose();
            throw;
        }
    }

    /// <summary>Type diskcheck and return (blocks checked, writes so far); fails on anything but ok.</summary>
    private (long Blocks, long Writes) DiskCheck(VirtMachine m, SerialLog console)
    {
        int from = console.Text.Length;
        LinuxGuest.Type(m, "diskcheck");
        int at = console.WaitFor("diskcheck ", TimeSpan.FromSeconds(60), from);
        int end = console.WaitFor("\n", TimeSpan.FromSeconds(5), at);
        string line = console.Text[(at - "diskcheck ".Length)..end].Trim();
        output.WriteLine(line);
        Match ok = DiskCheckOk().Match(line);
        Assert.True(ok.Success, line);
        return (long.Parse(ok.Groups[1].Value, CultureInfo.InvariantCulture), long.Parse(ok.Groups[2].Value, CultureInfo.InvariantCulture));
    }

    /// <summary>Wait until the guest has written at least <paramref name="writes"/> blocks (diskcheck, repeated).</summary>
    private (long Blocks, long Writes) WaitForWrites(VirtMachine m, SerialLog console, long writes)
    {
        var sw = Stopwatch.StartNew();
        while (true)
        {
            var c = DiskCheck(m, console);
            if (c.Writes >= writes) return c;
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(60), $"the disk writer wrote {c.Writes} blocks in a minute, {writes} expected");
            Thread.Sleep(200);
        }
    }

    private LoopbackVmMigration.Result Migrate(VirtMachine source, MachineOptions destination, bool copyDisk, bool verify = false)
    {
        var factory = new VirtMachineTargetFactory { Options = destination };
        LoopbackVmMigration.Result r = LoopbackVmMigration.Run(source, factory,
            new MigrationOptions { Timeout = TimeSpan.FromSeconds(120), Verify = verify }, copyDisk);
        foreach (string line in LoopbackVmMigration.Describe(r)) output.WriteLine(line);
        return r;
    }

    private static void AssertLockedByAnother(string image)
    {
        var e = Assert.Throws<MachineConfigException>(() => new VirtioBlk(image).Dispose());
        Assert.Contains("in use by another VM", e.Message, StringComparison.Ordinal);
    }

    private static void WaitUntil(Func<bool> condition, string what)
    {
        var sw = Stopwatch.StartNew();
        while (!condition())
        {
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(30), what);
            Thread.Sleep(20);
        }
    }

    [Fact]
    public void OnSharedStorageTheDiskStaysAndItsLockMovesWithTheGuest()
    {
        string image = Image("shared.img", 64L << 20);
        var sourceConsole = new SerialLog();
        var destinationConsole = new SerialLog();
        using VirtMachine source = BootWriting(sourceConsole, image, 20, out var before);
        AssertLockedByAnother(image);

        LoopbackVmMigration.Result r = Migrate(source, new MachineOptions { DiskPath = image, SerialOut = destinationConsole }, copyDisk: false);
        using VirtMachineTarget? destination = r.Destination;
        Assert.Equal(MigrationStatus.Completed, r.Statistics.Status);
        VirtMachine arrived = Assert.IsType<VirtMachine>(destination?.Machine);

        // The lock went with the guest: the destination holds it, the source (paused for good) does not, a third VM
        // cannot have it.
        Assert.False(source.Disk!.LockHeld);
        Assert.True(arrived.Disk!.LockHeld);
        AssertLockedByAnother(image);

        // Every block the guest wrote, before, during and after the switchover, reads back on the destination, and
        // the writer goes on there.
        var after = DiskCheck(arrived, destinationConsole);
        Assert.True(after.Writes >= before.Writes, $"writes went from {before.Writes} to {after.Writes}");
        WaitForWrites(arrived, destinationConsole, after.Writes + 20);
    }

    [Fact]
    public void AFailedMigrationLeavesTheSharedDiskLockedByTheSourceWhoseWriterGoesOn()
    {
        string image = Image("shared.img", 64L << 20);
        var sourceConsole = new SerialLog();
        var destinationConsole = new SerialLog();
        using VirtMachine source = BootWriting(sourceConsole, image, 20, out var before);

        // The source has a virtio-rng; this destination was given none: refused while loading the state, after the
        // source had dropped its lock.
        LoopbackVmMigration.Result r = Migrate(source, new MachineOptions { DiskPath = image, Rng = false, SerialOut = destinationConsole }, copyDisk: false);
        Assert.Equal(MigrationStatus.Failed, r.Statistics.Status);
        Assert.Contains("virtio-rng on the source, no device here", r.Statistics.Error ?? "", StringComparison.Ordinal);
        Assert.Null(r.Destination);

        Assert.True(r.Source.IsRunning);
        WaitUntil(() => source.Disk!.LockHeld, "the source did not take its disk's lock back");
        AssertLockedByAnother(image);
        var after = WaitForWrites(source, sourceConsole, before.Writes + 20);
        Assert.True(after.Blocks >= before.Blocks);
        Assert.Equal("", destinationConsole.Text);
    }

    [Fact]
    public void ACopiedDiskArrivesByteForByteWhileTheGuestWritesIt()
    {
        const long DiskBytes = 256L << 20;
        // The source's image full of random data, the destination's something else: after the move the destination
        // must hold the source's, not a mix.
        string sourceImage = RandomImage("source.img", DiskBytes, 42);
        string destinationImage = Image("destination.img", 32L << 20);
        byte[] chunk = new byte[1 << 20];
        Array.Fill(chunk, (byte)0xee);
        using (var f = new FileStream(destinationImage, FileMode.Open, FileAccess.Write))
        {
            for (int i = 0; i < 32; i++) f.Write(chunk);
        }

        var sourceConsole = new SerialLog();
        var destinationConsole = new SerialLog();
        using VirtMachine source = BootWriting(sourceConsole, sourceImage, 20, out var before);

        LoopbackVmMigration.Result r = Migrate(source, new MachineOptions { DiskPath = destinationImage, SerialOut = destinationConsole }, copyDisk: true, verify: true);
        using VirtMachineTarget? destination = r.Destination;
        Assert.Equal(MigrationStatus.Completed, r.Statistics.Status);
        VirtMachine arrived = Assert.IsType<VirtMachine>(destination?.Machine);
        // The digests cover the disk region too.
        Assert.True(r.Statistics.Verify?.Match, "source and destination digests differ");
        Assert.True(r.Statistics.Pages.Normal >= DiskBytes / 4096, $"{r.Statistics.Pages.Normal} pages sent with data, the image alone has {DiskBytes / 4096}");
        // The copy kept its own lock; the source's image is still the source's (paused for good, never handed over).
        Assert.True(arrived.Disk!.LockHeld);
        Assert.True(source.Disk!.LockHeld);
        AssertLockedByAnother(destinationImage);
        // Whole since the commit: no longer marked as a copy in progress.
        Assert.False(File.Exists(DiskImageCopy.IncompleteMarker(destinationImage)));

        var after = DiskCheck(arrived, destinationConsole);
        Assert.True(after.Writes > before.Writes, $"the guest wrote nothing during the migration ({before.Writes} then {after.Writes})");

        // Compare the images with the destination stopped. Both hold the switchover's image, except blocks the guest
        // wrote on the destination since: those must be its pattern at a later generation than the source's.
        arrived.Pause();
        arrived.PauseDevices();
        Assert.Equal(DiskBytes, new FileInfo(destinationImage).Length);
        int rewritten = CompareImages(sourceImage, destinationImage);
        output.WriteLine($"images equal but for {rewritten} blocks the guest rewrote on the destination");
        Assert.True(rewritten <= after.Writes - before.Writes + 1000, $"{rewritten} blocks differ");
    }

    /// <summary>Blocks that differ (each checked to be the guest's rewrite); every other byte is equal.</summary>
    private static int CompareImages(string sourceImage, string destinationImage)
    {
        using SafeFileHandle a = OpenWithoutLock(sourceImage);
        using SafeFileHandle b = OpenWithoutLock(destinationImage);
        byte[] x = new byte[1 << 20], y = new byte[1 << 20];
        int differing = 0;
        long length = RandomAccess.GetLength(a);
        for (long at = 0; at < length; at += x.Length)
        {
            Assert.Equal(x.Length, RandomAccess.Read(a, x, at));
            Assert.Equal(y.Length, RandomAccess.Read(b, y, at));
            for (int o = 0; o < x.Length; o += 4096)
            {
                if (x.AsSpan(o, 4096).SequenceEqual(y.AsSpan(o, 4096))) continue;
                ulong block = (ulong)(at + o) / 4096;
                Assert.True((ulong)(at + o) < WriterRegion, $"block {block}, outside the writer's region, differs");
                uint source = Generation(x.AsSpan(o, 4096), block);
                uint dest = Generation(y.AsSpan(o, 4096), block);
                Assert.True(dest != 0 && dest > source, $"block {block}: generation {dest} on the destination, {source} on the source");
                differing++;
            }
        }
        return differing;
    }

    /// <summary>
    /// Open for reading without .NET's own advisory lock (FileShare is emulated with flock on Linux, which the disk's
    /// LOCK_EX refuses).
    /// </summary>
    private static SafeFileHandle OpenWithoutLock(string path)
    {
        int fd = Libc.open(path, Libc.O_CLOEXEC);
        Assert.True(fd >= 0, $"open {path}");
        return new SafeFileHandle(fd, ownsHandle: true);
    }

    /// <summary>The generation block <paramref name="block"/> holds in the guest's pattern, or 0 if it holds something else.</summary>
    private static uint Generation(ReadOnlySpan<byte> data, ulong block)
    {
        ulong first = BinaryPrimitives.ReadUInt64LittleEndian(data);
        if (first >> 32 != block) return 0;
        uint g = (uint)first;
        for (int j = 0; j < 512; j++)
        {
            if (BinaryPrimitives.ReadUInt64LittleEndian(data[(8 * j)..]) != ((block << 32) | g) + (ulong)j * DiskGolden) return 0;
        }
        return g;
    }

    [Fact]
    public void ACopyIntoADestinationWithoutAWritableDiskOrRoomForItIsRefusedAndTheSourceRunsOn()
    {
        string image = Image("source.img", 64L << 20);
        string readOnly = Image("readonly.img", 64L << 20);
        var sourceConsole = new SerialLog();
        using VirtMachine source = BootWriting(sourceConsole, image, 10, out var before);

        LoopbackVmMigration.Result none = Migrate(source, new MachineOptions { SerialOut = new SerialLog() }, copyDisk: true);
        Assert.Equal(MigrationStatus.Failed, none.Statistics.Status);
        Assert.Contains("no --disk to receive it", none.Statistics.Error ?? "", StringComparison.Ordinal);
        Assert.Null(none.Destination);
        Assert.True(none.Source.IsRunning);

        LoopbackVmMigration.Result ro = Migrate(source, new MachineOptions { DiskPath = readOnly, DiskReadOnly = true, SerialOut = new SerialLog() }, copyDisk: true);
        Assert.Equal(MigrationStatus.Failed, ro.Statistics.Status);
        Assert.Contains("read-only here", ro.Statistics.Error ?? "", StringComparison.Ordinal);
        Assert.True(new FileInfo(readOnly).Length == 64L << 20, "a refused destination changed its image");

        // A destination whose file system has no room for the copy: refused at the handshake, saying so, before any
        // block moved (it found out halfway before, with a receive failing on EFAULT: "Bad address").
        using (var small = SmallFilesystem.Tmpfs(16L << 20))
        {
            string full = Path.Combine(small.Path, "full.img");
            File.WriteAllBytes(full, new byte[4096]);
            LoopbackVmMigration.Result noRoom = Migrate(source, new MachineOptions { DiskPath = full, SerialOut = new SerialLog() }, copyDisk: true);
            Assert.Equal(MigrationStatus.Failed, noRoom.Statistics.Status);
            Assert.Contains($"peer sent Refuse: cannot receive the source's disk: {full}: no room for the copied disk image (64 MiB)",
                noRoom.Statistics.Error ?? "", StringComparison.Ordinal);
            Assert.Equal(0, noRoom.Statistics.Pages.Normal);
            Assert.Null(noRoom.Destination);
            Assert.True(noRoom.Source.IsRunning);
        }

        Assert.True(source.Disk!.LockHeld);
        WaitForWrites(source, sourceConsole, before.Writes + 20);
    }

    [Fact]
    public void ACopyWhoseDestinationDeviceFailsAtWriteBackFailsAtTheFirstPassSayingWhyAndTheSourceRunsOn()
    {
        // Data in every block, so that the copy has 64 MiB to write.
        string image = RandomImage("source.img", 64L << 20, 3);
        var sourceConsole = new SerialLog();
        using VirtMachine source = BootWriting(sourceConsole, image, 10, out var before);

        // The destination's file system grants the room but its device cannot write it: the first pass's sync meets
        // the write-back error, and the migration fails there, in the kernel's words, not after every round.
        using var failing = SmallFilesystem.Ext4OnFullDevice(apparentBytes: 128L << 20, deviceBytes: 12L << 20);
        string full = Path.Combine(failing.Path, "failing.img");
        File.WriteAllBytes(full, new byte[4096]);
        LoopbackVmMigration.Result r = Migrate(source, new MachineOptions { DiskPath = full, SerialOut = new SerialLog() }, copyDisk: true);
        Assert.Equal(MigrationStatus.Failed, r.Statistics.Status);
        Assert.Matches($@"{Regex.Escape(full)}: cannot flush the copied disk image: fdatasync failed: .* \(errno (28|5)\)", r.Statistics.Error ?? "");
        Assert.Empty(r.Statistics.Rounds);
        Assert.Null(r.Destination);
        Assert.True(r.Source.IsRunning);
        Assert.True(source.Disk!.LockHeld);
        WaitForWrites(source, sourceConsole, before.Writes + 20);
        // What the copy left is no disk: marked so, and refused by a VM that would boot it.
        Assert.True(File.Exists(DiskImageCopy.IncompleteMarker(full)));
        var refused = Assert.Throws<MachineConfigException>(() => new VirtMachine(new MachineOptions { DiskPath = full }));
        Assert.Contains("an incomplete copy", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ACopyOfAnImageTruncatedUnderTheVmFailsSayingTheSourcesDiskCannotBeReadAndTheSourceRunsOn()
    {
        const long DiskBytes = 64L << 20;
        string image = RandomImage("source.img", DiskBytes, 7);
        string destinationImage = Image("destination.img", 4096);
        var sourceConsole = new SerialLog();
        using VirtMachine source = BootWriting(sourceConsole, image, 10, out var before);

        // Half the image gone under the running VM, as a tool run on it by mistake would leave it, before the copy's
        // first round reads it. The guest's writer stays in the half that is left. Read through a mapping, the blocks
        // gone were a SIGBUS that killed the whole source process, guest and all.
        HostCommand.Run("truncate", $"-s {DiskBytes / 2} {image}", "coreutils' truncate");
        LoopbackVmMigration.Result r = Migrate(source, new MachineOptions { DiskPath = destinationImage, SerialOut = new SerialLog() }, copyDisk: true);
        Assert.Equal(MigrationStatus.Failed, r.Statistics.Status);
        Assert.Matches($@"^source: {Regex.Escape(image)}: cannot read the disk image at offset \d+: the file ends at {DiskBytes / 2} bytes, " +
            $@"{DiskBytes} when the VM opened it \(truncated under the VM\)$", r.Statistics.Error ?? "");
        Assert.Null(r.Destination);

        // The guest runs on at the source, on its disk (the lock never moved), and goes on writing it.
        Assert.True(r.Source.IsRunning);
        Assert.True(source.Disk!.LockHeld);
        WaitForWrites(source, sourceConsole, before.Writes + 20);
        // What the copy left is no disk: marked so.
        Assert.True(File.Exists(DiskImageCopy.IncompleteMarker(destinationImage)));
    }
}
