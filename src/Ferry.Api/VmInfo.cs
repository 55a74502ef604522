namespace Ferry.Api;

/// <summary>The body of <c>GET /vm</c>: <c>{ "state", "harts", "memory_bytes", "uptime_ms", "instructions" }</c>.</summary>
/// <param name="State">Running, paused or shut down.</param>
/// <param name="Harts">Harts (CPUs) the machine has.</param>
/// <param name="MemoryBytes">Guest RAM.</param>
/// <param name="UptimeMs">Wall-clock time since the machine started, paused time included.</param>
/// <param name="Instructions">Instructions retired by all harts so far (exact while paused).</param>
public sealed record VmInfo(VmState State, int Harts, ulong MemoryBytes, long UptimeMs, ulong Instructions);
