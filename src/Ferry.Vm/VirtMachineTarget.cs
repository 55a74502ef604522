using System.Buffers.Binary;
using Ferry.Machine;
using Ferry.Machine.Board;
using Ferry.Machine.Virtio;
using GuestRam = Ferry.Machine.Memory.GuestRam;
using Ferry.Migration.Guest;
using Ferry.Migration.Memory;

namespace Ferry.Vm;

/// <summary>
/// The destination of a migrating <see cref="VirtMachine"/>: RAM (and, when the source copies its disk, this side's
/// image emptied and mapped as a second region), which the engine fills, inside a board built ahead with this side's
/// backends (serial line, disk file, tap) and the expected hart count. When the state arrives it names the source's
/// shape; a board of another hart count is rebuilt around the same RAM, then the state is loaded and, on
/// <see cref="Start"/>, run. Owns all of it until disposed.
/// </summary>
/// <remarks>
/// The disk's lock is taken at the end of <see cref="LoadState"/>, not in <see cref="Start"/>: the source drops it
/// when it pauses, before it saves the state, so it is free by then; and a lock that cannot be had still fails the
/// migration before <c>ready</c>, where the source resumes, rather than after <c>commit</c>, where neither side
/// could run the guest any more.
/// </remarks>
public sealed class VirtMachineTarget : IMigrationTarget, IPostcopyTarget, IShapedMigrationTarget
{
    /// <summary>How long <see cref="LoadState"/> waits for the disk's lock (a source on another host may take a
    /// moment to let go of a lock on shared storage).</summary>
    public static readonly TimeSpan DiskLockWait = TimeSpan.FromSeconds(2);

    // How long the copied image's sync thread rests between syncs of what landed (DiskImageCopy.SyncLanded), so that
    // the flush at the switchover (inside the downtime) has little left to write. Started writeback every 500 ms
    // (sync_file_range) instead, that flush still wrote back the last half second and committed every allocation of the
    // whole copy: 8-21 ms of the downtime here (strace; a 256 MiB disk the guest wrote at 500 blocks/s).
    private static readonly TimeSpan WritebackInterval = TimeSpan.FromMilliseconds(100);

    private readonly MachineOptions options;
    private readonly MemoryRegion[] regions;
    // Owned until the board adopts it (then the machine disposes it).
    private GuestRam? ram;
    // The image being received (copied disk), until Start hands it to the board's disk device.
    private DiskImageCopy? diskCopy;
    // Syncs the copied image while its blocks land, until the switchover (StopWriteback) or Dispose.
    private Thread? writeback;
    private readonly ManualResetEventSlim writebackStop = new();
    private VirtMachine? machine;
    private bool loaded;
    private bool started;
    private bool disposed;

    internal VirtMachineTarget(Guid vmId, GuestRam ram, MachineOptions options, DiskImageCopy? diskCopy)
    {
        VmId = vmId;
        this.ram = ram;
        this.options = options;
        this.diskCopy = diskCopy;
        unsafe
        {
            // SAFETY: the mapping lives as long as this target (the machine that adopts it is this target's too).
            var r = new MemoryRegion(VirtMachine.RamBase, ram.Size, (nint)ram.Host);
            // The image's mapping lives until Start, after the engine's last use of the regions (the digest after
            // LoadState); a shared file mapping, which the engine must not zero with MADV_DONTNEED.
            regions = diskCopy is null ? [r] : [r, new MemoryRegion(VirtMachineSource.DiskRegionAddress, diskCopy.Bytes, diskCopy.Address) { FileBacked = true }];
        }
        if (diskCopy is not null)
        {
            writeback = new Thread(() => Writeback(diskCopy)) { IsBackground = true, Name = "ferry-disk-sync" };
            writeback.Start();
        }
    }

    /// <summary>The VM identity from the handshake.</summary>
    public Guid VmId { get; }

    /// <summary>The machine, once the state has been loaded into it; it runs after <see cref="Start"/>.</summary>
    public VirtMachine? Machine => loaded ? machine : null;

    /// <summary>Whether the source's disk is being copied into this side's image.</summary>
    public bool ReceivesDisk => regions.Length > 1;

    /// <inheritdoc/>
    /// <remarks>Valid until <see cref="Start"/>: a copied disk's mapping is given back then.</remarks>
    public IReadOnlyList<MemoryRegion> Regions => regions;

    /// <summary>The shape section's name (version 1: the hart count, u32 little-endian).</summary>
    public const string ShapeSectionName = "virt-shape";

