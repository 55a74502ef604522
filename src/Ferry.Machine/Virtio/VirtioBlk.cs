using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using Ferry.Linux;
using Ferry.Machine.Board;
using Ferry.Machine.Memory;
using Microsoft.Win32.SafeHandles;

namespace Ferry.Machine.Virtio;

/// <summary>
/// virtio-blk (virtio 1.2 section 5.2, device ID 2) over a raw image file: capacity in 512-byte sectors, read, write,
/// flush (<c>fdatasync</c>), get-id, discard and write-zeroes (<c>fallocate</c> punching a hole, so the range reads as
/// zeros afterwards; where the file system cannot punch, discard does nothing and write-zeroes writes zeros), and
/// read-only images (VIRTIO_BLK_F_RO; writes, discards and write-zeroes answer VIRTIO_BLK_S_IOERR).
/// </summary>
/// <remarks>
/// <para>The image is locked with <c>flock</c> so two VMs cannot use one disk: LOCK_EX for a writable image, LOCK_SH
/// for a read-only one (any number of VMs may share a read-only base, none while one writes it). A live migration
/// over shared storage hands the lock from the source to the destination (<see cref="ReleaseLock"/>,
/// <see cref="AcquireLock"/>, the constructor's <c>lockDeferred</c>); one that copies the image tracks the blocks
/// written (<see cref="StartDirtyLog"/>); see VirtioBlk.Migration.cs.</para>
/// <para>Threading: the notifying hart only wakes the device's worker thread; the worker pops a request, moves the data
/// between the file and guest RAM directly (<c>pread</c>/<c>pwrite</c> on the guest pages, no bounce buffer), pushes
/// it and raises the interrupt, holding the queue's lock for that one request. Requests are served in order, one at a
/// time. Nothing is allocated per request.</para>
/// <para>Guest errors: a request without a 16-byte header or without a status byte cannot be answered and marks the
/// device DEVICE_NEEDS_RESET (as QEMU's "missing headers"); a request outside the disk, not a whole number of sectors,
/// or failing on the host is answered VIRTIO_BLK_S_IOERR; an unknown type VIRTIO_BLK_S_UNSUPP.</para>
/// </remarks>
public sealed partial class VirtioBlk : IVirtioDevice
{
    /// <summary>The block device's ID.</summary>
    public const uint VIRTIO_ID_BLOCK = 2;

    // Feature bits (spec 5.2.3).
    public const int VIRTIO_BLK_F_SIZE_MAX = 1, VIRTIO_BLK_F_SEG_MAX = 2, VIRTIO_BLK_F_RO = 5, VIRTIO_BLK_F_FLUSH = 9,
        VIRTIO_BLK_F_DISCARD = 13, VIRTIO_BLK_F_WRITE_ZEROES = 14;

    // Request types (spec 5.2.6).
    public const uint VIRTIO_BLK_T_IN = 0, VIRTIO_BLK_T_OUT = 1, VIRTIO_BLK_T_FLUSH = 4, VIRTIO_BLK_T_GET_ID = 8,
        VIRTIO_BLK_T_DISCARD = 11, VIRTIO_BLK_T_WRITE_ZEROES = 13;

    // Request status.
    public const byte VIRTIO_BLK_S_OK = 0, VIRTIO_BLK_S_IOERR = 1, VIRTIO_BLK_S_UNSUPP = 2;

    /// <summary>Bytes per sector: the unit of capacity and of request offsets, whatever the image's block size.</summary>
    public const int SectorSize = 512;

    /// <summary>Queue size offered: QEMU's default.</summary>
    public const ushort QueueSize = 256;

    /// <summary>seg_max: data buffers per request; a queue's size minus header and status, as QEMU's seg-max-adjust.</summary>
    public const uint SegMax = QueueSize - 2;

    /// <summary>size_max: bytes per data buffer at most (Linux then splits larger segments).</summary>
    public const uint SizeMax = 1 << 20;

    /// <summary>Sectors one discard or write-zeroes segment may cover (2 GiB), and segments per request.</summary>
    public const uint MaxDiscardSectors = 1 << 22, MaxDiscardSegments = 1;

    /// <summary>Discard granularity in sectors: one 4 KiB file-system block.</summary>
    public const uint DiscardSectorAlignment = 8;

    /// <summary>Bytes of the identity string GET_ID returns (VIRTIO_BLK_ID_BYTES).</summary>
    public const int IdBytes = 20;

