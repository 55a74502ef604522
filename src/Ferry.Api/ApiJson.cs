using System.Text.Json;

namespace Ferry.Api;

/// <summary>The API's JSON on both ends: snake_case names (<c>memory_bytes</c>), as Cloud Hypervisor's and Firecracker's APIs.</summary>
internal static class ApiJson
{
    public static readonly JsonSerializerOptions Options = new(JsonSerializerDefaults.Web)
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
    };

    /// <summary>Apply the API's conventions to options the server or client already has.</summary>
    public static void Configure(JsonSerializerOptions options) => options.PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower;
}
