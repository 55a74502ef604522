using Ferry.Migration.Guest;

namespace Ferry.Migration.InProcess;

/// <summary>Which pages the in-process guest's writers dirty.</summary>
public enum DirtyPattern
{
    /// <summary>Every page of the working set equally likely.</summary>
    Uniform = 0,

    /// <summary>
    /// <see cref="InProcessGuestOptions.HotsetWriteShare"/> of the writes go to the first
    /// <see cref="InProcessGuestOptions.HotsetFraction"/> of the working set; the rest go uniformly to the remainder.
    /// </summary>
    Hotset = 1,

    /// <summary>Each writer walks its pages of the working set in order and wraps (a streaming workload).</summary>
    Sequential = 2,
}

/// <summary>What guest memory holds before the workload starts.</summary>
public enum MemoryFill
{
    /// <summary>Untouched zero pages (costs no RAM until written; the engine can send them as zero pages).</summary>
    Zero = 0,

    /// <summary>Every page filled with incompressible pseudo-random bytes (touches, and so costs, all memory).</summary>
    Random = 1,
}

/// <summary>
/// Shape of the in-process test guest: its memory and the workload that dirties it (DESIGN.md, guest contract).
/// </summary>
public sealed record InProcessGuestOptions
{
    /// <summary>Pass as <see cref="DirtyRatePagesPerSecond"/> for writers that never sleep.</summary>
    public const long FullSpeed = long.MaxValue;

    /// <summary>The hole between the two regions of a <see cref="SplitRegions"/> guest, like x86's PCI hole below 4 GiB.</summary>
    public const ulong HoleBytes = 1UL << 30;

    /// <summary>Most writer threads (and logical writers) a guest may have; bounds the saved writer state.</summary>
    public const int MaxWriterThreads = 256;

    /// <summary>Guest memory in bytes, a positive multiple of 4 KiB. Reserved lazily: untouched pages cost no RAM.</summary>
    public required ulong MemoryBytes { get; init; }

    /// <summary>
    /// Threads that write memory (default 2). 0 means none: the guest only writes when the caller invokes
    /// <see cref="InProcessGuest.Step"/>, deterministically from <see cref="Seed"/> (for exact tests).
    /// </summary>
    public int WriterThreads { get; init; } = 2;

    /// <summary>Pages written per second over all writers; 0 = idle; <see cref="FullSpeed"/> = as fast as they can.</summary>
    public long DirtyRatePagesPerSecond { get; init; }

    /// <summary>Which pages are written.</summary>
    public DirtyPattern Pattern { get; init; } = DirtyPattern.Uniform;

    /// <summary>
    /// Only the first this-many bytes of memory are ever written; null = all memory. The workload's own counter pages
    /// (<see cref="CounterPages"/>, at the end of memory) are never part of it: a working set reaching into them ends
    /// where they begin, so <see cref="WorkingSetPages"/> is at most <see cref="TotalPages"/> less about 1/1025.
    /// </summary>
    public ulong? WorkingSetBytes { get; init; }

    /// <summary><see cref="DirtyPattern.Hotset"/>: share of the working set that is hot (default 0.1).</summary>
    public double HotsetFraction { get; init; } = 0.1;

    /// <summary><see cref="DirtyPattern.Hotset"/>: share of writes that go to the hot pages (default 0.9).</summary>
    public double HotsetWriteShare { get; init; } = 0.9;

    /// <summary>
    /// <see cref="DirtyPattern.Hotset"/>: where the hot pages begin, as a share of the working set (default 0, its
    /// first pages; they wrap around its end). At 0 a first-to-last push order meets them first, which flatters it.
    /// </summary>
    public double HotsetStart { get; init; }

    /// <summary>Initial memory contents.</summary>
    public MemoryFill Fill { get; init; } = MemoryFill.Zero;

    /// <summary>Seed of the fill and of every writer's page choices.</summary>
    public ulong Seed { get; init; } = 1;

    /// <summary>
    /// Two regions instead of one: the first half of memory at guest-physical 0 and the rest after a
    /// <see cref="HoleBytes"/> hole, each its own mapping, so multi-region code paths are exercised.
    /// </summary>
    public bool SplitRegions { get; init; }

    /// <summary>
    /// Map guest memory with transparent huge pages (default true; <see cref="Ferry.Linux.GuestMemoryMapping.Create"/>).
    /// A host-side choice, not guest state: it is not migrated, and the destination decides its own.
    /// </summary>
    public bool TransparentHugePages { get; init; } = true;

