using System.Diagnostics;
using Ferry.Linux;
using Ferry.Migration.Guest;
using Ferry.Migration.Memory;
using Ferry.Migration.Protocol;

namespace Ferry.Migration.Postcopy;

/// <summary>
/// The destination's side of post-copy: which pages are still missing, the requests for the ones the guest waits for,
/// and the installation of arriving pages (from any page channel or the urgent channel) into the guest.
/// </summary>
/// <remarks>
/// <para>A page is claimed (its missing bit cleared atomically) by the one thread that installs it, so the guest never
/// sees a page written twice, and a page that arrives twice (pushed and requested both) is counted and dropped.
/// Post-copy is over when the last missing page is installed.</para>
/// <para>Fault latency is measured from the first request for a page to its installation, on this host's clock: it is
/// what a blocked guest thread waits, less the target's own wake-up.</para>
/// <para>No allocation per page: the bitmaps, the request stamps (8 bytes per guest page) and the latency samples are
/// allocated once.</para>
/// </remarks>
internal sealed class PostcopyIncoming : IPageFaultSink
{
    /// <summary>Latency samples kept (faults beyond it are counted, not sampled).</summary>
    private const int MaxSamples = 1 << 16;

    private readonly IReadOnlyList<MemoryRegion> _regions;
    private DirtyBitmap[] _missing = null!; // set by Begin
    private readonly DirtyBitmap[] _requested;
    private readonly ulong[] _first;
    private readonly long[] _requestedAt;
    private readonly long[] _samples;
    private readonly Action<int, ulong, uint> _request;
    private PageHashDigest? _digest;
    private readonly ReceivedPageMap? _received;
    private IPostcopyMemory? _memory;
    private long _missingCount;
    private long _faults;
    private long _awaited;
    private long _sampleCount;
    private long _duplicates;
    private long _installed;

    /// <param name="regions">The destination guest's memory.</param>
    /// <param name="request">Sends a PageRequest for (region, first page, count) to the source.</param>
    /// <param name="digest">Per-page hashes for verification, or null (<see cref="Begin"/> may still drop it).</param>
    /// <param name="received">Which pages received data before post-copy (pre-copy's map), or null: a Zero run over
    /// pages that never did is only made present (<see cref="IPostcopyMemory.InstallFreshZero"/>), not written.</param>
    /// <remarks>Built at the handshake, long before the switchover: its per-page arrays are written through here once,
    /// so the kernel backs them now and not inside the downtime (a fresh page costs ~11 µs on this kind of host, and
    /// the arrays of a 1 GiB guest are 2 MiB, 4 with the digest: 6-17 ms measured when they were allocated at
    /// Complete).</remarks>
    public PostcopyIncoming(IReadOnlyList<MemoryRegion> regions, Action<int, ulong, uint> request, PageHashDigest? digest,
        ReceivedPageMap? received = null)
    {
        _regions = regions;
        _received = received;
        _request = request;
        _digest = digest;
        _requested = new DirtyBitmap[regions.Count];
        _first = new ulong[regions.Count];
        ulong total = 0;
        for (int r = 0; r < regions.Count; r++)
        {
            _requested[r] = new DirtyBitmap(regions[r].Pages);
            _first[r] = total;
            total += regions[r].Pages;
        }
        _requestedAt = new long[total];
        // No more samples than pages (a page's fault is sampled once it lands): a small guest, such as the switchover
        // warm-up's 40 of 4 pages, allocates next to nothing. 40 full arrays (512 KiB each, the large-object heap) set
        // off a chain of background collections that ran on into the guest's first milliseconds after the resume.
        _samples = new long[(int)Math.Min((ulong)MaxSamples, total)];
        Prefault.Array(_requestedAt);
        Prefault.Array(_samples);
        foreach (var b in _requested) Prefault.Array(b.Words);
    }

