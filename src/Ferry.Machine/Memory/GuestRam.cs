using System.Numerics;
using Ferry.Linux;

namespace Ferry.Machine.Memory;

/// <summary>
/// The guest's RAM: one native allocation (an anonymous mapping, so untouched pages cost nothing and read as zeros),
/// handed to the migration engine as is. Keeps the dirty log (one bit per page) that harts set on their store slow
/// path and device writes set through <see cref="Write"/>, and which pages hold decoded code.
/// </summary>
/// <remarks>
/// Dirty tracking follows QEMU's <c>TLB_NOTDIRTY</c>: a hart installs a write TLB entry for a page only when
/// <see cref="WriteFastAllowed"/> says so (tracking off, or the page already dirty since the last harvest, and no
/// decoded code in it). The first store to a clean page therefore reaches <see cref="NoteCpuWrite"/>, which marks it.
/// A harvest (<see cref="SwapDirtyLog"/>, driven by the machine) swaps in a clean bitmap; the machine then drops every
/// hart's write entries before it hands the old bitmap out.
/// </remarks>
public sealed unsafe class GuestRam : MemoryRegion, IDisposable
{
    // Owns the mapping; Host points into it.
    private readonly GuestMemoryMapping mapping;
    // One bit per page, set by the first write after a harvest. Swapped (never cleared in place) by a harvest.
    private ulong[] dirty;
    // One byte per page: nonzero while some hart holds decoded instructions of the page.
    private readonly byte[] code;
    // Per page: writes seen while it was code (see NoteCpuWrite).
    private readonly int[] codeWrites;
    // True between StartDirtyLog and StopDirtyLog.
    private volatile bool tracking;

    public GuestRam(ulong guestBase, ulong size)
        : base(guestBase, size)
    {
        mapping = GuestMemoryMapping.Create(size);
        dirty = new ulong[(PageCount + 63) / 64];
        code = new byte[PageCount];
        codeWrites = new int[PageCount];
    }

    /// <inheritdoc/>
    public override byte* Host => (byte*)mapping.Address;

    /// <inheritdoc/>
    public override bool Writable => true;

    /// <summary>True while the dirty log records writes.</summary>
    public bool Tracking => tracking;

    /// <summary>
    /// Called with (page, offset in page, length) when a write (a hart's slow path or a device) hits a page holding
    /// decoded code: harts forget the instructions those bytes overlap.
    /// </summary>
    internal Action<int, int, int>? CodeWritten { get; set; }

    /// <summary>Called with a page index when a page stops being treated as code: harts drop its decoded page.</summary>
    internal Action<int>? CodeDropped { get; set; }

    /// <summary>Whether a hart may install a write TLB entry (a store fast path) for page <paramref name="page"/>.</summary>
    internal bool WriteFastAllowed(int page) =>
        code[page] == 0 && (!tracking || (Volatile.Read(ref dirty[page >> 6]) & (1UL << page)) != 0);

    /// <summary>
    /// A write of <paramref name="length"/> bytes at <paramref name="offset"/> in <paramref name="page"/> by a hart that
    /// missed the write TLB (or by a device): marks the page dirty and, if it holds decoded code, invalidates the
    /// instructions the bytes overlap. A code page written over and over without being run again (data sharing a page
    /// with code, or a code page reused for data) stops being code, so its stores regain the fast path.
    /// </summary>
    internal void NoteCpuWrite(int page, int offset, int length)
    {
        if (tracking) MarkDirty(page);
        if (Volatile.Read(ref code[page]) == 0) return;
        CodeWritten?.Invoke(page, offset, length);
        if (Interlocked.Increment(ref codeWrites[page]) > CodeWriteLimit)
        {
            Volatile.Write(ref code[page], 0);
            CodeDropped?.Invoke(page);
        }
    }

    // Writes to a code page (since it was last marked) after which it is treated as data again.
    private const int CodeWriteLimit = 256;

    /// <summary>Mark a page as holding decoded code (a hart decoded from it).</summary>
    internal void MarkCode(int page)
    {
        Volatile.Write(ref codeWrites[page], 0);
        Volatile.Write(ref code[page], 1);
    }

