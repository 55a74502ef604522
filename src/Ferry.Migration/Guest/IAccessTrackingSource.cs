namespace Ferry.Migration.Guest;

/// <summary>
/// A source guest that can say which pages its CPUs used lately: read, written or executed, which the dirty log (writes
/// only) does not see. Post-copy pushes those pages first, so that the code, stacks and page tables the guest runs on
/// when it starts on the destination arrive before it faults on them one round trip at a time.
/// </summary>
/// <remarks>
/// A hint, never a correctness matter: a page missed only arrives later (by the push or a fault), a page named in
/// excess only earlier. Ferry's machine records the pages its harts' software TLBs and page-table walks reach.
/// </remarks>
public interface IAccessTrackingSource
{
    /// <summary>
    /// OR into <paramref name="bitmap"/> (one bit per page over all regions in order, as the dirty log) every page the
    /// guest's CPUs used since the previous call (or since the guest started), including the pages its CPUs hold
    /// translations for now; then start a new interval. Any thread; exact only while the guest is paused.
    /// </summary>
    void HarvestAccessedPages(Span<ulong> bitmap);

    /// <summary>
    /// As <see cref="HarvestAccessedPages(Span{ulong})"/>, and OR into <paramref name="system"/> (same layout) the part
    /// of those pages the guest's operating system needs to run at all: its code, page tables, stacks and data used
    /// in privileged mode. Post-copy pushes these before everything else: a guest whose kernel waits on one page
    /// stops as a whole (its timer interrupt, its scheduler), while a user page waited on stops one program. A guest
    /// that cannot tell adds nothing to <paramref name="system"/>.
    /// </summary>
    void HarvestAccessedPages(Span<ulong> bitmap, Span<ulong> system) => HarvestAccessedPages(bitmap);

    /// <summary>
    /// OR into <paramref name="bitmap"/> (as <see cref="HarvestAccessedPages"/>) the pages the paused guest's CPUs hold
    /// translations for now: what they were working on at the pause, and most likely touch first when the guest runs
    /// again. Post-copy sends those that are missing inside the switchover rather than after it. Paused guest only;
    /// a guest that cannot tell adds nothing.
    /// </summary>
    void GetResidentPages(Span<ulong> bitmap) { }
}
