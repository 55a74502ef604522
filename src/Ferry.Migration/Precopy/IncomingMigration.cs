using Ferry.Migration.Guest;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Precopy;

/// <summary>Limits the destination applies to what a source may ask for (the stream is hostile input).</summary>
public sealed record IncomingOptions
{
    /// <summary>Largest total guest memory accepted in a handshake.</summary>
    public ulong MaxMemoryBytes { get; init; } = 64UL << 30;

    /// <summary>Token the source must present, or null for none.</summary>
    public string? Token { get; init; }

    /// <summary>How long without any byte from the source before it counts as hung.</summary>
    public TimeSpan PeerTimeout { get; init; } = TimeSpan.FromSeconds(10);
}

/// <summary>
/// The destination side: accept one migration, build the guest from the stream, load state, answer <c>ready</c>,
/// and start the guest on <c>commit</c>. On any failure before <c>commit</c> the half-built guest is disposed and
/// <see cref="Run"/> throws <see cref="MigrationException"/> with the reason.
/// </summary>
public sealed class IncomingMigration
{
    public IncomingMigration(IMigrationListener listener, IMigrationTargetFactory factory, IncomingOptions options, TimeProvider? time = null)
    {
        throw new NotImplementedException();
    }

    /// <summary>Receive one migration; returns the started guest after <c>commit</c>.</summary>
    public IMigrationTarget Run(CancellationToken cancellationToken = default) => throw new NotImplementedException();
}
