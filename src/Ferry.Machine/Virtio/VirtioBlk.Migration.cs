using System.Runtime.InteropServices;
using Ferry.Linux;

namespace Ferry.Machine.Virtio;

/// <summary>
/// What a live migration needs of the disk: the image's <c>flock</c> handed from the source to the destination when
/// both name one file (shared storage), and, when the image is copied instead, a log of the 4 KiB blocks the guest
/// wrote and reads of the image for the engine to send (<see cref="ReadBlocks"/>).
/// </summary>
/// <remarks>
/// <para><b>Lock handoff</b>: the source calls <see cref="ReleaseLock"/> once its devices are paused (the data is made
/// durable first, so the destination reads what the guest wrote), the destination opens the image with
/// <c>lockDeferred</c> and calls <see cref="AcquireLock"/> before its guest runs; a source whose migration failed takes
/// the lock back with <see cref="AcquireLock"/>(keepTrying), in the background if the destination has not let go yet.</para>
/// <para><b>Dirty log</b>: one bit per 4 KiB block of the image (the engine's page), set by the worker thread after a
/// write, discard or write-zeroes reached the file, so a harvest that clears a bit and then reads the block sees the
/// new data; cleared by <see cref="HarvestDirty"/> word by word with an atomic exchange, so nothing is allocated and no
/// bit set meanwhile is lost.</para>
/// </remarks>
public sealed partial class VirtioBlk
{
    /// <summary>Bytes per block of the dirty log: the engine's page.</summary>
    public const int BlockSize = 4096;

    // Taken while the lock state changes (the migration thread, the background retry timer).
    private readonly Lock lockGate = new();
    // Whether this open file description holds the image's flock.
    private bool lockHeld;
    // Retries AcquireLock(keepTrying) until the lock is held; null when not retrying.
    private Timer? lockRetry;
    // One bit per BlockSize block of the image: written since the last harvest.
    private readonly ulong[] dirtyBlocks;
    private volatile bool logging;

    /// <summary>The image's length in bytes when it was opened (its capacity may round it down to sectors).</summary>
    public ulong ImageBytes => (ulong)imageBytes;

    /// <summary>Blocks of <see cref="BlockSize"/> in the image (the last one may be partial).</summary>
    public ulong ImageBlocks => ((ulong)imageBytes + BlockSize - 1) / BlockSize;

    /// <summary>The path the image was opened from.</summary>
    public string ImagePath => path;

    /// <summary>Whether this device holds the image's <c>flock</c>.</summary>
    public bool LockHeld
    {
        get
        {
            lock (lockGate) return lockHeld;
        }
    }

    /// <summary>
    /// Make the guest's writes durable (<c>fdatasync</c>) and drop the image's lock, so the destination of a migration
    /// over shared storage can take it. Only while the device is paused (no request in flight). Throws
    /// <see cref="IOException"/> if the data cannot be made durable, keeping the lock: the destination must not run
    /// on an image missing the guest's last writes.
    /// </summary>
    public void ReleaseLock()
    {
        lock (lockGate)
        {
            StopLockRetry();
            if (!lockHeld) return;
            int fd = Fd;
            if (!readOnly && fdatasync(fd) != 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                throw new IOException($"{path}: cannot flush the disk image before handing it over", new LinuxException("fdatasync", errno));
            }
            if (flock(fd, LOCK_UN) != 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                throw new IOException($"{path}: cannot unlock the disk image", new LinuxException("flock", errno));
            }
            lockHeld = false;
        }
    }

    /// <summary>
    /// Take the image's lock (after <see cref="ReleaseLock"/> or a deferred open), trying every 10 ms for up to
    /// <paramref name="wait"/>; true once held. With <paramref name="keepTrying"/>, a lock still busy after the wait
    /// is retried every 50 ms in the background until held (or released, or disposed): a source whose migration failed
    /// must run on at once, while the destination that briefly held the lock is still being torn down.
    /// Throws <see cref="IOException"/> for a failure other than the lock being busy.
    /// </summary>
    public bool AcquireLock(TimeSpan wait, bool keepTrying = false)
    {
        long start = Environment.TickCount64;
        while (true)
        {
            lock (lockGate)
            {
                if (TryLockOnce()) return true;
                if (Environment.TickCount64 - start >= (long)wait.TotalMilliseconds)
                {
                    if (keepTrying && lockRetry is null && disposed == 0)
                    {
                        lockRetry = new Timer(static s => ((VirtioBlk)s!).RetryLock(), this, 50, 50);
                    }
                    return false;
                }
            }
            Thread.Sleep(10);
        }
    }

    /// <summary>A one-line reason for a busy lock, naming the image and the call.</summary>
    public string LockBusyMessage => $"{path}: disk image is in use by another VM (flock {(readOnly ? "LOCK_SH" : "LOCK_EX")}|LOCK_NB would block)";

