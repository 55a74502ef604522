using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace Ferry.Linux.Tests;

/// <summary>The socket wait another thread can cut short (ReadinessWait.cs).</summary>
public class ReadinessWaitTests
{
    /// <summary>A connected pair of loopback TCP sockets.</summary>
    private static (Socket A, Socket B) Pair()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(1);
        var a = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        a.Connect(listener.LocalEndPoint!);
        return (a, listener.Accept());
    }

    private static int Fd(Socket s) => (int)s.SafeHandle.DangerousGetHandle();

    [Fact]
    public void AnEmptySocketTimesOutAndHasNoData()
    {
        var (a, b) = Pair();
        using (a)
        using (b)
        using (var wait = new ReadinessWait())
        {
            Assert.False(ReadinessWait.HasData(Fd(b)));
            var sw = Stopwatch.StartNew();
            Assert.Equal(ReadinessWait.Result.TimedOut, wait.Wait(Fd(b), 50));
            Assert.True(sw.ElapsedMilliseconds >= 45, $"returned after {sw.ElapsedMilliseconds} ms");
        }
    }

    [Fact]
    public void DataMakesTheSocketReadyAndANudgeEndsTheWaitOnce()
    {
        var (a, b) = Pair();
        using (a)
        using (b)
        using (var wait = new ReadinessWait())
        {
            // A nudge before the wait: the wait returns at once, and the nudge is used up.
            wait.Nudge();
            Assert.Equal(ReadinessWait.Result.Nudged, wait.Wait(Fd(b), 5_000));
            Assert.Equal(ReadinessWait.Result.TimedOut, wait.Wait(Fd(b), 20));

            // A nudge from another thread while the wait sleeps.
            var nudger = new Thread(() => { Thread.Sleep(50); wait.Nudge(); });
            nudger.Start();
            Assert.Equal(ReadinessWait.Result.Nudged, wait.Wait(Fd(b), 5_000));
            nudger.Join();

            // Data that arrives during the wait.
            var sender = new Thread(() => { Thread.Sleep(50); a.Send([42]); });
            sender.Start();
            Assert.Equal(ReadinessWait.Result.Ready, wait.Wait(Fd(b), 5_000));
            sender.Join();
            Assert.True(ReadinessWait.HasData(Fd(b)));
            var got = new byte[1];
            Assert.Equal(1, b.Receive(got));
            Assert.False(ReadinessWait.HasData(Fd(b)));

            // The peer's end counts as ready: the read that follows reports it.
            a.Shutdown(SocketShutdown.Send);
            Assert.Equal(ReadinessWait.Result.Ready, wait.Wait(Fd(b), 5_000));
            Assert.True(ReadinessWait.HasData(Fd(b)));
        }
    }

    [Fact]
    public void ANudgeAfterDisposeIsHarmless()
    {
        var wait = new ReadinessWait();
        wait.Dispose();
        wait.Nudge();
    }
}