    /// <summary>
    /// The switchover: <paramref name="missing"/> (per region; taken over, bits are cleared as pages land) are the pages
    /// the guest lacks; <paramref name="verify"/> false drops the digest. Once, before <see cref="Attach"/>.
    /// </summary>
    public void Begin(DirtyBitmap[] missing, bool verify)
    {
        ArgumentNullException.ThrowIfNull(missing);
        if (_missing is not null) throw new InvalidOperationException("post-copy began already");
        if (missing.Length != _regions.Count) throw new ArgumentException("one missing map per region", nameof(missing));
        long count = 0;
        for (int r = 0; r < _regions.Count; r++) count += (long)missing[r].Count();
        if (!verify) _digest = null;
        _missingCount = count;
        _missing = missing;
    }

    /// <summary>Set once every missing page has been installed (at once if none was missing).</summary>
    public ManualResetEventSlim AllLanded { get; } = new();

    /// <summary>Pages still missing.</summary>
    public long Missing => Interlocked.Read(ref _missingCount);

    /// <summary>Pages installed.</summary>
    public long Installed => Interlocked.Read(ref _installed);

    /// <summary>Distinct pages the guest asked for.</summary>
    public long Faults => Interlocked.Read(ref _faults);

    /// <summary>Faults outstanding: pages a guest thread waits for that have not landed (a reply is due for each).</summary>
    public long Awaited => Interlocked.Read(ref _awaited);

    /// <summary>Pages that arrived after they had been installed already.</summary>
    public long Duplicates => Interlocked.Read(ref _duplicates);

    /// <summary>Per-page hashes for verification, or null.</summary>
    public PageHashDigest? Digest => _digest;

    /// <summary>The guest's memory, once <see cref="IPostcopyTarget.BeginPostcopy"/> returned it.</summary>
    public IPostcopyMemory? Memory => _memory;

    /// <summary>Hand the guest's post-copy memory over; pages may be installed from here on.</summary>
    public void Attach(IPostcopyMemory memory)
    {
        _memory = memory;
        if (Missing == 0) AllLanded.Set();
        _attached.Set();
    }

    /// <summary>
    /// The migration failed before <see cref="Attach"/>: an install waiting for it (see <see cref="Apply"/>) gives up.
    /// Any thread.
    /// </summary>
    public void Abandon()
    {
        _abandoned = true;
        _attached.Set();
    }

    // Set by Attach (or Abandon): the source pushes its first pages right after Complete, which may reach the urgent
    // channel's thread before the control thread has read Complete and attached the guest's memory.
    private readonly ManualResetEventSlim _attached = new();
    private volatile bool _abandoned;

    /// <summary>How long an install waits for the switchover to attach the guest's memory.</summary>
    private static readonly TimeSpan AttachWait = TimeSpan.FromSeconds(10);

    private IPostcopyMemory AwaitAttach()
    {
        if (!_attached.Wait(AttachWait) || _abandoned || _memory is not { } memory)
            throw new MigrationProtocolException("post-copy pages arrived, and no switchover to post-copy followed");
        return memory;
    }

    /// <inheritdoc/>
    /// <remarks>
    /// A fault just past the run an earlier request asked for continues a stream (a guest thread walking through
    /// memory, or several interleaving their pages): it asks for a run twice as long as that one's, up to
    /// <see cref="MaxFaultAround"/> pages, of pages still missing and not asked for (Linux's readahead, for faults).
    /// Traced on the 1 GiB sequential benchmark: before the push had sent its first batch, the two writers faulted on
    /// each of their pages in turn, some 120 round trips in the first 14 ms.
    /// </remarks>
    public void PageNeeded(int region, ulong page)
    {
        if ((uint)region >= (uint)_regions.Count || page >= _regions[region].Pages) return; // not ours to ask for
        if (!_missing[region].TestAtomic(page)) return;              // landed meanwhile
        ref long requestedAt = ref _requestedAt[_first[region] + page];
        if (!_requested[region].TestAndSetAtomic(page))
        {
            // Asked for already: by a fault, or ahead of one as part of a run. In the second case a guest thread waits
            // for it only now: a fault from here (counted, timed, and asked for again after a reconnect).
            if (Interlocked.CompareExchange(ref requestedAt, Stopwatch.GetTimestamp(), 0) == 0) Awaiting(region, page, ref requestedAt);
            return;
        }
        Volatile.Write(ref requestedAt, Stopwatch.GetTimestamp());
        Awaiting(region, page, ref requestedAt);
        uint count = RunFrom(region, page);
        if (TraceLog.Enabled) TraceLog.Mark($"destination: fault on page {page} of region {region}, asking for {count}");
        _request(region, page, count);
    }