    // Under lockGate.
    private bool TryLockOnce()
    {
        if (lockHeld) return true;
        if (disposed != 0) return false;
        if (flock(Fd, (readOnly ? LOCK_SH : LOCK_EX) | LOCK_NB) == 0)
        {
            lockHeld = true;
            StopLockRetry();
            return true;
        }
        int errno = Marshal.GetLastPInvokeError();
        if (errno == EWOULDBLOCK || errno == Libc.EINTR) return false;
        StopLockRetry();
        throw new IOException($"{path}: cannot lock the disk image", new LinuxException("flock", errno));
    }

    private void RetryLock()
    {
        try
        {
            lock (lockGate)
            {
                if (lockRetry is not null) TryLockOnce();
            }
        }
        catch (IOException)
        {
            // Not a busy lock but a failing one: TryLockOnce stopped retrying; LockHeld stays false for all to see.
        }
        catch (ObjectDisposedException)
        {
            // Disposed between the timer firing and the lock.
        }
    }

    // Under lockGate.
    private void StopLockRetry()
    {
        lockRetry?.Dispose();
        lockRetry = null;
    }

    /// <summary>Start recording the blocks written; every block starts clean.</summary>
    public void StartDirtyLog()
    {
        for (int w = 0; w < dirtyBlocks.Length; w++) Volatile.Write(ref dirtyBlocks[w], 0);
        logging = true;
    }

    /// <summary>Stop recording (idempotent).</summary>
    public void StopDirtyLog() => logging = false;

    /// <summary>
    /// OR the blocks written since the last harvest (or <see cref="StartDirtyLog"/>) into <paramref name="bitmap"/>,
    /// block b as bit <paramref name="firstBit"/> + b (a migration's bitmap holds RAM's pages first), and clear them.
    /// Allocates nothing. One caller at a time.
    /// </summary>
    public void HarvestDirty(Span<ulong> bitmap, ulong firstBit)
    {
        CheckBitmap(bitmap, firstBit);
        for (int w = 0; w < dirtyBlocks.Length; w++)
        {
            if (Volatile.Read(ref dirtyBlocks[w]) == 0) continue;
            OrBits(bitmap, firstBit + ((ulong)w << 6), Interlocked.Exchange(ref dirtyBlocks[w], 0));
        }
    }

    /// <summary>
    /// OR into <paramref name="bitmap"/> (layout as <see cref="HarvestDirty"/>) every block that may hold non-zero bytes:
    /// the file's data extents (<c>SEEK_DATA</c>/<c>SEEK_HOLE</c>). A hole reads as zeros, so a migration sends it as
    /// a zero page without reading it. A file system that cannot tell reports every block. Past the file's end is no
    /// hole: a file shorter than when the VM opened it (truncated under it) has its missing blocks reported, so that a
    /// migration reads them and fails (<see cref="ReadBlocks"/>) instead of copying zeros in place of what is gone.
    /// </summary>
    public void GetPopulatedBlocks(Span<ulong> bitmap, ulong firstBit)
    {
        CheckBitmap(bitmap, firstBit);
        long length = RandomAccess.GetLength(file);
        if (length < imageBytes) SetBits(bitmap, firstBit + (ulong)length / BlockSize, firstBit + ImageBlocks);
        int fd = Fd;
        long at = 0;
        while (at < imageBytes)
        {
            long data = lseek(fd, at, SEEK_DATA);
            if (data < 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                if (errno == ENXIO) return; // no data past `at`
                data = at; // EINVAL: SEEK_DATA unsupported; take the rest as data
            }
            long hole = data < imageBytes ? lseek(fd, data, SEEK_HOLE) : imageBytes;
            if (hole < 0 || hole > imageBytes) hole = imageBytes;
            if (hole <= data) return;
            SetBits(bitmap, firstBit + (ulong)data / BlockSize, firstBit + ((ulong)hole + BlockSize - 1) / BlockSize);
            at = hole;
        }
    }

