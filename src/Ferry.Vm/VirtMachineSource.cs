using Ferry.Machine;
using Ferry.Machine.Virtio;
using Ferry.Migration.Guest;

namespace Ferry.Vm;

/// <summary>
/// A running <see cref="VirtMachine"/> as the engine's migration source: its RAM is the first region (guest-physical
/// <see cref="VirtMachine.RamBase"/>, sent straight from the machine's mapping), its dirty log is the machine's (hart
/// stores and device writes), and its state is the machine's sections. Its disk either stays where it is, on storage
/// the destination opens too, and only its lock moves; or, with <c>copyDisk</c>, travels as a second region.
/// </summary>
/// <remarks>
/// <para>Calls come from the engine's migration thread in the order <see cref="IMigrationSource"/> gives. The source does
/// not own the machine: after a completed migration the machine stays paused for good and the caller disposes it;
/// after a failed one it runs again.</para>
/// <para><b>Shared disk</b> (the default): both machines name one image, so nothing of it is sent, but its
/// <c>flock</c> must move with the guest. <see cref="Pause"/> flushes the image and drops the lock once the devices
/// are paused (before the state is saved, so the destination, which takes the lock while loading that state, finds
/// it free); <see cref="Resume"/> (a failed migration) takes it back, in the background if the destination has not
/// let go yet, since the guest must run on at once.</para>
/// <para><b>Copied disk</b>: the image is region 1 at <see cref="DiskRegionAddress"/>, a guest-physical address no
/// RISC-V machine has (physical addresses are 56 bits), read from the file with <c>pread</c>
/// (<see cref="DiskImageReader"/>), which the page cache keeps coherent with the device's writes: a read error, or an
/// image truncated under the VM, fails the migration and the guest runs on (through a mapping it was a SIGBUS that
/// killed the process). Its pages are the image's 4 KiB blocks; the engine's bitmaps hold RAM's pages first, then the
/// disk's (bit <c>RAM pages + block</c>). Holes are sent as zero pages unread
/// (<c>SEEK_DATA</c>), blocks the guest writes are logged by the device and sent again like dirty RAM. The destination
/// must allow RAM plus the image in <c>IncomingOptions.MaxMemoryBytes</c>.</para>
/// </remarks>
public sealed class VirtMachineSource : IMigrationSource, IAccessTrackingSource, IShapedMigrationSource
{
    /// <summary>Where a copied disk sits in the migration's layout: 2^56, above any RISC-V physical address.</summary>
    public const ulong DiskRegionAddress = 1UL << 56;

    /// <summary>
    /// Largest disk image copied (1 TiB): the destination reserves that much address space and file length on the
    /// source's word, so a hostile stream must not name more.
    /// </summary>
    public const ulong MaxCopiedDiskBytes = 1UL << 40;

    private readonly VirtMachine machine;
    private readonly MemoryRegion[] regions;
    // The disk whose blocks are sent as region 1, or null (shared or no disk).
    private readonly VirtioBlk? copied;
    // RAM's pages: the disk's block b is bit ramPages + b of the engine's bitmaps.
    private readonly ulong ramPages;
    private volatile bool running;
    // Pause dropped the disk's lock (shared disk); Resume takes it back.
    private bool lockReleased;
    // Why the shared disk could not be handed over at Pause; SaveState fails the migration with it.
    private IOException? handoverError;

    /// <summary>Migrate <paramref name="machine"/>, which has been started and is running (not paused).</summary>
    /// <param name="machine">The machine.</param>
    /// <param name="copyDisk">Copy the machine's disk image into the destination's (its <c>--disk</c>), block by block
    /// with dirty tracking, instead of handing over the lock on an image both share. The image must be writable and a
    /// whole number of 4 KiB blocks.</param>
    public VirtMachineSource(VirtMachine machine, bool copyDisk = false)
    {
        ArgumentNullException.ThrowIfNull(machine);
        this.machine = machine;
        // The switchover's SaveState runs inside the downtime: its cold start is paid here instead.
        VirtMachine.WarmUpSaveState();
        ramPages = machine.Ram.Size >> MemoryRegion.PageShift;
        unsafe
        {
            // SAFETY: the mapping lives as long as the machine, which outlives the migration (the caller owns both).
            var ram = new MemoryRegion(VirtMachine.RamBase, machine.Ram.Size, (nint)machine.Ram.Host);
            if (!copyDisk)
            {
                regions = [ram];
            }
            else
            {
                copied = CheckCopyable(machine.Disk);
                // Pre-copy only: its device reads the image file, where a post-copy destination could not catch a missing block.
                regions = [ram, new MemoryRegion(DiskRegionAddress, copied.ImageBytes, 0) { PrecopyOnly = true, Reader = new DiskImageReader(copied) }];
            }
        }
        TotalPages = ramPages + (copied?.ImageBlocks ?? 0);
        running = true;
    }