    /// <summary>The shape section of a board with <paramref name="harts"/> harts.</summary>
    public static StateSection Shape(int harts)
    {
        var data = new byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(data, (uint)harts);
        return new StateSection(ShapeSectionName, 1, data);
    }

    /// <summary>True when <see cref="LoadState"/> had to build the board again (in the downtime): its shape differed from the one built ahead.</summary>
    public bool RebuiltAtLoad { get; private set; }

    /// <inheritdoc/>
    /// <remarks>Rebuilds the board built ahead with the factory's guess when the source has another hart count: the
    /// cost (~8 ms of building, the hart threads started) is paid now, not in <see cref="LoadState"/>.</remarks>
    public void Reshape(StateSection shape)
    {
        ArgumentNullException.ThrowIfNull(shape);
        ObjectDisposedException.ThrowIf(disposed, this);
        if (started || loaded) throw new InvalidOperationException("the machine's state is already in");
        if (shape.Name != ShapeSectionName) throw new InvalidDataException($"a '{shape.Name}' section, not this board's '{ShapeSectionName}'");
        if (shape.Version != 1) throw new InvalidDataException($"{ShapeSectionName} version {shape.Version}, this build reads 1");
        if (shape.Data.Length != 4) throw new InvalidDataException($"{ShapeSectionName} is {shape.Data.Length} bytes, not 4");
        uint harts = BinaryPrimitives.ReadUInt32LittleEndian(shape.Data.Span);
        if (harts < 1 || harts > VirtMachine.MaxHarts) throw new InvalidDataException($"{ShapeSectionName}: {harts} harts, this build runs 1 to {VirtMachine.MaxHarts}");
        BuildIn((int)harts);
    }

    /// <inheritdoc/>
    /// <remarks>Throws <see cref="InvalidDataException"/> naming the section for anything the machine rejects: a foreign,
    /// corrupt, missing or duplicated section, or a source board this side cannot match (a disk or network card the
    /// source has and this side was given no backend for, or the other way round). A board that could not be built
    /// (a tap that cannot be opened) is an <see cref="InvalidDataException"/> too. Last, the disk's lock is taken
    /// (after a copy, once the image is durable); <see cref="IOException"/> if it stays busy for
    /// <see cref="DiskLockWait"/> or the copy cannot be flushed.</remarks>
    public void LoadState(IReadOnlyList<StateSection> sections)
    {
        ArgumentNullException.ThrowIfNull(sections);
        ObjectDisposedException.ThrowIf(disposed, this);
        if (started) throw new InvalidOperationException("the machine is already running");
        var converted = new MachineStateSection[sections.Count];
        for (int i = 0; i < converted.Length; i++)
        {
            StateSection s = sections[i];
            converted[i] = new MachineStateSection(s.Name, s.Version, s.Data);
        }
        // A board built ahead in another shape (a source without the Shape section) is rebuilt here, inside the downtime.
        if (BuildIn(VirtMachine.HartsOfSource(converted))) RebuiltAtLoad = true;
        machine!.LoadState(converted);
        TakeDisk(machine);
        loaded = true;
    }

    /// <summary>
    /// Have the board in <paramref name="harts"/> harts: one built in another shape goes (its RAM kept) and is built
    /// again. True when a board was there and had to go.
    /// </summary>
    private bool BuildIn(int harts)
    {
        if (machine is not null && machine.HartCount == harts) return false;
        bool rebuilt = machine is not null;
        if (rebuilt) ram = machine!.DisposeKeepingRam();
        machine = null;
        BuildAhead(harts);
        return rebuilt;
    }

    internal void BuildAhead(int harts)
    {
        machine = Build(harts);
        // Its hart threads too, parked: creating them at the switchover cost 5-15 ms of commit_to_resumed.
        machine.StartPaused();
    }

    /// <summary>
    /// The board around the RAM (which it adopts), with this side's backends. Built when the target is created, with
    /// the expected hart count, so that its cost (~8 ms for 1 GiB: code-cache tables, devices) is paid during pre-copy
    /// and not inside the downtime, and a backend that cannot be opened (a tap, a disk) fails the migration at the
    /// handshake rather than after every round was sent.
    /// </summary>
    private VirtMachine Build(int harts)
    {
        GuestRam adopted = ram ?? throw new InvalidOperationException("no RAM");
        ram = null;
        try
        {
            return new VirtMachine(new MachineOptions
            {
                MemoryBytes = adopted.Size,
                Harts = harts,
                DiskPath = options.DiskPath,
                DiskReadOnly = options.DiskReadOnly,
                // The source holds the lock of a shared image until it pauses: taken in LoadState, once the state is
                // in. A copied image's the device shares with the copy, which has held it from the start.
                DiskLockDeferred = true,
                DiskCopy = diskCopy,
                TapName = options.TapName,
                MacAddress = options.MacAddress,
                Rng = options.Rng,
                SerialOut = options.SerialOut,
            }, adopted);
        }
        catch (MachineConfigException e)
        {
            throw new InvalidDataException($"cannot build the destination board: {e.Message}", e);
        }
    }

