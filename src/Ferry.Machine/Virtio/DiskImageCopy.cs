using System.Runtime.InteropServices;
using Ferry.Linux;
using Ferry.Machine.Board;
using Microsoft.Win32.SafeHandles;

namespace Ferry.Machine.Virtio;

/// <summary>
/// The destination's image while a migration copies the source's disk into it, as QEMU's block migration does: the
/// file is locked (no other VM may use an image being overwritten), emptied and grown to the source's size (so it reads
/// as zeros, as the engine assumes of fresh memory, and stays sparse where the source's holes are sent as zeros), and
/// mapped shared and writable for the engine's receive threads to write into.
/// </summary>
/// <remarks>
/// Call order: <see cref="Create"/> → the board's <see cref="VirtioBlk"/> built on <see cref="ShareFile"/> → pages land
/// in <see cref="Address"/> (with <see cref="SyncLanded"/> now and then) → <see cref="Flush"/> once every page has
/// landed → <see cref="Complete"/> and <see cref="Dispose"/> when the migration commits. The device shares this open
/// file, and with it the lock: the image is never unlocked between the copy and the guest that runs on it. The page
/// cache keeps the mapping and the device's <c>pread</c>/<c>pwrite</c> coherent, so nothing is copied at the
/// switchover.
/// </remarks>
public sealed partial class DiskImageCopy : IDisposable
{
    private readonly string path;
    private readonly SafeFileHandle file;
    private nint address;

    private DiskImageCopy(string path, SafeFileHandle file, nint address, ulong bytes)
    {
        this.path = path;
        this.file = file;
        this.address = address;
        Bytes = bytes;
    }

    /// <summary>Base of the writable mapping (0 after <see cref="Unmap"/>).</summary>
    public nint Address => address;

    /// <summary>The image's new length: the source's.</summary>
    public ulong Bytes { get; }