    // virtio_blk_config up to write_zeroes_may_unmap and its padding.
    private const int ConfigBytes = 60;
    private const int HeaderSize = 16;
    private const int DiscardSegmentSize = 16;
    private const uint VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1;

    private const uint StateMagic = 0x4b4c4256; // "VBLK"
    private const ushort StateVersion = 1;

    // Zeros for write-zeroes where a hole cannot be punched.
    private static readonly byte[] Zeros = new byte[64 * 1024];

    private readonly string path;
    private readonly SafeFileHandle file;
    private readonly bool readOnly;
    private readonly byte[] config = new byte[ConfigBytes];
    private readonly byte[] id = new byte[IdBytes];
    private readonly Thread worker;
    // Set by Notify, reset by the worker before it looks at the queue (so a notify while it works is not lost).
    private readonly ManualResetEventSlim wake = new(false);
    // Image length in bytes when opened.
    private readonly long imageBytes;
    private volatile bool stopping;
    private int disposed;
    private Virtqueue? queue;
    private DescriptorChain? chain;

    /// <summary>
    /// Open the raw image at <paramref name="imagePath"/> and lock it. Throws <see cref="MachineConfigException"/> with
    /// a one-line reason if it is missing, not accessible, or in use by another VM.
    /// </summary>
    /// <param name="imagePath">A raw disk image; its length rounded down to sectors is the capacity.</param>
    /// <param name="readOnly">Offer VIRTIO_BLK_F_RO and open the file read-only.</param>
    /// <param name="serial">What GET_ID returns (at most 20 bytes of UTF-8); null: an empty id.</param>
    /// <param name="lockDeferred">Open without the lock, for a migration's destination built while the source still
    /// holds it; <see cref="AcquireLock"/> takes it before the guest runs.</param>
    /// <param name="copiedBy">The copy into this image of the migration building this device: the device shares its
    /// open file (<see cref="DiskImageCopy.ShareFile"/>) and with it its lock, which <see cref="AcquireLock"/> then finds
    /// held; its marker of an incomplete copy is expected. Otherwise an image so marked is refused.</param>
    public VirtioBlk(string imagePath, bool readOnly = false, string? serial = null, bool lockDeferred = false, DiskImageCopy? copiedBy = null)
    {
        ArgumentNullException.ThrowIfNull(imagePath);
        if (copiedBy is null) DiskImageCopy.RefuseIncomplete(imagePath);
        else if (readOnly || !lockDeferred || Path.GetFullPath(copiedBy.ImagePath) != Path.GetFullPath(imagePath))
            throw new ArgumentException($"a copy into {copiedBy.ImagePath} is shared by a writable device on that image, lock deferred", nameof(copiedBy));
        path = imagePath;
        this.readOnly = readOnly;
        if (serial is not null)
        {
            byte[] s = Encoding.UTF8.GetBytes(serial);
            if (s.Length > IdBytes) throw new ArgumentException($"serial is {s.Length} bytes, at most {IdBytes}", nameof(serial));
            s.CopyTo(id, 0);
        }
        file = copiedBy?.ShareFile() ?? Open(imagePath, readOnly, lockDeferred);
        lockHeld = !lockDeferred;
        imageBytes = RandomAccess.GetLength(file);
        Capacity = (ulong)imageBytes / SectorSize;
        dirtyBlocks = new ulong[(ImageBlocks + 63) / 64];
        BuildConfig();
        worker = new Thread(Work) { IsBackground = true, Name = $"virtio-blk {Path.GetFileName(imagePath)}" };
        worker.Start();
    }

    /// <summary>Disk size in 512-byte sectors.</summary>
    public ulong Capacity { get; }

    /// <summary>True if the guest sees a read-only disk.</summary>
    public bool ReadOnly => readOnly;

    public uint DeviceId => VIRTIO_ID_BLOCK;

    public ulong DeviceFeatures =>
        VirtioFeatures.Bit(VIRTIO_BLK_F_SIZE_MAX) | VirtioFeatures.Bit(VIRTIO_BLK_F_SEG_MAX) | VirtioFeatures.Bit(VIRTIO_BLK_F_FLUSH)
        | VirtioFeatures.Bit(VIRTIO_BLK_F_DISCARD) | VirtioFeatures.Bit(VIRTIO_BLK_F_WRITE_ZEROES)
        | (readOnly ? VirtioFeatures.Bit(VIRTIO_BLK_F_RO) : 0);

