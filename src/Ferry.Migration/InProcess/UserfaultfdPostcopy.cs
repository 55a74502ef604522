using System.Diagnostics;
using Ferry.Linux;
using Ferry.Migration.Guest;
using Ferry.Migration.Memory;

namespace Ferry.Migration.InProcess;

/// <summary>
/// The in-process guest's post-copy memory: its regions registered with a userfaultfd in MISSING mode. A writer that
/// touches a missing page sleeps in the kernel; the fault thread here reads which page, and asks the engine for it;
/// the engine's receive threads install pages with <c>UFFDIO_COPY</c> (zeros with <c>UFFDIO_ZEROPAGE</c>), which maps
/// each atomically and wakes its waiters. The fault thread never touches guest memory itself.
/// </summary>
/// <remarks>
/// A fault on a page that is not missing is a page the source sent as zeros without the destination ever mapping it
/// (pre-copy skips zero runs over fresh memory): it gets the zero page here, without a round trip. Blocked time is
/// measured per page from the fault's arrival here to its installation.
/// </remarks>
internal sealed class UserfaultfdPostcopy : IPostcopyMemory
{
    private readonly Userfaultfd _uffd;
    private readonly MemoryRegion[] _regions;
    private readonly DirtyBitmap[] _missing;
    private readonly IPageFaultSink _sink;
    private readonly Thread _faults;
    private readonly ulong[] _first;
    // Per page: when its first fault arrived (0: none pending).
    private readonly long[] _faultedAt;
    private long _blockedTicks;
    private volatile bool _stop;
    private volatile string? _lost;
    private InProcessGuest? _guest;
    private int _disposed;

    /// <summary>Per-page fault stamps for <paramref name="regions"/>, zeroed and faulted in.</summary>
    public static long[] NewFaultStamps(MemoryRegion[] regions)
    {
        ulong total = 0;
        foreach (var region in regions) total += region.Pages;
        var stamps = new long[total];
        Prefault.Array<long>(stamps);
        return stamps;
    }

    /// <param name="faultStamps">From <see cref="NewFaultStamps"/> for these regions, all zero; null: allocated here.</param>
    public UserfaultfdPostcopy(MemoryRegion[] regions, IReadOnlyList<DirtyBitmap> missing, IPageFaultSink sink, long[]? faultStamps = null)
    {
        _regions = regions;
        _sink = sink;
        _missing = new DirtyBitmap[regions.Length];
        _first = new ulong[regions.Length];
        ulong total = 0;
        for (int r = 0; r < regions.Length; r++)
        {
            _missing[r] = new DirtyBitmap(regions[r].Pages);
            _missing[r].OrFrom(missing[r]);
            _first[r] = total;
            total += regions[r].Pages;
        }
        _faultedAt = faultStamps ?? NewFaultStamps(regions);
        if ((ulong)_faultedAt.Length != total) throw new ArgumentException("fault stamps for other regions", nameof(faultStamps));
        _uffd = Userfaultfd.Open();
        try
        {
            foreach (var region in regions) _uffd.RegisterMissing(region.HostAddress, (nuint)region.Size);
            // Drop what the missing pages hold (stale pre-copy data, or nothing): their next touch faults here.
            for (int r = 0; r < regions.Length; r++)
            {
                foreach (var run in _missing[r].Runs(0, regions[r].Pages))
                {
                    if (Libc.madvise(regions[r].PageAddress(run.Start), (nuint)(run.Length << MemoryRegion.PageShift), Libc.MADV_DONTNEED) != 0)
                        throw new IOException($"madvise(MADV_DONTNEED) of missing pages failed: errno {System.Runtime.InteropServices.Marshal.GetLastPInvokeError()}");
                }
            }
        }
        catch
        {
            _uffd.Dispose();
            throw;
        }
        _faults = new Thread(FaultLoop) { IsBackground = true, Name = "ferry-uffd-faults" };
        _faults.Start();
    }

    /// <summary>True once every missing page was installed and the userfaultfd closed, or post-copy was aborted.</summary>
    public bool Ended => Volatile.Read(ref _disposed) != 0;

    /// <inheritdoc/>
    public long BlockedTicks => Interlocked.Read(ref _blockedTicks);

    /// <inheritdoc/>
    public long WorkingSetPages => _guest?.PagesWrittenSinceHarvest() ?? -1;

    /// <summary>The guest started on this memory (it touches pages natively while any is missing).</summary>
    public void Attach(InProcessGuest guest) => _guest = guest;

    /// <inheritdoc/>
    public void Install(int region, ulong firstPage, int count, nint source)
    {
        var memory = _regions[region];
        _uffd.Copy(memory.PageAddress(firstPage), source, (nuint)count << MemoryRegion.PageShift);
        Landed(region, firstPage, (ulong)count);
    }

    /// <inheritdoc/>
    public void InstallZero(int region, ulong firstPage, ulong count)
    {
        var memory = _regions[region];
        _uffd.Zero(memory.PageAddress(firstPage), (nuint)(count << MemoryRegion.PageShift));
        Landed(region, firstPage, count);
    }

    private void Landed(int region, ulong first, ulong count)
    {
        long now = Stopwatch.GetTimestamp();
        for (ulong p = first; p < first + count; p++)
        {
            _missing[region].TestAndClearAtomic(p);
            long at = Interlocked.Exchange(ref _faultedAt[_first[region] + p], 0);
            if (at != 0) Interlocked.Add(ref _blockedTicks, now - at);
        }
    }

    /// <inheritdoc/>
    public void Abort(string reason)
    {
        _lost = reason;
        Dispose();
    }

    private void FaultLoop()
    {
        Span<nint> addresses = stackalloc nint[16];
        // First hop of every fault, woken by the faulting writer, which then sleeps (see LatencyPriority.RaiseHandoff).
        using var raised = LatencyPriority.RaiseHandoff();
        try
        {
            while (!_stop)
            {
                int n = _uffd.ReadFaults(addresses, 100);
                for (int i = 0; i < n; i++) OnFault(addresses[i] & ~(nint)(MemoryRegion.PageSize - 1));
            }
        }
        catch (ObjectDisposedException)
        {
            // Post-copy ended.
        }
    }

    private void OnFault(nint address)
    {
        for (int r = 0; r < _regions.Length; r++)
        {
            var region = _regions[r];
            if (address < region.HostAddress || address >= region.HostAddress + (nint)region.Size) continue;
            ulong page = (ulong)(address - region.HostAddress) >> MemoryRegion.PageShift;
            if (_missing[r].TestAtomic(page))
            {
                Interlocked.CompareExchange(ref _faultedAt[_first[r] + page], Stopwatch.GetTimestamp(), 0);
                _sink.PageNeeded(r, page);
            }
            else
            {
                // Never missing (a zero page never mapped here), or installed since the fault: the zero page, or
                // nothing if present (ZEROPAGE leaves a present page alone and wakes nobody, the install woke them).
                _uffd.Zero(address, MemoryRegion.PageSize);
            }
            return;
        }
    }

    /// <summary>End post-copy: stop the fault thread, unregister and close (all pages present, or the VM is lost).</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _stop = true;
        if (_guest is { } guest) guest.TouchNatively = false;
        _uffd.Dispose(); // wakes the fault thread's poll; waiting writers go on (with zero pages if the VM was lost)
        _faults.Join(TimeSpan.FromSeconds(5));
    }
}
