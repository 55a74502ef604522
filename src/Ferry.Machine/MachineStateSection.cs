namespace Ferry.Machine;

/// <summary>
/// One named, versioned piece of a machine's state (a hart, the CLINT, a device, the board itself), as
/// <see cref="VirtMachine.SaveState"/> makes it and <see cref="VirtMachine.LoadState"/> takes it. The data carries its
/// own magic, version and size too; <see cref="Version"/> repeats the version for a carrier that files sections by it.
/// </summary>
/// <param name="Name">ASCII, at most <see cref="MaxNameLength"/> bytes: <c>machine</c>, <c>hart.N</c>, <c>clint</c>,
/// <c>plic</c>, <c>uart</c>, <c>rtc</c>, <c>virtio.N</c> (N the slot).</param>
/// <param name="Version">Format version of the section.</param>
/// <param name="Data">The section's bytes.</param>
public sealed record MachineStateSection(string Name, uint Version, ReadOnlyMemory<byte> Data)
{
    /// <summary>Longest section name.</summary>
    public const int MaxNameLength = 64;

    /// <summary>Largest section accepted on load (a virtio slot with its device state is at most ~66 KiB).</summary>
    public const int MaxDataLength = 1 << 20;
}