    // A guest thread waits for the page from now (its request time is set): a fault, and a reply due until it lands.
    private void Awaiting(int region, ulong page, ref long requestedAt)
    {
        Interlocked.Increment(ref _faults);
        Interlocked.Increment(ref _awaited);
        // Landed between the caller's test and the stamp: Landed saw no stamp, so the count comes back down here.
        if (!_missing[region].TestAtomic(page) && Interlocked.Exchange(ref requestedAt, 0) != 0) Interlocked.Decrement(ref _awaited);
    }

    /// <summary>Most pages one request asks for (256 KiB, ~0.1 ms on loopback).</summary>
    public const int MaxFaultAround = 64;

    /// <summary>How far past a stream's last run a fault may land and still continue it, pages.</summary>
    public const int StreamGap = 4;

    // The last few requests' runs, as streams: where each ended (global page index, 0 = free) and how long it was.
    private const int Streams = 8;
    private readonly ulong[] _streamEnd = new ulong[Streams];
    private readonly int[] _streamRun = new int[Streams];
    private int _streamNext;
    private readonly Lock _streamLock = new();

    // Pages to ask for from page (requested already, by the caller): 1, or a stream's next run (marked requested here).
    private uint RunFrom(int region, ulong page)
    {
        ulong at = _first[region] + page;
        lock (_streamLock)
        {
            int stream = -1;
            for (int i = 0; i < Streams && stream < 0; i++)
                if (_streamEnd[i] != 0 && at >= _streamEnd[i] && at < _streamEnd[i] + StreamGap) stream = i;
            int want = stream < 0 ? 1 : Math.Min(MaxFaultAround, Math.Max(2, _streamRun[stream] * 2));
            uint count = 1;
            ulong pages = _regions[region].Pages;
            while (count < want && page + count < pages && _missing[region].TestAtomic(page + count)
                   && _requested[region].TestAndSetAtomic(page + count))
                count++;
            if (stream < 0)
            {
                stream = _streamNext;
                _streamNext = (_streamNext + 1) % Streams;
            }
            _streamEnd[stream] = at + count;
            _streamRun[stream] = want;
            return count;
        }
    }

    /// <summary>
    /// Install the pages of a Normal run whose data is at <paramref name="data"/> (count × 4096 bytes): those still
    /// missing are claimed and handed to the guest, the others counted as duplicates.
    /// </summary>
    public void Install(int region, ulong first, int count, nint data) => Apply(region, first, (ulong)count, data);

    /// <summary>As <see cref="Install"/> for a Zero run.</summary>
    public void InstallZero(int region, ulong first, ulong count) => Apply(region, first, count, 0);

    private void Apply(int region, ulong first, ulong count, nint data)
    {
        var memory = _memory ?? AwaitAttach();
        if (TraceLog.Enabled) TraceLog.Mark($"destination: applying page {first} of region {region}");
        ulong end = first + count;
        ulong p = first;
        while (p < end)
        {
            // A stretch of pages this thread claims, then one install for all of it; or one it passes over (installed
            // already, or being installed by another thread), counted as duplicates.
            ulong start = p;
            ulong n = ClaimStretch(region, p, end - p, out bool claimed);
            p += n;
            if (claimed)
            {
                if (data != 0)
                {
                    nint at = data + (nint)((start - first) << MemoryRegion.PageShift);
                    if (_digest is not null)
                        for (ulong i = 0; i < n; i++) _digest.Set(region, start + i, at + (nint)(i << MemoryRegion.PageShift));
                    memory.Install(region, start, (int)n, at);
                }
                else
                {
                    _digest?.SetZero(region, start, n);
                    InstallZero(memory, region, start, n);
                }
                Landed(region, start, n);
            }
        }
    }

