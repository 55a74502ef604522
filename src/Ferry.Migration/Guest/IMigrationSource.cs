namespace Ferry.Migration.Guest;

/// <summary>
/// What the engine asks of the guest being migrated away (the source side of the guest contract, DESIGN.md).
/// Implemented by the KVM VM and by the in-process test guest.
/// </summary>
/// <remarks>
/// <para><b>Call order</b> (one migration):
/// <see cref="StartDirtyLog"/> → <see cref="HarvestDirtyLog"/> (drained: round 0 sends everything) → <see cref="GetPopulatedPages"/> →
/// (<see cref="HarvestDirtyLog"/> per round, with <see cref="SetThrottle"/> at any time) →
/// <see cref="Pause"/> → <see cref="HarvestDirtyLog"/> (final) → <see cref="SaveState"/> →
/// either <see cref="StopDirtyLog"/> and the source is never resumed (after <c>commit</c>),
/// or <see cref="SetThrottle"/>(0) + <see cref="StopDirtyLog"/> + <see cref="Resume"/> (any failure before <c>commit</c>).
/// A failure before <see cref="Pause"/> calls <see cref="SetThrottle"/>(0) and <see cref="StopDirtyLog"/> only.</para>
/// <para><b>Threading</b>: all calls come from the engine's single migration thread, never concurrently with each other.
/// The guest keeps running (its own threads write memory) until <see cref="Pause"/>; the engine reads
/// <see cref="Regions"/> memory concurrently with those writes, which is why every page read while running is
/// re-sent if the dirty log says it was written again.</para>
/// </remarks>
public interface IMigrationSource
{
    /// <summary>Guest memory, in guest-physical order. Fixed for the life of the migration.</summary>
    IReadOnlyList<MemoryRegion> Regions { get; }

    /// <summary>Total pages over all regions; the length in bits of every dirty bitmap.</summary>
    ulong TotalPages { get; }

    /// <summary>True between <see cref="Resume"/> (or boot) and <see cref="Pause"/>.</summary>
    bool IsRunning { get; }

    /// <summary>
    /// Begin tracking writes. Every page counts as dirty from here on until first harvested, i.e. the first
    /// harvest need not report pages the engine sends in its first full pass anyway.
    /// </summary>
    void StartDirtyLog();

    /// <summary>
    /// OR into <paramref name="bitmap"/> one bit per page written since the previous harvest (or since
    /// <see cref="StartDirtyLog"/>), then reset the log. Bit <c>i</c> is page <c>i</c> counted across
    /// <see cref="Regions"/> in order (word <c>i / 64</c>, bit <c>i % 64</c>). The log must be the union of writes by
    /// the vCPUs and by device emulation (STYLE.md 5). <paramref name="bitmap"/> has at least
    /// <c>ceil(TotalPages / 64)</c> words.
    /// </summary>
    void HarvestDirtyLog(Span<ulong> bitmap);

    /// <summary>
    /// OR into <paramref name="bitmap"/> (same layout as <see cref="HarvestDirtyLog"/>) every page that may hold non-zero
    /// bytes. A page left clear is known to read as zero without being read — e.g. anonymous memory the guest never
    /// touched — so the first pass sends it as a zero page without touching it. Reading untouched memory faults it in:
    /// measured here at ~3 s per GiB (a VM host whose kernel backs even read faults with private pages), which would
    /// make an idle 4 GiB guest take 12 s to migrate. A guest that cannot tell sets every bit.
    /// Called once, after <see cref="StartDirtyLog"/> and the first (draining) <see cref="HarvestDirtyLog"/>, so a page
    /// first written after the call is caught by the log.
    /// </summary>
    void GetPopulatedPages(Span<ulong> bitmap);

    /// <summary>Stop tracking writes (idempotent).</summary>
    void StopDirtyLog();

    /// <summary>
    /// Slow the guest down for auto-converge: its vCPUs sleep <paramref name="percent"/>% of each time slice.
    /// 0 disables throttling. Range 0..99.
    /// </summary>
    void SetThrottle(int percent);

    /// <summary>Stop every vCPU and return once none runs (no guest memory write happens after return).</summary>
    void Pause();

    /// <summary>Let the vCPUs run again (a migration that failed or was cancelled before <c>commit</c>).</summary>
    void Resume();

    /// <summary>Save all CPU and device state as sections. Only while paused.</summary>
    IReadOnlyList<StateSection> SaveState();
}
