using System.Text.Json.Serialization;

namespace Ferry.Api;

/// <summary>The body of <c>PUT /vm/migrate/resume</c>: where to reconnect, or null for the same address.</summary>
public sealed record ResumeRequest
{
    [JsonPropertyName("destination")] public string? Destination { get; init; }
}
