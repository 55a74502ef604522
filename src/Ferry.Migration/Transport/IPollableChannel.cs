using Ferry.Linux;

namespace Ferry.Migration.Transport;

/// <summary>
/// A channel whose receiving side can wait for data without reading it (TCP), so that a reader can poll for an
/// answer it expects instead of sleeping in the receive (see <see cref="ReadinessWait"/>).
/// </summary>
public interface IPollableChannel
{
    /// <summary>True if a receive would find data (or the stream's end, or an error) now; never sleeps.</summary>
    bool HasData();

    /// <summary>
    /// Block until a receive would find data (or the end) or <paramref name="wait"/> is nudged; the receiving thread
    /// only. Throws <see cref="MigrationTransportException"/> when the channel's receive timeout passes first, as a
    /// receive would.
    /// </summary>
    ReadinessWait.Result WaitForData(ReadinessWait wait);
}
