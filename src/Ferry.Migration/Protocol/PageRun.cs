namespace Ferry.Migration.Protocol;

/// <summary>A run of consecutive pages within one region, all sent the same way.</summary>
/// <param name="FirstPage">Page index within the region (0-based).</param>
/// <param name="Count">Number of pages, at least 1.</param>
/// <param name="Encoding">Normal (data follows) or Zero (no data) in v1.</param>
public readonly record struct PageRun(ulong FirstPage, uint Count, PageEncoding Encoding);

/// <summary>What one read from a page channel produced.</summary>
public enum PageRecordKind
{
    /// <summary>The peer closed the channel cleanly between records.</summary>
    EndOfStream = 0,
    /// <summary>A page batch was received into guest memory and its trailer verified.</summary>
    PageBatch = 1,
    /// <summary>A Flush: everything before it on this channel has arrived.</summary>
    Flush = 2,
    /// <summary>A Keepalive.</summary>
    Keepalive = 3,
}

/// <summary>The result of <see cref="PageBatchReader.ReadNext"/>: counts for the statistics, no allocation.</summary>
/// <param name="Kind">What was read.</param>
/// <param name="RegionIndex">PageBatch: the region written.</param>
/// <param name="NormalPages">PageBatch: pages received with data.</param>
/// <param name="ZeroPages">PageBatch: pages zeroed.</param>
/// <param name="Value">Flush: its sequence; Keepalive: its timestamp.</param>
/// <param name="WireBytes">Bytes this record took on the wire, header included.</param>
public readonly record struct PageRecord(PageRecordKind Kind, int RegionIndex, int NormalPages, long ZeroPages, ulong Value, long WireBytes);
