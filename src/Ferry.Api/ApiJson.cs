using System.Text.Json;
using System.Text.Json.Serialization;
using System.Text.Json.Serialization.Metadata;
using Ferry.Migration;

namespace Ferry.Api;

/// <summary>The API's JSON on both ends: snake_case names (<c>memory_bytes</c>), as Cloud Hypervisor's and Firecracker's APIs.</summary>
/// <remarks>
/// The documents' (de)serializers are generated at build time (<see cref="ApiJsonContext"/>), not built by reflection
/// at run time: reflection emitted and JIT-compiled them on first use, and the first use of the statistics is the
/// answer to <c>PUT /vm/migrate</c>, i.e. right after a migration's switchover, on the CPUs the guest has just resumed
/// on (the demo's orchestrator compiled ~100 methods of System.Text.Json's reflection path then, ~90 ms of CPU in the
/// guest's first second, with <c>perf sched</c>). Types outside the context still work, by reflection.
/// </remarks>
internal static class ApiJson
{
    public static readonly JsonSerializerOptions Options = new(JsonSerializerDefaults.Web)
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        TypeInfoResolver = JsonTypeInfoResolver.Combine(ApiJsonContext.Default, new DefaultJsonTypeInfoResolver()),
    };

    /// <summary>Apply the API's conventions to options the server or client already has.</summary>
    public static void Configure(JsonSerializerOptions options)
    {
        options.PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower;
        options.TypeInfoResolverChain.Insert(0, ApiJsonContext.Default);
    }
}

/// <summary>The API's documents, with <see cref="ApiJson"/>'s conventions.</summary>
[JsonSourceGenerationOptions(JsonSerializerDefaults.Web, PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower)]
[JsonSerializable(typeof(VmInfo))]
[JsonSerializable(typeof(MigrationStatistics))]
[JsonSerializable(typeof(MigrateRequest))]
[JsonSerializable(typeof(ResumeRequest))]
[JsonSerializable(typeof(ApiError))]
internal sealed partial class ApiJsonContext : JsonSerializerContext;
