using Ferry.Linux;
using Ferry.Migration.Guest;
using Ferry.Migration.Memory;

namespace Ferry.Migration.InProcess;

/// <summary>
/// The destination side of the in-process guest: zero-filled memory with the source's layout, filled by the engine,
/// then <see cref="LoadState"/> and <see cref="Start"/>, after which <see cref="Guest"/> runs the same workload on
/// the migrated memory (the guest "keeps running").
/// </summary>
public sealed class InProcessTarget : IMigrationTarget, IPostcopyTarget
{
    private UserfaultfdPostcopy? _postcopy;
    private readonly GuestMemoryMapping[] _mappings;
    private readonly MemoryRegion[] _regions;
    private WorkloadSnapshot? _workload;
    private byte[]? _device;
    private bool _disposed;

    internal InProcessTarget(Guid vmId, IReadOnlyList<(ulong GuestPhysicalAddress, ulong Size)> layout, bool transparentHugePages)
    {
        VmId = vmId;
        _mappings = InProcessGuest.MapLayout(layout, transparentHugePages);
        _regions = new MemoryRegion[layout.Count];
        for (int i = 0; i < _regions.Length; i++)
        {
            _regions[i] = new MemoryRegion(layout[i].GuestPhysicalAddress, layout[i].Size, _mappings[i].Address);
        }
    }

    /// <summary>Fault every page of memory in (zero-filled, writable); see <see cref="InProcessTargetFactory.Preallocate"/>.</summary>
    internal void Preallocate()
    {
        foreach (var m in _mappings)
        {
            if (!m.Populate())
            {
                // Kernels before 5.14 lack MADV_POPULATE_WRITE: touch one byte per page instead.
                for (ulong off = 0; off < m.Length; off += MemoryRegion.PageSize)
                {
                    unsafe
                    {
                        // SAFETY: off < m.Length, inside the mapping this target owns; the page reads as zero.
                        *(byte*)(m.Address + (nint)off) = 0;
                    }
                }
            }
        }
    }

    /// <summary>The VM identity from the handshake.</summary>
    public Guid VmId { get; }

    /// <inheritdoc/>
    public IReadOnlyList<MemoryRegion> Regions => _regions;

    /// <inheritdoc/>
    public bool TransparentHugePages => Array.TrueForAll(_mappings, m => m.HugePagesAdvised);

    /// <summary>True once <see cref="LoadState"/> has accepted the sections.</summary>
    public bool IsLoaded => _workload is not null;

    /// <summary>The running guest after <see cref="Start"/>; it owns the memory from then on.</summary>
    public InProcessGuest? Guest { get; private set; }

    /// <inheritdoc/>
    /// <remarks>
    /// Needs exactly one "workload" (version 2) and one "device" (version 1) section; anything else, a bad size or
    /// checksum, or a workload whose memory layout differs from <see cref="Regions"/> is an
    /// <see cref="InvalidDataException"/>, and nothing is kept from a rejected call.
    /// </remarks>
    public void LoadState(IReadOnlyList<StateSection> sections)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (Guest is not null)
        {
            throw new InvalidOperationException("the guest is already running");
        }

        WorkloadSnapshot? workload = null;
        byte[]? device = null;
        foreach (var section in sections)
        {
            switch (section.Name)
            {
                case WorkloadSnapshot.SectionName when workload is null:
                    RequireVersion(section, WorkloadSnapshot.SectionVersion);
                    workload = WorkloadSnapshot.Parse(section.Data.Span);
                    break;
                case DeviceState.SectionName when device is null:
                    RequireVersion(section, DeviceState.SectionVersion);
                    device = DeviceState.Validate(section.Data.Span);
                    break;
                case WorkloadSnapshot.SectionName or DeviceState.SectionName:
                    throw new InvalidDataException($"section \"{section.Name}\" appears twice");
                default:
                    throw new InvalidDataException($"unknown section \"{section.Name}\"");
            }
        }

        if (workload is null || device is null)
        {
            throw new InvalidDataException($"missing section \"{(workload is null ? WorkloadSnapshot.SectionName : DeviceState.SectionName)}\"");
        }

        var layout = workload.Options.Layout();
        bool same = layout.Count == _regions.Length;
        for (int i = 0; same && i < layout.Count; i++)
        {
            same = layout[i].GuestPhysicalAddress == _regions[i].GuestPhysicalAddress && layout[i].Size == _regions[i].Size;
        }

