using Ferry.Linux;

namespace Ferry.Machine.Memory;

/// <summary>
/// A thread's place in the queue of threads waiting for missing post-copy pages (<see cref="PostcopyPages.Await"/>):
/// the event an install (or an abort) sets, and what the thread does around blocking. One per thread, made once, so
/// waiting allocates nothing.
/// </summary>
/// <remarks>
/// Three kinds: a hart's own accesses (its wake event, which kicks set too, so a pause or a flush interrupts the wait
/// and the instruction runs again later); a hart thread inside device emulation (it counts as parked while blocked,
/// as in <c>wfi</c>, so a pause does not wait for the page); any other thread (a device's worker, the caller of
/// <see cref="GuestRam.Read"/>), which simply blocks until the page is installed or post-copy is aborted.
/// </remarks>
internal sealed class PageWaiter
{
    [ThreadStatic]
    private static PageWaiter? current;

    public PageWaiter(WakeEvent? wake = null, Func<bool>? interrupted = null, Action? blocking = null, Action? unblocked = null, Func<long>? deadline = null)
    {
        Event = wake ?? new WakeEvent();
        Interrupted = interrupted;
        Blocking = blocking;
        Unblocked = unblocked;
        Deadline = deadline;
    }

    /// <summary>The waiter device paths of the calling thread use (<see cref="GuestRam.WaitPresent"/>); a plain one unless the thread set its own.</summary>
    public static PageWaiter Current
    {
        get => current ??= new PageWaiter();
        set => current = value;
    }

    /// <summary>Set by an install of <see cref="Page"/>, by an abort, and by whatever else the owner lets wake it.</summary>
    public WakeEvent Event { get; }

    /// <summary>True when the thread must stop waiting without the page (checked after each wake-up); null: never.</summary>
    public Func<bool>? Interrupted { get; }

    /// <summary>
    /// The <see cref="System.Diagnostics.Stopwatch"/> timestamp at which a blocked wait wakes by itself to ask
    /// <see cref="Interrupted"/> again (asked before each block); null: only <see cref="Event"/> wakes it.
    /// </summary>
    public Func<long>? Deadline { get; }

    /// <summary>Called once before the thread first blocks in a wait.</summary>
    public Action? Blocking { get; }

    /// <summary>Called once when a wait that blocked ends (by install, interruption or abort).</summary>
    public Action? Unblocked { get; }

    /// <summary>The page waited for while registered with <see cref="PostcopyPages"/>, else -1. Under its lock.</summary>
    internal int Page { get; set; } = -1;
}
