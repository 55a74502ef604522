namespace Ferry.Migration.Guest;

/// <summary>
/// A named, versioned piece of guest state (a vCPU, the irqchip, a device, ...), opaque to the engine.
/// The engine moves sections; only the guest interprets them. Names are ASCII, at most
/// <see cref="MaxNameLength"/> bytes; data at most <see cref="MaxDataLength"/> bytes (Firecracker caps a whole
/// snapshot's state at 10 MB; one vCPU here is ~11 KB).
/// </summary>
public sealed record StateSection(string Name, uint Version, ReadOnlyMemory<byte> Data)
{
    /// <summary>Longest section name accepted on the wire.</summary>
    public const int MaxNameLength = 64;

    /// <summary>Largest section payload accepted on the wire (4 MiB).</summary>
    public const int MaxDataLength = 4 << 20;
}
