using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace Ferry.Migration.Transport;

/// <summary>
/// Destination side of the TCP transport: accepts connections, reads each one's <see cref="TransportPreamble"/> and
/// groups them by connection id until a group has its control channel and every page channel.
/// </summary>
/// <remarks>
/// Preambles are read as they arrive, never blocking the loop: a connection whose preamble is bad or incomplete after
/// <see cref="TcpTransportOptions.GroupTimeout"/> is closed and ignored (a port scanner must not break or delay a
/// migration). A group still incomplete
/// <see cref="TcpTransportOptions.GroupTimeout"/> after its first connection is closed and <see cref="Accept"/>
/// throws. Groups that complete while another is awaited are kept for the next <see cref="Accept"/>.
/// <para>
/// Everything a peer can make it hold is bounded (<see cref="TcpTransportOptions.MaxHandshakingConnections"/>,
/// <see cref="TcpTransportOptions.MaxPendingGroups"/>, <see cref="TcpTransportOptions.MaxReadyGroups"/>; with the
/// defaults 64 + 4 × 17 + 4 × 17 sockets): beyond a limit the newcomer is closed and traced, never something already
/// in progress, and Accept does not fail because of it.
/// </para>
/// </remarks>
public sealed class TcpMigrationListener : IMigrationListener
{
    // How often a blocked Accept looks at its cancellation token and deadlines; 50 ms keeps cancellation
    // prompt while costing nothing measurable (20 wakeups/s).
    private const int PollMicroseconds = 50_000;

    private readonly Socket _socket;
    private readonly TcpTransportOptions _options;
    // Incomplete groups by connection id.
    private readonly Dictionary<Guid, Group> _pending = [];
    // Complete groups not yet returned.
    private readonly Queue<MigrationConnection> _ready = new();
    private readonly Lock _lock = new();
    // Accepted connections whose 32-byte preamble has not fully arrived.
    private readonly List<Handshake> _handshaking = [];

    private sealed class Handshake(Socket socket, long started)
    {
        public readonly Socket Socket = socket;
        public readonly long Started = started;
        public readonly byte[] Preamble = new byte[TransportPreamble.Size];
        public int Fill;
    }

