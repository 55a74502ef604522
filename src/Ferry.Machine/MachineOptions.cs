namespace Ferry.Machine;

/// <summary>What to build: a <c>virt</c> board with this much RAM and this many harts.</summary>
public sealed class MachineOptions
{
    /// <summary>RAM size in bytes at 0x8000_0000; a multiple of 4 KiB, at least 2 MiB.</summary>
    public ulong MemoryBytes { get; init; } = 128UL << 20;

    /// <summary>Number of harts (1 to <see cref="VirtMachine.MaxHarts"/>), each run by its own host thread.</summary>
    public int Harts { get; init; } = 1;

    /// <summary>Raw disk image for a virtio-blk device (slot 0), or null for none.</summary>
    public string? DiskPath { get; init; }

    /// <summary>Attach the disk read-only (the guest's writes fail; the file is not changed).</summary>
    public bool DiskReadOnly { get; init; }

    /// <summary>
    /// Open the disk without its <c>flock</c>: a migration's destination is built while the source still holds the
    /// lock, and takes it (<see cref="VirtMachine.AcquireDiskLock"/>) before its guest runs.
    /// </summary>
    public bool DiskLockDeferred { get; init; }

    /// <summary>
    /// The copy into <see cref="DiskPath"/> of the migration this board is built for (a destination's), or null: the
    /// disk device shares its open file and lock (<see cref="Virtio.DiskImageCopy.ShareFile"/>), and the copy's own
    /// marker of an incomplete image does not refuse it. Needs <see cref="DiskLockDeferred"/>.
    /// </summary>
    public Virtio.DiskImageCopy? DiskCopy { get; init; }

    /// <summary>Host tap device for a virtio-net device (created if missing, removed again if we created it), or null for no network.</summary>
    public string? TapName { get; init; }

    /// <summary>The guest's MAC address for <see cref="TapName"/> (QEMU's default, 52:54:00:12:34:56, if null).</summary>
    public byte[]? MacAddress { get; init; }

    /// <summary>Give the guest a virtio-rng device (on by default, as entropy makes a Linux guest boot quickly).</summary>
    public bool Rng { get; init; } = true;

    /// <summary>Where the UART's output goes (null: discarded). Written from hart threads; the machine serialises writes.</summary>
    public Stream? SerialOut { get; init; }
}
