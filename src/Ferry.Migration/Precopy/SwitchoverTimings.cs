using System.Text.Json.Serialization;

namespace Ferry.Migration.Precopy;

/// <summary>
/// Where the downtime of one switchover went, finer than <see cref="DowntimeBreakdown"/> (milliseconds). Source-side
/// figures are measured on the source's clock, <c>Dest*</c> ones on the destination's and reported in Ready.
/// </summary>
/// <remarks>
/// Pause → <see cref="FinalHarvest"/> → final pass (<see cref="FinalPagesSend"/> until the last byte is handed to the
/// transport) → <see cref="Save"/> → <see cref="SendState"/> (sections and Complete) → <see cref="ReadyWait"/>
/// (Complete written until Ready read: the destination's drain, load and digest, network, scheduling) → Commit →
/// Resumed. The statistics count final pages until <see cref="FinalPagesLanded"/>, when the destination had every
/// Flush: pages can sit in socket buffers long after the source wrote them (a destination faulting in fresh memory
/// drains slowly), and the save and send that overlap that wait are not what the downtime is waiting for.
/// </remarks>
public sealed record SwitchoverTimings
{
    /// <summary>Guest pause.</summary>
    [JsonPropertyName("pause")] public double Pause { get; init; }

    /// <summary>The last dirty-log harvest, after the pause.</summary>
    [JsonPropertyName("final_harvest")] public double FinalHarvest { get; init; }

    /// <summary>Final pass on the source: every sender wrote its last page and its Flush.</summary>
    [JsonPropertyName("final_pages_send")] public double FinalPagesSend { get; init; }

    /// <summary>
    /// From the final pass's start until the destination had every page channel's Flush, on the source's clock:
    /// Complete sent + half the measured control round trip + <see cref="DestFlushLag"/>, kept within what is known.
    /// </summary>
    [JsonPropertyName("final_pages_landed")] public double FinalPagesLanded { get; init; }

    /// <summary>Destination: last Flush arrival minus Complete's (negative: the pages were there first).</summary>
    [JsonPropertyName("dest_flush_lag")] public double DestFlushLag { get; init; }

    /// <summary>Guest SaveState.</summary>
    [JsonPropertyName("save")] public double Save { get; init; }

    /// <summary>Writing every state section and Complete on the control channel.</summary>
    [JsonPropertyName("send_state")] public double SendState { get; init; }

    /// <summary>Complete written until Ready read.</summary>
    [JsonPropertyName("ready_wait")] public double ReadyWait { get; init; }

    /// <summary>Destination: LoadState.</summary>
    [JsonPropertyName("dest_load")] public double DestLoad { get; init; }

    /// <summary>
    /// Source: memory digest of the paused guest (verify only), computed beside the final pages, the state and the
    /// destination's work; only what of it the switchover still waited for after Ready is left out of the downtime.
    /// </summary>
    [JsonPropertyName("source_digest")] public double SourceDigest { get; init; }

    /// <summary>Destination: memory digest (verify only; excluded from the downtime).</summary>
    [JsonPropertyName("dest_digest")] public double DestDigest { get; init; }

    /// <summary>What <see cref="ReadyWait"/> holds beyond drain, load and digest: network, scheduling, Ready's encoding.</summary>
    [JsonPropertyName("ready_other")] public double ReadyOther => Math.Max(0, ReadyWait - Math.Max(0, DestFlushLag) - DestLoad - DestDigest);

    /// <summary>Ready read (by the return-path thread) until we commit: our wake-up and the digest comparison.</summary>
    [JsonPropertyName("ready_to_commit")] public double ReadyToCommit { get; init; }

    /// <summary>Commit written until Resumed read.</summary>
    [JsonPropertyName("commit_to_resumed")] public double CommitToResumed { get; init; }

    /// <summary>
    /// Everything but pause and final pages: what a VMM should pass as <see cref="OutgoingMigration.StateTimeEstimate"/>
    /// next time (save, send, the destination's load and the Ready round trip, our commit, Commit to Resumed; no digest).
    /// </summary>
    [JsonPropertyName("state_time")] public double StateTime => FinalPagesSend + Save + SendState + ReadyWait + ReadyToCommit - FinalPagesLanded - DestDigest + CommitToResumed;

    /// <summary>Bytes of device state (all sections' data).</summary>
    [JsonPropertyName("state_bytes")] public long StateBytes { get; init; }
}
