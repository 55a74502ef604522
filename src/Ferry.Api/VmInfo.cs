namespace Ferry.Api;

/// <summary>The body of <c>GET /vm</c>: <c>{ "state", "harts", "memory_bytes", "uptime_ms", "instructions", "migration" }</c>.</summary>
/// <param name="State">Running, paused, shut down, or, around a migration, incoming or migrated.</param>
/// <param name="Harts">Harts (CPUs) the machine has (0 before an incoming VM arrived).</param>
/// <param name="MemoryBytes">Guest RAM (0 before an incoming VM arrived).</param>
/// <param name="UptimeMs">Wall-clock time since the machine started in this process, paused time included.</param>
/// <param name="Instructions">Instructions retired by all harts so far (exact while paused).</param>
/// <param name="Migration">The migration in flight, or the last one's outcome; null if there was none.</param>
public sealed record VmInfo(VmState State, int Harts, ulong MemoryBytes, long UptimeMs, ulong Instructions, MigrationInfo? Migration = null);
