using System.Net;
using System.Net.Sockets;

namespace Ferry.Cli.Tests;

/// <summary>
/// A TCP relay on 127.0.0.1 standing for the network between a migration's source and its destination: each
/// connection it accepts is joined to one of its own to the destination. <see cref="Cut"/> resets every connection
/// through it at once and refuses new ones, as a failed link would; neither side is told anything else.
/// </summary>
internal sealed class CuttableRelay : IDisposable
{
    private readonly TcpListener listener = new(IPAddress.Loopback, 0);
    private readonly IPEndPoint destination;
    private readonly Lock gate = new();
    private readonly List<Socket> sockets = [];
    private readonly CancellationTokenSource stop = new();
    private bool cut;

    public CuttableRelay(string destination)
    {
        this.destination = IPEndPoint.Parse(destination);
        listener.Start();
        _ = Task.Run(AcceptAsync);
    }

    /// <summary>The address to migrate to.</summary>
    public string Address => ((IPEndPoint)listener.LocalEndpoint).ToString();

    /// <summary>Connections relayed so far.</summary>
    public int Connections { get; private set; }

    private async Task AcceptAsync()
    {
        while (!stop.IsCancellationRequested)
        {
            Socket inbound;
            try
            {
                inbound = await listener.AcceptSocketAsync(stop.Token);
            }
            catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
            {
                return;
            }
            var outbound = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            inbound.NoDelay = true;
            try
            {
                await outbound.ConnectAsync(destination, stop.Token);
            }
            catch (Exception e) when (e is OperationCanceledException or SocketException)
            {
                Reset(inbound);
                Reset(outbound);
                continue;
            }
            lock (gate)
            {
                if (cut)
                {
                    Reset(inbound);
                    Reset(outbound);
                    continue;
                }
                sockets.Add(inbound);
                sockets.Add(outbound);
                Connections++;
            }
            _ = PumpAsync(inbound, outbound);
            _ = PumpAsync(outbound, inbound);
        }
    }

    private static async Task PumpAsync(Socket from, Socket to)
    {
        var buffer = new byte[64 << 10];
        try
        {
            while (true)
            {
                int n = await from.ReceiveAsync(buffer, SocketFlags.None);
                if (n == 0)
                {
                    to.Shutdown(SocketShutdown.Send);
                    return;
                }
                for (int sent = 0; sent < n;) sent += await to.SendAsync(buffer.AsMemory(sent, n - sent), SocketFlags.None);
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            // The other direction or Cut ended it.
        }
    }

    /// <summary>Reset every connection through the relay (RST both ways) and refuse any new one.</summary>
    public void Cut()
    {
        lock (gate)
        {
            cut = true;
            foreach (var s in sockets) Reset(s);
            sockets.Clear();
        }
    }

    private static void Reset(Socket s)
    {
        try
        {
            s.LingerState = new LingerOption(true, 0);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
        s.Dispose();
    }

    public void Dispose()
    {
        stop.Cancel();
        listener.Stop();
        Cut();
        stop.Dispose();
    }
}
