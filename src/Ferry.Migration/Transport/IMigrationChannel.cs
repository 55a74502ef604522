namespace Ferry.Migration.Transport;

/// <summary>A run of native memory to send, e.g. a span of guest pages or a pinned header.</summary>
/// <param name="Address">Start of the bytes; must stay valid and pinned until the send returns.</param>
/// <param name="Length">Number of bytes.</param>
public readonly record struct IoSegment(nint Address, int Length);

/// <summary>
/// One ordered, reliable byte stream between source and destination (a TCP connection, an in-memory pipe, ...).
/// </summary>
/// <remarks>
/// Blocking by design: each channel is driven by one dedicated engine thread (as QEMU's multifd threads), which keeps
/// the hot path free of task allocations. At most one thread sends and at most one thread receives at a time;
/// <see cref="Abort"/> may be called from any thread and makes pending and later calls on both directions throw
/// <see cref="MigrationTransportException"/>.
/// </remarks>
public interface IMigrationChannel : IDisposable
{
    /// <summary>Name for logs and errors, e.g. <c>control</c> or <c>pages-1</c>.</summary>
    string Name { get; }

    /// <summary>Send every byte of <paramref name="data"/> (may be native memory).</summary>
    void Send(ReadOnlySpan<byte> data);

    /// <summary>
    /// Send the segments back to back as one contiguous piece of the stream, with as few syscalls as the transport
    /// allows (TCP: <c>writev</c>). This is how pages go straight from guest memory to the socket.
    /// </summary>
    void SendGather(ReadOnlySpan<IoSegment> segments);

    /// <summary>
    /// Fill <paramref name="buffer"/> completely (it may be native memory, e.g. a guest page).
    /// Returns false if the peer closed the stream cleanly before the first byte; throws
    /// <see cref="MigrationTransportException"/> if it closed part-way or the receive timeout elapsed.
    /// </summary>
    bool ReceiveExactly(Span<byte> buffer);

    /// <summary>
    /// Fill the segments back to back from the stream, the receive side of <see cref="SendGather"/>, with as few
    /// syscalls as the transport allows (TCP: <c>readv</c>). This is how scattered pages land straight in guest memory
    /// with one syscall per batch instead of one per run. Throws <see cref="MigrationTransportException"/> if the
    /// stream ends or the receive timeout elapses first. The default fills the segments one by one.
    /// </summary>
    unsafe void ReceiveScatter(ReadOnlySpan<IoSegment> segments)
    {
        foreach (var s in segments)
        {
            // SAFETY: the caller guarantees each segment is writable memory that stays valid for the call.
            if (s.Length > 0 && !ReceiveExactly(new Span<byte>((void*)s.Address, s.Length)))
                throw new MigrationTransportException($"{Name}: the peer closed the connection before the data it announced");
        }
    }

    /// <summary>
    /// Bytes a receive would find without waiting now (TCP: the socket's receive queue, <c>FIONREAD</c>), or -1: this
    /// channel cannot tell (the default). The receiving thread only; never sleeps.
    /// </summary>
    long BytesReadable => -1;

    /// <summary>Fail every pending and future operation on this channel (any thread, idempotent).</summary>
    void Abort();

    /// <summary>
    /// From now on a receive waits for data as long as it takes instead of failing after the transport's receive
    /// timeout: for a channel that is quiet by nature and whose peer is watched by other means (post-copy's urgent
    /// channel carries only the replies to page requests, none through a whole pre-copy phase or while the guest
    /// faults on nothing, and the destination hears the source's keepalives on the control channel). Call before the
    /// receiving thread starts. A transport without a receive timeout has nothing to change.
    /// </summary>
    void ReceiveWithoutTimeout() { }
}

/// <summary>A transport failure: connection lost, reset, timed out, or aborted.</summary>
public sealed class MigrationTransportException : IOException
{
    public MigrationTransportException(string message) : base(message) { }
    public MigrationTransportException(string message, Exception inner) : base(message, inner) { }
}