    private static VirtioBlk CheckCopyable(VirtioBlk? disk)
    {
        if (disk is null) throw new ArgumentException("copyDisk: the machine has no disk (--disk) to copy", nameof(disk));
        if (disk.ReadOnly) throw new ArgumentException($"copyDisk: {disk.ImagePath} is attached read-only; share it instead of copying it", nameof(disk));
        if (disk.ImageBytes == 0 || disk.ImageBytes % (ulong)VirtioBlk.BlockSize != 0)
        {
            throw new ArgumentException($"copyDisk: {disk.ImagePath} is {disk.ImageBytes} bytes, not a positive multiple of 4 KiB (the copy moves whole blocks)", nameof(disk));
        }
        if (disk.ImageBytes > MaxCopiedDiskBytes)
        {
            throw new ArgumentException($"copyDisk: {disk.ImagePath} is {disk.ImageBytes} bytes, more than the {MaxCopiedDiskBytes >> 30} GiB a copy may move", nameof(disk));
        }
        return disk;
    }

    /// <summary>The machine being migrated.</summary>
    public VirtMachine Machine => machine;

    /// <summary>Whether the disk is copied (region 1) rather than shared.</summary>
    public bool CopiesDisk => copied is not null;

    /// <inheritdoc/>
    public IReadOnlyList<MemoryRegion> Regions => regions;

    /// <inheritdoc/>
    public ulong TotalPages { get; }

    /// <inheritdoc/>
    public bool IsRunning => running;

    /// <inheritdoc/>
    public void StartDirtyLog()
    {
        copied?.StartDirtyLog();
        machine.StartDirtyLog();
    }

    /// <inheritdoc/>
    public void HarvestDirtyLog(Span<ulong> bitmap)
    {
        machine.HarvestDirty(bitmap);
        copied?.HarvestDirty(bitmap, ramPages);
    }

    /// <inheritdoc/>
    public void GetPopulatedPages(Span<ulong> bitmap)
    {
        machine.GetPopulatedPages(bitmap);
        copied?.GetPopulatedBlocks(bitmap, ramPages);
    }

    /// <inheritdoc/>
    /// <remarks>RAM is region 0, so the machine's bit for RAM page i is the engine's bit i. A copied disk's blocks get
    /// none: only device emulation reaches them, and the guest's CPUs never run on them.</remarks>
    public void HarvestAccessedPages(Span<ulong> bitmap) => machine.HarvestAccessed(bitmap);

    /// <inheritdoc/>
    public void HarvestAccessedPages(Span<ulong> bitmap, Span<ulong> system) => machine.HarvestAccessed(bitmap, system);

    /// <inheritdoc/>
    public void GetResidentPages(Span<ulong> bitmap) => machine.GetTlbResidentPages(bitmap);

    /// <inheritdoc/>
    public void StopDirtyLog()
    {
        machine.StopDirtyLog();
        copied?.StopDirtyLog();
    }

    /// <inheritdoc/>
    public void SetThrottle(int percent) => machine.SetThrottle(percent);

    /// <inheritdoc/>
    /// <remarks>Harts first (no guest store after they park), then the virtio devices (no DMA into RAM, no disk write
    /// after they stop), so the final harvest that follows holds every last write; then a shared disk's lock is
    /// dropped. A flush that fails keeps the lock and fails the migration at <see cref="SaveState"/> (this call must
    /// leave the machine paused for the engine to resume it).</remarks>
    public void Pause()
    {
        machine.Pause();
        machine.PauseDevices();
        running = false;
        handoverError = null;
        if (copied is null && machine.Disk is not null)
        {
            try
            {
                machine.ReleaseDiskLock();
                lockReleased = true;
            }
            catch (IOException e)
            {
                handoverError = e;
            }
        }
    }

    /// <inheritdoc/>
    public void Resume()
    {
        if (lockReleased)
        {
            // Not waited for: the destination may hold the lock until it learns of the failure, which the engine tells
            // it after this call. The guest runs on meanwhile; only a third VM could touch the image, and it would need
            // the lock, which the retry takes as soon as the destination lets go.
            machine.AcquireDiskLock(TimeSpan.Zero, keepTrying: true);
            lockReleased = false;
        }
        machine.ResumeDevices();
        machine.Resume();
        running = true;
    }

    /// <inheritdoc/>
    /// <remarks>The board's hart count (<see cref="VirtMachineTarget.ShapeSectionName"/>); memory and the disk come with the layout.</remarks>
    public StateSection GetShape() => VirtMachineTarget.Shape(machine.HartCount);

    /// <inheritdoc/>
    public IReadOnlyList<StateSection> SaveState()
    {
        if (handoverError is { } e) throw new IOException($"the disk cannot be handed over: {e.Message}", e);
        IReadOnlyList<MachineStateSection> saved = machine.SaveState();
        var sections = new StateSection[saved.Count];
        for (int i = 0; i < sections.Length; i++) sections[i] = new StateSection(saved[i].Name, saved[i].Version, saved[i].Data);
        return sections;
    }
}