    public IReadOnlyList<ushort> QueueMaxSizes { get; } = [QueueSize];

    public int ConfigSize => ConfigBytes;

    public void Attach(IReadOnlyList<Virtqueue> queues)
    {
        ArgumentNullException.ThrowIfNull(queues);
        queue = queues[0];
        chain = queue.CreateChain();
    }

    public void ReadConfig(int offset, Span<byte> data) => config.AsSpan(offset, data.Length).CopyTo(data);

    /// <summary>Nothing is writable: writeback (VIRTIO_BLK_F_CONFIG_WCE) is not offered.</summary>
    public void WriteConfig(int offset, ReadOnlySpan<byte> data) { }

    /// <summary>Wake the worker; returns at once.</summary>
    public void Notify(int queueIndex)
    {
        if (!stopping) wake.Set();
    }

    /// <summary>Nothing to drop: the worker holds the queue's lock across a whole request, so none is half done.</summary>
    public void Reset() { }

    /// <summary>Section "VBLK": the capacity and read-only flag the guest saw, checked on load.</summary>
    public byte[] SaveState()
    {
        var s = new byte[8 + 8 + 1];
        BinaryPrimitives.WriteUInt32LittleEndian(s, StateMagic);
        BinaryPrimitives.WriteUInt16LittleEndian(s.AsSpan(4), StateVersion);
        BinaryPrimitives.WriteUInt64LittleEndian(s.AsSpan(8), Capacity);
        s[16] = readOnly ? (byte)1 : (byte)0;
        return s;
    }

    public void LoadState(ReadOnlySpan<byte> state)
    {
        if (state.Length != 17 || BinaryPrimitives.ReadUInt32LittleEndian(state) != StateMagic) throw new InvalidDataException("not a virtio-blk section");
        ushort version = BinaryPrimitives.ReadUInt16LittleEndian(state[4..]);
        if (version != StateVersion) throw new InvalidDataException($"virtio-blk section version {version}, this build reads {StateVersion}");
        ulong capacity = BinaryPrimitives.ReadUInt64LittleEndian(state[8..]);
        if (capacity != Capacity) throw new InvalidDataException($"{path}: the guest had a disk of {capacity} sectors, this image has {Capacity}");
        if ((state[16] != 0) != readOnly) throw new InvalidDataException($"{path}: the guest had a {(readOnly ? "writable" : "read-only")} disk");
    }

