namespace Ferry.Migration.Guest;

/// <summary>
/// The guest being built on the destination (the destination side of the guest contract).
/// </summary>
/// <remarks>
/// <para><b>Call order</b>: created by <see cref="IMigrationTargetFactory.Create"/> once the handshake succeeded →
/// pages are written into <see cref="Regions"/> by the engine's receive threads →
/// <see cref="LoadState"/> (after <c>complete</c>, before <c>ready</c>) → <see cref="Start"/> (on <c>commit</c>) —
/// or <see cref="IDisposable.Dispose"/> without <see cref="Start"/> on any failure, which discards everything.</para>
/// <para><b>Threading</b>: the engine's page-channel threads write page contents directly into
/// <see cref="Regions"/> memory concurrently (each page by one thread at a time); the other calls come from the
/// engine's control thread.</para>
/// </remarks>
public interface IMigrationTarget : IDisposable
{
    /// <summary>
    /// Guest memory, as laid out by the source's handshake. Writable, zero-filled at creation, and private anonymous
    /// memory: the engine never writes a page that only ever receives zeros, and zeroes a page that held data with
    /// <c>MADV_DONTNEED</c> when the run is long (shared or file-backed memory would read back its old contents).
    /// A region may instead be a shared mapping of a file that reads as zeros (just truncated), marked
    /// <see cref="MemoryRegion.FileBacked"/>: the engine then zeroes with <c>MADV_REMOVE</c> or by writing.
    /// </summary>
    IReadOnlyList<MemoryRegion> Regions { get; }

    /// <summary>
    /// Whether <see cref="Regions"/> memory is advised transparent huge pages (<c>MADV_HUGEPAGE</c>), as guest memory
    /// should be. Only then does the engine change that advice: 2 MiB windows that receive a few pages while the
    /// guest is paused are switched to 4 KiB pages (a huge-page fault there costs milliseconds of downtime), and
    /// windows the guest turns out to use are collapsed back into huge pages during pre-copy. When false (the
    /// default) the engine never touches the memory's huge-page advice.
    /// </summary>
    bool TransparentHugePages => false;

    /// <summary>Load CPU and device state. Validates every section; throws <see cref="InvalidDataException"/> on bad input.</summary>
    void LoadState(IReadOnlyList<StateSection> sections);

    /// <summary>Run the guest. Called once, after <c>commit</c>.</summary>
    void Start();

    /// <summary>
    /// The source asks whether a pre-copy pass has landed (landed sync), and the pages before its question have: make
    /// them as durable as the switchover will need them, before the answer goes out. A target whose memory includes a
    /// file it must flush before the guest runs (a copied disk) syncs it here, so that the source's measure of the
    /// pass counts the flush, and the flush inside the downtime has only the last pass left. Called from page-channel
    /// threads, possibly several at once, never together with <see cref="LoadState"/>. Nothing by default. Throws
    /// <see cref="IOException"/> if the target cannot make them durable: the migration fails with its message, before
    /// the pause, and the source runs on.
    /// </summary>
    void SyncLanded() { }
}

/// <summary>Creates a destination guest once the incoming handshake says what memory it needs.</summary>
public interface IMigrationTargetFactory
{
    /// <summary>
    /// Build an empty guest whose regions have exactly the given guest-physical bases and sizes.
    /// <paramref name="regions"/> has already been validated (page aligned, non-overlapping, within the
    /// receiver's configured limit). Throws if this host cannot provide it: <see cref="InvalidDataException"/> or
    /// <see cref="IOException"/>, whose message the source is sent as the handshake's refusal.
    /// </summary>
    IMigrationTarget Create(Guid vmId, IReadOnlyList<(ulong GuestPhysicalAddress, ulong Size)> regions);
}