        if (!same)
        {
            throw new InvalidDataException("workload section describes a different memory layout from the one received");
        }

        _workload = workload;
        _device = device;
    }

    /// <summary>
    /// Check memory against the loaded workload state, before or after <see cref="Start"/> (then the guest must be
    /// paused). Returns the first bad page, or null.
    /// </summary>
    public SelfCheckFailure? SelfCheck()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (Guest is not null)
        {
            return Guest.SelfCheck();
        }

        var workload = _workload ?? throw new InvalidOperationException("LoadState first");
        return InProcessGuest.CheckPages(_regions, workload, workload.Options);
    }

    /// <inheritdoc/>
    public void Start()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (Guest is not null)
        {
            throw new InvalidOperationException("already started");
        }

        var workload = _workload ?? throw new InvalidOperationException("LoadState first");
        var postcopy = _postcopy;
        Guest = new InProcessGuest(workload.Options, _mappings, workload, _device!, fill: false, touchNatively: postcopy is { Ended: false });
        postcopy?.Attach(Guest);
    }

    // Post-copy's per-page fault stamps (8 bytes per page, 2 MiB per GiB), allocated at the handshake
    // (PreparePostcopy): at BeginPostcopy, inside the downtime, the large-object allocation could set off a background
    // collection running into the guest's first milliseconds here.
    private long[]? _faultStamps;

    /// <inheritdoc/>
    /// <remarks>Only the fault stamps' allocation: this guest's memory is faulted in by <see cref="Preallocate"/>.</remarks>
    public void PreparePostcopy(TimeSpan budget, IReadOnlyList<DirtyBitmap>? holdsData, CancellationToken stop) => _faultStamps ??= UserfaultfdPostcopy.NewFaultStamps(_regions);

    /// <inheritdoc/>
    /// <remarks>Guest memory is registered with a userfaultfd in MISSING mode; the missing pages are dropped
    /// (<c>MADV_DONTNEED</c>), so the first touch of each waits for the engine to install it.</remarks>
    public IPostcopyMemory BeginPostcopy(IReadOnlyList<Memory.DirtyBitmap> missing, IPageFaultSink sink)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_postcopy is not null || Guest is not null) throw new InvalidOperationException("post-copy begins once, before Start");
        _postcopy = new UserfaultfdPostcopy(_regions, missing, sink, _faultStamps);
        return _postcopy;
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        // First release writers waiting for pages that will not come (closing the userfaultfd lets them through with
        // zero pages): the guest's Dispose joins its writers.
        _postcopy?.Dispose();
        if (Guest is not null)
        {
            Guest.Dispose();
            return;
        }

        foreach (var m in _mappings)
        {
            m.Dispose();
        }
    }

    private static void RequireVersion(StateSection section, uint version)
    {
        if (section.Version != version)
        {
            throw new InvalidDataException($"section \"{section.Name}\" version {section.Version}, only {version} is understood");
        }
    }
}

/// <summary>Creates <see cref="InProcessTarget"/>s for incoming migrations.</summary>
public sealed class InProcessTargetFactory : IMigrationTargetFactory
{
    private InProcessTarget? _last;

    /// <summary>
    /// Map destination memory with transparent huge pages (default true, as for the source): the engine writes every
    /// page it receives, and a first write costs one fault per 2 MiB instead of per 4 KiB.
    /// </summary>
    public bool TransparentHugePages { get; init; } = true;

    /// <summary>
    /// Fault all destination memory in when the target is created, before any page arrives (QEMU's -mem-prealloc).
    /// Costs the memory up front; it takes page faults out of the transfer, which on this VM host otherwise cost
    /// ~0.1 s/GiB for memory the kernel already had and ~2.7 s/GiB for memory new to the host.
    /// </summary>
    public bool Preallocate { get; init; }

    /// <summary>The most recently created target (tests inspect it after a migration), or null.</summary>
    public InProcessTarget? LastCreated => Volatile.Read(ref _last);

    /// <inheritdoc/>
    public IMigrationTarget Create(Guid vmId, IReadOnlyList<(ulong GuestPhysicalAddress, ulong Size)> regions)
    {
        var target = new InProcessTarget(vmId, regions, TransparentHugePages);
        if (Preallocate) target.Preallocate();
        Volatile.Write(ref _last, target);
        return target;
    }
}