    /// <summary>Stop the worker (after the request in hand) and close the image, which drops the lock.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref disposed, 1) != 0) return;
        stopping = true;
        wake.Set();
        if (worker.IsAlive) worker.Join();
        wake.Dispose();
        DisposeMigration();
        file.Dispose();
    }

    internal static SafeFileHandle Open(string imagePath, bool readOnly, bool lockDeferred)
    {
        int fd = Libc.open(imagePath, (readOnly ? O_RDONLY : Libc.O_RDWR) | Libc.O_CLOEXEC);
        if (fd < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            string why = errno switch
            {
                Libc.ENOENT => "no such file",
                Libc.EACCES or Libc.EPERM => readOnly ? "permission denied" : "permission denied (read-only images need readOnly)",
                _ => Marshal.GetPInvokeErrorMessage(errno),
            };
            throw new MachineConfigException($"{imagePath}: {why}", new LinuxException("open", errno));
        }
        var handle = new SafeFileHandle(fd, ownsHandle: true);
        if (!lockDeferred && flock(fd, (readOnly ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            handle.Dispose();
            string what = readOnly ? "LOCK_SH" : "LOCK_EX";
            throw errno == EWOULDBLOCK
                ? new MachineConfigException($"{imagePath}: disk image is in use by another VM (flock {what}|LOCK_NB would block)")
                : new MachineConfigException($"{imagePath}: cannot lock the disk image", new LinuxException("flock", errno));
        }
        return handle;
    }

    private void BuildConfig()
    {
        Span<byte> c = config;
        BinaryPrimitives.WriteUInt64LittleEndian(c, Capacity);
        BinaryPrimitives.WriteUInt32LittleEndian(c[8..], SizeMax);
        BinaryPrimitives.WriteUInt32LittleEndian(c[12..], SegMax);
        // Geometry (16), blk_size (20), topology (24..31), writeback (32), num_queues (34): features not offered.
        BinaryPrimitives.WriteUInt32LittleEndian(c[36..], MaxDiscardSectors);
        BinaryPrimitives.WriteUInt32LittleEndian(c[40..], MaxDiscardSegments);
        BinaryPrimitives.WriteUInt32LittleEndian(c[44..], DiscardSectorAlignment);
        BinaryPrimitives.WriteUInt32LittleEndian(c[48..], MaxDiscardSectors);
        BinaryPrimitives.WriteUInt32LittleEndian(c[52..], MaxDiscardSegments);
        c[56] = 1; // write_zeroes_may_unmap: a punched hole reads as zeros
    }

    private void Work()
    {
        try
        {
            while (true)
            {
                wake.Wait();
                if (stopping) return;
                wake.Reset();
                Drain();
            }
        }
        catch (VmLostException)
        {
            // Post-copy was aborted while a request waited for a page of guest RAM: the guest is gone (the machine
            // stops and reports it), and the request with it. The worker ends; Dispose still joins it.
        }
    }

    /// <summary>Serve every available request, one per lock hold, so a reset or pause waits for one request at most.</summary>
    private void Drain()
    {
        Virtqueue q = queue!;
        DescriptorChain c = chain!;
        while (!stopping)
        {
            lock (q.Sync)
            {
                if (!q.TryPop(c))
                {
                    q.NotifyIfNeeded();
                    return;
                }
                if (!Serve(q, c, out uint written)) return;
                q.Push(c.Head, written);
                q.NotifyIfNeeded();
            }
        }
    }

    /// <summary>Carry out one request; false if it is malformed beyond an answer (the device then needs a reset).</summary>
    private bool Serve(Virtqueue q, DescriptorChain c, out uint written)
    {
        written = 0;
        if (c.ReadableLength < HeaderSize || c.WritableLength < 1)
        {
            q.ReportFailure("virtio-blk request without a 16-byte header or a status byte");
            return false;
        }
        Span<byte> header = stackalloc byte[HeaderSize];
        c.Read(0, header);
        uint type = BinaryPrimitives.ReadUInt32LittleEndian(header);
        ulong sector = BinaryPrimitives.ReadUInt64LittleEndian(header[8..]);
        uint statusAt = c.WritableLength - 1;
        byte status;
        uint data = 0;
        try
        {
            switch (type)
            {
                case VIRTIO_BLK_T_IN:
                    data = statusAt;
                    status = InRange(sector, data) ? ReadData(c, sector, data) : VIRTIO_BLK_S_IOERR;
                    if (status != VIRTIO_BLK_S_OK) data = 0;
                    break;
                case VIRTIO_BLK_T_OUT:
                    uint length = c.ReadableLength - HeaderSize;
                    if (readOnly || !InRange(sector, length))
                    {
                        status = VIRTIO_BLK_S_IOERR;
                        break;
                    }
                    try
                    {
                        status = WriteData(c, sector, length);
                    }
                    finally
                    {
                        // After the write (a harvest that clears the bit then finds the new data), and even when it
                        // failed half way: some of it may have reached the file.
                        MarkWritten(sector * SectorSize, length);
                    }
                    break;
                case VIRTIO_BLK_T_FLUSH:
                    status = readOnly || fdatasync(file.DangerousGetHandle().ToInt32()) == 0 ? VIRTIO_BLK_S_OK : VIRTIO_BLK_S_IOERR;
                    break;
                case VIRTIO_BLK_T_GET_ID:
                    data = (uint)c.Write(0, id.AsSpan(0, (int)Math.Min(IdBytes, statusAt)));
                    status = VIRTIO_BLK_S_OK;
                    break;
                case VIRTIO_BLK_T_DISCARD:
                case VIRTIO_BLK_T_WRITE_ZEROES:
                    status = readOnly ? VIRTIO_BLK_S_IOERR : Zero(c, zeroes: type == VIRTIO_BLK_T_WRITE_ZEROES);
                    break;
                default:
                    status = VIRTIO_BLK_S_UNSUPP;
                    break;
            }
        }
        catch (Exception e) when (e is not VmLostException)
        {
            // EIO, ENOSPC, a file truncated under us, and the errors .NET reports otherwise (EBADF, EACCES and EPERM
            // as UnauthorizedAccessException: an NFS mount's expired credentials, a FUSE file system's answer): the
            // guest sees an I/O error, the host keeps running. Let out, it ended the worker and the process.
            status = VIRTIO_BLK_S_IOERR;
            data = 0;
        }
        c.Write(statusAt, [status]);
        written = data + 1;
        return true;
    }

    /// <summary>Whole sectors, all inside the disk.</summary>
    private bool InRange(ulong sector, ulong bytes) =>
        bytes % SectorSize == 0 && sector <= Capacity && bytes / SectorSize <= Capacity - sector;

    private byte ReadData(DescriptorChain c, ulong sector, uint length)
    {
        long offset = (long)(sector * SectorSize);
        foreach (DescriptorChain.GuestRange r in c.Ranges(writable: true, 0, length))
        {
            Span<byte> target = c.HostSpan(r);
            int done = 0;
            while (done < target.Length)
            {
                int n = RandomAccess.Read(file, target[done..], offset + done);
                if (n == 0)
                {
                    // The file shrank under us: what is gone reads as zeros.
                    target[done..].Clear();
                    break;
                }
                done += n;
            }
            c.Written(r);
            offset += r.Length;
        }
        return VIRTIO_BLK_S_OK;
    }

    private byte WriteData(DescriptorChain c, ulong sector, uint length)
    {
        long offset = (long)(sector * SectorSize);
        foreach (DescriptorChain.GuestRange r in c.Ranges(writable: false, HeaderSize, length))
        {
            RandomAccess.Write(file, c.HostSpan(r), offset);
            offset += r.Length;
        }
        return VIRTIO_BLK_S_OK;
    }

    /// <summary>DISCARD or WRITE_ZEROES: each segment {sector, num_sectors, flags} is punched out of the file.</summary>
    private byte Zero(DescriptorChain c, bool zeroes)
    {
        uint bytes = c.ReadableLength - HeaderSize;
        if (bytes == 0 || bytes % DiscardSegmentSize != 0 || bytes / DiscardSegmentSize > MaxDiscardSegments) return VIRTIO_BLK_S_IOERR;
        Span<byte> segment = stackalloc byte[DiscardSegmentSize];
        for (uint at = HeaderSize; at < c.ReadableLength; at += DiscardSegmentSize)
        {
            c.Read(at, segment);
            ulong sector = BinaryPrimitives.ReadUInt64LittleEndian(segment);
            uint count = BinaryPrimitives.ReadUInt32LittleEndian(segment[8..]);
            uint flags = BinaryPrimitives.ReadUInt32LittleEndian(segment[12..]);
            // Spec 5.2.6.2: discard has no flags, write-zeroes only UNMAP.
            if ((flags & ~(zeroes ? VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP : 0)) != 0) return VIRTIO_BLK_S_UNSUPP;
            if (count > MaxDiscardSectors || !InRange(sector, (ulong)count * SectorSize)) return VIRTIO_BLK_S_IOERR;
            long offset = (long)(sector * SectorSize);
            long length = (long)count * SectorSize;
            if (length == 0) continue;
            try
            {
                if (fallocate(file.DangerousGetHandle().ToInt32(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0) continue;
                if (!zeroes) continue; // discard is a hint: a file system without holes just keeps the data
                for (long done = 0; done < length; done += Zeros.Length)
                {
                    RandomAccess.Write(file, Zeros.AsSpan(0, (int)Math.Min(Zeros.Length, length - done)), offset + done);
                }
            }
            finally
            {
                MarkWritten((ulong)offset, (ulong)length);
            }
        }
        return VIRTIO_BLK_S_OK;
    }

    // <fcntl.h>, <sys/file.h>, <linux/falloc.h>; not in Ferry.Linux's Libc yet.
    private const int O_RDONLY = 0;
    private const int LOCK_SH = 1, LOCK_EX = 2, LOCK_NB = 4;
    private const int EWOULDBLOCK = Libc.EAGAIN;
    private const int FALLOC_FL_KEEP_SIZE = 1, FALLOC_FL_PUNCH_HOLE = 2;

    [LibraryImport("libc", SetLastError = true)]
    internal static partial int flock(int fd, int operation);

    [LibraryImport("libc", SetLastError = true)]
    internal static partial int fdatasync(int fd);

    [LibraryImport("libc", SetLastError = true)]
    internal static partial int fallocate(int fd, int mode, long offset, long len);
}