    private void TakeDisk(VirtMachine m)
    {
        if (m.Disk is null) return;
        if (diskCopy is not null)
        {
            StopWriteback();
            diskCopy.Flush();
        }
        if (!m.AcquireDiskLock(DiskLockWait))
        {
            throw new IOException($"{m.Disk.LockBusyMessage}; waited {DiskLockWait.TotalSeconds:F0} s for the source to let go of it");
        }
    }

    /// <inheritdoc/>
    /// <remarks>RAM only: a disk copied as a region cannot be read by the guest before it arrived (its device reads
    /// the file), so a migration that copies the disk must be pre-copy; this throws <see cref="NotSupportedException"/>.</remarks>
    public IPostcopyMemory BeginPostcopy(IReadOnlyList<Ferry.Migration.Memory.DirtyBitmap> missing, IPageFaultSink sink)
    {
        ArgumentNullException.ThrowIfNull(missing);
        ArgumentNullException.ThrowIfNull(sink);
        ObjectDisposedException.ThrowIf(disposed, this);
        if (started) throw new InvalidOperationException("the machine is already running");
        if (ReceivesDisk && missing[1].Count() != 0)
            throw new NotSupportedException("post-copy cannot bring a copied disk after the guest (migrate the disk with pre-copy, or share it)");
        GuestRam target = machine?.Ram ?? ram ?? throw new InvalidOperationException("no RAM");
        target.BeginPostcopy(missing[0].Words, page => sink.PageNeeded(0, page));
        return new MachinePostcopyMemory(target);
    }

    /// <inheritdoc/>
    /// <remarks>Faults the RAM in, with the source's map only the pages that will receive data (<see
    /// cref="GuestRam.Populate(TimeSpan, ReadOnlySpan{ulong}, CancellationToken)"/>): the demo's 1 GiB guest holds
    /// data in about a quarter of its memory, and the rest, arriving as zeros that are only marked present, then takes
    /// no memory here (its destination process peaked at ~405 MiB against 485-880 MiB with all of RAM faulted in).
    /// Without a map, all of RAM (<see cref="GuestRam.Populate(TimeSpan, CancellationToken)"/>).</remarks>
    public void PreparePostcopy(TimeSpan budget, IReadOnlyList<DirtyBitmap>? holdsData, CancellationToken stop)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        GuestRam.WarmUpPostcopy();
        GuestRam? target = machine?.Ram ?? ram;
        if (target is null) return;
        if (holdsData is { Count: > 0 }) target.Populate(budget, holdsData[0].Words, stop);
        else target.Populate(budget, stop);
    }

    /// <inheritdoc/>
    public void Start()
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        VirtMachine m = machine ?? throw new InvalidOperationException("no state was loaded");
        if (m.Disk is { LockHeld: false }) throw new InvalidOperationException("the disk's lock was not taken (LoadState failed?)");
        started = true;
        // From here the device reads and writes the file itself; the page cache holds what the mapping wrote. Committed:
        // the copy is whole (and durable since LoadState's flush), so it stops being marked incomplete.
        diskCopy?.Complete();
        diskCopy?.Dispose();
        diskCopy = null;
        // The harts were started parked when the board was built: let them and the devices go. In post-copy a device's
        // first look at its queues may need a page still at the source (measured: the rng's ring, two faults, 7-8 ms
        // of the downtime when it ran here): it looks from another thread, and the engine reports Resumed at once.
        m.ResumeDevices(kickOnPool: m.Ram.IsPostcopy);
        m.Resume();
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        StopWriteback();
        machine?.Dispose();
        ram?.Dispose();
        diskCopy?.Dispose();
    }

    /// <inheritdoc/>
    /// <remarks>Syncs the copied disk's image: a pass of the disk then counts as landed once it is durable, and the
    /// switchover's flush has only the last pass to write (in pure post-copy the disk's rounds end right before the
    /// pause, where the sync thread alone left all of the copy to that flush). A failed sync, this one or the sync
    /// thread's, fails the migration here, before the pause, rather than at the switchover's flush after every round.</remarks>
    public void SyncLanded() => diskCopy?.SyncLanded();

    private void Writeback(DiskImageCopy copy)
    {
        // A normal thread: it mostly waits for the disk (the kernel's flusher threads do the writing).
        while (!writebackStop.Wait(WritebackInterval)) copy.SyncLanded(throwOnError: false);
    }

    /// <summary>Stop the sync thread and wait for a sync in progress: the switchover's own must not run beside it.</summary>
    private void StopWriteback()
    {
        writebackStop.Set();
        writeback?.Join();
    }
}

