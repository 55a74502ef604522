using Ferry.Machine;
using Ferry.Machine.Board;
using GuestRam = Ferry.Machine.Memory.GuestRam;
using Ferry.Migration.Guest;

namespace Ferry.Vm;

/// <summary>
/// The destination of a migrating <see cref="VirtMachine"/>. It starts as RAM alone, which the engine fills; the board
/// around it is built when the state arrives, in the source's shape (its harts, from the <c>machine</c> section) with
/// this side's backends (serial line, disk file, tap), then loaded and, on <see cref="Start"/>, run. Owns both until
/// disposed.
/// </summary>
public sealed class VirtMachineTarget : IMigrationTarget
{
    private readonly MachineOptions options;
    private readonly MemoryRegion[] regions;
    // Owned until the board adopts it (then the machine disposes it).
    private GuestRam? ram;
    private VirtMachine? machine;
    private bool started;
    private bool disposed;

    internal VirtMachineTarget(Guid vmId, GuestRam ram, MachineOptions options)
    {
        VmId = vmId;
        this.ram = ram;
        this.options = options;
        unsafe
        {
            // SAFETY: the mapping lives as long as this target (the machine that adopts it is this target's too).
            regions = [new MemoryRegion(VirtMachine.RamBase, ram.Size, (nint)ram.Host)];
        }
    }

    /// <summary>The VM identity from the handshake.</summary>
    public Guid VmId { get; }

    /// <summary>The machine, once the state has been loaded into it; it runs after <see cref="Start"/>.</summary>
    public VirtMachine? Machine => machine;

    /// <inheritdoc/>
    public IReadOnlyList<MemoryRegion> Regions => regions;

    /// <inheritdoc/>
    /// <remarks>Throws <see cref="InvalidDataException"/> naming the section for anything the machine rejects: a foreign,
    /// corrupt, missing or duplicated section, or a source board this side cannot match (a disk or network card the
    /// source has and this side was given no backend for, or the other way round). A board that could not be built
    /// (a disk file locked, a tap that cannot be opened) is an <see cref="InvalidDataException"/> too.</remarks>
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
        if (machine is null)
        {
            int harts = VirtMachine.HartsOfSource(converted);
            GuestRam adopted = ram ?? throw new InvalidOperationException("no RAM");
            ram = null;
            try
            {
                machine = new VirtMachine(new MachineOptions
                {
                    MemoryBytes = adopted.Size,
                    Harts = harts,
                    DiskPath = options.DiskPath,
                    DiskReadOnly = options.DiskReadOnly,
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
        machine.LoadState(converted);
    }

    /// <inheritdoc/>
    public void Start()
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        VirtMachine m = machine ?? throw new InvalidOperationException("no state was loaded");
        started = true;
        m.Start();
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        machine?.Dispose();
        ram?.Dispose();
    }
}

/// <summary>
/// Builds a <see cref="VirtMachineTarget"/> for an incoming migration: RAM of the size the handshake announces, and,
/// when the state arrives, a board in the source's shape with the backends of <see cref="Options"/> (serial line,
/// disk, tap, rng); its <see cref="MachineOptions.MemoryBytes"/> and <see cref="MachineOptions.Harts"/> are ignored.
/// </summary>
public sealed class VirtMachineTargetFactory : IMigrationTargetFactory
{
    private VirtMachineTarget? last;

    /// <summary>The destination's backends.</summary>
    public required MachineOptions Options { get; init; }

    /// <summary>The most recently created target, or null.</summary>
    public VirtMachineTarget? LastCreated => Volatile.Read(ref last);

    /// <inheritdoc/>
    /// <remarks>The layout must be the machine's: one region at <see cref="VirtMachine.RamBase"/> of a size the board takes.</remarks>
    public IMigrationTarget Create(Guid vmId, IReadOnlyList<(ulong GuestPhysicalAddress, ulong Size)> regions)
    {
        ArgumentNullException.ThrowIfNull(regions);
        if (regions.Count != 1 || regions[0].GuestPhysicalAddress != VirtMachine.RamBase)
        {
            throw new InvalidDataException($"a virt machine has one RAM region at 0x{VirtMachine.RamBase:x}; the source offers {regions.Count} regions");
        }
        try
        {
            VirtMachine.CheckMemorySize(regions[0].Size);
        }
        catch (MachineConfigException e)
        {
            throw new InvalidDataException($"the source's RAM: {e.Message}", e);
        }
        var target = new VirtMachineTarget(vmId, new GuestRam(VirtMachine.RamBase, regions[0].Size), Options);
        Volatile.Write(ref last, target);
        return target;
    }
}
