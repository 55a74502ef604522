using System.Globalization;
using System.Runtime.InteropServices;
using Ferry.Machine.Board;
using Ferry.Machine.Virtio;

namespace Ferry.Machine.Tests;

/// <summary>
/// The destination's image while a migration copies a disk into it, on file systems that run out of room: found when
/// the copy begins (before the source moves anything) where the file system knows, and at the switchover's flush where
/// only the device does.
/// </summary>
public sealed class DiskImageCopyTests : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("ferry-diskcopy-").FullName;

    public void Dispose() => Directory.Delete(dir, recursive: true);

    [Fact]
    public void TheCopyReservesItsWholeImageWhenItBegins()
    {
        string path = Path.Combine(dir, "copy.img");
        File.WriteAllBytes(path, new byte[4096]);
        using var copy = DiskImageCopy.Create(path, 8UL << 20);
        Assert.Equal(8L << 20, new FileInfo(path).Length);
        // Allocated, not merely sized: no store into the mapping can find the file system full any more.
        string[] stat = HostCommand.Run("stat", $"-c \"%b %B\" {path}", "coreutils").Split(' ');
        long allocated = long.Parse(stat[0], CultureInfo.InvariantCulture) * long.Parse(stat[1], CultureInfo.InvariantCulture);
        Assert.True(allocated >= 8L << 20, $"{allocated} bytes allocated");
        // And it still reads as zeros, as the engine assumes of fresh memory.
        byte[] head = new byte[4096];
        Marshal.Copy(copy.Address, head, 0, head.Length);
        Assert.All(head, b => Assert.Equal(0, b));
    }

    [Fact]
    public void ACopyLargerThanItsFileSystemHasRoomForIsRefusedWhenItBegins()
    {
        using var fs = SmallFilesystem.Tmpfs(4L << 20);
        string path = Path.Combine(fs.Path, "copy.img");
        File.WriteAllBytes(path, new byte[4096]);
        // Without the reservation the copy began, and the first page past the room failed the receive with EFAULT
        // (a store by readv) or killed the destination with SIGBUS (a store by a copy).
        var e = Assert.Throws<MachineConfigException>(() => DiskImageCopy.Create(path, 16UL << 20));
        Assert.Contains("no room for the copied disk image (16 MiB)", e.Message, StringComparison.Ordinal);
        Assert.Contains(path, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void AnImageIsMarkedIncompleteFromTheCopysBeginningUntilItsCommit()
    {
        string path = Path.Combine(dir, "copy.img");
        File.WriteAllBytes(path, new byte[4096]);
        string marker = DiskImageCopy.IncompleteMarker(path);
        using (var copy = DiskImageCopy.Create(path, 8UL << 20))
        {
            Assert.True(File.Exists(marker));
            // Half-written, full length: a device that would boot it is refused, saying why.
            var e = Assert.Throws<MachineConfigException>(() => new VirtioBlk(path));
            Assert.Contains("an incomplete copy", e.Message, StringComparison.Ordinal);
            Assert.Contains(marker, e.Message, StringComparison.Ordinal);
            // The migration's own board is built on it meanwhile.
            using (new VirtioBlk(path, lockDeferred: true, copiedBy: copy))
            {
            }
            copy.Complete();
            Assert.False(File.Exists(marker));
        }
        using var disk = new VirtioBlk(path);
        Assert.Equal(8UL << 20 >> 9, disk.Capacity);
    }

    [Fact]
    public void NoOtherVmCanTakeTheImageBetweenTheCopyAndTheDeviceThatRunsOnIt()
    {
        string path = Path.Combine(dir, "copy.img");
        File.WriteAllBytes(path, new byte[4096]);
        var copy = DiskImageCopy.Create(path, 8UL << 20);
        using var device = new VirtioBlk(path, lockDeferred: true, copiedBy: copy);
        try
        {
            AssertLockedAgainstAnotherVm();
            copy.Flush();
            // The handoff: the device's lock is the copy's, found held at once (a copy that let go of it for the
            // device to take left the image free for any VM that opened it in between).
            Assert.True(device.AcquireLock(TimeSpan.Zero));
            AssertLockedAgainstAnotherVm();
            copy.Complete();
        }
        finally
        {
            copy.Dispose();
        }
        // The copy is closed, the guest's device runs on the image and still holds it.
        Assert.True(device.LockHeld);
        AssertLockedAgainstAnotherVm();
        device.Dispose();
        using (new VirtioBlk(path))
        {
        }

        // Another VM's open of the image, as a device makes it (the marker of an incomplete copy aside).
        void AssertLockedAgainstAnotherVm()
        {
            var e = Assert.Throws<MachineConfigException>(() => VirtioBlk.Open(path, readOnly: false, lockDeferred: false).Dispose());
            Assert.Contains("in use by another VM", e.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void ACopyThatEndsWithoutItsCommitLeavesTheImageMarked()
    {
        string path = Path.Combine(dir, "copy.img");
        File.WriteAllBytes(path, new byte[4096]);
        using (DiskImageCopy.Create(path, 8UL << 20))
        {
        }
        Assert.True(File.Exists(DiskImageCopy.IncompleteMarker(path)));
        Assert.Throws<MachineConfigException>(() => new VirtioBlk(path));
        // A new copy into it is allowed (the marker is its own again), and its commit clears it.
        using (var again = DiskImageCopy.Create(path, 8UL << 20)) again.Complete();
        using var disk = new VirtioBlk(path);
    }

    [Fact]
    public void ACopyRefusedForRoomLeavesTheImageThatWasThereAsItWas()
    {
        // An operator's image at the destination path, and a copy that cannot fit even once it is emptied: the refusal
        // must not have emptied it first.
        using var fs = SmallFilesystem.Tmpfs(8L << 20);
        string path = Path.Combine(fs.Path, "copy.img");
        byte[] before = new byte[2 << 20];
        new Random(11).NextBytes(before);
        File.WriteAllBytes(path, before);
        var e = Assert.Throws<MachineConfigException>(() => DiskImageCopy.Create(path, 64UL << 20));
        Assert.Contains("no room for the copied disk image (64 MiB)", e.Message, StringComparison.Ordinal);
        Assert.Equal(before, File.ReadAllBytes(path));
        Assert.False(File.Exists(DiskImageCopy.IncompleteMarker(path)));
    }

    [Fact]
    public void AWriteBackErrorABackgroundSyncMetIsReportedByTheSwitchoversFlush()
    {
        // The file system grants the room; its device cannot write it. The kernel reports such an error to one fdatasync
        // per open file: the one the background sync makes. The switchover's own would succeed.
        using var fs = SmallFilesystem.Ext4OnFullDevice(apparentBytes: 64L << 20, deviceBytes: 6L << 20);
        string path = Path.Combine(fs.Path, "copy.img");
        File.WriteAllBytes(path, new byte[4096]);
        using var copy = DiskImageCopy.Create(path, 32UL << 20);
        byte[] data = new byte[1 << 20];
        new Random(7).NextBytes(data);
        for (int mib = 0; mib < 16; mib++) Marshal.Copy(data, 0, copy.Address + (mib << 20), data.Length);

        copy.SyncLanded(throwOnError: false); // as the sync thread calls it: no one to tell there
        // The next landed pass's sync reports it (the migration fails before any pause), and so does the switchover's
        // flush: the error is the copy's, not one sync's.
        var e = Assert.Throws<IOException>(() => copy.SyncLanded());
        // In the kernel's words: the device's ENOSPC (or EIO), which is what the user needs to know.
        Assert.Matches(@"cannot flush the copied disk image: fdatasync failed: .* \(errno (28|5)\)$", e.Message);
        Assert.Same(e, Assert.Throws<IOException>(copy.Flush));
    }
}