    /// <summary>
    /// Where region <paramref name="region"/>'s claimed pages may be received in place, or 0: the guest's memory
    /// installs by copy only (<see cref="IPostcopyMemory.ReceiveInPlaceAddress"/>). Waits for the memory to be attached.
    /// </summary>
    public nint ReceiveInPlaceAddress(int region) => (_memory ?? AwaitAttach()).ReceiveInPlaceAddress(region);

    /// <summary>
    /// Claim for this thread the still-missing pages at the start of [<paramref name="first"/>, + <paramref name="max"/>)
    /// of region <paramref name="region"/>, or pass over the pages there that are not missing (installed, or claimed
    /// by another thread): returns how many pages from <paramref name="first"/> on, and in <paramref name="claimed"/>
    /// which of the two. A claimed page must be published (<see cref="PublishInPlace"/>) or given back
    /// (<see cref="Unclaim"/>); pages passed over count as duplicates.
    /// </summary>
    public ulong ClaimStretch(int region, ulong first, ulong max, out bool claimed)
    {
        var missing = _missing[region];
        ulong end = first + max, p = first;
        claimed = missing.TestAndClearAtomic(p);
        p++;
        if (claimed)
        {
            while (p < end && missing.TestAndClearAtomic(p)) p++;
        }
        else
        {
            while (p < end && !missing.TestAtomic(p)) p++;
            Interlocked.Add(ref _duplicates, (long)(p - first));
        }
        return p - first;
    }

    /// <summary>Claimed pages whose data never arrived (the receive failed): missing again, for a resumed source to send.</summary>
    public void Unclaim(int region, ulong start, ulong count)
    {
        var missing = _missing[region];
        for (ulong p = start; p < start + count; p++) missing.TestAndSetAtomic(p);
    }

    /// <summary>
    /// Claimed pages [<paramref name="start"/>, + <paramref name="count"/>) of region <paramref name="region"/> hold their
    /// data in place now, at <paramref name="address"/>: hash them for verification, and hand them to the guest.
    /// </summary>
    public void PublishInPlace(int region, ulong start, ulong count, nint address)
    {
        if (TraceLog.Enabled) TraceLog.Mark($"destination: applying page {start} of region {region} in place");
        if (_digest is not null)
            for (ulong i = 0; i < count; i++) _digest.Set(region, start + i, address + (nint)(i << MemoryRegion.PageShift));
        _memory!.PublishReceived(region, start, (int)count);
        Landed(region, start, count);
    }

    /// <summary>
    /// Zeros for claimed pages [start, + n): those that never received data read as zero already (the zero pages of a
    /// guest's memory, most of it in a pure post-copy: written, they cost the VM's receivers a memory write each, and
    /// a first-touch fault each where the memory was not populated yet, 3.5 s of a 1 GiB post-copy measured).
    /// </summary>
    private void InstallZero(IPostcopyMemory memory, int region, ulong start, ulong n)
    {
        if (_received is null)
        {
            memory.InstallZero(region, start, n);
            return;
        }
        ulong end = start + n;
        ulong p = start;
        while (p < end)
        {
            ulong from = p;
            bool held = _received.HoldsData(region, p);
            while (p < end && _received.HoldsData(region, p) == held) p++;
            if (held) memory.InstallZero(region, from, p - from);
            else memory.InstallFreshZero(region, from, p - from);
        }
    }

