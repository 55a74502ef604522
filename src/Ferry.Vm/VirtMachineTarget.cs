using Ferry.Machine;
using Ferry.Migration.Guest;

namespace Ferry.Vm;

/// <summary>
/// The destination of a migrating <see cref="VirtMachine"/>: a machine built for the incoming memory layout, whose RAM
/// the engine fills, then <see cref="LoadState"/> and <see cref="Start"/>. Owns the machine until disposed.
/// </summary>
public sealed class VirtMachineTarget : IMigrationTarget
{
    private readonly MemoryRegion[] regions;
    private bool started;
    private bool disposed;

    internal VirtMachineTarget(Guid vmId, VirtMachine machine)
    {
        VmId = vmId;
        Machine = machine;
        unsafe
        {
            // SAFETY: the mapping lives as long as the machine, which this target owns.
            regions = [new MemoryRegion(VirtMachine.RamBase, machine.Ram.Size, (nint)machine.Ram.Host)];
        }
    }

    /// <summary>The VM identity from the handshake.</summary>
    public Guid VmId { get; }

    /// <summary>The machine being built; it runs after <see cref="Start"/>.</summary>
    public VirtMachine Machine { get; }

    /// <inheritdoc/>
    public IReadOnlyList<MemoryRegion> Regions => regions;

    /// <inheritdoc/>
    /// <remarks>Throws <see cref="InvalidDataException"/> naming the section for anything the machine rejects: a foreign,
    /// corrupt, missing or duplicated section, or a source board unlike this one (harts, memory, virtio devices).</remarks>
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
        Machine.LoadState(converted);
    }

    /// <inheritdoc/>
    public void Start()
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        started = true;
        Machine.Start();
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        Machine.Dispose();
    }
}

/// <summary>
/// Builds a <see cref="VirtMachineTarget"/> for an incoming migration: a board like <see cref="Options"/> (harts,
/// devices, where the serial console goes) with the memory size the handshake announces. The source's <c>machine</c>
/// section is checked against it when the state arrives.
/// </summary>
public sealed class VirtMachineTargetFactory : IMigrationTargetFactory
{
    private VirtMachineTarget? last;

    /// <summary>The destination board; its <see cref="MachineOptions.MemoryBytes"/> is replaced by the incoming size.</summary>
    public required MachineOptions Options { get; init; }

    /// <summary>The most recently created target, or null.</summary>
    public VirtMachineTarget? LastCreated => Volatile.Read(ref last);

    /// <inheritdoc/>
    /// <remarks>The layout must be the machine's: one region at <see cref="VirtMachine.RamBase"/>.</remarks>
    public IMigrationTarget Create(Guid vmId, IReadOnlyList<(ulong GuestPhysicalAddress, ulong Size)> regions)
    {
        ArgumentNullException.ThrowIfNull(regions);
        if (regions.Count != 1 || regions[0].GuestPhysicalAddress != VirtMachine.RamBase)
        {
            throw new InvalidDataException($"a virt machine has one RAM region at 0x{VirtMachine.RamBase:x}; the source offers {regions.Count} regions");
        }
        MachineOptions o = Options;
        var machine = new VirtMachine(new MachineOptions
        {
            MemoryBytes = regions[0].Size,
            Harts = o.Harts,
            DiskPath = o.DiskPath,
            DiskReadOnly = o.DiskReadOnly,
            TapName = o.TapName,
            MacAddress = o.MacAddress,
            Rng = o.Rng,
            SerialOut = o.SerialOut,
        });
        var target = new VirtMachineTarget(vmId, machine);
        Volatile.Write(ref last, target);
        return target;
    }
}
