using System.Collections.Concurrent;

namespace Ferry.Migration.Transport;

/// <summary>
/// Source and destination in one process, connected by bounded pipes (default 1 MiB each way, about a TCP socket
/// buffer), for tests and benchmarks of the engine without sockets. <see cref="Connector"/> and
/// <see cref="Listener"/> are the two ends; every <see cref="IMigrationConnector.Connect"/> yields one
/// <see cref="IMigrationListener.Accept"/>.
/// </summary>
public sealed class InMemoryTransport : IDisposable
{
    private readonly BlockingCollection<MigrationConnection> _incoming = [];

    /// <param name="pipeCapacity">Bytes each direction of each channel buffers before a send blocks.</param>
    /// <param name="receiveTimeout">Receive (and blocked send) timeout of every channel; null = none.</param>
    public InMemoryTransport(int pipeCapacity = 1 << 20, TimeSpan? receiveTimeout = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(pipeCapacity, 1);
        PipeCapacity = pipeCapacity;
        ReceiveTimeout = receiveTimeout ?? Timeout.InfiniteTimeSpan;
        Connector = new InMemoryConnector(this);
        Listener = new InMemoryListener(this);
    }

    /// <summary>Bytes buffered per direction per channel.</summary>
    public int PipeCapacity { get; }

    /// <summary>Receive timeout of channels created from now on.</summary>
    public TimeSpan ReceiveTimeout { get; set; }

    /// <summary>The source side.</summary>
    public IMigrationConnector Connector { get; }

    /// <summary>The destination side.</summary>
    public IMigrationListener Listener { get; }

    /// <summary>Two connected channel ends (for tests of code that takes a single channel).</summary>
    public static (InMemoryChannel A, InMemoryChannel B) CreatePair(string name, int capacity = 1 << 20, TimeSpan? receiveTimeout = null)
    {
        var ab = new InMemoryPipe(capacity);
        var ba = new InMemoryPipe(capacity);
        var t = receiveTimeout ?? Timeout.InfiniteTimeSpan;
        return (new InMemoryChannel(name, send: ab, receive: ba, t), new InMemoryChannel(name, send: ba, receive: ab, t));
    }

    public void Dispose()
    {
        _incoming.CompleteAdding();
        while (_incoming.TryTake(out var c)) c.Dispose();
    }

    private sealed class InMemoryConnector(InMemoryTransport owner) : IMigrationConnector
    {
        public MigrationConnection Connect(int pageChannels, CancellationToken cancellationToken) => Connect(pageChannels, false, cancellationToken);

        public MigrationConnection Connect(int pageChannels, bool urgentChannel, CancellationToken cancellationToken)
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(pageChannels, 1);
            cancellationToken.ThrowIfCancellationRequested();
            int members = pageChannels + 1 + (urgentChannel ? 1 : 0);
            var source = new IMigrationChannel[members];
            var destination = new IMigrationChannel[members];
            for (int i = 0; i < members; i++)
                (source[i], destination[i]) = CreatePair(TransportPreamble.ChannelName(i, pageChannels), owner.PipeCapacity, owner.ReceiveTimeout);
            var theirs = new MigrationConnection(destination[0], destination[1..(pageChannels + 1)], urgentChannel ? destination[^1] : null);
            try
            {
                owner._incoming.Add(theirs, cancellationToken);
            }
            catch (InvalidOperationException e)
            {
                throw new MigrationTransportException("control: cannot connect: connection refused (in-memory listener closed)", e);
            }
            return new MigrationConnection(source[0], source[1..(pageChannels + 1)], urgentChannel ? source[^1] : null);
        }
    }

    private sealed class InMemoryListener(InMemoryTransport owner) : IMigrationListener
    {
        public MigrationConnection Accept(CancellationToken cancellationToken)
        {
            try
            {
                return owner._incoming.Take(cancellationToken);
            }
            catch (InvalidOperationException e)
            {
                throw new MigrationTransportException("listener closed", e);
            }
        }

        public void Dispose() => owner.Dispose();
    }
}

/// <summary>One end of an in-memory channel: sends into one pipe, receives from the other.</summary>
public sealed class InMemoryChannel : IMigrationChannel, IByteCounter
{
    private readonly InMemoryPipe _send;
    private readonly InMemoryPipe _receive;
    private readonly TimeSpan _timeout;
    private TimeSpan _receiveTimeout;
    private long _sent;
    private long _received;

    internal InMemoryChannel(string name, InMemoryPipe send, InMemoryPipe receive, TimeSpan timeout)
    {
        Name = name;
        _send = send;
        _receive = receive;
        _timeout = timeout;
        _receiveTimeout = timeout;
    }

    public string Name { get; }
    public long BytesSent => Volatile.Read(ref _sent);
    public long BytesReceived => Volatile.Read(ref _received);

    public void Send(ReadOnlySpan<byte> data)
    {
        _send.Write(data, _timeout, Name);
        Interlocked.Add(ref _sent, data.Length);
    }

    public void ReceiveWithoutTimeout() => _receiveTimeout = Timeout.InfiniteTimeSpan;

    public void SendGather(ReadOnlySpan<IoSegment> segments)
    {
        foreach (var s in segments)
        {
            unsafe
            {
                // SAFETY: the caller keeps each segment valid and pinned until SendGather returns (interface contract).
                Send(new ReadOnlySpan<byte>((void*)s.Address, s.Length));
            }
        }
    }

    public bool ReceiveExactly(Span<byte> buffer)
    {
        int got = 0;
        while (got < buffer.Length)
        {
            int n = _receive.Read(buffer[got..], _receiveTimeout, Name);
            if (n == 0)
            {
                if (got == 0) return false;
                throw new MigrationTransportException($"{Name}: the peer closed the connection after {got} of {buffer.Length} bytes");
            }
            got += n;
            Interlocked.Add(ref _received, n);
        }
        return true;
    }

    /// <summary>Fails pending and later calls on both ends of this channel.</summary>
    /// <inheritdoc/>
    public long BytesReadable => _receive.Buffered;

    public void Abort()
    {
        _send.Abort();
        _receive.Abort();
    }

    /// <summary>The peer reads what was sent, then end of stream; its sends fail.</summary>
    public void Dispose()
    {
        _send.CloseWriter();
        _receive.CloseReader();
    }
}