    /// <summary>
    /// Read blocks [<paramref name="firstBlock"/>, <paramref name="firstBlock"/> + <paramref name="blocks"/>) of the
    /// image into the <paramref name="blocks"/> x <see cref="BlockSize"/> bytes at <paramref name="destination"/>, for a
    /// migration that copies the disk. With <c>pread</c>, not through a mapping of the file: there a bad sector, an NFS
    /// error or a file truncated under the VM is a SIGBUS that kills the process, guest and all, where here it is an
    /// <see cref="IOException"/> naming the image, the offset and the errno, which fails the migration and the guest runs
    /// on. The page cache keeps the reads coherent with the device's own writes. Past the image's length when opened (a
    /// last partial block) reads as zeros; a file that no longer reaches as far (it shrank) throws. Any thread, at the
    /// same time as the device; nothing is allocated.
    /// </summary>
    public unsafe void ReadBlocks(ulong firstBlock, int blocks, nint destination)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(blocks);
        if (firstBlock > ImageBlocks || (ulong)blocks > ImageBlocks - firstBlock)
            throw new ArgumentOutOfRangeException(nameof(blocks), $"blocks {firstBlock}+{blocks} outside an image of {ImageBlocks}");
        long offset = (long)firstBlock * BlockSize;
        long length = (long)blocks * BlockSize;
        long wanted = Math.Clamp(imageBytes - offset, 0, length);
        byte* to = (byte*)destination;
        // Held open for the read: a migration's sender may still read while the machine is being disposed, and a
        // closed descriptor's number may already name another file.
        bool referenced = false;
        file.DangerousAddRef(ref referenced);
        try
        {
            ReadAll(to, offset, wanted);
        }
        finally
        {
            if (referenced) file.DangerousRelease();
        }
        new Span<byte>(to + wanted, (int)(length - wanted)).Clear();
    }

    private unsafe void ReadAll(byte* to, long offset, long wanted)
    {
        for (long done = 0; done < wanted;)
        {
            // SAFETY: the caller passes blocks x BlockSize writable bytes at destination; done < wanted <= that.
            nint n = pread(Fd, to + done, (nuint)(wanted - done), offset + done);
            if (n > 0)
            {
                done += n;
                continue;
            }
            int errno = n == 0 ? 0 : Marshal.GetLastPInvokeError();
            if (errno == Libc.EINTR) continue;
            long at = offset + done;
            if (errno != 0)
            {
                throw new IOException($"{path}: cannot read the disk image at offset {at}: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})",
                    new LinuxException("pread", errno));
            }
            throw new IOException($"{path}: cannot read the disk image at offset {at}: the file ends at {RandomAccess.GetLength(file)} bytes, " +
                $"{imageBytes} when the VM opened it (truncated under the VM)");
        }
    }

    // After the worker has stopped.
    private void DisposeMigration()
    {
        lock (lockGate) StopLockRetry();
    }

    private void CheckBitmap(Span<ulong> bitmap, ulong firstBit)
    {
        if ((ulong)bitmap.Length * 64 < firstBit + ImageBlocks)
        {
            throw new ArgumentException($"bitmap of {bitmap.Length} words cannot hold {ImageBlocks} blocks from bit {firstBit}", nameof(bitmap));
        }
    }

    /// <summary>Log the blocks of [offset, offset + length) as written, if logging.</summary>
    private void MarkWritten(ulong offset, ulong length)
    {
        if (!logging || length == 0 || offset >= (ulong)imageBytes) return;
        ulong first = offset / BlockSize;
        ulong end = Math.Min(ImageBlocks, (offset + length + BlockSize - 1) / BlockSize);
        for (ulong b = first; b < end;)
        {
            int w = (int)(b >> 6);
            int lo = (int)(b & 63);
            int n = (int)Math.Min(64 - (ulong)lo, end - b);
            ulong mask = (n == 64 ? ulong.MaxValue : ((1UL << n) - 1)) << lo;
            // Skip the atomic when already set: a hot block rewritten within a round changes nothing.
            if ((Volatile.Read(ref dirtyBlocks[w]) & mask) != mask) Interlocked.Or(ref dirtyBlocks[w], mask);
            b += (ulong)n;
        }
    }

    /// <summary>OR the 64 bits of <paramref name="bits"/> into <paramref name="target"/> from bit <paramref name="at"/>.</summary>
    private static void OrBits(Span<ulong> target, ulong at, ulong bits)
    {
        int w = (int)(at >> 6);
        int shift = (int)(at & 63);
        target[w] |= bits << shift;
        if (shift != 0 && (bits >> (64 - shift)) != 0) target[w + 1] |= bits >> (64 - shift);
    }

    /// <summary>Set bits [start, end) of <paramref name="target"/>.</summary>
    private static void SetBits(Span<ulong> target, ulong start, ulong end)
    {
        for (ulong b = start; b < end;)
        {
            int lo = (int)(b & 63);
            int n = (int)Math.Min(64 - (ulong)lo, end - b);
            target[(int)(b >> 6)] |= (n == 64 ? ulong.MaxValue : ((1UL << n) - 1)) << lo;
            b += (ulong)n;
        }
    }

    private int Fd => file.DangerousGetHandle().ToInt32();

    // <unistd.h>, <errno.h>.
    private const int LOCK_UN = 8;
    private const int SEEK_DATA = 3, SEEK_HOLE = 4;
    private const int ENXIO = 6;

    [LibraryImport("libc", SetLastError = true)]
    private static partial long lseek(int fd, long offset, int whence);

    [LibraryImport("libc", SetLastError = true)]
    private static unsafe partial nint pread(int fd, void* buf, nuint count, long offset);
}
