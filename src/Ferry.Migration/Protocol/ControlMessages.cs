namespace Ferry.Migration.Protocol;

/// <summary>A decoded control record (see <see cref="MigrationProtocol"/> for each layout).</summary>
/// <remarks>Control records are few (a handful per migration plus a keepalive per few seconds), so each is a small
/// object; the page path (<see cref="PageBatchReader"/>) allocates nothing.</remarks>
public abstract record ControlMessage
{
    /// <summary>The record kind this message travels as.</summary>
    public abstract RecordKind Kind { get; }
}

/// <summary>Source's opening record.</summary>
/// <param name="Version">Protocol version the source speaks.</param>
/// <param name="VmId">The VM's identity.</param>
/// <param name="PageSize">Guest page size; 4096 in v1.</param>
/// <param name="PageChannels">Number of page channels the source opened (1..16).</param>
/// <param name="Capabilities">What the source wants to use; the receiver leaves optional bits it cannot honour out of
/// Welcome and refuses required ones (<see cref="ProtocolCapabilities"/>).</param>
/// <param name="Regions">Guest memory layout, sorted and disjoint (structure checked on decode; total against the
/// receiver's limit with <see cref="MigrationProtocol.Evaluate"/>).</param>
/// <param name="Token">Authorisation token, at most 256 bytes.</param>
public sealed record HelloMessage(
    ushort Version,
    Guid VmId,
    uint PageSize,
    ushort PageChannels,
    ProtocolCapabilities Capabilities,
    IReadOnlyList<(ulong GuestPhysicalAddress, ulong Size)> Regions,
    ReadOnlyMemory<byte> Token) : ControlMessage
{
    public override RecordKind Kind => RecordKind.Hello;

    /// <summary>Sum of region sizes.</summary>
    public ulong TotalBytes
    {
        get
        {
            ulong total = 0;
            foreach (var (_, size) in Regions) total += size;
            return total;
        }
    }
}

/// <summary>Destination accepts the handshake.</summary>
public sealed record WelcomeMessage(ushort Version, ProtocolCapabilities Capabilities) : ControlMessage
{
    public override RecordKind Kind => RecordKind.Welcome;
}

/// <summary>Destination refuses the handshake.</summary>
public sealed record RefuseMessage(string Reason) : ControlMessage
{
    public override RecordKind Kind => RecordKind.Refuse;
}

/// <summary>One piece of guest state; data was checked against its checksum on decode.</summary>
public sealed record StateSectionMessage(Guest.StateSection Section) : ControlMessage
{
    public override RecordKind Kind => RecordKind.StateSection;
}

/// <summary>Source: all pages and state are sent; <paramref name="FlushSequence"/> is the Flush every page channel carries.</summary>
public sealed record CompleteMessage(ulong FlushSequence, CompleteFlags Flags) : ControlMessage
{
    public override RecordKind Kind => RecordKind.Complete;
}

/// <summary>
/// Destination: loaded and ready; times in microseconds; <paramref name="Digest"/> when verify was requested;
/// <paramref name="FlushLagMicroseconds"/> from Complete read until the last page channel's Flush arrived: positive when
/// final pages were still in flight after Complete, negative when they had all landed before it.
/// </summary>
public sealed record ReadyMessage(uint DigestMicroseconds, uint LoadMicroseconds, UInt128? Digest, int FlushLagMicroseconds = 0) : ControlMessage
{
    public override RecordKind Kind => RecordKind.Ready;
}

/// <summary>Source: commit; the destination owns the VM.</summary>
public sealed record CommitMessage : ControlMessage
{
    /// <summary>Commit has no fields; one instance serves.</summary>
    public static CommitMessage Instance { get; } = new();
    public override RecordKind Kind => RecordKind.Commit;
}

/// <summary>Destination: guest started; <paramref name="ResumeMicroseconds"/> from Commit received to vCPUs running.</summary>
public sealed record ResumedMessage(uint ResumeMicroseconds) : ControlMessage
{
    public override RecordKind Kind => RecordKind.Resumed;
}

/// <summary>Either side cancels.</summary>
public sealed record CancelMessage(string Reason) : ControlMessage
{
    public override RecordKind Kind => RecordKind.Cancel;
}

/// <summary>Either side failed.</summary>
public sealed record ErrorMessage(ProtocolErrorCode Code, string Message) : ControlMessage
{
    public override RecordKind Kind => RecordKind.Error;
}

