namespace Ferry.Migration.Precopy;

/// <summary>
/// Where the downtime of one switchover went, finer than <see cref="DowntimeBreakdown"/> (milliseconds). Source-side
/// figures are measured on the source's clock, <c>Dest*</c> ones on the destination's and reported in Ready.
/// </summary>
/// <remarks>
/// Pause → final pages (<see cref="FinalHarvest"/>, <see cref="FinalPagesSend"/> until the last byte is handed to the transport, then
/// <see cref="DestDrain"/> until the destination has read every page channel's Flush) → <see cref="Save"/> →
/// <see cref="SendState"/> (sections and Complete) → <see cref="ReadyWait"/> (Complete written until Ready read,
/// which holds the destination's drain, load and digest plus <see cref="ReadyOther"/>: network, scheduling, Ready
/// encode and decode) → Commit → Resumed. The statistics count <see cref="DestDrain"/> as final-page time: those
/// pages were still in socket buffers when the source finished writing them.
/// </remarks>
public sealed record SwitchoverTimings
{
    /// <summary>Guest pause.</summary>
    public double Pause { get; init; }

    /// <summary>The last dirty-log harvest, after the pause.</summary>
    public double FinalHarvest { get; init; }

    /// <summary>Final pass on the source: every sender wrote its last page and its Flush.</summary>
    public double FinalPagesSend { get; init; }

    /// <summary>Destination: Complete read until the last page channel's Flush arrived.</summary>
    public double DestDrain { get; init; }

    /// <summary>Guest SaveState.</summary>
    public double Save { get; init; }

    /// <summary>Writing every state section and Complete on the control channel.</summary>
    public double SendState { get; init; }

    /// <summary>Complete written until Ready read.</summary>
    public double ReadyWait { get; init; }

    /// <summary>Destination: LoadState.</summary>
    public double DestLoad { get; init; }

    /// <summary>Destination: memory digest (verify only; excluded from the downtime).</summary>
    public double DestDigest { get; init; }

    /// <summary>What <see cref="ReadyWait"/> holds beyond drain, load and digest: network, scheduling, Ready's encoding.</summary>
    public double ReadyOther => Math.Max(0, ReadyWait - DestDrain - DestLoad - DestDigest);

    /// <summary>Commit written until Resumed read.</summary>
    public double CommitToResumed { get; init; }

    /// <summary>
    /// Everything but pause and final pages: what a VMM should pass as <see cref="OutgoingMigration.StateTimeEstimate"/>
    /// next time (save, send, the destination's load and the Ready round trip, Commit to Resumed; no digest).
    /// </summary>
    public double StateTime => Save + SendState + Math.Max(0, ReadyWait - DestDrain - DestDigest) + CommitToResumed;

    /// <summary>Bytes of device state (all sections' data).</summary>
    public long StateBytes { get; init; }
}
