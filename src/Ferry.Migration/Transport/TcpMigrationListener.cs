using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace Ferry.Migration.Transport;

/// <summary>
/// Destination side of the TCP transport: accepts connections, reads each one's <see cref="TransportPreamble"/> and
/// groups them by connection id until a group has its control channel and every page channel.
/// </summary>
/// <remarks>
/// A connection whose preamble is bad or does not arrive within <see cref="TcpTransportOptions.GroupTimeout"/> is
/// closed and ignored (a port scanner must not break a migration). A group still incomplete
/// <see cref="TcpTransportOptions.GroupTimeout"/> after its first connection is closed and <see cref="Accept"/>
/// throws. Groups that complete while another is awaited are kept for the next <see cref="Accept"/>.
/// </remarks>
public sealed class TcpMigrationListener : IMigrationListener
{
    // How often a blocked Accept looks at its cancellation token and group deadlines; 50 ms keeps cancellation
    // prompt while costing nothing measurable (20 wakeups/s).
    private const int PollMicroseconds = 50_000;

    private readonly Socket _socket;
    private readonly TcpTransportOptions _options;
    // Incomplete groups by connection id.
    private readonly Dictionary<Guid, Group> _pending = [];
    // Complete groups not yet returned.
    private readonly Queue<MigrationConnection> _ready = new();
    private readonly Lock _lock = new();

    private sealed class Group(int pageChannels, long started)
    {
        public readonly TcpMigrationChannel?[] Channels = new TcpMigrationChannel?[pageChannels + 1];
        public readonly long Started = started;
        public int Count;
    }

    public TcpMigrationListener(IPEndPoint local, TcpTransportOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(local);
        _options = options ?? new TcpTransportOptions();
        _socket = new Socket(local.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            _socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            // Accepted sockets inherit the buffer size; setting it before listen() lets TCP window scaling use it.
            _socket.ReceiveBufferSize = _options.PageSocketBufferBytes;
            _socket.Bind(local);
            _socket.Listen(64);
        }
        catch (SocketException e)
        {
            _socket.Dispose();
            throw new MigrationTransportException($"cannot listen on {local}: {e.Message}", e);
        }
        LocalEndPoint = (IPEndPoint)_socket.LocalEndPoint!;
    }

    /// <summary>The bound address (with the real port when constructed with port 0).</summary>
    public IPEndPoint LocalEndPoint { get; }

    public MigrationConnection Accept(CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            while (true)
            {
                if (_ready.TryDequeue(out var done)) return done;
                cancellationToken.ThrowIfCancellationRequested();
                ExpireGroups();
                bool readable;
                try
                {
                    readable = _socket.Poll(PollMicroseconds, SelectMode.SelectRead);
                }
                catch (ObjectDisposedException e)
                {
                    throw new MigrationTransportException("listener closed", e);
                }
                if (!readable) continue;
                Socket s;
                try
                {
                    s = _socket.Accept();
                }
                catch (SocketException)
                {
                    continue; // the connection went away between poll and accept
                }
                Admit(s);
            }
        }
    }

    private void Admit(Socket s)
    {
        TransportPreamble preamble;
        TcpMigrationChannel channel;
        try
        {
            s.NoDelay = true;
            var bounded = _options with { ReceiveTimeout = _options.GroupTimeout };
            var probe = new TcpMigrationChannel(s, "incoming", bounded);
            Span<byte> b = stackalloc byte[TransportPreamble.Size];
            if (!probe.ReceiveExactly(b)) throw new MigrationTransportException("closed before its preamble");
            preamble = TransportPreamble.Parse(b);
            channel = new TcpMigrationChannel(s, TransportPreamble.ChannelName(preamble.ChannelIndex), _options);
            if (preamble.ChannelIndex > 0) s.SendBufferSize = _options.PageSocketBufferBytes;
        }
        catch (Exception e) when (e is MigrationTransportException or SocketException)
        {
            Trace.TraceWarning($"migration listener: dropped a connection from {SafeRemote(s)}: {e.Message}");
            s.Dispose();
            return;
        }

        if (!_pending.TryGetValue(preamble.ConnectionId, out var group))
        {
            group = new Group(preamble.PageChannels, Stopwatch.GetTimestamp());
            _pending.Add(preamble.ConnectionId, group);
        }
        if (group.Channels.Length != preamble.PageChannels + 1 || group.Channels[preamble.ChannelIndex] is not null)
        {
            // Conflicting or duplicate member: the group cannot be trusted any more.
            channel.Dispose();
            Drop(preamble.ConnectionId, group);
            throw new MigrationTransportException($"connection {preamble.ConnectionId}: {channel.Name} arrived twice or with a different channel count");
        }
        group.Channels[preamble.ChannelIndex] = channel;
        if (++group.Count == group.Channels.Length)
        {
            _pending.Remove(preamble.ConnectionId);
            _ready.Enqueue(new MigrationConnection(group.Channels[0]!, group.Channels[1..].Select(c => (IMigrationChannel)c!).ToArray()));
        }
    }

    private void ExpireGroups()
    {
        foreach (var (id, group) in _pending)
        {
            if (Stopwatch.GetElapsedTime(group.Started) <= _options.GroupTimeout) continue;
            Drop(id, group);
            throw new MigrationTransportException(
                $"connection {id}: only {group.Count} of {group.Channels.Length} channels (control + {group.Channels.Length - 1} page) arrived within {_options.GroupTimeout.TotalSeconds:0.###} s; closed them");
        }
    }

    private void Drop(Guid id, Group group)
    {
        _pending.Remove(id);
        foreach (var c in group.Channels) c?.Dispose();
    }

    private static string SafeRemote(Socket s)
    {
        try
        {
            return s.RemoteEndPoint?.ToString() ?? "?";
        }
        catch (ObjectDisposedException)
        {
            return "?";
        }
    }

    public void Dispose()
    {
        _socket.Dispose();
        lock (_lock)
        {
            foreach (var g in _pending.Values)
                foreach (var c in g.Channels) c?.Dispose();
            _pending.Clear();
            while (_ready.TryDequeue(out var c)) c.Dispose();
        }
    }
}