/// <summary>Liveness; <paramref name="Timestamp"/> is the sender's clock, opaque to the receiver.</summary>
public sealed record KeepaliveMessage(ulong Timestamp) : ControlMessage
{
    public override RecordKind Kind => RecordKind.Keepalive;
}

/// <summary>Destination asks for pages (post-copy). Count is 1..512; check the range with <see cref="Validate"/>.</summary>
public sealed record PageRequestMessage(ushort Region, ulong FirstPage, uint Count) : ControlMessage
{
    public override RecordKind Kind => RecordKind.PageRequest;

    /// <summary>Throw <see cref="MigrationProtocolException"/> unless the pages lie inside <paramref name="regions"/>.</summary>
    public void Validate(IReadOnlyList<Guest.MemoryRegion> regions)
    {
        ArgumentNullException.ThrowIfNull(regions);
        if (Region >= regions.Count)
            throw new MigrationProtocolException($"PageRequest: region {Region} does not exist ({regions.Count} regions)");
        ulong pages = regions[Region].Pages;
        if (FirstPage >= pages || Count > pages - FirstPage)
            throw new MigrationProtocolException($"PageRequest: pages {FirstPage}+{Count} outside region {Region} of {pages} pages");
    }
}

/// <summary>
/// Source, post-copy switchover: the pages of <paramref name="Runs"/> (each first page and count, count &gt; 0) of
/// <paramref name="Region"/> are missing on the destination (never sent, or dirtied since). Check them against the
/// layout with <see cref="Validate"/>.
/// </summary>
public sealed record MissingPagesMessage(ushort Region, (ulong First, uint Count)[] Runs) : ControlMessage
{
    public override RecordKind Kind => RecordKind.MissingPages;

    /// <summary>Throw <see cref="MigrationProtocolException"/> unless every run lies inside <paramref name="regions"/>.</summary>
    public void Validate(IReadOnlyList<Guest.MemoryRegion> regions) => ValidateRuns("MissingPages", Region, Runs, regions);

    internal static void ValidateRuns(string what, ushort region, (ulong First, uint Count)[] runs, IReadOnlyList<Guest.MemoryRegion> regions)
    {
        ArgumentNullException.ThrowIfNull(regions);
        if (region >= regions.Count)
            throw new MigrationProtocolException($"{what}: region {region} does not exist ({regions.Count} regions)");
        ulong pages = regions[region].Pages;
        foreach (var (first, count) in runs)
        {
            if (count == 0 || first >= pages || count > pages - first)
                throw new MigrationProtocolException($"{what}: pages {first}+{count} outside region {region} of {pages} pages");
        }
    }
}

/// <summary>
/// Source, pure post-copy with PopulatedMap, before the switchover: the pages of <paramref name="Runs"/> of
/// <paramref name="Region"/> hold data on the source (the others read as zero); <paramref name="Last"/> ends the map
/// (a Last record may carry no run). Check them against the layout with <see cref="Validate"/>.
/// </summary>
public sealed record PopulatedPagesMessage(ushort Region, (ulong First, uint Count)[] Runs, bool Last) : ControlMessage
{
    /// <summary>Header flag: the map's final record.</summary>
    public const byte LastFlag = 1;

    public override RecordKind Kind => RecordKind.PopulatedPages;

    /// <summary>Throw <see cref="MigrationProtocolException"/> unless every run lies inside <paramref name="regions"/>.</summary>
    public void Validate(IReadOnlyList<Guest.MemoryRegion> regions) => MissingPagesMessage.ValidateRuns("PopulatedPages", Region, Runs, regions);
}

/// <summary>Destination, resuming post-copy: the missing map is complete (<paramref name="MissingPages"/> pages).</summary>
public sealed record ResumeReadyMessage(ulong MissingPages) : ControlMessage
{
    public override RecordKind Kind => RecordKind.ResumeReady;
}

/// <summary>
/// Destination: every page that was missing has landed, post-copy is over. Figures of the destination's side:
/// faults (pages a guest thread waited for), fault latency percentiles (request to installed, microseconds), time guest
/// threads spent blocked (microseconds), the guest's working set during post-copy (distinct pages touched; ulong.MaxValue
/// when the guest cannot tell), pages installed, and pages that arrived twice (pushed and requested both).
/// </summary>
public sealed record PostcopyDoneMessage(
    uint Faults, uint LatencyP50Us, uint LatencyP99Us, uint LatencyMaxUs,
    ulong BlockedMicroseconds, ulong WorkingSetPages, ulong InstalledPages, ulong DuplicatePages,
    UInt128? Digest) : ControlMessage
{
    public override RecordKind Kind => RecordKind.PostcopyDone;
}
