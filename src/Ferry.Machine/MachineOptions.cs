namespace Ferry.Machine;

/// <summary>What to build: a <c>virt</c> board with this much RAM and this many harts.</summary>
public sealed class MachineOptions
{
    /// <summary>RAM size in bytes at 0x8000_0000; a multiple of 4 KiB, at least 2 MiB.</summary>
    public ulong MemoryBytes { get; init; } = 128UL << 20;

    /// <summary>Number of harts (1 to <see cref="VirtMachine.MaxHarts"/>), each run by its own host thread.</summary>
    public int Harts { get; init; } = 1;

    /// <summary>Where the UART's output goes (null: discarded). Written from hart threads; the machine serialises writes.</summary>
    public Stream? SerialOut { get; init; }
}
