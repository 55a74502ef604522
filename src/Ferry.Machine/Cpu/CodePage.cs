namespace Ferry.Machine.Cpu;

/// <summary>
/// The decoded instructions of one 4 KiB guest frame, one slot per halfword, decoded lazily as they are first run.
/// The slots live on the pinned object heap so the interpreter walks them by pointer (no bounds check per instruction);
/// the interpreter keeps a reference to the page while it runs it, so a page dropped meanwhile stays valid until then.
/// </summary>
internal sealed unsafe class CodePage
{
    public const int Slots = 2048;

    private readonly Insn[] slots;

    public CodePage(int frame, byte* host)
    {
        slots = GC.AllocateArray<Insn>(Slots, pinned: true);
        Frame = frame;
        Host = host;
        fixed (Insn* p = slots) Insns = p; // pinned array: the address stays valid for the array's life
    }

    /// <summary>Global frame number (see <see cref="Memory.MemoryRegion.FirstFrame"/>); -1 for the scratch page.</summary>
    public int Frame { get; }

    /// <summary>Host address of the frame's first byte; null for the scratch page of page-crossing instructions.</summary>
    public byte* Host { get; }

    public Insn* Insns { get; }
}
