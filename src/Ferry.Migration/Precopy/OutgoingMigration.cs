using Ferry.Migration.Guest;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Precopy;

/// <summary>
/// The source side of one pre-copy migration: connect, handshake, copy memory in rounds while the guest runs,
/// stop-and-copy when the convergence policy says the rest fits the downtime limit, then the two-phase switchover.
/// </summary>
/// <remarks>
/// <see cref="Run"/> blocks the calling thread (the migration thread) until the migration ends; it never throws for a
/// migration failure: the outcome is in the returned statistics, and on any failure before <c>commit</c> the guest is
/// running again when it returns. <see cref="Cancel"/>, <see cref="MaxBandwidth"/> and <see cref="Progress"/> may be
/// used from any thread.
/// </remarks>
public sealed class OutgoingMigration
{
    public OutgoingMigration(IMigrationSource guest, IMigrationConnector connector, MigrationOptions options, TimeProvider? time = null)
    {
        throw new NotImplementedException();
    }

    /// <summary>Run the migration to its end.</summary>
    public MigrationStatistics Run(IProgress<MigrationProgress>? progress = null, CancellationToken cancellationToken = default)
        => throw new NotImplementedException();

    /// <summary>Cancel: idempotent; no effect once <c>commit</c> was sent.</summary>
    public void Cancel() => throw new NotImplementedException();

    /// <summary>Bandwidth cap for page channels (bytes/s, 0 = unlimited); takes effect at once.</summary>
    public long MaxBandwidth { get => throw new NotImplementedException(); set => throw new NotImplementedException(); }

    /// <summary>The latest progress snapshot.</summary>
    public MigrationProgress Progress => throw new NotImplementedException();
}
