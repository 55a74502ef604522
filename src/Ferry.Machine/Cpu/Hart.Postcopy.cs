using System.Runtime.CompilerServices;
using Ferry.Machine.Memory;

namespace Ferry.Machine.Cpu;

/// <summary>
/// Post-copy on the hart: the slow paths (TLB fills, page-table walks, atomics, fetches) test the page they are about to
/// use with <see cref="PageReady"/> before they read it, write it or cache it, so a missing page never reaches a TLB
/// entry or a decoded-code page, and the fast paths need no test at all.
/// </summary>
/// <remarks>
/// <para>A hart that meets a missing page blocks on its own wake event, which an install of that page sets, and so does
/// every <see cref="Kick"/>. Woken by a kick (a pause, a flush, an interrupt line, power-off) without the page, the
/// slow path returns <see cref="CauseRetry"/>: the instruction is abandoned before it changed anything, the block ends
/// with <see cref="pc"/> at it, and the run loop serves the signal (parks for a pause, takes an interrupt, leaves)
/// before it runs the instruction again. A blocked hart is therefore at an instruction boundary for every other
/// thread, as a parked one is, and a pause never waits for a page.</para>
/// <para>Device emulation that runs on the hart's thread (an MMIO store that makes a device read its queue) waits on
/// another waiter, <see cref="deviceWaiter"/>: it cannot be abandoned half way, so the hart counts as parked while it
/// blocks there, as in <c>wfi</c>, and goes through its signal check before the next block (an MMIO access always
/// ends the block).</para>
/// <para>When post-copy is aborted the wait throws <see cref="VmLostException"/>, which ends the hart's thread as a
/// failure the machine reports ("VM lost: ...").</para>
/// </remarks>
internal sealed unsafe partial class Hart
{
    /// <summary>
    /// Not a RISC-V cause: a slow path met a missing post-copy page and was woken without it. Nothing of the instruction
    /// has happened; the block ends with pc at it, and it runs again after the hart has looked at its signal.
    /// </summary>
    private const int CauseRetry = 0x1000;

    // The hart's own accesses: its wake event, interrupted by any signal.
    private readonly PageWaiter pageWaiter;
    // Device emulation on the hart's thread (PageWaiter.Current there): parked while blocked.
    private readonly PageWaiter deviceWaiter;
    // Set while LoadState looks up the lr reservation from another thread: a missing page only fails the lookup.
    private bool probing;

    private PageWaiter NewPageWaiter() => new(wake, interrupted: () => Volatile.Read(ref signal) != 0 || TimerDueWhileBlocked(),
        deadline: TimerDeadlineWhileBlocked);

    /// <summary>
    /// When a hart blocked on a missing page wakes for its timer: the deadline of a timer interrupt it would take now
    /// (enabled in <c>mie</c>, and not masked by <c>mstatus.MIE</c> in M-mode); else never. The wait then ends without the
    /// page and the interrupt is taken before the instruction runs again, as a kick's would be: the guest's timer
    /// keeps its time while one of its threads waits for the network (its tick handler, its real-time threads), where
    /// the faulting thread alone would otherwise hold the hart. A masked interrupt sets no deadline, so a wait in a
    /// masked section cannot turn into a loop of retries.
    /// </summary>
    private long TimerDeadlineWhileBlocked() => TimerTakeable() ? clint.WakeDeadline(Id, timerEnabled: true) : long.MaxValue;

    /// <summary>True (and the hart's signal raised, so the run loop takes it) when a takeable timer interrupt is due.</summary>
    private bool TimerDueWhileBlocked()
    {
        if (!TimerTakeable() || !clint.TimerPending(Id)) return false;
        Interlocked.Or(ref signal, SigCheck);
        return true;
    }

    private bool TimerTakeable() => (mie & (ulong)IrqMti) != 0 && (priv < PrvM || (mstatus & MstatusMie) != 0);

    private PageWaiter NewDeviceWaiter() => new(
        blocking: () =>
        {
            Volatile.Write(ref state, StateParked);
            control.Parked();
        },
        // Back to running through ServiceSignals, which marks us running before it reads the signal.
        unblocked: () => Interlocked.Or(ref signal, SigCheck));

    /// <summary>
    /// True if the hart may use the page of <paramref name="region"/> holding <paramref name="pa"/>: always outside
    /// post-copy or outside RAM; during post-copy once the page is present (waiting for it if need be). False when
    /// the wait was interrupted: the caller returns <see cref="CauseRetry"/>. A RAM page is also noted as accessed
    /// (<see cref="GuestRam.NoteAccess"/>): every slow path that reads, writes, walks or caches a RAM page passes here,
    /// so the accessed log sees exactly the TLB fills and walks, and the fast paths stay as they are.
    /// <paramref name="system"/>: the access is a page-table walk, an instruction fetch, or a load or store in
    /// supervisor or machine mode (a user-mode load or store is not).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool PageReady(MemoryRegion region, ulong pa, bool system)
    {
        if (region != ram) return true;
        int page = (int)((pa - ram.Base) >> MemoryRegion.PageShift);
        ram.NoteAccess(page, system);
        PostcopyPages? p = ram.Postcopy;
        return p == null || AwaitPage(p, page);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private bool AwaitPage(PostcopyPages p, int page)
    {
        if (p.Touch(page)) return true;
        if (probing) return false;
        return p.Await(page, pageWaiter);
    }
}
