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
    /// Told, on the listener's Accept thread, each time a connection is dropped (a stray or hostile peer, a bad
    /// preamble, a limit), with one line naming the peer and why: a VM process shows it to its operator. Must not block.
    /// </summary>
    public Action<string>? ConnectionRejected { get; init; }

    /// <summary>
    /// Listener: most accepted connections still sending their 32-byte preamble. A connection beyond it is closed
    /// at once; those already in progress are never evicted, or a flood could push out a real source's channel. A
    /// migration opens at most 17 connections (control + 16 page channels), one after another, so 64 fits several
    /// concurrent legitimate attempts while a port scanner or a flood of silent connections holds at most 64
    /// descriptors, each for at most <see cref="GroupTimeout"/>.
    /// </summary>
    public int MaxHandshakingConnections
    {
        get;
        init
        {
            ArgumentOutOfRangeException.ThrowIfNegativeOrZero(value, nameof(MaxHandshakingConnections));
            field = value;
        }
    } = 64;

    /// <summary>
    /// Listener: most incomplete groups (connection ids with some but not all of their channels), each holding up
    /// to 17 sockets until it completes or <see cref="GroupTimeout"/> ends it. A preamble that would open another is
    /// closed. A destination receives one migration; 4 leave room for a source's retry to overlap its abandoned
    /// attempt while strays holding valid preambles pin at most 4 × 17 descriptors.
    /// </summary>
    public int MaxPendingGroups
    {
        get;
        init
        {
            ArgumentOutOfRangeException.ThrowIfNegativeOrZero(value, nameof(MaxPendingGroups));
            field = value;
        }
    } = 4;

    /// <summary>
    /// Listener: most complete groups waiting for <see cref="TcpMigrationListener.Accept"/>, each holding up to 17
    /// sockets. A group completing beyond it is closed. Accept returns a waiting group before it reads anything more,
    /// so the queue only grows when several groups complete on one wakeup (at most <see cref="MaxPendingGroups"/>):
    /// a backstop that keeps the bound explicit if that ever changes. 4: one destination accepts one migration.
    /// </summary>
    public int MaxReadyGroups
    {
        get;
        init
        {
            ArgumentOutOfRangeException.ThrowIfNegativeOrZero(value, nameof(MaxReadyGroups));
            field = value;
        }
    } = 4;

    /// <summary>
    /// SO_SNDBUF / SO_RCVBUF of page channels. 4 MiB covers a 10 Gbit/s × 3 ms bandwidth-delay product, so one
    /// channel can keep such a link full; the kernel clamps it to net.core.wmem_max/rmem_max.
    /// </summary>
    public int PageSocketBufferBytes { get; init; } = 4 << 20;

    internal static int ToMilliseconds(TimeSpan t) =>
        t == Timeout.InfiniteTimeSpan ? -1 : (int)Math.Clamp(t.TotalMilliseconds, 1, int.MaxValue);
}