/// <summary>
/// Builds a <see cref="VirtMachineTarget"/> for an incoming migration: RAM of the size the handshake announces (and,
/// when the source copies its disk, <see cref="MachineOptions.DiskPath"/> emptied to receive it), and, when the state
/// arrives, a board in the source's shape with the backends of <see cref="Options"/> (serial line, disk, tap, rng); its
/// <see cref="MachineOptions.MemoryBytes"/> is ignored and <see cref="MachineOptions.Harts"/> is a guess (the board is
/// built ahead with it, and again in the source's shape if that differs).
/// </summary>
public sealed class VirtMachineTargetFactory : IMigrationTargetFactory
{
    private VirtMachineTarget? last;

    /// <summary>The destination's backends.</summary>
    public required MachineOptions Options { get; init; }

    /// <summary>The most recently created target, or null.</summary>
    public VirtMachineTarget? LastCreated => Volatile.Read(ref last);

    /// <inheritdoc/>
    /// <remarks>The layout must be the machine's: RAM at <see cref="VirtMachine.RamBase"/> of a size the board takes,
    /// then, from a source that copies its disk, the image at <see cref="VirtMachineSource.DiskRegionAddress"/> of at
    /// most <see cref="VirtMachineSource.MaxCopiedDiskBytes"/>, which needs a writable <see cref="MachineOptions.DiskPath"/>
    /// here: that file is locked, emptied and grown to the source's size at once (what it held is lost, as with
    /// QEMU's block migration, even if the migration then fails). Anything else is an
    /// <see cref="InvalidDataException"/> saying what.</remarks>
    public IMigrationTarget Create(Guid vmId, IReadOnlyList<(ulong GuestPhysicalAddress, ulong Size)> regions)
    {
        ArgumentNullException.ThrowIfNull(regions);
        if (regions.Count is 0 or > 2 || regions[0].GuestPhysicalAddress != VirtMachine.RamBase)
        {
            throw new InvalidDataException($"a virt machine has RAM at 0x{VirtMachine.RamBase:x} and at most a copied disk besides; the source offers {regions.Count} regions");
        }
        try
        {
            VirtMachine.CheckMemorySize(regions[0].Size);
        }
        catch (MachineConfigException e)
        {
            throw new InvalidDataException($"the source's RAM: {e.Message}", e);
        }
        DiskImageCopy? disk = regions.Count == 2 ? ReceiveDisk(regions[1]) : null;
        GuestRam ram;
        try
        {
            ram = new GuestRam(VirtMachine.RamBase, regions[0].Size);
        }
        catch
        {
            disk?.Dispose();
            throw;
        }
        var target = new VirtMachineTarget(vmId, ram, Options, disk);
        try
        {
            // Options.Harts is the guess; the state says the truth, and a wrong guess only costs a rebuild.
            target.BuildAhead(Math.Clamp(Options.Harts, 1, VirtMachine.MaxHarts));
        }
        catch
        {
            target.Dispose();
            throw;
        }
        Volatile.Write(ref last, target);
        return target;
    }

    private DiskImageCopy ReceiveDisk((ulong GuestPhysicalAddress, ulong Size) region)
    {
        if (region.GuestPhysicalAddress != VirtMachineSource.DiskRegionAddress)
        {
            throw new InvalidDataException($"the source's second region is at 0x{region.GuestPhysicalAddress:x}; a copied disk is at 0x{VirtMachineSource.DiskRegionAddress:x}");
        }
        if (region.Size > VirtMachineSource.MaxCopiedDiskBytes)
        {
            throw new InvalidDataException($"the source's disk is {region.Size} bytes, more than the {VirtMachineSource.MaxCopiedDiskBytes >> 30} GiB a copy may move");
        }
        string path = Options.DiskPath
            ?? throw new InvalidDataException("the source copies its disk (--copy-disk), but this destination has no --disk to receive it");
        if (Options.DiskReadOnly)
        {
            throw new InvalidDataException($"the source copies its disk into --disk {path}, which is read-only here");
        }
        try
        {
            return DiskImageCopy.Create(path, region.Size);
        }
        catch (MachineConfigException e)
        {
            throw new InvalidDataException($"cannot receive the source's disk: {e.Message}", e);
        }
    }
}
