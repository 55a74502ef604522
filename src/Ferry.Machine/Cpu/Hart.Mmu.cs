using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Ferry.Machine.Memory;

namespace Ferry.Machine.Cpu;

/// <summary>A software TLB entry: <see cref="Tag"/> is the virtual page (1 when empty, never a page address).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct TlbEntry
{
    public ulong Tag;
    /// <summary>Read/write sets: host address minus virtual address. Fetch set: the global frame number.</summary>
    public long Addend;
}

internal sealed unsafe partial class Hart
{
    private const int TlbSize = 256;
    private const ulong TlbMask = TlbSize - 1;
    // Three privilege levels (U, S, M) times three kinds (read, write, fetch).
    private const int TlbSets = 9;
    private const ulong EmptyTag = 1;

    private const int AccRead = 0, AccWrite = 1, AccFetch = 2;

    // Exception causes.
    public const int CauseFetchMisaligned = 0, CauseFetchAccess = 1, CauseIllegal = 2, CauseBreakpoint = 3,
        CauseLoadMisaligned = 4, CauseLoadAccess = 5, CauseStoreMisaligned = 6, CauseStoreAccess = 7,
        CauseEcallU = 8, CauseEcallS = 9, CauseEcallM = 11, CauseFetchPage = 12, CauseLoadPage = 13, CauseStorePage = 15;

    private TlbEntry* tlb;
    private TlbEntry* tlbRead;
    private TlbEntry* tlbWrite;
    private TlbEntry* tlbFetch;
    // The privilege loads and stores are checked with (mstatus.MPRV makes M-mode use MPP).
    private int dataPriv;

    // LR/SC: the host address reserved by lr and the value it read; sc succeeds by compare-and-swap against that value.
    private byte* reservation;
    private ulong reservationValue;

    private static int SetIndex(int level) => level == PrvM ? 2 : level;

