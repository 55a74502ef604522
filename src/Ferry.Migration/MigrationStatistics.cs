using System.Text.Json.Serialization;

namespace Ferry.Migration;

/// <summary>How a migration ended (or where it is).</summary>
[JsonConverter(typeof(JsonStringEnumConverter<MigrationStatus>))]
public enum MigrationStatus
{
    [JsonStringEnumMemberName("setup")] Setup,
    [JsonStringEnumMemberName("active")] Active,
    [JsonStringEnumMemberName("device")] Device,
    /// <summary>The guest runs on the destination; pages still move (QEMU: postcopy-active).</summary>
    [JsonStringEnumMemberName("postcopy-active")] PostcopyActive,
    /// <summary>Post-copy lost its connection; both sides wait for a new one (QEMU: postcopy-paused).</summary>
    [JsonStringEnumMemberName("postcopy-paused")] PostcopyPaused,
    [JsonStringEnumMemberName("completed")] Completed,
    [JsonStringEnumMemberName("failed")] Failed,
    [JsonStringEnumMemberName("cancelled")] Cancelled,
}

/// <summary>One pre-copy round (round 0 is the full first pass; the last is stop-and-copy).</summary>
public sealed record RoundStatistics
{
    [JsonPropertyName("round")] public int Round { get; init; }
    /// <summary>Pages sent this round (normal + zero).</summary>
    [JsonPropertyName("pages")] public long Pages { get; init; }
    [JsonPropertyName("bytes")] public long Bytes { get; init; }
    [JsonPropertyName("ms")] public double Milliseconds { get; init; }
    /// <summary>Pages the guest dirtied during this round, per second.</summary>
    [JsonPropertyName("dirty_pages_per_s")] public double DirtyPagesPerSecond { get; init; }
    [JsonPropertyName("bandwidth_bytes_per_s")] public double BandwidthBytesPerSecond { get; init; }
    [JsonPropertyName("throttle_pct")] public int ThrottlePercent { get; init; }
}

/// <summary>Downtime split into its phases (STYLE.md 7).</summary>
public sealed record DowntimeBreakdown
{
    [JsonPropertyName("pause")] public double Pause { get; init; }
    [JsonPropertyName("final_pages")] public double FinalPages { get; init; }
    [JsonPropertyName("device_state")] public double DeviceState { get; init; }
    [JsonPropertyName("resume")] public double Resume { get; init; }
}

/// <summary>Whole-memory digests taken outside the downtime figure when verification was asked for.</summary>
public sealed record VerifyResult
{
    [JsonPropertyName("source_digest")] public string SourceDigest { get; init; } = "";
    [JsonPropertyName("dest_digest")] public string DestDigest { get; init; } = "";
    [JsonPropertyName("match")] public bool Match { get; init; }
}

/// <summary>Page counts by encoding.</summary>
public sealed record PageCounts
{
    [JsonPropertyName("normal")] public long Normal { get; init; }
    [JsonPropertyName("zero")] public long Zero { get; init; }
}

/// <summary>The outcome of one migration, as QEMU's query-migrate; serialised as the <c>--json</c> output.</summary>
public sealed record MigrationStatistics
{
    [JsonPropertyName("status")] public MigrationStatus Status { get; init; }
    [JsonPropertyName("error")] public string? Error { get; init; }
    [JsonPropertyName("mode")] public string Mode { get; init; } = "precopy";
    [JsonPropertyName("memory_bytes")] public long MemoryBytes { get; init; }
    [JsonPropertyName("total_ms")] public double TotalMs { get; init; }
    [JsonPropertyName("setup_ms")] public double SetupMs { get; init; }
    [JsonPropertyName("downtime_ms")] public double DowntimeMs { get; init; }
    [JsonPropertyName("downtime_breakdown_ms")] public DowntimeBreakdown DowntimeBreakdownMs { get; init; } = new();

    /// <summary>
    /// Why pre-copy ended: <c>converged</c> (the estimate fitted the limit), <c>forced_by_timeout</c> or
    /// <c>forced_by_max_rounds</c> (a limit, with the force strategy); null when it never switched over.
    /// </summary>
    [JsonPropertyName("switchover_reason")] public string? SwitchoverReason { get; init; }

    /// <summary>
    /// The downtime the convergence policy expected when it switched over (remaining / measured bandwidth + state
    /// time), to hold against <see cref="DowntimeMs"/> (QEMU's expected-downtime); null when nothing was measured.
    /// </summary>
    [JsonPropertyName("expected_downtime_ms")] public double? ExpectedDowntimeMs { get; init; }
    [JsonPropertyName("bytes_sent")] public long BytesSent { get; init; }
    [JsonPropertyName("pages")] public PageCounts Pages { get; init; } = new();
    [JsonPropertyName("rounds")] public IReadOnlyList<RoundStatistics> Rounds { get; init; } = [];
    [JsonPropertyName("throttle_pct")] public int ThrottlePercent { get; init; }
    [JsonPropertyName("verify")] public VerifyResult? Verify { get; init; }

