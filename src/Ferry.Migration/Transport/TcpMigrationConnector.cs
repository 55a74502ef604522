using System.Net;
using System.Net.Sockets;

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

    public MigrationConnection Connect(int pageChannels, CancellationToken cancellationToken)
    {
        if (pageChannels is < 1 or > Protocol.MigrationProtocol.MaxPageChannels)
            throw new ArgumentOutOfRangeException(nameof(pageChannels), pageChannels, $"1..{Protocol.MigrationProtocol.MaxPageChannels} page channels");
        var id = Guid.NewGuid();
        var channels = new List<TcpMigrationChannel>(pageChannels + 1);
        try
        {
            for (int index = 0; index <= pageChannels; index++)
                channels.Add(Open(new TransportPreamble(id, index, pageChannels), cancellationToken));
        }
        catch
        {
            foreach (var c in channels) c.Dispose();
            throw;
        }
        return new MigrationConnection(channels[0], channels.GetRange(1, pageChannels));
    }

    private TcpMigrationChannel Open(TransportPreamble preamble, CancellationToken cancellationToken)
    {
        string name = TransportPreamble.ChannelName(preamble.ChannelIndex);
        var socket = new Socket(_remote.AddressFamily == AddressFamily.Unspecified ? AddressFamily.InterNetwork : _remote.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            // Nagle would hold a small record (Flush, Complete, Ready) behind unacknowledged data for up to a
            // delayed-ACK period (40 ms on Linux): that lands straight in the downtime. Off on every channel.
            socket.NoDelay = true;
            if (preamble.ChannelIndex > 0)
            {
                socket.SendBufferSize = _options.PageSocketBufferBytes;
                socket.ReceiveBufferSize = _options.PageSocketBufferBytes;
            }
            using (var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken))
            {
                timeout.CancelAfter(_options.ConnectTimeout);
                try
                {
                    socket.ConnectAsync(_remote, timeout.Token).AsTask().GetAwaiter().GetResult();
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
}
