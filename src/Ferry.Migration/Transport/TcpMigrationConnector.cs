using System.Net;
using System.Net.Sockets;
using Ferry.Linux;

namespace Ferry.Migration.Transport;

/// <summary>
/// Source side of the TCP transport: opens the control connection, then one connection per page channel, each
/// starting with a <see cref="TransportPreamble"/> naming the group and its place in it.
/// </summary>
public sealed class TcpMigrationConnector : IMigrationConnector
{
    private readonly EndPoint _remote;
    private readonly TcpTransportOptions _options;

    public TcpMigrationConnector(EndPoint remote, TcpTransportOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(remote);
        _remote = remote;
        _options = options ?? new TcpTransportOptions();
    }

    public MigrationConnection Connect(int pageChannels, CancellationToken cancellationToken) => Connect(pageChannels, false, cancellationToken);

    public MigrationConnection Connect(int pageChannels, bool urgentChannel, CancellationToken cancellationToken)
    {
        if (pageChannels is < 1 or > Protocol.MigrationProtocol.MaxPageChannels)
            throw new ArgumentOutOfRangeException(nameof(pageChannels), pageChannels, $"1..{Protocol.MigrationProtocol.MaxPageChannels} page channels");
        var id = Guid.NewGuid();
        var channels = new List<TcpMigrationChannel>(pageChannels + 1);
        try
        {
            int members = pageChannels + 1 + (urgentChannel ? 1 : 0);
            for (int index = 0; index < members; index++)
                channels.Add(Open(new TransportPreamble(id, index, pageChannels, urgentChannel), cancellationToken));
        }
        catch
        {
            foreach (var c in channels) c.Dispose();
            throw;
        }
        return new MigrationConnection(channels[0], channels.GetRange(1, pageChannels), urgentChannel ? channels[^1] : null);
    }

    private TcpMigrationChannel Open(TransportPreamble preamble, CancellationToken cancellationToken)
    {
        string name = TransportPreamble.ChannelName(preamble.ChannelIndex, preamble.PageChannels);
        var socket = new Socket(_remote.AddressFamily == AddressFamily.Unspecified ? AddressFamily.InterNetwork : _remote.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            // Nagle would hold a small record (Flush, Complete, Ready) behind unacknowledged data for up to a
            // delayed-ACK period (40 ms on Linux): that lands straight in the downtime. Off on every channel.
            socket.NoDelay = true;
            // The urgent channel keeps default buffers: a faulted page must not queue behind megabytes.
            if (preamble.ChannelIndex > 0 && preamble.ChannelIndex <= preamble.PageChannels)
            {
                socket.SendBufferSize = _options.PageSocketBufferBytes;
                socket.ReceiveBufferSize = _options.PageSocketBufferBytes;
            }
            using (var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken))
            {
                timeout.CancelAfter(_options.ConnectTimeout);
                try
                {
                    if (_remote is IPEndPoint ip) ConnectOutsideSocketEngine(socket, ip, timeout.Token);
                    else socket.ConnectAsync(_remote, timeout.Token).AsTask().GetAwaiter().GetResult();
                }
                catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
                {
                    throw new MigrationTransportException($"{name}: no answer from {_remote} within {_options.ConnectTimeout.TotalSeconds:0.###} s (connect timeout)");
                }
            }
            var channel = new TcpMigrationChannel(socket, name, _options);
            Span<byte> b = stackalloc byte[TransportPreamble.Size];
            preamble.Write(b);
            channel.Send(b);
            return channel;
        }
        catch (SocketException e)
        {
            socket.Dispose();
            string what = e.SocketErrorCode switch
            {
                SocketError.ConnectionRefused => "connection refused (is the destination listening?)",
                SocketError.HostUnreachable or SocketError.NetworkUnreachable => "host unreachable",
                SocketError.TimedOut => "connect timed out",
                _ => e.Message,
            };
            throw new MigrationTransportException($"{name}: cannot connect to {_remote}: {what}", e);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Connect with a non-blocking <c>connect</c> and <c>poll</c>, without .NET's socket engine, then make the fd
    /// blocking again (.NET never clears O_NONBLOCK itself; <see cref="Socket.Blocking"/> = true only makes its own
    /// synchronous calls wait, through its epoll thread).
    /// <see cref="Socket.ConnectAsync(EndPoint, CancellationToken)"/> would register the socket with .NET's epoll
    /// engine for good: every later EPOLLOUT edge of a page channel (each time its full send buffer drains) then wakes
    /// the engine's epoll thread, which hands the event, with no operation waiting for it, to a thread-pool worker that
    /// spins in sched_yield before sleeping. Measured with perf on this 2-core host, 1 GiB over 2 page channels: ~4,500
    /// thread-pool and ~160 epoll-thread context switches per GiB sent (about 300 and 10 connecting this way; the plain
    /// TCP copy has none), all competing with the sender and receiver threads for the two cores. A token that fires (the caller's or the connect timeout) throws <see cref="OperationCanceledException"/>
    /// within 50 ms.
    /// </summary>
    private static void ConnectOutsideSocketEngine(Socket socket, IPEndPoint remote, CancellationToken cancellationToken)
    {
        socket.Blocking = false;
        try
        {
            socket.Connect(remote);
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.WouldBlock or SocketError.InProgress)
        {
            // Writable (or in error: Linux reports POLLOUT with POLLERR) once the handshake ended either way.
            while (!socket.Poll(50_000, SelectMode.SelectWrite))
                cancellationToken.ThrowIfCancellationRequested();
            var error = (SocketError)(int)socket.GetSocketOption(SocketOptionLevel.Socket, SocketOptionName.Error)!;
            if (error != SocketError.Success) throw new SocketException((int)error);
        }
        cancellationToken.ThrowIfCancellationRequested();
        socket.Blocking = true;
        // .NET leaves the fd O_NONBLOCK; clear it, so the channel's readv and writev wait in the kernel (a blocked
        // thread is then woken by the kernel, not through a poll loop), bounded by SO_RCVTIMEO and SO_SNDTIMEO.
        bool added = false;
        try
        {
            socket.SafeHandle.DangerousAddRef(ref added);
            Libc.ClearNonBlocking((int)socket.SafeHandle.DangerousGetHandle());
        }
        catch (LinuxException e)
        {
            throw new SocketException(e.Errno);
        }
        finally
        {
            if (added) socket.SafeHandle.DangerousRelease();
        }
    }
}