    /// <summary>Where the downtime went, finer than <see cref="DowntimeBreakdownMs"/>; null unless the switchover reached Ready.</summary>
    [JsonPropertyName("switchover_ms")] public Precopy.SwitchoverTimings? Switchover { get; init; }

    /// <summary>The post-copy phase; null when the migration never switched to post-copy.</summary>
    [JsonPropertyName("postcopy")] public PostcopyStatistics? Postcopy { get; init; }
}

/// <summary>Fault latency percentiles, microseconds.</summary>
public sealed record LatencyPercentiles
{
    [JsonPropertyName("p50")] public double P50 { get; init; }
    [JsonPropertyName("p99")] public double P99 { get; init; }
    [JsonPropertyName("max")] public double Max { get; init; }
}

/// <summary>What the post-copy phase did, from both sides.</summary>
public sealed record PostcopyStatistics
{
    /// <summary>Pages missing on the destination when the guest started there.</summary>
    [JsonPropertyName("missing_pages")] public long MissingPages { get; init; }

    /// <summary>
    /// Hybrid: dirty pages the guest's CPUs held translations for at the pause, sent inside the switchover instead of
    /// after it (the guest touches them first); not counted in <see cref="MissingPages"/>.
    /// </summary>
    [JsonPropertyName("switchover_pages")] public long SwitchoverPages { get; init; }

    /// <summary>
    /// Pages of the regions that must be whole before the guest runs (<see cref="Guest.MemoryRegion.PrecopyOnly"/>: a
    /// copied disk) that the guest dirtied after the last pre-copy round, sent inside the switchover; never missing.
    /// </summary>
    [JsonPropertyName("precopy_only_pages")] public long PrecopyOnlyPages { get; init; }

    /// <summary>
    /// Of <see cref="PushedPages"/>: the pages the source's guest used in privileged mode lately (its kernel's code,
    /// page tables, stacks and data) and, in pure post-copy, those it used all the time, pushed on the urgent channel
    /// during the switchover (after Complete). 0 for a guest that names none.
    /// </summary>
    [JsonPropertyName("system_pages")] public long SystemPages { get; init; }

    /// <summary>Distinct pages the destination's guest waited for (network faults).</summary>
    [JsonPropertyName("faults")] public long Faults { get; init; }

    /// <summary>From the destination's request to the page installed there.</summary>
    [JsonPropertyName("fault_latency_us")] public LatencyPercentiles FaultLatencyUs { get; init; } = new();

    /// <summary>Pages sent by the background push (prepaging), not asked for.</summary>
    [JsonPropertyName("pushed_pages")] public long PushedPages { get; init; }

    /// <summary>Pages sent on the urgent channel because the guest waited for them.</summary>
    [JsonPropertyName("urgent_pages")] public long UrgentPages { get; init; }

    /// <summary>Pages that reached the destination twice (pushed and asked for at once).</summary>
    [JsonPropertyName("duplicate_pages")] public long DuplicatePages { get; init; }

    /// <summary>Time the destination's guest threads (vCPUs, devices, writers) spent waiting for pages.</summary>
    [JsonPropertyName("blocktime_ms")] public double BlocktimeMs { get; init; }

    /// <summary>Distinct pages the guest touched during post-copy; null when the guest cannot tell.</summary>
    [JsonPropertyName("working_set_pages")] public long? WorkingSetPages { get; init; }

    /// <summary>Faults over the working set: the share of what the guest needed that it had to wait for; null without a working set.</summary>
    [JsonPropertyName("faulted_share")] public double? FaultedShare { get; init; }

    /// <summary>The push order used.</summary>
    [JsonPropertyName("prepaging")] public string Prepaging { get; init; } = "bubble";

    /// <summary>From the guest resuming on the destination to its last page landing.</summary>
    [JsonPropertyName("ms")] public double Milliseconds { get; init; }

    /// <summary>Connections lost and recovered during post-copy.</summary>
    [JsonPropertyName("recoveries")] public int Recoveries { get; init; }
}

/// <summary>A progress report while a migration runs (for progress bars and the API's status).</summary>
public sealed record MigrationProgress(
    MigrationStatus Status,
    int Round,
    long RemainingBytes,
    long BytesSent,
    double BandwidthBytesPerSecond,
    double DirtyPagesPerSecond,
    int ThrottlePercent,
    TimeSpan Elapsed);
