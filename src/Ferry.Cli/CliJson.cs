using System.Text.Json;
using System.Text.Json.Serialization;
using System.Text.Json.Serialization.Metadata;
using Ferry.Migration;

namespace Ferry.Cli;

/// <summary>
/// The <c>--json</c> documents: indented, printed for terminals and files (so "caller's", not "caller\u0027s"), with
/// serializers generated at build time. Reflection-built ones were emitted and JIT-compiled when first used, which
/// for <c>ferry demo</c> and <c>ferry migrate</c> is right after the switchover, on the CPUs of a guest that has just
/// resumed (see Ferry.Api's ApiJson). Types outside the context still work, by reflection.
/// </summary>
internal static class CliJson
{
    public static readonly JsonSerializerOptions Options = new()
    {
        WriteIndented = true,
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        TypeInfoResolver = JsonTypeInfoResolver.Combine(CliJsonContext.Default, new DefaultJsonTypeInfoResolver()),
    };
}

/// <summary>What the command prints as JSON; names come from the types' own attributes.</summary>
[JsonSerializable(typeof(MigrationStatistics))]
[JsonSerializable(typeof(MigrationStatus))]
[JsonSerializable(typeof(Demo.GuestReport))]
internal sealed partial class CliJsonContext : JsonSerializerContext;
