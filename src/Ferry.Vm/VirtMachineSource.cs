using Ferry.Machine;
using Ferry.Migration.Guest;

namespace Ferry.Vm;

/// <summary>
/// A running <see cref="VirtMachine"/> as the engine's migration source: its RAM is the one region (guest-physical
/// <see cref="VirtMachine.RamBase"/>, sent straight from the machine's mapping), its dirty log is the machine's (hart
/// stores and device writes), and its state is the machine's sections.
/// </summary>
/// <remarks>
/// Calls come from the engine's migration thread in the order <see cref="IMigrationSource"/> gives. The source does not
/// own the machine: after a completed migration the machine stays paused for good and the caller disposes it; after a
/// failed one it runs again.
/// </remarks>
public sealed class VirtMachineSource : IMigrationSource
{
    private readonly VirtMachine machine;
    private readonly MemoryRegion[] regions;
    private volatile bool running;

    /// <summary>Migrate <paramref name="machine"/>, which has been started and is running (not paused).</summary>
    public VirtMachineSource(VirtMachine machine)
    {
        ArgumentNullException.ThrowIfNull(machine);
        this.machine = machine;
        unsafe
        {
            // SAFETY: the mapping lives as long as the machine, which outlives the migration (the caller owns both).
            regions = [new MemoryRegion(VirtMachine.RamBase, machine.Ram.Size, (nint)machine.Ram.Host)];
        }
        TotalPages = machine.Ram.Size >> MemoryRegion.PageShift;
        running = true;
    }

    /// <summary>The machine being migrated.</summary>
    public VirtMachine Machine => machine;

    /// <inheritdoc/>
    public IReadOnlyList<MemoryRegion> Regions => regions;

    /// <inheritdoc/>
    public ulong TotalPages { get; }

    /// <inheritdoc/>
    public bool IsRunning => running;

    /// <inheritdoc/>
    public void StartDirtyLog() => machine.StartDirtyLog();

    /// <inheritdoc/>
    public void HarvestDirtyLog(Span<ulong> bitmap) => machine.HarvestDirty(bitmap);

    /// <inheritdoc/>
    public void GetPopulatedPages(Span<ulong> bitmap) => machine.GetPopulatedPages(bitmap);

    /// <inheritdoc/>
    public void StopDirtyLog() => machine.StopDirtyLog();

    /// <inheritdoc/>
    public void SetThrottle(int percent) => machine.SetThrottle(percent);

    /// <inheritdoc/>
    /// <remarks>Harts first (no guest store after they park), then the virtio devices (no DMA into RAM after they stop),
    /// so the final harvest that follows holds every last write.</remarks>
    public void Pause()
    {
        machine.Pause();
        machine.PauseDevices();
        running = false;
    }

    /// <inheritdoc/>
    public void Resume()
    {
        machine.ResumeDevices();
        machine.Resume();
        running = true;
    }

    /// <inheritdoc/>
    public IReadOnlyList<StateSection> SaveState()
    {
        IReadOnlyList<MachineStateSection> saved = machine.SaveState();
        var sections = new StateSection[saved.Count];
        for (int i = 0; i < sections.Length; i++) sections[i] = new StateSection(saved[i].Name, saved[i].Version, saved[i].Data);
        return sections;
    }
}