    /// <summary>True if some hart may hold decoded code of <paramref name="page"/>.</summary>
    internal bool IsCode(int page) => Volatile.Read(ref code[page]) != 0;

    private void MarkDirty(int page)
    {
        ref ulong word = ref dirty[page >> 6];
        ulong bit = 1UL << page;
        if ((Volatile.Read(ref word) & bit) == 0) Interlocked.Or(ref word, bit);
    }

    /// <summary>Start recording writes; every page starts clean. The caller drops the harts' write entries.</summary>
    public void StartDirtyLog()
    {
        Array.Clear(dirty);
        tracking = true;
    }

    /// <summary>Stop recording writes.</summary>
    public void StopDirtyLog() => tracking = false;

    /// <summary>
    /// Install <paramref name="fresh"/> (cleared here) as the live bitmap and return the one that was live. The caller
    /// must then drop every hart's write TLB entries before reading the returned bitmap (see <c>VirtMachine.HarvestDirty</c>).
    /// </summary>
    internal ulong[] SwapDirtyLog(ulong[] fresh)
    {
        if (fresh.Length != dirty.Length) throw new ArgumentException("bitmap size does not match RAM", nameof(fresh));
        Array.Clear(fresh);
        return Interlocked.Exchange(ref dirty, fresh);
    }

    /// <summary>Words in the dirty bitmap: one bit per page, page 0 in bit 0 of word 0.</summary>
    public int DirtyWords => dirty.Length;

    /// <summary>
    /// Copy guest memory at <paramref name="gpa"/> into <paramref name="destination"/> (a device reading RAM, DMA).
    /// Throws <see cref="ArgumentOutOfRangeException"/> if the range is not all inside RAM.
    /// </summary>
    public void Read(ulong gpa, Span<byte> destination)
    {
        CheckRange(gpa, (ulong)destination.Length);
        new ReadOnlySpan<byte>(Host + (gpa - Base), destination.Length).CopyTo(destination);
    }

    /// <summary>
    /// Copy <paramref name="source"/> into guest memory at <paramref name="gpa"/> (a device writing RAM, DMA, a loader):
    /// every page touched is marked dirty and loses its decoded code. Throws if the range is not all inside RAM.
    /// </summary>
    public void Write(ulong gpa, ReadOnlySpan<byte> source)
    {
        CheckRange(gpa, (ulong)source.Length);
        source.CopyTo(new Span<byte>(Host + (gpa - Base), source.Length));
        NoteDeviceWrite(gpa, (ulong)source.Length);
    }

    /// <summary>
    /// Record that something other than a hart's store path wrote [<paramref name="gpa"/>, +<paramref name="length"/>)
    /// through <see cref="Host"/>: marks the pages dirty and drops their decoded code.
    /// </summary>
    public void NoteDeviceWrite(ulong gpa, ulong length)
    {
        if (length == 0) return;
        CheckRange(gpa, length);
        ulong start = gpa - Base;
        ulong end = start + length; // exclusive
        for (ulong p = start & ~(PageSize - 1); p < end; p += PageSize)
        {
            ulong from = Math.Max(p, start);
            ulong to = Math.Min(p + PageSize, end);
            NoteCpuWrite((int)(p >> PageShift), (int)(from - p), (int)(to - from));
        }
    }

    /// <summary>Count of pages set in a bitmap returned by a harvest.</summary>
    public static long CountPages(ReadOnlySpan<ulong> bitmap)
    {
        long n = 0;
        foreach (ulong w in bitmap) n += BitOperations.PopCount(w);
        return n;
    }

    private void CheckRange(ulong gpa, ulong length)
    {
        if (!Contains(gpa, length))
        {
            throw new ArgumentOutOfRangeException(nameof(gpa), $"0x{gpa:x}+0x{length:x} is outside RAM 0x{Base:x}+0x{Size:x}");
        }
    }

    public void Dispose() => mapping.Dispose();
}
