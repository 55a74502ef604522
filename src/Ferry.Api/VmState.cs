using System.Text.Json.Serialization;

namespace Ferry.Api;

/// <summary>What the guest is doing, as <c>GET /vm</c> names it.</summary>
[JsonConverter(typeof(JsonStringEnumConverter<VmState>))]
public enum VmState
{
    /// <summary>The harts are executing guest code.</summary>
    [JsonStringEnumMemberName("running")]
    Running,

    /// <summary>Every hart is stopped at an instruction boundary; memory and device state hold still.</summary>
    [JsonStringEnumMemberName("paused")]
    Paused,

    /// <summary>The guest powered off (or was powered off); the VM process is about to exit.</summary>
    [JsonStringEnumMemberName("shutdown")]
    Shutdown,

    /// <summary>A <c>ferry vm receive</c> process waiting for its VM to arrive (no machine yet).</summary>
    [JsonStringEnumMemberName("incoming")]
    Incoming,

    /// <summary>The VM completed a migration and runs on the destination now; this process is about to exit.</summary>
    [JsonStringEnumMemberName("migrated")]
    Migrated,
}
