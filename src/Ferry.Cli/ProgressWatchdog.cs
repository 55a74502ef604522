using System.Diagnostics;
using Ferry.Api;
using Ferry.Migration;

namespace Ferry.Cli;

/// <summary>
/// Notices a migration that stopped moving: the same state, round and byte counts in every <c>GET /vm</c> answer for
/// longer than a limit. For an unattended run (<c>ferry demo</c>) that would otherwise wait for ever on a migration
/// that hangs (a harvest once waited 12 minutes for a flush nothing would mark done); the engine's own peer timeouts
/// only see a silent peer, not a stuck source.
/// </summary>
internal sealed class ProgressWatchdog(TimeSpan limit)
{
    private (MigrationStatus, int, long, long)? last;
    private long since;

    /// <summary>
    /// Take one answer's migration (null: none shown) at <paramref name="now"/> (a <see cref="Stopwatch"/> timestamp);
    /// returns why to give up, or null while it moves or has not been still for the limit yet.
    /// </summary>
    public string? Check(MigrationInfo? info, long now)
    {
        if (info is null) return null;
        var key = (info.Status, info.Round, info.BytesSent, info.RemainingBytes);
        if (last != key)
        {
            last = key;
            since = now;
            return null;
        }
        TimeSpan still = Stopwatch.GetElapsedTime(since, now);
        return still < limit ? null
            : $"the migration made no progress for {still.TotalSeconds:0} s (status {StatisticsView.Name(info.Status)}, {info.BytesSent:N0} bytes sent)";
    }
}
