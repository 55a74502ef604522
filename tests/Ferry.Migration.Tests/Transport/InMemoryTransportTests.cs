using Ferry.Migration.Transport;

// Channels are blocking by design (one thread per channel), so these tests drive them from plain threads and
// wait on them with bounded timeouts; async test methods would add nothing but noise.
#pragma warning disable xUnit1031, xUnit1051

namespace Ferry.Migration.Tests.Transport;

public class InMemoryTransportTests
{
    [Fact]
    public void ConnectAndAcceptPairTheSameChannels()
    {
        using var t = new InMemoryTransport();
        var source = t.Connector.Connect(3, CancellationToken.None);
        var destination = t.Listener.Accept(CancellationToken.None);
        Assert.Equal(3, destination.Pages.Count);
        source.Pages[2].Send([1, 2, 3]);
        destination.Control.Send([9]);
        var b = new byte[3];
        Assert.True(destination.Pages[2].ReceiveExactly(b));
        Assert.Equal([1, 2, 3], b);
        Assert.True(source.Control.ReceiveExactly(b.AsSpan(0, 1)));
        Assert.Equal(9, b[0]);
    }

    [Fact]
    public void AFullPipeBlocksTheSenderUntilTheReceiverReads()
    {
        var (a, b) = InMemoryTransport.CreatePair("pages-0", capacity: 4096);
        var data = new byte[10_000];
        new Random(3).NextBytes(data);
        var sender = Task.Run(() => a.Send(data));
        Assert.False(sender.Wait(200)); // 4 KiB buffered, the rest waits for the reader
        Assert.Equal(0, a.BytesSent);
        var received = new byte[data.Length];
        Assert.True(b.ReceiveExactly(received));
        Assert.True(sender.Wait(5000));
        Assert.Equal(data, received);
        Assert.Equal(data.Length, a.BytesSent);
    }

    [Fact]
    public void AbortUnblocksABlockedSenderAndABlockedReceiver()
    {
        var (a, b) = InMemoryTransport.CreatePair("pages-0", capacity: 16);
        var sender = Task.Run(() => a.Send(new byte[100]));
        var (c, d) = InMemoryTransport.CreatePair("control");
        var receiver = Task.Run(() => d.ReceiveExactly(new byte[1]));
        Thread.Sleep(50);
        a.Abort();
        d.Abort();
        Assert.Equal("pages-0: channel aborted", Assert.Throws<MigrationTransportException>(() => sender.GetAwaiter().GetResult()).Message);
        Assert.Equal("control: channel aborted", Assert.Throws<MigrationTransportException>(() => receiver.GetAwaiter().GetResult()).Message);
        Assert.Throws<MigrationTransportException>(() => b.ReceiveExactly(new byte[1]));
        Assert.Throws<MigrationTransportException>(() => c.Send([1]));
    }

    [Fact]
    public void AReceiveTimesOutWhenThePeerIsSilent()
    {
        var (_, b) = InMemoryTransport.CreatePair("control", receiveTimeout: TimeSpan.FromMilliseconds(100));
        Assert.Contains("receive timeout", Assert.Throws<MigrationTransportException>(() => b.ReceiveExactly(new byte[1])).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void DisposeDeliversWhatWasSentThenEndOfStream()
    {
        var (a, b) = InMemoryTransport.CreatePair("control");
        a.Send([1, 2]);
        a.Dispose();
        Assert.True(b.ReceiveExactly(new byte[2]));
        Assert.False(b.ReceiveExactly(new byte[1]));
        Assert.Contains("the peer closed the connection", Assert.Throws<MigrationTransportException>(() => b.Send([1])).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ConnectingToADisposedTransportIsRefused()
    {
        var t = new InMemoryTransport();
        t.Dispose();
        Assert.Contains("connection refused", Assert.Throws<MigrationTransportException>(() => t.Connector.Connect(1, CancellationToken.None)).Message, StringComparison.Ordinal);
    }
}
