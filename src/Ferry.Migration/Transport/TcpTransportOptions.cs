namespace Ferry.Migration.Transport;

/// <summary>Socket settings of the TCP transport.</summary>
public sealed record TcpTransportOptions
{
    /// <summary>Longest wait for one connect (each channel).</summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>
    /// Longest a receive waits without any byte before the peer counts as hung
    /// (<see cref="Timeout.InfiniteTimeSpan"/> = never). Keep it above the keepalive interval.
    /// </summary>
    public TimeSpan ReceiveTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Longest a send waits without progress (peer not reading) before failing.</summary>
    public TimeSpan SendTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Listener: longest wait from a group's first connection for the rest of its channels.</summary>
    public TimeSpan GroupTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// SO_SNDBUF / SO_RCVBUF of page channels. 4 MiB covers a 10 Gbit/s × 3 ms bandwidth-delay product, so one
    /// channel can keep such a link full; the kernel clamps it to net.core.wmem_max/rmem_max.
    /// </summary>
    public int PageSocketBufferBytes { get; init; } = 4 << 20;

    internal static int ToMilliseconds(TimeSpan t) =>
        t == Timeout.InfiniteTimeSpan ? -1 : (int)Math.Clamp(t.TotalMilliseconds, 1, int.MaxValue);
}
