namespace Ferry.Machine.Cpu;

/// <summary>
/// The decoded instructions of one 4 KiB guest frame, one slot per halfword, decoded lazily as they are first run.
/// The slots are native memory, so the interpreter walks them by pointer (no bounds check per instruction) and the
/// garbage collector never sees them: as pinned managed arrays (32 KiB each) every burst of newly run code pages (a
/// boot, a migrated guest's first milliseconds on the destination, a new program) counted against the large-object
/// budget and set off blocking gen2 collections that stopped every hart (measured on a destination: one such pause of
/// 2-8 ms in the 30 ms after the guest resumed). The interpreter keeps a reference to the page while it runs it, so a
/// page dropped meanwhile stays valid until then: the slots go back to the <see cref="CodeSlab"/> only when the page
/// object itself is collected.
/// </summary>
internal sealed unsafe class CodePage
{
    public const int Slots = 2048;

    public CodePage(int frame, byte* host)
    {
        Insns = CodeSlab.Rent();
        Frame = frame;
        Host = host;
    }

    ~CodePage() => CodeSlab.Return(Insns);

    /// <summary>Global frame number (see <see cref="Memory.MemoryRegion.FirstFrame"/>); -1 for the scratch page.</summary>
    public int Frame { get; }

    /// <summary>Host address of the frame's first byte; null for the scratch page of page-crossing instructions.</summary>
    public byte* Host { get; }

    public Insn* Insns { get; }
}
