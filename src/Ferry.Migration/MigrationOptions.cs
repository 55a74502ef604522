namespace Ferry.Migration;

/// <summary>What to do when pre-copy hits its round or time limit without converging.</summary>
public enum TimeoutStrategy
{
    /// <summary>Give up: the source keeps running and the migration ends <c>failed</c> with the reason.</summary>
    Cancel = 1,

    /// <summary>Switch over anyway, accepting a longer downtime.</summary>
    Force = 2,

    /// <summary>
    /// Switch to post-copy: the guest runs on the destination at once and fetches what it lacks. Risk: from then on the
    /// VM exists only across both hosts, and losing either loses it.
    /// </summary>
    Postcopy = 3,
}

/// <summary>How the memory moves.</summary>
public enum MigrationMode
{
    /// <summary>Copy while the guest runs, in rounds, then stop and copy the rest. A failed destination costs nothing.</summary>
    Precopy = 1,

    /// <summary>
    /// Move CPU and device state only, run the guest on the destination at once, and bring its memory after it: pages it
    /// touches first are fetched on demand (faults), the rest pushed in the background. Every page crosses once and the
    /// downtime does not depend on the dirty rate; but from the switchover until the last page lands, losing either host
    /// or the network for good loses the VM.
    /// </summary>
    Postcopy = 2,

    /// <summary>Pre-copy rounds first (most pages move while the guest runs on the source), then post-copy for the rest.</summary>
    Hybrid = 3,
}

/// <summary>Knobs of one outgoing migration. Defaults follow QEMU where it has one.</summary>
public sealed record MigrationOptions
{
    /// <summary>Largest acceptable downtime (QEMU: downtime-limit, default 300 ms; ours 50 ms).</summary>
    public TimeSpan DowntimeLimit { get; init; } = TimeSpan.FromMilliseconds(50);

    /// <summary>Bandwidth cap for page channels in bytes/s; 0 = unlimited. Can be changed while running.</summary>
    public long MaxBandwidth { get; init; }

    /// <summary>Number of page channels (QEMU multifd-channels, default 2).</summary>
    public int PageChannels { get; init; } = 2;

    /// <summary>Most pre-copy rounds before the <see cref="TimeoutStrategy"/> applies.</summary>
    public int MaxRounds { get; init; } = 30;

    /// <summary>Longest pre-copy phase before the <see cref="TimeoutStrategy"/> applies.</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>What happens when <see cref="MaxRounds"/> or <see cref="Timeout"/> is hit.</summary>
    public TimeoutStrategy TimeoutStrategy { get; init; } = TimeoutStrategy.Cancel;

    /// <summary>Throttle the guest when it dirties faster than the link (QEMU auto-converge).</summary>
    public bool AutoConverge { get; init; } = true;

    /// <summary>First throttle step, percent (QEMU cpu-throttle-initial 20).</summary>
    public int ThrottleInitial { get; init; } = 20;

    /// <summary>Throttle increment per step, percent (QEMU cpu-throttle-increment 10).</summary>
    public int ThrottleIncrement { get; init; } = 10;

    /// <summary>Throttle ceiling, percent (QEMU max-cpu-throttle 99).</summary>
    public int ThrottleMax { get; init; } = 99;

    /// <summary>Digest all guest memory at pause (source) and after load (destination), outside the downtime figure.</summary>
    public bool Verify { get; init; }

    /// <summary>
    /// Checksum the page data of the stop-and-copy pass too (DataChecksummed), not only the batches' headers and runs.
    /// Off by default, as QEMU, Cloud Hypervisor and Firecracker do not checksum pages either: it covers only the pages
    /// dirtied last (earlier rounds cannot be checksummed while the guest writes them), TCP covers the bytes in flight,
    /// and it costs ~0.7 µs per page inside the downtime (2-core host, 200k pages/s hotset: downtime median 36.9 ms
    /// with it, 28.0 ms without). <see cref="Verify"/> is the end-to-end check.
    /// </summary>
    public bool ChecksumFinalPass { get; init; }

    /// <summary>Pre-copy, post-copy or hybrid.</summary>
    public MigrationMode Mode { get; init; } = MigrationMode.Precopy;

    /// <summary>
    /// Hybrid: the most pre-copy rounds before the switch to post-copy; it comes earlier when a round's rest fits the
    /// downtime limit or pre-copy stops converging (the dirty set no longer shrinks).
    /// </summary>
    public int HybridMaxRounds { get; init; } = 5;

    /// <summary>The order of post-copy's background push.</summary>
    public Postcopy.PrepagingStrategy Prepaging { get; init; } = Postcopy.PrepagingStrategy.Bubble;

    /// <summary>Whether this migration may end in post-copy, so it must negotiate post-copy at the handshake.</summary>
    public bool PostcopyPossible => Mode != MigrationMode.Precopy || TimeoutStrategy == TimeoutStrategy.Postcopy;

    /// <summary>
    /// How long without any byte from the peer before it counts as hung (keepalives are sent at a third of this).
    /// </summary>
    public TimeSpan PeerTimeout { get; init; } = TimeSpan.FromSeconds(10);
}
