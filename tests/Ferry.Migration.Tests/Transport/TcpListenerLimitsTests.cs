using System.Net;
using System.Net.Sockets;
using Ferry.Migration.Transport;

// Channels are blocking by design; these tests drive the listener from plain threads with bounded waits.
#pragma warning disable xUnit1031, xUnit1051

namespace Ferry.Migration.Tests.Transport;

/// <summary>
/// What a hostile peer can make the listener hold is bounded, and hitting a bound closes the newcomer only: nothing
/// already in progress or complete, and Accept does not fail because of it.
/// </summary>
public class TcpListenerLimitsTests
{
    // Long enough that "closed at once" (within CloseWindow) cannot be the timeout closing it instead.
    private static readonly TimeSpan GroupTimeout = TimeSpan.FromSeconds(2);
    private static readonly TimeSpan CloseWindow = TimeSpan.FromSeconds(1);

    private static readonly TcpTransportOptions Quick = new()
    {
        ReceiveTimeout = TimeSpan.FromSeconds(5),
        SendTimeout = TimeSpan.FromSeconds(5),
        GroupTimeout = GroupTimeout,
        ConnectTimeout = TimeSpan.FromSeconds(5),
    };

    /// <summary>Raw client sockets, all closed on dispose whatever the test did.</summary>
    private sealed class Sockets : IDisposable
    {
        private readonly List<Socket> _all = [];

        public Socket Connect(TcpMigrationListener listener)
        {
            var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            _all.Add(s);
            s.Connect(listener.LocalEndPoint); // completes from the kernel's accept queue, accepted or not
            return s;
        }

        public Socket Introduce(TcpMigrationListener listener, Guid id, int index, int pages)
        {
            var s = Connect(listener);
            SendPreamble(s, id, index, pages);
            return s;
        }

        public void Dispose()
        {
            foreach (var s in _all) s.Dispose();
        }
    }

    private static void SendPreamble(Socket s, Guid id, int index, int pages)
    {
        Span<byte> b = stackalloc byte[TransportPreamble.Size];
        new TransportPreamble(id, index, pages).Write(b);
        Assert.Equal(b.Length, s.Send(b));
    }

    /// <summary>True once the listener closed <paramref name="s"/> (FIN or reset); false if still open after <paramref name="within"/>.</summary>
    private static bool ClosedWithin(Socket s, TimeSpan within)
    {
        s.ReceiveTimeout = (int)within.TotalMilliseconds;
        try
        {
            return s.Receive(new byte[1]) == 0; // the listener never sends on a connection it has not accepted
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionReset)
        {
            return true;
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.TimedOut or SocketError.WouldBlock)
        {
            return false;
        }
    }

    // Not readable: neither data nor FIN/reset has arrived.
    private static bool StillOpen(Socket s) => !s.Poll(0, SelectMode.SelectRead);

    private static CancellationToken Within(TimeSpan t) => new CancellationTokenSource(t).Token;

    /// <summary>Let the listener work for <paramref name="t"/> with nothing to return.</summary>
    private static void RunIdle(TcpMigrationListener listener, TimeSpan t) =>
        Assert.ThrowsAny<OperationCanceledException>(() => listener.Accept(Within(t)));

    private static void AssertALegitimateSourceConnects(TcpMigrationListener listener)
    {
        var connect = Task.Factory.StartNew(() => new TcpMigrationConnector(listener.LocalEndPoint, Quick).Connect(2, CancellationToken.None), TaskCreationOptions.LongRunning);
        using var destination = listener.Accept(Within(TimeSpan.FromSeconds(5)));
        using var source = connect.GetAwaiter().GetResult();
        source.Pages[1].Send([42]);
        var b = new byte[1];
        Assert.True(destination.Pages[1].ReceiveExactly(b));
        Assert.Equal(42, b[0]);
    }

    private static void AssertCarriesBytesBothWays(MigrationConnection destination, Socket control, Socket page)
    {
        foreach (var (channel, raw) in new[] { (destination.Control, control), (destination.Pages[0], page) })
        {
            var b = new byte[1];
            raw.Send([7]);
            Assert.True(channel.ReceiveExactly(b));
            Assert.Equal(7, b[0]);
            channel.Send([9]);
            raw.ReceiveTimeout = 2000;
            Assert.Equal(1, raw.Receive(b));
            Assert.Equal(9, b[0]);
        }
    }

    /// <summary>
    /// Groups A and B (control + 1 page channel each) whose page channels' preambles are both waiting before the
    /// next Accept, so both complete on one wakeup: Accept returns A and B waits in the ready queue.
    /// </summary>
    private static (Socket A0, Socket A1, Socket B0, Socket B1) TwoGroupsCompletingTogether(TcpMigrationListener listener, Sockets sockets)
    {
        Guid a = Guid.NewGuid(), b = Guid.NewGuid();
        var a0 = sockets.Introduce(listener, a, 0, 1);
        var b0 = sockets.Introduce(listener, b, 0, 1);
        var a1 = sockets.Connect(listener);
        var b1 = sockets.Connect(listener);
        RunIdle(listener, TimeSpan.FromMilliseconds(500)); // admits a0, b0; a1, b1 accepted and silent
        SendPreamble(a1, a, 1, 1);
        SendPreamble(b1, b, 1, 1);
        return (a0, a1, b0, b1);
    }

