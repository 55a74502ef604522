using Ferry.Migration.Guest;
using Ferry.Migration.Memory;

namespace Ferry.Migration.Postcopy;

/// <summary>
/// What a running guest used before a pure post-copy's pause, for bubbling's first pages: every page it wrote or
/// (from an <see cref="IAccessTrackingSource"/>) reached since this began (<see cref="Used"/>), the pages it used in
/// each of the last intervals up to the pause (<see cref="Steady"/>), and its system side's pages (<see cref="System"/>).
/// Fed by every dirty-log harvest made until the pause, at whatever moments: an interval ends with the first harvest
/// made once it has lasted its length, so a harvest the migration makes for its own reasons (the end of a round)
/// counts toward the open interval without cutting it short.
/// </summary>
/// <remarks>
/// Why the intervals must run up to the pause: the steady pages go first, on the urgent channel, because the guest
/// touches them the moment it runs at the destination. Taken before a pure post-copy's rounds of its pre-copy-only
/// regions (a copied disk, seconds of copying), they said what it used then.
/// </remarks>
internal sealed class RecentUse
{
    private readonly IMigrationSource _guest;
    private readonly IAccessTrackingSource? _tracking;
    private readonly TimeProvider _time;
    private readonly TimeSpan _interval;
    private readonly int _intervals;
    // The open interval's pages at _closed % length, the last closed ones' before it (one slot more than steadiness asks).
    private readonly DirtyBitmap[] _recent;
    private int _closed;
    private long _openedAt;

    /// <param name="intervals">How many intervals in a row a page must be used in to be steady.</param>
    /// <param name="interval">The length of one.</param>
    public RecentUse(IMigrationSource guest, int intervals, TimeSpan interval, TimeProvider time)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(intervals, 1);
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(interval, TimeSpan.Zero);
        _guest = guest;
        _tracking = guest as IAccessTrackingSource;
        _time = time;
        _interval = interval;
        _intervals = intervals;
        _recent = new DirtyBitmap[intervals + 1];
        for (int i = 0; i < _recent.Length; i++) _recent[i] = new DirtyBitmap(guest.TotalPages);
        Used = new DirtyBitmap(guest.TotalPages);
        System = _tracking is null ? null : new DirtyBitmap(guest.TotalPages);
        _openedAt = time.GetTimestamp();
    }

    /// <summary>Every page written or used since this began, up to the last harvest.</summary>
    public DirtyBitmap Used { get; }

    /// <summary>
    /// The system side's pages since this began (null: the guest does not tell): one set over the whole time, not
    /// intervals, since a kernel page used once a second is as needed at the resume as one used every tick, and the set
    /// is small (~450 pages on the demo guest).
    /// </summary>
    public DirtyBitmap? System { get; }

    /// <summary>Intervals ended so far.</summary>
    public int Closed => _closed;

    /// <summary>How long until the open interval has lasted its length (zero: it has).</summary>
    public TimeSpan UntilDue
    {
        get
        {
            var left = _interval - _time.GetElapsedTime(_openedAt);
            return left > TimeSpan.Zero ? left : TimeSpan.Zero;
        }
    }

    /// <summary>
    /// Harvest the guest's dirty log into <paramref name="log"/> (cleared first; the caller routes what it holds:
    /// pages to send again) and, where it tracks them, the pages its CPUs used; all of them count as used in the open
    /// interval, which ends here if it has lasted its length. Written pages are added to <paramref name="populated"/>:
    /// a page first written after that map was taken holds data.
    /// </summary>
    public void Harvest(DirtyBitmap log, DirtyBitmap populated)
    {
        log.ClearAll();
        _guest.HarvestDirtyLog(log.Words);
        populated.OrFrom(log);
        var open = _recent[_closed % _recent.Length];
        open.OrFrom(log);
        // The dirty log's harvest is what makes a page the guest writes all the time show in each interval: it drops
        // the CPUs' write translations, and the next write fills one again.
        _tracking?.HarvestAccessedPages(open.Words, System!.Words);
        Used.OrFrom(open);
        if (UntilDue > TimeSpan.Zero) return;
        _closed++;
        _recent[_closed % _recent.Length].ClearAll();
        _openedAt = _time.GetTimestamp();
    }

    /// <summary>The pages used in every one of the last intervals that ended (null: fewer than that many ended).</summary>
    public DirtyBitmap? Steady()
    {
        if (_closed < _intervals) return null;
        var steady = new DirtyBitmap(_guest.TotalPages);
        steady.OrFrom(_recent[(_closed - 1) % _recent.Length]);
        for (int i = 2; i <= _intervals; i++) steady.AndFrom(_recent[(_closed - i) % _recent.Length]);
        return steady;
    }
}