    /// <summary>
    /// Lock <paramref name="imagePath"/> (LOCK_EX), empty it, grow it to <paramref name="bytes"/> (a positive multiple
    /// of <see cref="VirtioBlk.BlockSize"/>) and map it. Throws <see cref="MachineConfigException"/> with a one-line
    /// reason (missing, not writable, in use by another VM, no room).
    /// </summary>
    public static DiskImageCopy Create(string imagePath, ulong bytes)
    {
        ArgumentNullException.ThrowIfNull(imagePath);
        if (bytes == 0 || bytes % VirtioBlk.BlockSize != 0 || bytes > long.MaxValue)
        {
            throw new ArgumentOutOfRangeException(nameof(bytes), bytes, $"must be a positive multiple of {VirtioBlk.BlockSize}");
        }
        SafeFileHandle file = VirtioBlk.Open(imagePath, readOnly: false, lockDeferred: false);
        try
        {
            int fd = (int)file.DangerousGetHandle();
            // Certainly no room, even with the old image's own blocks given back: refused before it is emptied, so a
            // refusal loses nothing. (Its blocks counted at its length: a sparse old image may still leave too little
            // room, which the reservation below finds, after the emptying.)
            long free = FreeBytes(imagePath);
            long old = RandomAccess.GetLength(file);
            if (free >= 0 && (ulong)free + (ulong)old < bytes)
                throw new MachineConfigException($"{imagePath}: no room for the copied disk image ({bytes >> 20} MiB): {free >> 20} MiB free");
            // From the emptying on the image is no disk until the migration commits: say so beside it, durably, before.
            MarkIncomplete(imagePath);
            // Empty first: growing keeps old blocks, which would break "reads as zeros until written".
            if (ftruncate(fd, 0) != 0 || ftruncate(fd, (long)bytes) != 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                throw new MachineConfigException($"{imagePath}: cannot resize the disk image to {bytes} bytes", new LinuxException("ftruncate", errno));
            }
            // Reserve the room now: stores into a shared mapping of a file its file system cannot extend fail as
            // EFAULT in a receive's readv and as SIGBUS in a copy (a full disk found halfway through the migration,
            // with a cryptic error or a crashed destination). Refused here, the source has moved nothing yet. A file
            // system without fallocate (EOPNOTSUPP) gets the image sparse, as before. The price: the copy is not
            // sparse where the source's image is (the guest's discards punch holes again afterwards).
            if (VirtioBlk.fallocate(fd, 0, 0, (long)bytes) != 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                if (errno != EOPNOTSUPP)
                {
                    var cause = new LinuxException("fallocate", errno);
                    string why = errno == ENOSPC ? $"no room for the copied disk image ({bytes >> 20} MiB)" : $"cannot reserve room for the copied disk image: {cause.Message}";
                    throw new MachineConfigException($"{imagePath}: {why}", cause);
                }
            }
            nint at = Libc.mmap(0, (nuint)bytes, Libc.PROT_READ | Libc.PROT_WRITE, Libc.MAP_SHARED, fd, 0);
            if (at == Libc.MAP_FAILED)
            {
                int errno = Marshal.GetLastPInvokeError();
                throw new MachineConfigException($"{imagePath}: cannot map the disk image", new LinuxException("mmap", errno));
            }
            return new DiskImageCopy(imagePath, file, at, bytes);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The file beside <paramref name="imagePath"/> that says a migration is copying a disk into it, or did and did not
    /// finish: made before the copy empties the image, removed once the migration committed (<see cref="Complete"/>).
    /// A half-written image is full length and looks like any other; booted, its guest would read a disk that is part
    /// one and part zeros. <see cref="VirtioBlk"/> refuses an image so marked.
    /// </summary>
    public static string IncompleteMarker(string imagePath) => imagePath + ".ferry-incomplete";

    /// <summary>Throw <see cref="MachineConfigException"/> if <paramref name="imagePath"/> is marked as an incomplete copy.</summary>
    public static void RefuseIncomplete(string imagePath)
    {
        string marker = IncompleteMarker(imagePath);
        if (File.Exists(marker))
        {
            throw new MachineConfigException(
                $"{imagePath}: an incomplete copy: a migration that was copying a disk into it did not finish ({marker}); copy it again, or remove the marker if the image is known to be whole");
        }
    }

    private static void MarkIncomplete(string imagePath)
    {
        string marker = IncompleteMarker(imagePath);
        try
        {
            using (var f = new FileStream(marker, FileMode.Create, FileAccess.Write))
            {
                f.Write(System.Text.Encoding.UTF8.GetBytes(
                    $"A Ferry migration is copying a disk into {Path.GetFileName(imagePath)}. Until it commits, the image is not a whole disk; if this file is still here, it never did.\n"));
                f.Flush(flushToDisk: true);
            }
            SyncDirectory(imagePath);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new MachineConfigException($"{imagePath}: cannot mark the image as being copied into ({marker}): {e.Message}", e);
        }
    }

    /// <summary>
    /// The migration committed: the copy is whole and durable (<see cref="Flush"/> came first). Remove the marker; a
    /// failure to is left as it is (the image then stays refused until the operator removes it: the safe side).
    /// </summary>
    public void Complete()
    {
        try
        {
            File.Delete(IncompleteMarker(path));
            SyncDirectory(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
    }

    // The directory entry made or removed beside the image, durably (fsync of the directory).
    private static void SyncDirectory(string imagePath)
    {
        string dir = Path.GetDirectoryName(Path.GetFullPath(imagePath)) ?? "/";
        int fd = Libc.open(dir, 0 /* O_RDONLY */ | Libc.O_CLOEXEC);
        if (fd < 0) return;
        try
        {
            VirtioBlk.fdatasync(fd);
        }
        finally
        {
            Libc.close(fd);
        }
    }

    /// <summary>Bytes an unprivileged writer may still allocate on <paramref name="path"/>'s file system, or -1 if unknown.</summary>
    private static long FreeBytes(string path)
    {
        try
        {
            // statvfs(2) on the path (DriveInfo takes any path on Linux).
            return new DriveInfo(Path.GetFullPath(path)).AvailableFreeSpace;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            return -1;
        }
    }

    // The first error of a background sync, for Flush to report; syncs one at a time, so that the one that reads the
    // kernel's error (reported once per open file) records it before any other sync can return success.
    private IOException? backgroundError;
    private readonly Lock syncGate = new();

    /// <summary>
    /// Make what has landed so far durable (<c>fdatasync</c>: the data and the allocations behind it) while pages still
    /// land, so that <see cref="Flush"/> at the switchover, inside the downtime, has only the last blocks left. Any
    /// thread. A failure is kept for every later call and <see cref="Flush"/> to throw: the kernel reports a write-back
    /// error once per open file, so the switchover's own <c>fdatasync</c> would not see it again. Throws
    /// <see cref="IOException"/> for this sync's failure or an earlier one, unless <paramref name="throwOnError"/> is
    /// false (a background thread, which has no one to tell: the next caller that may throw does).
    /// </summary>
    public void SyncLanded(bool throwOnError = true)
    {
        lock (syncGate)
        {
            if (backgroundError is null && address != 0 && VirtioBlk.fdatasync((int)file.DangerousGetHandle()) != 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                backgroundError = FlushFailed(errno);
            }
            if (throwOnError && backgroundError is { } failed) throw failed;
        }
    }

    /// <summary>
    /// Make the copy durable (<c>fdatasync</c>): the guest's flushes completed on the source's image, and must hold on
    /// this one before the guest runs here. Throws <see cref="IOException"/>, also for a failure of an earlier
    /// <see cref="SyncLanded"/>.
    /// </summary>
    public void Flush()
    {
        lock (syncGate)
        {
            if (backgroundError is { } earlier) throw earlier;
            if (VirtioBlk.fdatasync((int)file.DangerousGetHandle()) != 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                throw FlushFailed(errno);
            }
        }
    }

    private IOException FlushFailed(int errno)
    {
        var cause = new LinuxException("fdatasync", errno);
        return new IOException($"{path}: cannot flush the copied disk image: {cause.Message}", cause);
    }

    /// <summary>The image's path.</summary>
    public string ImagePath => path;

    /// <summary>
    /// A second descriptor of this open file for the board's disk device (<see cref="VirtioBlk"/>), which owns it. It
    /// shares the copy's <c>flock</c>: held while either is open, so no other VM can take the image between the copy
    /// and the guest (a separate open had to be unlocked by the copy and locked again by the device, a window another
    /// VM's open could take). Throws <see cref="IOException"/>.
    /// </summary>
    public SafeFileHandle ShareFile()
    {
        lock (syncGate)
        {
            ObjectDisposedException.ThrowIf(file.IsClosed, this);
            try
            {
                return new SafeFileHandle(Libc.DuplicateCloseOnExec((int)file.DangerousGetHandle()), ownsHandle: true);
            }
            catch (LinuxException e)
            {
                throw new IOException($"{path}: cannot share the copied disk image with its device: {e.Message}", e);
            }
        }
    }

    /// <summary>Unmap the image (no receive thread may be inside it).</summary>
    public void Unmap()
    {
        if (address == 0) return;
        _ = Libc.munmap(address, (nuint)Bytes);
        address = 0;
    }

    /// <summary>Unmap and close (which drops the lock unless the device still shares the file).</summary>
    public void Dispose()
    {
        Unmap();
        // Not under a sync (a page channel's, on a migration that failed): its fd number must not be reused meanwhile.
        lock (syncGate) file.Dispose();
    }

    private const int ENOSPC = 28, EOPNOTSUPP = 95;

    [LibraryImport("libc", SetLastError = true)]
    private static partial int ftruncate(int fd, long length);
}