    /// <summary>Recompute which TLB sets serve fetches and data accesses after a privilege or mstatus change.</summary>
    private void UpdateMode()
    {
        dataPriv = priv == PrvM && (mstatus & MstatusMprv) != 0 ? (int)((mstatus >> 11) & 3) : priv;
        tlbFetch = tlb + (SetIndex(priv) * 3 + AccFetch) * TlbSize;
        tlbRead = tlb + (SetIndex(dataPriv) * 3 + AccRead) * TlbSize;
        tlbWrite = tlb + (SetIndex(dataPriv) * 3 + AccWrite) * TlbSize;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void FlushTlb()
    {
        for (int i = 0; i < TlbSets * TlbSize; i++) tlb[i].Tag = EmptyTag;
    }

    private void FlushWriteTlb()
    {
        for (int set = 0; set < 3; set++)
        {
            TlbEntry* w = tlb + (set * 3 + AccWrite) * TlbSize;
            for (int i = 0; i < TlbSize; i++) w[i].Tag = EmptyTag;
        }
    }

    /// <summary>Drop write entries that point into the host page <paramref name="hostPage"/> (it just became code).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void FlushWriteTlbFor(byte* hostPage)
    {
        for (int set = 0; set < 3; set++)
        {
            TlbEntry* w = tlb + (set * 3 + AccWrite) * TlbSize;
            for (int i = 0; i < TlbSize; i++)
            {
                if (w[i].Tag != EmptyTag && (byte*)(w[i].Addend + (long)w[i].Tag) == hostPage) w[i].Tag = EmptyTag;
            }
        }
    }

    /// <summary>
    /// Set in <paramref name="bitmap"/> (bit i: RAM page i; pages past its end are dropped) the RAM pages this hart's
    /// TLB holds entries for: a page used all through an interval is never filled again, so these are the freshest
    /// part of the working set. Only while the hart is quiescent under a pause: a running hart rewrites the entries
    /// under us (a torn entry would at worst name a wrong page, as each is bounds-checked, but the set means nothing).
    /// The pages of its fetch entries and its supervisor- and machine-mode data entries go into <paramref name="system"/>
    /// too (same layout; may be empty), as <see cref="GuestRam.NoteAccess"/> counts them.
    /// </summary>
    internal void OrTlbPages(Span<ulong> bitmap, Span<ulong> system = default)
    {
        byte* ramStart = ram.Host;
        ulong ramBytes = ram.Size;
        ulong pages = Math.Min((ulong)ram.PageCount, (ulong)bitmap.Length * 64);
        for (int set = 0; set < TlbSets; set++)
        {
            TlbEntry* s = tlb + set * TlbSize;
            bool fetch = set % 3 == AccFetch;
            bool userData = set / 3 == SetIndex(PrvU) && !fetch;
            for (int i = 0; i < TlbSize; i++)
            {
                ulong tag = s[i].Tag;
                if (tag == EmptyTag) continue;
                ulong page;
                if (fetch)
                {
                    page = (ulong)(s[i].Addend - ram.FirstFrame);
                }
                else
                {
                    // Read and write entries hold host minus virtual address: the host page is Addend + Tag.
                    ulong offset = (ulong)((byte*)(s[i].Addend + (long)tag) - ramStart);
                    if (offset >= ramBytes) continue; // the boot ROM
                    page = offset >> MemoryRegion.PageShift;
                }
                if (page >= pages) continue;
                bitmap[(int)(page >> 6)] |= 1UL << (int)page;
                if (!userData && (int)(page >> 6) < system.Length) system[(int)(page >> 6)] |= 1UL << (int)page;
            }
        }
    }

    private void DropAllCode()
    {
        foreach (int frame in decodedFrames) codePages[frame] = null;
        decodedFrames.Clear();
    }

    /// <summary>Another hart or a device wrote a frame holding decoded code: forget it (called from any thread).</summary>
    internal void DropCode(int frame) => Volatile.Write(ref codePages[frame], null);

    /// <summary>
    /// Bytes [<paramref name="offset"/>, +<paramref name="length"/>) of <paramref name="frame"/> changed: mark the slots
    /// of instructions that may overlap them undecoded (called from any thread). Only the op is written, so a hart
    /// running the page meanwhile sees either the old instruction or an undecoded slot, which it decodes afresh.
    /// </summary>
    internal void InvalidateCode(int frame, int offset, int length)
    {
        CodePage? cp = Volatile.Read(ref codePages[frame]);
        if (cp == null) return;
        int first = Math.Max(0, (offset >> 1) - 1); // a 4-byte instruction starting 2 bytes earlier overlaps too
        int last = Math.Min(CodePage.Slots - 1, (offset + length - 1) >> 1);
        for (int slot = first; slot <= last; slot++) Volatile.Write(ref *(ushort*)&cp.Insns[slot].Op, 0);
    }

    private static int AccessFault(int access) =>
        access == AccFetch ? CauseFetchAccess : access == AccRead ? CauseLoadAccess : CauseStoreAccess;

    private static int PageFault(int access) =>
        access == AccFetch ? CauseFetchPage : access == AccRead ? CauseLoadPage : CauseStorePage;

    // Page-table entry bits.
    private const ulong PteV = 1, PteR = 2, PteW = 4, PteX = 8, PteU = 16, PteA = 64, PteD = 128;

    /// <summary>
    /// Translate <paramref name="va"/> for an access of <paramref name="size"/> bytes at privilege
    /// <paramref name="level"/>: -1 and the physical address, or the exception cause. Walks Sv39/Sv48 tables and sets A
    /// and D as QEMU does (atomically, so two harts walking the same table agree), unless <paramref name="setAd"/> is
    /// false: then it only looks, and faults as a walk that set them would.
    /// </summary>
    /// <remarks>
    /// D must be set only for a store that is performed (the privileged spec's Svadu: "updates to the D bit ... must be
    /// exact (i.e., non-speculative)"). So before it sets A or D the walk waits for the data page of an access that will
    /// go ahead (<see cref="AccessedPageReady"/>): an access whose wait is abandoned (a pause, an interrupt to take)
    /// returns <see cref="CauseRetry"/> with the PTE as it was, instead of leaving D set behind a store that has not
    /// happened, and may never happen if the guest changes its mind meanwhile.
    /// </remarks>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private int Translate(ulong va, int access, int level, ulong size, out ulong pa, bool setAd = true)
    {
        pa = va;
        ulong mode = satp >> 60;
        if (level == PrvM || mode == 0) return -1;
        int levels = mode == 8 ? 3 : 4;
        int vaBits = 12 + 9 * levels;
        if (((long)va << (64 - vaBits)) >> (64 - vaBits) != (long)va) return PageFault(access);
        while (true)
        {
            ulong table = (satp & 0xfff_ffff_ffffUL) << 12;
            for (int lvl = levels - 1; ; lvl--)
            {
                ulong pteAddr = table + ((va >> (12 + 9 * lvl)) & 511) * 8;
                if (!PmpAllows(pteAddr, 8, AccRead, PrvS)) return AccessFault(access);
                MemoryRegion? region = bus.RegionAt(pteAddr, 8);
                if (region == null) return AccessFault(access);
                if (!PageReady(region, pteAddr, system: true)) return CauseRetry;
                ulong* ptePtr = (ulong*)(region.Host + (pteAddr - region.Base));
                ulong pte = Volatile.Read(ref *ptePtr);
                if ((pte & PteV) == 0 || ((pte & PteR) == 0 && (pte & PteW) != 0) || (pte >> 54) != 0) return PageFault(access);
                ulong ppn = (pte >> 10) & 0xfff_ffff_ffffUL;
                if ((pte & (PteR | PteX)) == 0)
                {
                    if (lvl == 0) return PageFault(access);
                    table = ppn << 12;
                    continue;
                }
                // A leaf: permissions for this privilege.
                if (level == PrvU)
                {
                    if ((pte & PteU) == 0) return PageFault(access);
                }
                else if ((pte & PteU) != 0 && (access == AccFetch || (mstatus & MstatusSum) == 0))
                {
                    return PageFault(access);
                }
                bool allowed = access switch
                {
                    AccRead => (pte & PteR) != 0 || ((pte & PteX) != 0 && (mstatus & MstatusMxr) != 0),
                    AccWrite => (pte & PteW) != 0,
                    _ => (pte & PteX) != 0,
                };
                if (!allowed) return PageFault(access);
                ulong superMask = (1UL << (9 * lvl)) - 1;
                if ((ppn & superMask) != 0) return PageFault(access);
                ulong offsetMask = (1UL << (12 + 9 * lvl)) - 1;
                pa = ((ppn << 12) & ~offsetMask) | (va & offsetMask);
                ulong updated = pte | PteA | (access == AccWrite ? PteD : 0);
                if (updated != pte)
                {
                    if (!region.Writable || !PmpAllows(pteAddr, 8, AccWrite, PrvS)) return AccessFault(access);
                    if (!setAd) return -1;
                    if (!AccessedPageReady(pa, size, access, level)) return CauseRetry;
                    if ((ulong)Interlocked.CompareExchange(ref *(long*)ptePtr, (long)updated, (long)pte) != pte) break; // walk again
                    if (region is GuestRam r) r.NoteCpuWrite((int)((pteAddr - r.Base) >> 12), (int)(pteAddr & 0xfff), 8);
                }
                return -1;
            }
        }
    }

    /// <summary>
    /// Before a walk sets A or D (see <see cref="Translate"/>): false if the access's data page is missing (post-copy)
    /// and the wait for it was interrupted. Only for an access that will go ahead: one that PMP denies faults after the
    /// walk without waiting, as before, and one outside RAM (a device) has nothing to wait for. The caller still tests
    /// the page itself afterwards (for a walk that set nothing); a second test of a present page is a bitmap read. An
    /// AMO's read permission is not looked at here: only a reserved PMP encoding (W without R) grants the write alone,
    /// and under it the AMO waits for its page, then faults as before.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private bool AccessedPageReady(ulong pa, ulong size, int access, int level)
    {
        if (ram.Postcopy == null || !PmpAllows(pa, size, access, level)) return true;
        MemoryRegion? region = bus.RegionAt(pa, size);
        return region == null || PageReady(region, pa, access == AccFetch || level != PrvU);
    }

    /// <summary>
    /// The slow path of a load of <paramref name="size"/> bytes (1, 2, 4, 8): translation, PMP, RAM or a device, and a
    /// TLB fill. -1 and the zero-extended value, or a cause with <see cref="faultTval"/> set.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private int LoadSlow(ulong va, int size, out ulong value)
    {
        value = 0;
        if ((va & 0xfff) + (ulong)size > 0x1000)
        {
            // Misaligned across a page: byte by byte, as QEMU splits it (a fault reports the byte's address).
            for (int k = 0; k < size; k++)
            {
                int c = LoadSlow(va + (ulong)k, 1, out ulong b);
                if (c >= 0) return c;
                value |= b << (8 * k);
            }
            return -1;
        }
        int cause = Translate(va, AccRead, dataPriv, (ulong)size, out ulong pa);
        if (cause >= 0) { faultTval = va; return cause; }
        if (!PmpAllows(pa, (ulong)size, AccRead, dataPriv)) { faultTval = va; return CauseLoadAccess; }
        MemoryRegion? region = bus.RegionAt(pa, (ulong)size);
        if (region != null)
        {
            if (!PageReady(region, pa, dataPriv != PrvU)) return CauseRetry;
            byte* host = region.Host + (pa - region.Base);
            value = size switch { 1 => *host, 2 => *(ushort*)host, 4 => *(uint*)host, _ => *(ulong*)host };
            if (PmpAllows(pa & ~0xfffUL, 0x1000, AccRead, dataPriv))
            {
                TlbEntry* e = tlbRead + ((va >> 12) & TlbMask);
                e->Tag = va & ~0xfffUL;
                e->Addend = (long)(host - (pa & 0xfff)) - (long)(va & ~0xfffUL);
            }
            LeaveBlockIfSignalled();
            return -1;
        }
        stopBlock = true;
        if (!bus.Read(pa, size, out value)) { faultTval = va; return CauseLoadAccess; }
        return -1;
    }

    /// <summary>
    /// After a slow path, leave the block if another thread asked something of this hart (a pause, a TLB flush, an
    /// interrupt). A block's budget counts instructions, and a guest touching a new page with every few instructions
    /// (a dirtier, a memset through fresh memory) takes this path for each: 4,096 of them held a hart 0.5-1.5 ms past
    /// a pause request (the demo VM dirtying 1M pages/s: pauses of 1.5-3.8 ms against 0.3-0.6 ms idle).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void LeaveBlockIfSignalled()
    {
        if (Volatile.Read(ref signal) != 0) stopBlock = true;
    }

    /// <summary>The slow path of a store (see <see cref="LoadSlow"/>): marks the page dirty and drops decoded code in it.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private int StoreSlow(ulong va, int size, ulong value)
    {
        if ((va & 0xfff) + (ulong)size > 0x1000)
        {
            // Check both pages before writing anything, so a fault on the second leaves memory untouched, and wait for
            // both (post-copy) before any byte and any A/D update, so that an abandoned wait leaves behind neither a
            // half-done store when the instruction is retried nor a PTE whose D says a store happened. The walks here
            // only look; the byte stores below set A and D, each on its own page's PTE as it writes there. Page by
            // page, as QEMU does: the first page's translation and permission, then the second's, so that of two
            // faults the first page's is reported (diff_sv39).
            ulong second = (va + (ulong)size - 1) & ~0xfffUL;
            ulong secondBytes = va + (ulong)size - second;
            ulong firstBytes = (ulong)size - secondBytes;
            int c = Translate(va, AccWrite, dataPriv, firstBytes, out ulong firstPa, setAd: false);
            if (c >= 0) { faultTval = va; return c; }
            MemoryRegion? firstRegion = bus.RegionAt(firstPa, 1);
            if (!PmpAllows(firstPa, firstBytes, AccWrite, dataPriv) || firstRegion is { Writable: false })
            {
                faultTval = va;
                return CauseStoreAccess;
            }
            c = Translate(second, AccWrite, dataPriv, secondBytes, out ulong secondPa, setAd: false);
            if (c >= 0) { faultTval = second; return c; }
            // Its permission too (PMP, a read-only region): otherwise the first page's bytes were written before the
            // second's access fault. QEMU writes none of them, and reports the store's own address (pmp.c, 16-19).
            MemoryRegion? secondRegion = bus.RegionAt(secondPa, 1);
            if (!PmpAllows(secondPa, secondBytes, AccWrite, dataPriv) || secondRegion is { Writable: false })
            {
                faultTval = va;
                return CauseStoreAccess;
            }
            if (firstRegion is not null && !PageReady(firstRegion, firstPa, dataPriv != PrvU)) return CauseRetry;
            if (secondRegion is not null && !PageReady(secondRegion, secondPa, dataPriv != PrvU)) return CauseRetry;
            for (int k = 0; k < size; k++)
            {
                c = StoreSlow(va + (ulong)k, 1, value >> (8 * k));
                if (c >= 0) return c;
            }
            return -1;
        }
        int cause = Translate(va, AccWrite, dataPriv, (ulong)size, out ulong pa);
        if (cause >= 0) { faultTval = va; return cause; }
        if (!PmpAllows(pa, (ulong)size, AccWrite, dataPriv)) { faultTval = va; return CauseStoreAccess; }
        MemoryRegion? region = bus.RegionAt(pa, (ulong)size);
        if (region != null)
        {
            if (!region.Writable) { faultTval = va; return CauseStoreAccess; }
            if (!PageReady(region, pa, dataPriv != PrvU)) return CauseRetry;
            byte* host = region.Host + (pa - region.Base);
            switch (size)
            {
                case 1: *host = (byte)value; break;
                case 2: *(ushort*)host = (ushort)value; break;
                case 4: *(uint*)host = (uint)value; break;
                default: *(ulong*)host = value; break;
            }
            InstallWrite(va, pa, host, region, size);
            LeaveBlockIfSignalled();
            return -1;
        }
        stopBlock = true;
        if (!bus.Write(pa, size, value)) { faultTval = va; return CauseStoreAccess; }
        return -1;
    }

    /// <summary>After a store reached RAM by the slow path: log it, and cache the page for writes when that is safe.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void InstallWrite(ulong va, ulong pa, byte* host, MemoryRegion region, int size)
    {
        if (region is not GuestRam r) return;
        int page = (int)((pa - r.Base) >> 12);
        r.NoteCpuWrite(page, (int)(pa & 0xfff), size);
        if (r.WriteFastAllowed(page) && PmpAllows(pa & ~0xfffUL, 0x1000, AccWrite, dataPriv))
        {
            TlbEntry* e = tlbWrite + ((va >> 12) & TlbMask);
            e->Tag = va & ~0xfffUL;
            e->Addend = (long)(host - (pa & 0xfff)) - (long)(va & ~0xfffUL);
        }
    }

    /// <summary>
    /// Host address for an atomic access (AMO, sc) of <paramref name="size"/> bytes: must be aligned, in RAM, writable.
    /// Null with <paramref name="cause"/> set otherwise. Logs the write like a store.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private byte* AtomicAddress(ulong va, int size, out int cause)
    {
        cause = -1;
        if ((va & (ulong)(size - 1)) != 0) { faultTval = va; cause = CauseStoreMisaligned; return null; }
        TlbEntry* e = tlbWrite + ((va >> 12) & TlbMask);
        if (e->Tag == (va & ~0xfffUL)) return (byte*)(e->Addend + (long)va);
        cause = Translate(va, AccWrite, dataPriv, (ulong)size, out ulong pa);
        if (cause >= 0) { faultTval = va; return null; }
        if (!PmpAllows(pa, (ulong)size, AccWrite, dataPriv) || !PmpAllows(pa, (ulong)size, AccRead, dataPriv))
        {
            faultTval = va; cause = CauseStoreAccess; return null;
        }
        MemoryRegion? region = bus.RegionAt(pa, (ulong)size);
        if (region is not GuestRam) { faultTval = va; cause = CauseStoreAccess; return null; }
        if (!PageReady(region, pa, dataPriv != PrvU)) { cause = CauseRetry; return null; }
        byte* host = region.Host + (pa - region.Base);
        InstallWrite(va, pa, host, region, size);
        return host;
    }

    /// <summary>Host address for lr: aligned, in RAM (reservations on devices are not supported: an access fault).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private byte* ReserveAddress(ulong va, int size, out int cause)
    {
        cause = -1;
        if ((va & (ulong)(size - 1)) != 0) { faultTval = va; cause = CauseLoadMisaligned; return null; }
        TlbEntry* e = tlbRead + ((va >> 12) & TlbMask);
        if (e->Tag == (va & ~0xfffUL)) return (byte*)(e->Addend + (long)va);
        cause = Translate(va, AccRead, dataPriv, (ulong)size, out ulong pa);
        if (cause >= 0) { faultTval = va; return null; }
        if (!PmpAllows(pa, (ulong)size, AccRead, dataPriv)) { faultTval = va; cause = CauseLoadAccess; return null; }
        MemoryRegion? region = bus.RegionAt(pa, (ulong)size);
        if (region is not GuestRam) { faultTval = va; cause = CauseLoadAccess; return null; }
        if (!PageReady(region, pa, dataPriv != PrvU)) { cause = CauseRetry; return null; }
        return region.Host + (pa - region.Base);
    }

    /// <summary>
    /// Fetch slow path for the block starting at <paramref name="va"/>: translate, check, fill the fetch TLB and return
    /// the frame's decoded page; or raise the fetch fault and return null.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private CodePage? FetchSlow(ulong va)
    {
        int cause = Translate(va, AccFetch, priv, 2, out ulong pa);
        if (cause < 0 && !PmpAllows(pa, 2, AccFetch, priv)) cause = CauseFetchAccess;
        MemoryRegion? region = cause < 0 ? bus.RegionAt(pa, 2) : null;
        if (cause < 0 && region == null) cause = CauseFetchAccess;
        // A missing post-copy page (of the tables or the code) whose wait was interrupted: back to the run loop.
        if (cause == CauseRetry || (cause < 0 && !PageReady(region!, pa, system: true))) return null;
        if (cause >= 0)
        {
            RaiseException(cause, va);
            return null;
        }
        int frame = region!.FirstFrame + (int)((pa - region.Base) >> 12);
        CodePage page = codePages[frame] ?? NewCodePage(frame, region, pa);
        if (PmpAllows(pa & ~0xfffUL, 0x1000, AccFetch, priv))
        {
            TlbEntry* e = tlbFetch + ((va >> 12) & TlbMask);
            e->Tag = va & ~0xfffUL;
            e->Addend = frame;
        }
        return page;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private CodePage NewCodePage(int frame, MemoryRegion region, ulong pa)
    {
        byte* hostPage = region.Host + ((pa & ~0xfffUL) - region.Base);
        if (region is GuestRam r)
        {
            int page = (int)((pa - r.Base) >> 12);
            r.MarkCode(page);
            // Our own later stores to this page must take the slow path and drop the decoded code.
            FlushWriteTlbFor(hostPage);
        }
        var cp = new CodePage(frame, hostPage);
        codePages[frame] = cp;
        decodedFrames.Add(frame);
        return cp;
    }

    /// <summary>Decode the slot for <paramref name="pcv"/> in <paramref name="page"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void DecodeSlot(CodePage page, ulong pcv)
    {
        int offset = (int)(pcv & 0xfff);
        Insn* slot = page.Insns + (offset >> 1);
        uint lo = *(ushort*)(page.Host + offset);
        if ((lo & 3) != 3) *slot = Decoder.Decode16(lo);
        else if (offset == 0xffe) *slot = new Insn { Op = Op.CrossPage, Len = 4, Rd = SinkRegister };
        else *slot = Decoder.Decode32(*(uint*)(page.Host + offset));
    }

    /// <summary>Run the 32-bit instruction at a page's last halfword, whose upper half is on the next page.</summary>
    private void ExecuteCrossPage(CodePage page)
    {
        uint lo = *(ushort*)(page.Host + 0xffe);
        ulong hiVa = pc + 2;
        int cause = Translate(hiVa, AccFetch, priv, 2, out ulong pa);
        if (cause < 0 && !PmpAllows(pa, 2, AccFetch, priv)) cause = CauseFetchAccess;
        MemoryRegion? region = cause < 0 ? bus.RegionAt(pa, 2) : null;
        if (cause < 0 && region == null) cause = CauseFetchAccess;
        // Interrupted waiting for the upper half's page: pc is still at the instruction, which runs again.
        if (cause == CauseRetry || (cause < 0 && !PageReady(region!, pa, system: true))) return;
        if (cause >= 0)
        {
            RaiseException(cause, hiVa);
            return;
        }
        uint hi = *(ushort*)(region!.Host + (pa - region.Base));
        scratch.Insns[CodePage.Slots - 1] = Decoder.Decode32(lo | (hi << 16));
        scratch.Insns[0].Op = Op.Undecoded;
        ExecuteBlock(scratch, pc);
    }

    // ---- PMP ----

    private readonly byte[] pmpCfg = new byte[16];
    private readonly ulong[] pmpAddr = new ulong[16];
    private int pmpActive; // entries with A != OFF

    /// <summary>
    /// Whether [<paramref name="addr"/>, +<paramref name="size"/>) may be accessed at <paramref name="level"/>. The first
    /// entry matching any byte decides, and it must match all of them; with no active entry everything is allowed (as
    /// QEMU does), otherwise an unmatched S/U access fails and an unmatched M access succeeds.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private bool PmpAllows(ulong addr, ulong size, int access, int level)
    {
        if (pmpActive == 0) return true;
        ulong last = addr + size - 1;
        for (int i = 0; i < 16; i++)
        {
            byte cfg = pmpCfg[i];
            int a = (cfg >> 3) & 3;
            if (a == 0) continue;
            ulong lo, hi; // inclusive byte range
            if (a == 1)
            {
                lo = i == 0 ? 0 : pmpAddr[i - 1] << 2;
                ulong top = pmpAddr[i] << 2;
                if (top <= lo) continue;
                hi = top - 1;
            }
            else if (a == 2)
            {
                lo = pmpAddr[i] << 2;
                hi = lo + 3;
            }
            else
            {
                ulong ones = (ulong)System.Numerics.BitOperations.TrailingZeroCount(~pmpAddr[i]);
                if (ones >= 54) { lo = 0; hi = ulong.MaxValue; }
                else
                {
                    ulong span = 8UL << (int)ones;
                    lo = (pmpAddr[i] << 2) & ~(span - 1);
                    hi = lo + span - 1;
                }
            }
            if (last < lo || addr > hi) continue;
            if (addr < lo || last > hi) return false; // partial match fails
            if (level == PrvM && (cfg & 0x80) == 0) return true;
            int bit = access == AccRead ? 1 : access == AccWrite ? 2 : 4;
            return (cfg & bit) != 0;
        }
        return level == PrvM;
    }
}
