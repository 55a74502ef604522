namespace Ferry.Migration.Transport;

/// <summary>
/// A channel that counts its traffic (every channel of this folder does; wrap others in <see cref="CountingChannel"/>).
/// Read from any thread; the engine reports the sum of <see cref="BytesSent"/> as bytes_sent.
/// </summary>
public interface IByteCounter
{
    /// <summary>Bytes handed to the transport by sends so far (for TCP: written to the socket).</summary>
    long BytesSent { get; }

    /// <summary>Bytes delivered by receives so far.</summary>
    long BytesReceived { get; }
}

/// <summary>Counts the bytes through any channel.</summary>
public sealed class CountingChannel(IMigrationChannel inner) : IMigrationChannel, IByteCounter
{
    private long _sent;
    private long _received;

    public string Name => inner.Name;
    public long BytesSent => Volatile.Read(ref _sent);
    public long BytesReceived => Volatile.Read(ref _received);

    public void Send(ReadOnlySpan<byte> data)
    {
        inner.Send(data);
        Interlocked.Add(ref _sent, data.Length);
    }

    public void SendGather(ReadOnlySpan<IoSegment> segments)
    {
        inner.SendGather(segments);
        long n = 0;
        foreach (var s in segments) n += s.Length;
        Interlocked.Add(ref _sent, n);
    }

    public bool ReceiveExactly(Span<byte> buffer)
    {
        bool ok = inner.ReceiveExactly(buffer);
        if (ok) Interlocked.Add(ref _received, buffer.Length);
        return ok;
    }

    public long BytesReadable => inner.BytesReadable;

    public void Abort() => inner.Abort();

    public void ReceiveWithoutTimeout() => inner.ReceiveWithoutTimeout();

    public void Dispose() => inner.Dispose();
}
