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
/// Source, post-copy switchover: pages [<paramref name="FirstPage"/>, + 64 × words) of <paramref name="Region"/> whose
/// bit is set are missing on the destination (never sent, or dirtied since). <paramref name="FirstPage"/> is a
/// multiple of 64 and the slice lies inside the region (checked with <see cref="Validate"/>); bits past the region's
/// end must be clear.
/// </summary>
public sealed record MissingPagesMessage(ushort Region, ulong FirstPage, ulong[] Words) : ControlMessage
{
    public override RecordKind Kind => RecordKind.MissingPages;

    /// <summary>Throw <see cref="MigrationProtocolException"/> unless the slice lies inside <paramref name="regions"/>.</summary>
    public void Validate(IReadOnlyList<Guest.MemoryRegion> regions)
    {
        ArgumentNullException.ThrowIfNull(regions);
        if (Region >= regions.Count)
            throw new MigrationProtocolException($"MissingPages: region {Region} does not exist ({regions.Count} regions)");
        ulong pages = regions[Region].Pages;
        if (FirstPage % 64 != 0 || FirstPage >= pages || (ulong)Words.Length > ((pages - FirstPage) + 63) / 64)
            throw new MigrationProtocolException($"MissingPages: {Words.Length} words from page {FirstPage} do not fit region {Region} of {pages} pages");
        ulong end = FirstPage + ((ulong)Words.Length * 64);
        if (end > pages && (Words[^1] >> (int)(64 - (end - pages))) != 0)
            throw new MigrationProtocolException($"MissingPages: bits past the end of region {Region} are set");
    }
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