    private void Landed(int region, ulong start, ulong count)
    {
        long now = Stopwatch.GetTimestamp();
        for (ulong i = 0; i < count; i++)
        {
            long at = Interlocked.Exchange(ref _requestedAt[_first[region] + start + i], 0);
            if (at == 0) continue;
            Interlocked.Decrement(ref _awaited);
            if (TraceLog.Enabled) TraceLog.Mark($"destination: page {start + i} of region {region} landed, {(now - at) * 1_000_000 / Stopwatch.Frequency} us after its fault");
            long k = Interlocked.Increment(ref _sampleCount) - 1;
            if (k < _samples.Length) _samples[k] = now - at;
        }
        Interlocked.Add(ref _installed, (long)count);
        if (Interlocked.Add(ref _missingCount, -(long)count) == 0) AllLanded.Set();
    }

    /// <summary>The pages still missing, per region (bits clear as pages land): what a resumed source must send.</summary>
    public IReadOnlyList<DirtyBitmap> MissingMap => _missing;

    /// <summary>
    /// Ask again for every page a guest thread waits for and that has not landed: after a reconnect, requests and pages in
    /// flight on the lost connection are gone (pages asked for ahead of a fault are forgotten instead: the push brings
    /// them, or a fault asks again). Returns how many.
    /// </summary>
    public int RequestPendingAgain()
    {
        int n = 0;
        for (int r = 0; r < _regions.Count; r++)
        {
            for (ulong p = 0; p < _regions[r].Pages; p++)
            {
                if (!_missing[r].TestAtomic(p)) continue;
                if (Volatile.Read(ref _requestedAt[_first[r] + p]) == 0)
                {
                    // Asked for ahead of a fault, and lost with the connection: a later fault must ask again.
                    _requested[r].TestAndClearAtomic(p);
                    continue;
                }
                _request(r, p, 1);
                n++;
            }
        }
        // And every page a guest thread waits for, whatever the loop found: one claimed by a receive in place when the
        // thread asked (not missing then, so not stamped), then given back when that receive failed; or one stamped
        // just after the loop read no stamp there and dropped its mark. A few pages at most (one per thread), so one
        // asked for twice costs a duplicate the install drops.
        if (_memory is { } memory)
        {
            foreach (var (r, p) in memory.AwaitedPages())
            {
                if ((uint)r >= (uint)_regions.Count || p >= _regions[r].Pages || !_missing[r].TestAtomic(p)) continue;
                ref long requestedAt = ref _requestedAt[_first[r] + p];
                _requested[r].TestAndSetAtomic(p);
                if (Interlocked.CompareExchange(ref requestedAt, Stopwatch.GetTimestamp(), 0) == 0) Awaiting(r, p, ref requestedAt);
                _request(r, p, 1);
                n++;
            }
        }
        return n;
    }

    /// <summary>Fault latency percentiles in microseconds (p50, p99, max); zeros with no fault.</summary>
    public (uint P50, uint P99, uint Max) Latency()
    {
        int n = (int)Math.Min(Interlocked.Read(ref _sampleCount), _samples.Length);
        return Percentiles(_samples.AsSpan(0, n).ToArray());
    }

    /// <summary>
    /// p50, p99 and max of <paramref name="ticks"/> (Stopwatch ticks, sorted in place) in microseconds; zeros if empty.
    /// <see cref="Precopy.SwitchoverWarmup"/> runs it on enough samples that the sort's every path is compiled before
    /// the guest starts: compiled at the end of post-copy it cost the running guest up to 15 ms of CPU (measured).
    /// </summary>
    internal static (uint P50, uint P99, uint Max) Percentiles(long[] ticks)
    {
        int n = ticks.Length;
        if (n == 0) return (0, 0, 0);
        Array.Sort(ticks);
        uint Us(long t) => (uint)Math.Min(uint.MaxValue, t * 1_000_000 / Stopwatch.Frequency);
        return (Us(ticks[(n - 1) / 2]), Us(ticks[Math.Min(n - 1, (int)Math.Ceiling(n * 0.99) - 1)]), Us(ticks[^1]));
    }
}
