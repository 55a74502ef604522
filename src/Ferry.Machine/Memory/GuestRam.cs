using System.Numerics;
using System.Runtime.CompilerServices;
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
/// <para>Post-copy (<see cref="BeginPostcopy"/>): the guest runs before all of its pages have arrived. A page not yet
/// received is missing, and a thread that reaches one blocks until <see cref="InstallPage"/> brings it. The test sits
/// where the machine already takes a slow path: a hart's TLB fill (loads, stores, atomics, fetches), its page-table
/// walks, and every device access (<see cref="Read"/>, <see cref="Write"/>, <see cref="WaitPresent"/>). A missing page
/// therefore never reaches a TLB or a decoded-code page, and the fast paths stay as they are.</para>
/// </remarks>
public sealed unsafe class GuestRam : MemoryRegion, IDisposable
{
    // Owns the mapping; Host points into it.
    private readonly GuestMemoryMapping mapping;
    // One bit per page, set by the first write after a harvest. Swapped (never cleared in place) by a harvest.
    private ulong[] dirty;
    // One bit per page, set by a hart's slow path (TLB fill, page-table walk, atomic) that reached the page since the
    // last TakeAccessed: with the TLBs' contents, the pages the guest runs on, which post-copy pushes first.
    private readonly ulong[] accessed;
    // The subset of those reached by the guest's system side: page-table walks, instruction fetches, and loads and
    // stores in supervisor or machine mode (the kernel's and the firmware's code, stacks, per-CPU data and tables).
    private readonly ulong[] accessedSystem;
    // One byte per page: nonzero while some hart holds decoded instructions of the page.
    private readonly byte[] code;
    // Per page: writes seen while it was code (see NoteCpuWrite).
    private readonly int[] codeWrites;
    // True between StartDirtyLog and StopDirtyLog.
    private volatile bool tracking;
    // The post-copy in progress, or null (no page missing): the one test a slow path pays outside post-copy.
    private volatile PostcopyPages? postcopy;
    // The last post-copy begun, kept for its figures after it ends.
    private volatile PostcopyPages? lastPostcopy;
    // Serialises BeginPostcopy, EndPostcopy and AbortPostcopy.
    private readonly object postcopyGate = new();

