using System.Text.Json.Serialization;
using Ferry.Migration;

namespace Ferry.Api;

/// <summary>
/// A migration of this VM as <c>GET /vm</c> shows it: in flight (the engine's latest progress), or the last one's
/// outcome. <see cref="Statistics"/> is set once it ended.
/// </summary>
public sealed record MigrationInfo
{
    /// <summary><c>setup</c>, <c>active</c>, <c>device</c> while it runs; <c>completed</c>, <c>failed</c>, <c>cancelled</c> after.</summary>
    [JsonPropertyName("status")] public MigrationStatus Status { get; init; }

    [JsonPropertyName("destination")] public string Destination { get; init; } = "";

    /// <summary>The pre-copy round being sent (0 is the full first pass).</summary>
    [JsonPropertyName("round")] public int Round { get; init; }

    /// <summary>Bytes the current pass has still to send.</summary>
    [JsonPropertyName("remaining_bytes")] public long RemainingBytes { get; init; }

    [JsonPropertyName("bytes_sent")] public long BytesSent { get; init; }

    [JsonPropertyName("bandwidth_bytes_per_s")] public double BandwidthBytesPerSecond { get; init; }

    [JsonPropertyName("dirty_pages_per_s")] public double DirtyPagesPerSecond { get; init; }

    [JsonPropertyName("throttle_pct")] public int ThrottlePercent { get; init; }

    [JsonPropertyName("elapsed_ms")] public double ElapsedMs { get; init; }

    /// <summary>Why it failed or was cancelled, or why its post-copy is paused; null otherwise.</summary>
    [JsonPropertyName("error")] public string? Error { get; init; }

    /// <summary>Times its post-copy paused for a lost connection so far (a pause a resume ended between two looks at the
    /// status shows here).</summary>
    [JsonPropertyName("postcopy_pauses")] public int PostcopyPauses { get; init; }

    /// <summary>
    /// The engine's progress as the API shows it (all but <see cref="Destination"/> and <see cref="Error"/>).
    /// </summary>
    public static MigrationInfo From(string destination, MigrationProgress p) => new()
    {
        Status = p.Status,
        Destination = destination,
        Round = p.Round,
        RemainingBytes = p.RemainingBytes,
        BytesSent = p.BytesSent,
        BandwidthBytesPerSecond = p.BandwidthBytesPerSecond,
        DirtyPagesPerSecond = p.DirtyPagesPerSecond,
        ThrottlePercent = p.ThrottlePercent,
        ElapsedMs = p.Elapsed.TotalMilliseconds,
    };

    /// <summary>Back to the engine's progress record, for the same progress view as an in-process migration.</summary>
    public MigrationProgress ToProgress() => new(Status, Round, RemainingBytes, BytesSent, BandwidthBytesPerSecond,
        DirtyPagesPerSecond, ThrottlePercent, TimeSpan.FromMilliseconds(ElapsedMs));
}
