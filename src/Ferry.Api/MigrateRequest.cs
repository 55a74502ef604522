using System.Text.Json.Serialization;
using Ferry.Migration;

namespace Ferry.Api;

/// <summary>
/// The body of <c>PUT /vm/migrate</c>: where to send the VM and the engine's limits. Absent fields take the engine's
/// defaults (<see cref="MigrationOptions"/>).
/// </summary>
public sealed record MigrateRequest
{
    /// <summary>The destination's <c>ferry vm receive --listen</c> address: <c>HOST:PORT</c>.</summary>
    [JsonPropertyName("destination")] public string Destination { get; init; } = "";

    [JsonPropertyName("downtime_limit_ms")] public double? DowntimeLimitMs { get; init; }

    /// <summary>Page bandwidth cap in bytes per second; 0 unlimited.</summary>
    [JsonPropertyName("max_bandwidth")] public long? MaxBandwidth { get; init; }

    [JsonPropertyName("channels")] public int? Channels { get; init; }

    [JsonPropertyName("max_rounds")] public int? MaxRounds { get; init; }

    [JsonPropertyName("timeout_ms")] public double? TimeoutMs { get; init; }

    /// <summary>
    /// <c>precopy</c> (default), <c>postcopy</c> or <c>hybrid</c>. Post-copy and hybrid run the VM on the destination
    /// before all of its memory is there: losing either host or the link for good until the last page lands loses the VM.
    /// </summary>
    [JsonPropertyName("mode")] public string? Mode { get; init; }

    /// <summary>Post-copy's push order: <c>bubble</c> (default), <c>forward</c> or <c>linear</c>.</summary>
    [JsonPropertyName("prepaging")] public string? Prepaging { get; init; }

    /// <summary><c>cancel</c> (the source runs on), <c>force</c> (switch over anyway) or <c>postcopy</c> at the round or time limit.</summary>
    [JsonPropertyName("timeout_strategy")] public string? TimeoutStrategy { get; init; }

    /// <summary>Check that all memory arrived intact: both sides' digests must match (see the CLI's --verify).</summary>
    [JsonPropertyName("verify")] public bool Verify { get; init; }

    [JsonPropertyName("auto_converge")] public bool AutoConverge { get; init; } = true;

    /// <summary>Copy the VM's disk image to the destination's (a disk local to each host); false: storage both hosts share.</summary>
    [JsonPropertyName("copy_disk")] public bool CopyDisk { get; init; }

    /// <summary>The engine's options for this request, or the reason it is not valid (the API's 400).</summary>
    public MigrationOptions ToOptions()
    {
        var d = new MigrationOptions();
        var options = d with
        {
            DowntimeLimit = DowntimeLimitMs is { } dl ? Milliseconds("downtime_limit_ms", dl) : d.DowntimeLimit,
            MaxBandwidth = MaxBandwidth is { } bw ? (bw >= 0 ? bw : throw Bad($"max_bandwidth {bw} is negative")) : d.MaxBandwidth,
            // 16: the protocol's page channel limit.
            PageChannels = Channels is { } c ? (c is >= 1 and <= 16 ? c : throw Bad($"channels {c} is out of range (1 to 16)")) : d.PageChannels,
            MaxRounds = MaxRounds is { } r ? (r is >= 1 and <= 100_000 ? r : throw Bad($"max_rounds {r} is out of range (1 to 100000)")) : d.MaxRounds,
            Timeout = TimeoutMs is { } t ? Milliseconds("timeout_ms", t) : d.Timeout,
            TimeoutStrategy = TimeoutStrategy switch
            {
                null => d.TimeoutStrategy,
                "cancel" => Migration.TimeoutStrategy.Cancel,
                "force" => Migration.TimeoutStrategy.Force,
                "postcopy" => Migration.TimeoutStrategy.Postcopy,
                _ => throw Bad($"timeout_strategy '{TimeoutStrategy}' is not one of: cancel, force, postcopy"),
            },
            Mode = Mode switch
            {
                null or "precopy" => MigrationMode.Precopy,
                "postcopy" => MigrationMode.Postcopy,
                "hybrid" => MigrationMode.Hybrid,
                _ => throw Bad($"mode '{Mode}' is not one of: precopy, postcopy, hybrid"),
            },
            Prepaging = Prepaging switch
            {
                null or "bubble" => Migration.Postcopy.PrepagingStrategy.Bubble,
                "forward" => Migration.Postcopy.PrepagingStrategy.Forward,
                "linear" => Migration.Postcopy.PrepagingStrategy.Linear,
                _ => throw Bad($"prepaging '{Prepaging}' is not one of: bubble, forward, linear"),
            },
            Verify = Verify,
            AutoConverge = AutoConverge,
        };
        return options;
    }

    private static TimeSpan Milliseconds(string name, double ms) =>
        double.IsFinite(ms) && ms > 0 && ms <= TimeSpan.FromDays(1).TotalMilliseconds
            ? TimeSpan.FromMilliseconds(ms)
            : throw Bad($"{name} {ms} is out of range (more than 0, at most a day)");

    private static ArgumentException Bad(string message) => new(message);
}