    public GuestRam(ulong guestBase, ulong size)
        : base(guestBase, size)
    {
        mapping = GuestMemoryMapping.Create(size);
        dirty = new ulong[(PageCount + 63) / 64];
        accessed = new ulong[dirty.Length];
        accessedSystem = new ulong[dirty.Length];
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
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
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

    /// <summary>
    /// A hart's slow path reached <paramref name="page"/> (see <see cref="TakeAccessed"/>); <paramref name="system"/>:
    /// by a page-table walk, an instruction fetch, or a load or store in supervisor or machine mode.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void NoteAccess(int page, bool system)
    {
        ulong bit = 1UL << page;
        // Tested first: a page reached again within an interval (a TLB conflict miss, a walk of the same table) costs
        // a read, and only the first reach of each page per interval an interlocked OR.
        ref ulong word = ref accessed[page >> 6];
        if ((Volatile.Read(ref word) & bit) == 0) Interlocked.Or(ref word, bit);
        if (!system) return;
        ref ulong sys = ref accessedSystem[page >> 6];
        if ((Volatile.Read(ref sys) & bit) == 0) Interlocked.Or(ref sys, bit);
    }

    /// <summary>
    /// OR into <paramref name="bitmap"/> (page i in bit i of word i / 64; words past its length are dropped) the pages
    /// a hart's slow path reached since the last call, and into <paramref name="system"/> (same layout; may be empty)
    /// those of them its system side reached (see <see cref="NoteAccess"/>); clear both: a new interval starts. Any
    /// thread; a hart that reaches a page meanwhile lands in one interval or the next, never in neither.
    /// </summary>
    internal void TakeAccessed(Span<ulong> bitmap, Span<ulong> system)
    {
        for (int w = 0; w < accessed.Length; w++)
        {
            if (Volatile.Read(ref accessed[w]) != 0)
            {
                ulong bits = Interlocked.Exchange(ref accessed[w], 0);
                if (w < bitmap.Length) bitmap[w] |= bits;
            }
            if (Volatile.Read(ref accessedSystem[w]) != 0)
            {
                ulong bits = Interlocked.Exchange(ref accessedSystem[w], 0);
                if (w < system.Length) system[w] |= bits;
            }
        }
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
    /// Throws <see cref="ArgumentOutOfRangeException"/> if the range is not all inside RAM. During post-copy, waits
    /// for every missing page of the range (see <see cref="WaitPresent"/>).
    /// </summary>
    public void Read(ulong gpa, Span<byte> destination)
    {
        CheckRange(gpa, (ulong)destination.Length);
        WaitPresent(gpa, (ulong)destination.Length);
        new ReadOnlySpan<byte>(Host + (gpa - Base), destination.Length).CopyTo(destination);
    }

    /// <summary>
    /// Copy <paramref name="source"/> into guest memory at <paramref name="gpa"/> (a device writing RAM, DMA, a loader):
    /// every page touched is marked dirty and loses its decoded code. Throws if the range is not all inside RAM.
    /// During post-copy, waits for every missing page of the range first (an install must never land on top of it).
    /// </summary>
    public void Write(ulong gpa, ReadOnlySpan<byte> source)
    {
        CheckRange(gpa, (ulong)source.Length);
        WaitPresent(gpa, (ulong)source.Length);
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

    // ---- Post-copy ----

    /// <summary>
    /// Post-copy begins: pages whose bit is set in <paramref name="missingBitmap"/> (bit i of word i / 64 is page i,
    /// counted from <see cref="MemoryRegion.Base"/> in 4 KiB pages; bits past the last page are ignored, so an engine
    /// bitmap that goes on with other regions may be passed whole) have not arrived. From now on a thread that reaches
    /// one blocks until it is installed, after calling <paramref name="requestPage"/> with its index: at most once per
    /// page, on the blocked thread, so it must return quickly (queue a request) and not throw. Their present content
    /// is left as it is: an install replaces the whole page. Call before the harts run guest code on this RAM (a
    /// destination's board is built parked, and <c>LoadState</c> drops every hart's TLB and decoded code), as nothing
    /// here reaches into their caches. With no bit set nothing changes. Throws <see cref="InvalidOperationException"/>
    /// if a post-copy is already in progress.
    /// </summary>
    public void BeginPostcopy(ReadOnlySpan<ulong> missingBitmap, Action<ulong> requestPage)
    {
        ArgumentNullException.ThrowIfNull(requestPage);
        if (missingBitmap.Length < DirtyWords)
        {
            throw new ArgumentException($"bitmap of {missingBitmap.Length} words, {DirtyWords} needed", nameof(missingBitmap));
        }
        lock (postcopyGate)
        {
            if (postcopy != null) throw new InvalidOperationException("a post-copy is already in progress on this RAM");
            var p = new PostcopyPages(PageCount, missingBitmap, requestPage);
            lastPostcopy = p;
            if (p.MissingPages == 0) return;
            postcopy = p;
        }
        // Missing pages land in small pages: the first install into an untouched 2 MiB chunk would otherwise zero a
        // whole huge page while the guest waits (see GuestMemoryMapping.AdviseHugePages). Back once all are in.
        mapping.AdviseHugePages(huge: false);
    }

    /// <summary>
    /// Fault every page of RAM in, writable, now (contents unchanged; <c>MADV_POPULATE_WRITE</c>, huge pages where
    /// advised). For a post-copy destination, before the switchover: a first touch here costs ~3.4 ms per 2 MiB huge
    /// page (~6.5 µs per 4 KiB of RAM, 1.7 s per GiB), which the guest would otherwise wait on top of the network at
    /// each fault. Stops after <paramref name="budget"/> or once <paramref name="stop"/> fires (checked every 16 MiB,
    /// ~30 ms here), the rest left to be faulted on use. False on kernels without it (older than 5.14), or when stopped.
    /// </summary>
    public bool Populate(TimeSpan budget, CancellationToken stop = default)
    {
        const ulong Step = 16UL << 20;
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        for (ulong offset = 0; offset < Size; offset += Step)
        {
            if (stop.IsCancellationRequested || System.Diagnostics.Stopwatch.GetElapsedTime(start) > budget) return false;
            if (!mapping.Populate(offset, Math.Min(Step, Size - offset))) return false;
        }
        return true;
    }

    /// <summary>
    /// As <see cref="Populate(TimeSpan, CancellationToken)"/> for the pages whose bits are set in <paramref name="pages"/>
    /// (bit p = page p of RAM; bits past RAM's end ignored) only. A 2 MiB chunk at least half of whose pages are named
    /// is faulted in whole (a huge page, where advised, costs as much as ~300 small ones here); in a sparser one the
    /// named pages are faulted in as small pages, the rest left untouched (the chunk is advised no huge pages, else
    /// the first touch would fault the whole 2 MiB in). The advice comes back when post-copy ends.
    /// </summary>
    public bool Populate(TimeSpan budget, ReadOnlySpan<ulong> pages, CancellationToken stop = default)
    {
        const int ChunkWords = 512 / 64;
        const int Dense = 256;
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        ulong ramPages = (ulong)PageCount;
        for (int w = 0; w < pages.Length && (ulong)w * 64 < ramPages; w += ChunkWords)
        {
            // Each chunk ~1-4 ms at most here (a huge page's first touch): look at the clock between chunks.
            if (stop.IsCancellationRequested || System.Diagnostics.Stopwatch.GetElapsedTime(start) > budget) return false;
            var chunk = pages.Slice(w, Math.Min(ChunkWords, pages.Length - w));
            int named = 0;
            foreach (ulong word in chunk) named += System.Numerics.BitOperations.PopCount(word);
            if (named == 0) continue;
            ulong first = (ulong)w * 64;
            ulong end = Math.Min(ramPages, first + ((ulong)chunk.Length * 64));
            if (named >= Dense)
            {
                if (!mapping.Populate(first << PageShift, (end - first) << PageShift)) return false;
                continue;
            }
            mapping.AdviseHugePages(first << PageShift, (end - first) << PageShift, huge: false);
            ulong p = first;
            while (p < end)
            {
                while (p < end && (chunk[(int)((p - first) >> 6)] & (1UL << (int)(p & 63))) == 0) p++;
                ulong run = p;
                while (p < end && (chunk[(int)((p - first) >> 6)] & (1UL << (int)(p & 63))) != 0) p++;
                if (p > run && !mapping.Populate(run << PageShift, (p - run) << PageShift)) return false;
            }
        }
        return true;
    }

    /// <summary>
    /// Run post-copy's begin and install code once, on a small RAM of its own: a destination's first call of each
    /// would otherwise pay its cold start inside the downtime (as <c>VirtMachine.WarmUpSaveState</c> on the source).
    /// </summary>
    public static void WarmUpPostcopy()
    {
        using var scratch = new GuestRam(0x8000_0000, 64 * PageSize);
        Span<ulong> missing = [ulong.MaxValue];
        scratch.BeginPostcopy(missing, static _ => { });
        Span<byte> page = stackalloc byte[(int)PageSize];
        for (ulong p = 0; p < 64; p += 4)
        {
            scratch.InstallPage(p, page);
            scratch.InstallZeroPage(p + 1);
            scratch.InstallZeroPage(p + 2, fresh: true);
            scratch.PublishWrittenPage(p + 3);
        }
    }

    /// <summary>True from <see cref="BeginPostcopy"/> until the last missing page is installed (or <see cref="EndPostcopy"/>); still true after <see cref="AbortPostcopy"/>.</summary>
    public bool IsPostcopy => postcopy != null;

    /// <summary>Pages not yet installed (0 outside post-copy).</summary>
    public long MissingPages => postcopy?.MissingPages ?? 0;

    /// <summary>
    /// Distinct pages whose slow path ran since <see cref="BeginPostcopy"/>, present or missing: a hart's TLB fill or
    /// page-table walk, or a device access. The guest's working set during post-copy; counting stops when it ends.
    /// </summary>
    public long WorkingSetPages => lastPostcopy?.WorkingSetPages ?? 0;

    /// <summary>The pages a hart or device waits for now, during post-copy (none otherwise).</summary>
    public int[] AwaitedPostcopyPages() => postcopy?.AwaitedPages() ?? [];

    /// <summary>
    /// <see cref="System.Diagnostics.Stopwatch"/> ticks threads (harts and devices, added up) have spent waiting for
    /// missing pages since <see cref="BeginPostcopy"/>, for block-time statistics.
    /// </summary>
    public long BlockedTicks => lastPostcopy?.BlockedTicks ?? 0;

    /// <summary>Called once when post-copy is aborted (the machine stops and reports the loss).</summary>
    internal Action<VmLostException>? PostcopyAborted { get; set; }

    /// <summary>The post-copy in progress, or null: the slow paths' test.</summary>
    internal PostcopyPages? Postcopy => postcopy;

    /// <summary>
    /// Install page <paramref name="pageIndex"/> (4096 bytes of <paramref name="data"/>) if it is still missing: the
    /// bytes are copied in and published before the page is marked present, then the threads waiting for it wake.
    /// Returns false, changing nothing, if the page is present (never missing, or installed already: the guest may have
    /// written it since) or outside post-copy. Any thread; two installs of one page at once copy it once.
    /// </summary>
    public bool InstallPage(ulong pageIndex, ReadOnlySpan<byte> data)
    {
        if (data.Length != (int)PageSize) throw new ArgumentException($"a page is {PageSize} bytes, not {data.Length}", nameof(data));
        if (postcopy is not { } p || !p.Claim(CheckPage(pageIndex))) return false;
        // Natively: a managed copy reads the untouched page before it writes it (see Libc.CopyMemory).
        fixed (byte* source = data) Ferry.Linux.Libc.CopyMemory((nint)(Host + (pageIndex << PageShift)), (nint)source, (nuint)PageSize);
        Publish(p, (int)pageIndex);
        return true;
    }

    /// <summary>
    /// As <see cref="InstallPage"/> for a page whose bytes the caller has written in place, straight into
    /// <see cref="Host"/>, while it was missing (a migration receiving it from the network without a copy): no hart or
    /// device reads or writes a missing page, so only the caller saw them. It must be the only writer of that page
    /// until this returns (the migration engine claims each page once).
    /// </summary>
    public bool PublishWrittenPage(ulong pageIndex)
    {
        if (postcopy is not { } p || !p.Claim(CheckPage(pageIndex))) return false;
        Publish(p, (int)pageIndex);
        return true;
    }

    /// <summary>
    /// As <see cref="InstallPage"/> with a page of zeros. <paramref name="fresh"/>: the caller knows nothing wrote the
    /// page since this RAM was mapped (fresh RAM is zero), so it is only made present, not written.
    /// </summary>
    public bool InstallZeroPage(ulong pageIndex, bool fresh = false)
    {
        if (postcopy is not { } p || !p.Claim(CheckPage(pageIndex))) return false;
        if (!fresh) Ferry.Linux.Libc.ZeroMemory((nint)(Host + (pageIndex << PageShift)), (nuint)PageSize);
        Publish(p, (int)pageIndex);
        return true;
    }

    private void Publish(PostcopyPages p, int page)
    {
        if (p.Publish(page) == 0)
        {
            // The last page: slow paths stop testing (a thread still holding p finds every bit clear). Before the
            // waiters wake, so whatever they do next happens after post-copy is over.
            if (Interlocked.CompareExchange(ref postcopy, null, p) == p) mapping.AdviseHugePages(huge: true);
        }
        p.WakeWaiters(page);
    }

    private int CheckPage(ulong pageIndex)
    {
        if (pageIndex >= (ulong)PageCount) throw new ArgumentOutOfRangeException(nameof(pageIndex), $"page {pageIndex} is outside RAM's {PageCount} pages");
        return (int)pageIndex;
    }

    /// <summary>
    /// Post-copy is over with every page installed; no effect if it already ended (the last install ends it) or was
    /// aborted (its waiters keep failing). Throws <see cref="InvalidOperationException"/> if pages are still missing:
    /// pages that will never come are <see cref="AbortPostcopy"/>'s.
    /// </summary>
    public void EndPostcopy()
    {
        lock (postcopyGate)
        {
            if (postcopy is not { } p || p.Lost != null) return;
            if (p.MissingPages != 0) throw new InvalidOperationException($"{p.MissingPages} pages are still missing");
            postcopy = null;
        }
    }

    /// <summary>
    /// The source is gone: the missing pages will never arrive. Every thread blocked on one, and any that reaches one
    /// later, throws <see cref="VmLostException"/> ("VM lost: " and <paramref name="reason"/>'s message); a hart that
    /// does ends its thread and the machine stops with that failure. No effect outside post-copy or after the first call.
    /// </summary>
    public void AbortPostcopy(Exception reason)
    {
        ArgumentNullException.ThrowIfNull(reason);
        PostcopyPages? p;
        lock (postcopyGate)
        {
            p = postcopy;
            if (p == null || !p.Abort(reason)) return;
        }
        PostcopyAborted?.Invoke(new VmLostException(reason));
    }

    /// <summary>
    /// Block until every page of [<paramref name="gpa"/>, +<paramref name="length"/>) is present: for code that
    /// reaches RAM through <see cref="MemoryRegion.Host"/> (a device's direct I/O), before it touches the bytes. All
    /// missing pages of the range are requested before the first wait. Costs a null test outside post-copy. Throws
    /// <see cref="VmLostException"/> if post-copy was aborted with a page of the range missing.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void WaitPresent(ulong gpa, ulong length)
    {
        if (postcopy is { } p && length != 0) WaitPresentSlow(p, gpa, length);
    }

    private void WaitPresentSlow(PostcopyPages p, ulong gpa, ulong length)
    {
        CheckRange(gpa, length);
        int first = (int)((gpa - Base) >> PageShift);
        int last = (int)((gpa - Base + length - 1) >> PageShift);
        bool any = false;
        for (int page = first; page <= last; page++)
        {
            if (p.Touch(page)) continue;
            p.Request(page);
            any = true;
        }
        if (!any) return;
        PageWaiter w = PageWaiter.Current;
        for (int page = first; page <= last; page++)
        {
            // Device waiters are never interrupted: Await returns only with the page, or throws.
            if (p.IsMissing(page)) p.Await(page, w);
        }
    }

    public void Dispose()
    {
        // Nothing may wait for a page of memory that is going away.
        AbortPostcopy(new ObjectDisposedException(null, "the guest's RAM was disposed during post-copy"));
        mapping.Dispose();
    }
}