    [Fact]
    public void AConnectionBeyondTheHandshakeLimitIsClosedAtOnceAndThoseInProgressAreKept()
    {
        var options = Quick with { MaxHandshakingConnections = 4 };
        using var listener = new TcpMigrationListener(new IPEndPoint(IPAddress.Loopback, 0), options);
        using var sockets = new Sockets();
        var silent = Enumerable.Range(0, 4).Select(_ => sockets.Connect(listener)).ToArray();
        var fifth = sockets.Connect(listener);
        using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        // Its own thread, not the pool's: a busy test run can hold a pool task back for longer than the close window.
        var accepting = Task.Factory.StartNew(() => listener.Accept(stop.Token), TaskCreationOptions.LongRunning);
        try
        {
            Assert.True(ClosedWithin(fifth, CloseWindow), "the connection beyond the limit was not closed at once");
            Assert.All(silent, s => Assert.True(StillOpen(s), "a connection in progress was evicted"));
            // The silent ones time out by themselves; then a real source gets in.
            Assert.All(silent, s => Assert.True(ClosedWithin(s, GroupTimeout + TimeSpan.FromSeconds(1))));
        }
        finally
        {
            stop.Cancel();
        }
        Assert.ThrowsAny<OperationCanceledException>(() => accepting.GetAwaiter().GetResult());
        AssertALegitimateSourceConnects(listener);
    }

    [Fact]
    public void APreambleOpeningAGroupBeyondThePendingLimitIsClosedAndALaterSourceConnects()
    {
        var options = Quick with { MaxPendingGroups = 2 };
        using var listener = new TcpMigrationListener(new IPEndPoint(IPAddress.Loopback, 0), options);
        using var sockets = new Sockets();
        var pending = Enumerable.Range(0, 2).Select(_ => sockets.Introduce(listener, Guid.NewGuid(), 0, 1)).ToArray();
        // Admit those two first: preambles that arrive together are read in whatever order poll reports them, and
        // the test needs to know which one is beyond the limit.
        RunIdle(listener, TimeSpan.FromMilliseconds(300));
        var third = sockets.Introduce(listener, Guid.NewGuid(), 0, 1);
        // Its own thread, not the pool's: a busy test run can hold a pool task back for longer than the close window.
        var accepting = Task.Factory.StartNew(() => listener.Accept(Within(TimeSpan.FromSeconds(10))), TaskCreationOptions.LongRunning);
        Assert.True(ClosedWithin(third, CloseWindow), "the group beyond the limit was not refused at once");
        Assert.All(pending, s => Assert.True(StillOpen(s), "an incomplete group was evicted"));
        // The two incomplete groups expire as before (Accept reports each); afterwards a real source gets in.
        var e = Assert.Throws<MigrationTransportException>(() => accepting.GetAwaiter().GetResult());
        Assert.Contains("only 1 of 2 channels", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<MigrationTransportException>(() => listener.Accept(Within(TimeSpan.FromSeconds(5))));
        Assert.Contains("only 1 of 2 channels", e.Message, StringComparison.Ordinal);
        Assert.All(pending, s => Assert.True(ClosedWithin(s, CloseWindow)));
        AssertALegitimateSourceConnects(listener);
    }

    [Fact]
    public void AFloodOfSilentConnectionsLeavesCompleteGroupsIntact()
    {
        var options = Quick with { MaxHandshakingConnections = 4 };
        using var listener = new TcpMigrationListener(new IPEndPoint(IPAddress.Loopback, 0), options);
        using var sockets = new Sockets();
        var (a0, a1, b0, b1) = TwoGroupsCompletingTogether(listener, sockets);
        using var a = listener.Accept(Within(TimeSpan.FromSeconds(5)));
        var flood = Enumerable.Range(0, 12).Select(_ => sockets.Connect(listener)).ToArray(); // B is complete, not yet accepted
        using var b = listener.Accept(Within(TimeSpan.FromSeconds(5)));
        RunIdle(listener, TimeSpan.FromMilliseconds(500)); // takes in the flood; whatever it closed is closed by now
        Assert.All(flood[4..], s => Assert.True(ClosedWithin(s, TimeSpan.FromMilliseconds(200)), "a connection beyond the limit stayed open"));
        Assert.All(flood[..4], s => Assert.True(StillOpen(s)));
        AssertCarriesBytesBothWays(a, a0, a1);
        AssertCarriesBytesBothWays(b, b0, b1);
    }

    [Fact]
    public void AGroupCompletingWhileTheReadyQueueIsFullIsClosed()
    {
        var options = Quick with { MaxReadyGroups = 1 };
        using var listener = new TcpMigrationListener(new IPEndPoint(IPAddress.Loopback, 0), options);
        using var sockets = new Sockets();
        var (a0, a1, b0, b1) = TwoGroupsCompletingTogether(listener, sockets);
        using var a = listener.Accept(Within(TimeSpan.FromSeconds(5)));
        Assert.True(ClosedWithin(b0, CloseWindow), "the group beyond the ready limit was kept");
        Assert.True(ClosedWithin(b1, CloseWindow));
        AssertCarriesBytesBothWays(a, a0, a1);
        RunIdle(listener, TimeSpan.FromMilliseconds(300)); // B is gone, not waiting
    }

    [Fact]
    public void LimitsMustBePositive()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => Quick with { MaxHandshakingConnections = 0 });
        Assert.Throws<ArgumentOutOfRangeException>(() => Quick with { MaxPendingGroups = -1 });
        Assert.Throws<ArgumentOutOfRangeException>(() => Quick with { MaxReadyGroups = 0 });
    }
}
