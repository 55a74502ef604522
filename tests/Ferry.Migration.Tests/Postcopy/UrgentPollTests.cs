using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Ferry.Linux;
using Ferry.Migration.Postcopy;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Tests.Postcopy;

/// <summary>How the destination's urgent receiver waits for a record when fault polling is on (UrgentPoll.cs).</summary>
public sealed class UrgentPollTests : IDisposable
{
    private readonly Socket _sender;
    private readonly Socket _receiver;
    private readonly CountingChannel _channel;
    private long _awaited;

    public UrgentPollTests()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(1);
        _sender = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        _sender.Connect(listener.LocalEndPoint!);
        _receiver = listener.Accept();
        _channel = new CountingChannel(_receiver);
    }

    public void Dispose()
    {
        _sender.Dispose();
        _receiver.Dispose();
    }

    /// <summary>The receiver's side of a TCP connection, counting how the poll used it.</summary>
    private sealed class CountingChannel(Socket socket) : IPollableChannel
    {
        public long Polls;
        public long Sleeps;

        private int Fd => (int)socket.SafeHandle.DangerousGetHandle();

        public bool HasData()
        {
            Interlocked.Increment(ref Polls);
            return ReadinessWait.HasData(Fd);
        }

        public ReadinessWait.Result WaitForData(ReadinessWait wait)
        {
            Interlocked.Increment(ref Sleeps);
            return wait.Wait(Fd, 30_000);
        }
    }

    private UrgentPoll Poll(TimeSpan budget) => new(_channel, () => Interlocked.Read(ref _awaited), budget);

    /// <summary>Run BeforeRead on a thread of its own; returns the thread (joined by the caller).</summary>
    private static Thread BeforeRead(UrgentPoll poll)
    {
        var t = new Thread(poll.BeforeRead) { IsBackground = true };
        t.Start();
        return t;
    }

    private static void Until(Func<bool> condition, string what)
    {
        var sw = Stopwatch.StartNew();
        while (!condition())
        {
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(10), $"waited 10 s for {what}");
            Thread.Sleep(1);
        }
    }

    [Fact]
    public void WithNoFaultOutstandingItSleepsUntilDataComesWithoutPolling()
    {
        using var poll = Poll(TimeSpan.FromSeconds(5));
        var t = BeforeRead(poll);
        Until(() => Interlocked.Read(ref _channel.Sleeps) == 1, "the receiver to sleep");
        Assert.False(t.Join(50));
        _sender.Send([1]);
        Assert.True(t.Join(TimeSpan.FromSeconds(10)));
        Assert.Equal(0, Interlocked.Read(ref _channel.Polls));
        Assert.Equal(0, poll.FoundPolling);
    }

    [Fact]
    public void ARequestWakesTheSleepingReceiverWhichThenFindsTheReplyPolling()
    {
        using var poll = Poll(TimeSpan.FromSeconds(5));
        var t = BeforeRead(poll);
        Until(() => Interlocked.Read(ref _channel.Sleeps) == 1, "the receiver to sleep");
        Interlocked.Increment(ref _awaited); // a guest thread faults...
        poll.RequestSent();                  // ...and its request has gone
        Assert.Equal(1, poll.Nudges);
        Until(() => Interlocked.Read(ref _channel.Polls) > 0, "the receiver to poll");
        Assert.False(t.Join(20));
        _sender.Send([1]);                   // the reply
        Assert.True(t.Join(TimeSpan.FromSeconds(10)));
        Assert.Equal(1, poll.FoundPolling);
        Assert.Equal(1, Interlocked.Read(ref _channel.Sleeps));
    }

    [Fact]
    public void AReplyThatDoesNotComeIsPolledForOnlyTheBudgetThenTheReadWaits()
    {
        Interlocked.Increment(ref _awaited);
        using var poll = Poll(TimeSpan.FromMilliseconds(50));
        var sw = Stopwatch.StartNew();
        poll.BeforeRead();
        Assert.True(sw.Elapsed >= TimeSpan.FromMilliseconds(50), $"returned after {sw.Elapsed.TotalMilliseconds:0.#} ms");
        Assert.True(Interlocked.Read(ref _channel.Polls) > 1);
        Assert.Equal(0, Interlocked.Read(ref _channel.Sleeps));
        Assert.Equal(0, poll.FoundPolling);
    }

    [Fact]
    public void AChannelShutDownWhileTheReceiverSleepsOrPollsEndsTheWaitSoTheReadReportsIt()
    {
        using var poll = Poll(TimeSpan.FromSeconds(5));
        var t = BeforeRead(poll);
        Until(() => Interlocked.Read(ref _channel.Sleeps) == 1, "the receiver to sleep");
        _receiver.Shutdown(SocketShutdown.Both); // as TcpMigrationChannel.Abort does
        Assert.True(t.Join(TimeSpan.FromSeconds(10)), "a sleeping receiver stayed asleep on a shut-down channel");

        Interlocked.Increment(ref _awaited);
        poll.BeforeRead(); // polling: the shut-down socket reads as ready at once
        Assert.Equal(1, poll.FoundPolling);
    }

    [Fact]
    public void APageThatLandsByThePushSendsThePollingReceiverBackToSleep()
    {
        Interlocked.Increment(ref _awaited);
        using var poll = Poll(TimeSpan.FromSeconds(5));
        var t = BeforeRead(poll);
        Until(() => Interlocked.Read(ref _channel.Polls) > 0, "the receiver to poll");
        Interlocked.Decrement(ref _awaited); // the push installed it
        Until(() => Interlocked.Read(ref _channel.Sleeps) == 1, "the receiver to sleep");
        _sender.Send([1]);
        Assert.True(t.Join(TimeSpan.FromSeconds(10)));
        Assert.Equal(0, poll.FoundPolling);
    }
}
