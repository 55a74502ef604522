namespace Ferry.Migration.Guest;

/// <summary>
/// A destination guest that can run before all of its memory has arrived (post-copy). Implemented by the in-process
/// test guest (userfaultfd) and by Ferry's machine (a missing-page bitmap checked on its slow paths).
/// </summary>
/// <remarks>
/// Call order on the destination: pages of the pre-copy phase (if any) land as usual → <see cref="BeginPostcopy"/> →
/// <see cref="IMigrationTarget.LoadState"/> → <see cref="IMigrationTarget.Start"/> → pages installed through the
/// returned <see cref="IPostcopyMemory"/> until none is missing → <see cref="IDisposable.Dispose"/> on it.
/// </remarks>
public interface IPostcopyTarget
{
    /// <summary>
    /// Make every page whose bit is set in <paramref name="missing"/> (one bitmap per region, bit = page of the region)
    /// missing: its present content, if any, is dropped; from now on a guest thread (vCPU, device, writer) that touches
    /// one waits until it is installed, after calling <see cref="IPageFaultSink.PageNeeded"/> for it (at least once).
    /// Every other page keeps its content. Called once, before <see cref="IMigrationTarget.LoadState"/>.
    /// </summary>
    IPostcopyMemory BeginPostcopy(IReadOnlyList<Memory.DirtyBitmap> missing, IPageFaultSink sink);

    /// <summary>
    /// Called once at the handshake when the source may use post-copy, before it can pause the guest (a source in pure
    /// post-copy waits for this side to be ready): make the later installs cheap, e.g. fault the guest's memory in, so
    /// that a page the guest waits for costs a copy and not a kernel allocation. <paramref name="holdsData"/> (one
    /// bitmap per region, or null when the source did not say) names the pages that will receive data: the others
    /// arrive as zeros, which need no memory (<see cref="IPostcopyMemory.InstallFreshZero"/>), so only these need
    /// faulting in. At most <paramref name="budget"/> (the engine does not read its control channel meanwhile), and
    /// stop soon after <paramref name="stop"/> fires (pre-copy pages are arriving: a hybrid source, whose rounds fault
    /// the memory in anyway and whose Complete must not wait); what is left is done on demand. Nothing by default.
    /// </summary>
    void PreparePostcopy(TimeSpan budget, IReadOnlyList<Memory.DirtyBitmap>? holdsData, CancellationToken stop) { }
}

/// <summary>The destination guest's memory during post-copy: where arriving pages are installed.</summary>
/// <remarks>Install calls come from several engine threads at once (page channels and the urgent channel), never for the
/// same page at the same time. Disposing ends post-copy (all pages present) and stops the fault machinery.</remarks>
public interface IPostcopyMemory : IDisposable
{
    /// <summary>
    /// Install <paramref name="count"/> pages of data from <paramref name="source"/> (count × 4096 bytes, engine memory)
    /// at pages [<paramref name="firstPage"/>, + count) of region <paramref name="region"/>, waking threads waiting for
    /// them. A page already present is left as it is.
    /// </summary>
    void Install(int region, ulong firstPage, int count, nint source);

    /// <summary>As <see cref="Install"/>, with zeros.</summary>
    void InstallZero(int region, ulong firstPage, ulong count);

    /// <summary>
    /// As <see cref="InstallZero"/>, for pages this side never wrote since its memory was made (fresh target memory is
    /// zero by contract, <see cref="IMigrationTarget.Regions"/>): they read as zero already and need only be made
    /// present. A memory that must still map them (userfaultfd) installs them as <see cref="InstallZero"/>, the default.
    /// </summary>
    void InstallFreshZero(int region, ulong firstPage, ulong count) => InstallZero(region, firstPage, count);

    /// <summary>
    /// Where the engine may write region <paramref name="region"/>'s missing pages itself (the host address of its
    /// first page), or 0, the default: only <see cref="Install"/> writes them. A memory that gives an address promises
    /// that nothing of its guest reads or writes a missing page until <see cref="PublishReceived"/> says it is in
    /// (Ferry's machine: its harts and devices test every page on their slow paths), so the engine receives a page it
    /// claimed straight from the network into place, without a copy; a memory that maps pages on arrival
    /// (userfaultfd) cannot.
    /// </summary>
    nint ReceiveInPlaceAddress(int region) => 0;

    /// <summary>
    /// Pages [<paramref name="firstPage"/>, + <paramref name="count"/>) of region <paramref name="region"/> were written
    /// in place (<see cref="ReceiveInPlaceAddress"/>) while missing: make them present and wake threads waiting for them.
    /// </summary>
    void PublishReceived(int region, ulong firstPage, int count) =>
        throw new NotSupportedException("this memory installs pages by copy only (ReceiveInPlaceAddress is 0)");

    /// <summary>Time guest threads have spent waiting for missing pages so far, in <see cref="System.Diagnostics.Stopwatch"/> ticks.</summary>
    long BlockedTicks { get; }

    /// <summary>Distinct pages the guest touched since <see cref="IPostcopyTarget.BeginPostcopy"/>, or -1 if it cannot tell.</summary>
    long WorkingSetPages { get; }

    /// <summary>
    /// The pages guest threads wait for now, for a memory that calls <see cref="IPageFaultSink.PageNeeded"/> once per
    /// page however long the wait: after a post-copy resumed over a new connection the engine asks for them again.
    /// Needed where the engine can lose sight of a wait: a page it had claimed for a receive in place
    /// (<see cref="ReceiveInPlaceAddress"/>) when the thread asked for it, and whose receive then failed. None by
    /// default (a memory that asks once per wait, as userfaultfd's reader does, never needs it).
    /// </summary>
    IReadOnlyList<(int Region, ulong Page)> AwaitedPages() => [];

    /// <summary>
    /// The pages will never come (the source is gone): threads waiting for a page, and any that would wait later, must
    /// stop with <paramref name="reason"/> rather than hang. The guest cannot go on; its owner tears it down.
    /// </summary>
    void Abort(string reason);
}

/// <summary>Where a post-copy guest reports the pages it waits for.</summary>
public interface IPageFaultSink
{
    /// <summary>
    /// A guest thread waits for page <paramref name="page"/> of region <paramref name="region"/>. Returns quickly
    /// (it queues a request); may be called more than once for a page, from any thread, but never from inside an
    /// <see cref="IPostcopyMemory"/> call.
    /// </summary>
    void PageNeeded(int region, ulong page);
}
