using Ferry.Migration;
using Ferry.Migration.Guest;
using Ferry.Migration.InProcess;

namespace Ferry.Cli;

/// <summary>
/// Everything <c>ferry bench engine</c> (and <c>ferry demo</c>) needs: the in-process guest's workload and the
/// migration's knobs. Defaults are the engine's (<see cref="MigrationOptions"/>) so the CLI never disagrees with it.
/// </summary>
public sealed record EngineBenchSettings
{
    private static readonly MigrationOptions EngineDefaults = new();

    /// <summary>Guest memory (a multiple of 4 KiB).</summary>
    public ulong MemoryBytes { get; init; } = 1UL << 30;

    /// <summary>What guest memory holds before the migration starts.</summary>
    public MemoryFill Fill { get; init; } = MemoryFill.Zero;

    /// <summary>Pages the guest's writers dirty per second, in total; 0 = idle guest.</summary>
    public long DirtyRatePagesPerSecond { get; init; }

    /// <summary>Which pages the writers pick.</summary>
    public DirtyPattern Pattern { get; init; } = DirtyPattern.Uniform;

    /// <summary>Bytes the writers touch (from the start of memory); null = all of it.</summary>
    public ulong? WorkingSetBytes { get; init; }

    /// <summary><see cref="DirtyPattern.Hotset"/>: where the hot pages begin, as a share of the working set.</summary>
    public double HotsetStart { get; init; }

    /// <summary>Writer threads (the guest's "vCPUs").</summary>
    public int Writers { get; init; } = 2;

    public TimeSpan DowntimeLimit { get; init; } = EngineDefaults.DowntimeLimit;
    public long MaxBandwidth { get; init; } = EngineDefaults.MaxBandwidth;
    public int Channels { get; init; } = EngineDefaults.PageChannels;
    public int MaxRounds { get; init; } = EngineDefaults.MaxRounds;
    public TimeSpan Timeout { get; init; } = EngineDefaults.Timeout;
    public TimeoutStrategy TimeoutStrategy { get; init; } = EngineDefaults.TimeoutStrategy;
    public bool AutoConverge { get; init; } = EngineDefaults.AutoConverge;
    public bool Verify { get; init; }
    public bool ChecksumFinalPass { get; init; }
    public MigrationMode Mode { get; init; } = EngineDefaults.Mode;
    public Ferry.Migration.Postcopy.PrepagingStrategy Prepaging { get; init; } = EngineDefaults.Prepaging;

    /// <summary>The destination's <see cref="IncomingOptions.FaultPoll"/> (zero: off).</summary>
    public TimeSpan FaultPoll { get; init; }

    /// <summary>Print the statistics as JSON on stdout and nothing else.</summary>
    public bool Json { get; init; }

    /// <summary>
    /// How long the guest's writers run before the migration starts, so it moves a guest that has been working (as
    /// QEMU's migration tests wait for their guest's first pass) rather than one still faulting its memory in: a
    /// fresh 1 GiB guest asked for 20,000 pages/s dirtied only ~700/s in its first 100 ms here (first touches cost
    /// ~3.7 ms per 2 MiB huge page on this VM host). Ignored for an idle guest.
    /// </summary>
    public TimeSpan Warmup { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>Seed of the guest's workload (fixed so two runs dirty the same pages).</summary>
    public ulong Seed { get; init; } = 1;

    /// <summary>Checks between options (each option's own syntax and range are checked when parsing).</summary>
    public IReadOnlyList<string> Validate()
    {
        var errors = new List<string>();
        if (WorkingSetBytes is { } workingSet && workingSet > MemoryBytes)
        {
            errors.Add($"--working-set: {Units.FormatBytes(workingSet)} is larger than --memory ({Units.FormatBytes(MemoryBytes)})");
            return errors;
        }
        var pages = (WorkingSetBytes ?? MemoryBytes) / MemoryRegion.PageSize;
        if ((ulong)Writers > pages)
        {
            errors.Add($"--writers: {Writers} writers need at least {Writers} pages to write, but the working set has {pages}");
            return errors;
        }
        try
        {
            // The guest's own rules, so the CLI can never build a guest the guest would refuse mid-run.
            ToGuestOptions().Validate();
        }
        catch (ArgumentException e)
        {
            errors.Add($"guest: {e.Message}");
        }
        return errors;
    }

    /// <summary>The source guest's configuration.</summary>
    public InProcessGuestOptions ToGuestOptions() => new()
    {
        MemoryBytes = MemoryBytes,
        Fill = Fill,
        DirtyRatePagesPerSecond = DirtyRatePagesPerSecond,
        Pattern = Pattern,
        WorkingSetBytes = WorkingSetBytes,
        HotsetStart = HotsetStart,
        WriterThreads = Writers,
        Seed = Seed,
    };

    /// <summary>The outgoing migration's options.</summary>
    public MigrationOptions ToMigrationOptions() => new()
    {
        DowntimeLimit = DowntimeLimit,
        MaxBandwidth = MaxBandwidth,
        PageChannels = Channels,
        MaxRounds = MaxRounds,
        Timeout = Timeout,
        TimeoutStrategy = TimeoutStrategy,
        AutoConverge = AutoConverge,
        Verify = Verify,
        ChecksumFinalPass = ChecksumFinalPass,
        Mode = Mode,
        Prepaging = Prepaging,
    };
}