    private sealed class Group(int pageChannels, bool urgent, long started)
    {
        public readonly TcpMigrationChannel?[] Channels = new TcpMigrationChannel?[pageChannels + 1 + (urgent ? 1 : 0)];
        public readonly int PageChannels = pageChannels;
        public readonly bool Urgent = urgent;
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
            var readable = new List<Socket>();
            while (true)
            {
                if (_ready.TryDequeue(out var done)) return done;
                cancellationToken.ThrowIfCancellationRequested();
                ExpireHandshakes();
                ExpireGroups();
                // Wait for a new connection or preamble bytes on any connection still introducing itself, so a slow
                // or silent stray never delays a real source.
                readable.Clear();
                readable.Add(_socket);
                foreach (var h in _handshaking) readable.Add(h.Socket);
                try
                {
                    Socket.Select(readable, null, null, PollMicroseconds);
                }
                catch (ObjectDisposedException e)
                {
                    throw new MigrationTransportException("listener closed", e);
                }
                // Handshakes first: a slot freed by a stray that closed or finished counts before a newcomer is judged.
                bool incoming = false;
                foreach (var s in readable)
                {
                    if (s == _socket) incoming = true;
                    else ContinueHandshake(_handshaking.Find(h => h.Socket == s)!);
                }
                if (incoming) AcceptOne();
            }
        }
    }

    private void AcceptOne()
    {
        Socket s;
        try
        {
            s = _socket.Accept();
        }
        catch (SocketException)
        {
            // The connection went away between select and accept.
            return;
        }
        if (_handshaking.Count >= _options.MaxHandshakingConnections)
        {
            // Close the newcomer, not an older one: evicting would let a flood push out a real source's channel.
            Reject(s, $"too many connections still introducing themselves ({_options.MaxHandshakingConnections})");
            return;
        }
        try
        {
            s.NoDelay = true;
        }
        catch (SocketException e)
        {
            Reject(s, e.SocketErrorCode.ToString()); // reset already
            return;
        }
        _handshaking.Add(new Handshake(s, Stopwatch.GetTimestamp()));
    }

    /// <summary>Read whatever preamble bytes arrived (readable: no blocking); admit the channel once all 32 are in.</summary>
    private void ContinueHandshake(Handshake h)
    {
        int n = h.Socket.Receive(h.Preamble, h.Fill, TransportPreamble.Size - h.Fill, SocketFlags.None, out var error);
        if (error != SocketError.Success || n == 0)
        {
            Reject(h, error == SocketError.Success ? "closed before its preamble" : error.ToString());
            return;
        }
        h.Fill += n;
        if (h.Fill < TransportPreamble.Size) return;
        _handshaking.Remove(h);
        TransportPreamble preamble;
        try
        {
            preamble = TransportPreamble.Parse(h.Preamble);
        }
        catch (MigrationTransportException e)
        {
            Reject(h, e.Message);
            return;
        }
        if (_pending.Count >= _options.MaxPendingGroups && !_pending.ContainsKey(preamble.ConnectionId))
        {
            Reject(h, $"too many migrations still gathering their channels ({_options.MaxPendingGroups})");
            return;
        }
        var channel = new TcpMigrationChannel(h.Socket, TransportPreamble.ChannelName(preamble.ChannelIndex, preamble.PageChannels), _options);
        if (preamble.ChannelIndex > 0 && preamble.ChannelIndex <= preamble.PageChannels) h.Socket.SendBufferSize = _options.PageSocketBufferBytes;
        Admit(preamble, channel);
    }

    private void Reject(Handshake h, string why)
    {
        _handshaking.Remove(h);
        Reject(h.Socket, why);
    }

    private void Reject(Socket s, string why)
    {
        string line = $"dropped a connection from {SafeRemote(s)}: {why}";
        Trace.TraceWarning($"migration listener: {line}");
        _options.ConnectionRejected?.Invoke(line);
        s.Dispose();
    }

    private void ExpireHandshakes()
    {
        for (int i = _handshaking.Count - 1; i >= 0; i--)
        {
            var h = _handshaking[i];
            if (Stopwatch.GetElapsedTime(h.Started) > _options.GroupTimeout)
                Reject(h, $"no complete preamble within {_options.GroupTimeout.TotalSeconds:0.###} s");
        }
    }

    private void Admit(TransportPreamble preamble, TcpMigrationChannel channel)
    {
        if (!_pending.TryGetValue(preamble.ConnectionId, out var group))
        {
            group = new Group(preamble.PageChannels, preamble.Urgent, Stopwatch.GetTimestamp());
            _pending.Add(preamble.ConnectionId, group);
        }
        if (group.Channels.Length != preamble.GroupSize || group.Channels[preamble.ChannelIndex] is not null)
        {
            // Conflicting or duplicate member: the group cannot be trusted any more.
            channel.Dispose();
            Drop(preamble.ConnectionId, group);
            throw new MigrationTransportException($"connection {preamble.ConnectionId}: {channel.Name} arrived twice or with a different channel count");
        }
        group.Channels[preamble.ChannelIndex] = channel;
        if (++group.Count == group.Channels.Length)
        {
            if (_ready.Count >= _options.MaxReadyGroups)
            {
                Drop(preamble.ConnectionId, group);
                Trace.TraceWarning($"migration listener: dropped connection {preamble.ConnectionId} (control + {preamble.PageChannels} page channels): too many complete migrations not yet accepted ({_options.MaxReadyGroups})");
                return;
            }
            _pending.Remove(preamble.ConnectionId);
            _ready.Enqueue(new MigrationConnection(group.Channels[0]!,
                group.Channels[1..(group.PageChannels + 1)].Select(c => (IMigrationChannel)c!).ToArray(),
                group.Urgent ? group.Channels[^1] : null));
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
        catch (Exception e) when (e is ObjectDisposedException or SocketException)
        {
            return "?";
        }
    }

    public void Dispose()
    {
        _socket.Dispose();
        lock (_lock)
        {
            foreach (var h in _handshaking) h.Socket.Dispose();
            _handshaking.Clear();
            foreach (var g in _pending.Values)
                foreach (var c in g.Channels) c?.Dispose();
            _pending.Clear();
            while (_ready.TryDequeue(out var c)) c.Dispose();
        }
    }
}