    /// <summary>Sequence counters per counter page: one u32 per working-set page.</summary>
    public const ulong CountersPerPage = MemoryRegion.PageSize / sizeof(uint);

    /// <summary>Total pages.</summary>
    public ulong TotalPages => MemoryBytes >> MemoryRegion.PageShift;

    /// <summary>
    /// Pages the workload writes: the first this-many pages, counted across regions in order. At most
    /// <c>TotalPages - ceil(TotalPages / 1025)</c>, which always leaves room for the counter pages.
    /// </summary>
    public ulong WorkingSetPages =>
        Math.Min((WorkingSetBytes ?? MemoryBytes) >> MemoryRegion.PageShift, TotalPages - ((TotalPages + CountersPerPage) / (CountersPerPage + 1)));

    /// <summary>
    /// Pages at the very end of memory holding the workload's expected sequence number of every working-set page
    /// (u32 per page, page <c>p</c>'s at byte <c>4p</c> of the first counter page). Like a real guest's own state they
    /// live in guest memory, are dirtied by the writes that change them and migrate as pages, so the saved device
    /// state stays a few hundred bytes whatever the guest's size. 1 page per 4 MiB of working set.
    /// </summary>
    public ulong CounterPages => (WorkingSetPages + CountersPerPage - 1) / CountersPerPage;

    /// <summary>Global index of the first counter page: <see cref="TotalPages"/> - <see cref="CounterPages"/>.</summary>
    public ulong FirstCounterPage => TotalPages - CounterPages;

    /// <summary>The guest-physical layout: one region at 0, or two around the hole.</summary>
    public IReadOnlyList<(ulong GuestPhysicalAddress, ulong Size)> Layout()
    {
        if (!SplitRegions)
        {
            return [(0, MemoryBytes)];
        }

        ulong first = (TotalPages / 2) << MemoryRegion.PageShift;
        return [(0, first), (first + HoleBytes, MemoryBytes - first)];
    }

    /// <summary>Throw <see cref="ArgumentException"/> naming the first option out of range.</summary>
    public void Validate()
    {
        if (MemoryBytes == 0 || MemoryBytes % MemoryRegion.PageSize != 0)
        {
            throw new ArgumentException($"MemoryBytes {MemoryBytes} must be a positive multiple of 4096");
        }

        // 2^46 = 64 TiB: beyond any host here, and keeps page counts well inside the bitmap's limit.
        if (MemoryBytes > 1UL << 46)
        {
            throw new ArgumentException($"MemoryBytes {MemoryBytes} beyond the 64 TiB supported");
        }

        if (TotalPages < 2)
        {
            throw new ArgumentException("MemoryBytes must be at least two pages (one to write, one for the workload's counters)");
        }

        if (WriterThreads is < 0 or > MaxWriterThreads)
        {
            throw new ArgumentException($"WriterThreads {WriterThreads} outside 0..{MaxWriterThreads}");
        }

        if (DirtyRatePagesPerSecond < 0)
        {
            throw new ArgumentException($"DirtyRatePagesPerSecond {DirtyRatePagesPerSecond} is negative");
        }

        if (!Enum.IsDefined(Pattern) || !Enum.IsDefined(Fill))
        {
            throw new ArgumentException($"unknown Pattern {Pattern} or Fill {Fill}");
        }

        ulong workingSet = WorkingSetBytes ?? MemoryBytes;
        if (workingSet == 0 || workingSet % MemoryRegion.PageSize != 0 || workingSet > MemoryBytes)
        {
            throw new ArgumentException($"WorkingSetBytes {workingSet} must be a positive multiple of 4096 within memory");
        }

        if (WorkingSetPages < (ulong)Math.Max(WriterThreads, 1))
        {
            throw new ArgumentException($"working set of {WorkingSetPages} pages (after the counter pages) is smaller than {WriterThreads} writers");
        }

        if (!(HotsetFraction > 0 && HotsetFraction <= 1) || !(HotsetWriteShare >= 0 && HotsetWriteShare <= 1) || !(HotsetStart >= 0 && HotsetStart < 1))
        {
            throw new ArgumentException($"HotsetFraction {HotsetFraction} must be in (0, 1], HotsetWriteShare {HotsetWriteShare} in [0, 1] and HotsetStart {HotsetStart} in [0, 1)");
        }
    }
}
