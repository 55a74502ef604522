using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using Ferry.Migration.Transport;

// Channels are blocking by design (one thread per channel), so these tests drive them from plain threads and
// wait on them with bounded timeouts; async test methods would add nothing but noise.
#pragma warning disable xUnit1031, xUnit1051

namespace Ferry.Migration.Tests.Transport;

public class TcpTransportTests
{
    private static readonly TcpTransportOptions Quick = new()
    {
        ReceiveTimeout = TimeSpan.FromSeconds(5),
        SendTimeout = TimeSpan.FromSeconds(5),
        GroupTimeout = TimeSpan.FromSeconds(5),
        ConnectTimeout = TimeSpan.FromSeconds(5),
    };

    private static (MigrationConnection Source, MigrationConnection Destination) Open(TcpMigrationListener listener, int pages, TcpTransportOptions? options = null)
    {
        var connect = Task.Run(() => new TcpMigrationConnector(listener.LocalEndPoint, options ?? Quick).Connect(pages, CancellationToken.None));
        var destination = listener.Accept(new CancellationTokenSource(TimeSpan.FromSeconds(10)).Token);
        return (connect.GetAwaiter().GetResult(), destination);
    }

    private static byte[] Receive(IMigrationChannel c, int n)
    {
        var b = new byte[n];
        Assert.True(c.ReceiveExactly(b));
        return b;
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(4)]
    public void ControlAndEveryPageChannelCarryBytesBothWays(int pages)
    {
        using var listener = new TcpMigrationListener(new IPEndPoint(IPAddress.Loopback, 0), Quick);
        Assert.NotEqual(0, listener.LocalEndPoint.Port);
        var (source, destination) = Open(listener, pages);
        using (source)
        using (destination)
        {
            Assert.Equal(pages, destination.Pages.Count);
            Assert.Equal("control", destination.Control.Name);
            Assert.Equal(Enumerable.Range(0, pages).Select(k => $"pages-{k}"), destination.Pages.Select(p => p.Name));
            var all = new[] { (source.Control, destination.Control) }.Concat(source.Pages.Zip(destination.Pages)).ToArray();
            foreach (var (s, d) in all)
            {
                s.Send(Encoding.ASCII.GetBytes("to " + s.Name));
                d.Send(Encoding.ASCII.GetBytes("from " + d.Name));
            }
            foreach (var (s, d) in all)
            {
                Assert.Equal("to " + s.Name, Encoding.ASCII.GetString(Receive(d, 3 + s.Name.Length)));
                Assert.Equal("from " + d.Name, Encoding.ASCII.GetString(Receive(s, 5 + d.Name.Length)));
            }
            Assert.Equal(3 + "pages-0".Length, ((IByteCounter)source.Pages[0]).BytesSent - 32); // 32-byte preamble counted too
        }
    }

    [Fact]
    public void BytesReadableIsWhatAReceiveWouldFindWithoutWaiting()
    {
        using var listener = new TcpMigrationListener(new IPEndPoint(IPAddress.Loopback, 0), Quick);
        var (source, destination) = Open(listener, 1);
        using (source)
        using (destination)
        {
            var page = destination.Pages[0];
            Assert.Equal(0, page.BytesReadable);
            source.Pages[0].Send(new byte[10_000]);
            var waited = System.Diagnostics.Stopwatch.StartNew();
            while (page.BytesReadable < 10_000 && waited.Elapsed < TimeSpan.FromSeconds(5)) Thread.Sleep(1);
            Assert.Equal(10_000, page.BytesReadable);
            Receive(page, 4_000);
            Assert.Equal(6_000, page.BytesReadable);
        }
    }

    [Fact]
    public unsafe void AGatherSendOfNativeMemoryArrivesIntact()
    {
        using var listener = new TcpMigrationListener(new IPEndPoint(IPAddress.Loopback, 0), Quick);
        var (source, destination) = Open(listener, 1);
        using (source)
        using (destination)
        {
            const int Size = (1 << 20) + 4096 + 13;
            byte* native = (byte*)NativeMemory.Alloc(Size);
            try
            {
                var span = new Span<byte>(native, Size);
                new Random(1).NextBytes(span);
                IoSegment[] segments = [new((nint)native, 13), new((nint)native + 13, 1 << 20), new((nint)native + 13 + (1 << 20), 4096)];
                var received = new byte[Size];
                var reader = Task.Run(() => destination.Pages[0].ReceiveExactly(received));
                source.Pages[0].SendGather(segments);
                Assert.True(reader.GetAwaiter().GetResult());
                Assert.True(span.SequenceEqual(received));
            }
            finally
            {
                NativeMemory.Free(native);
            }
        }
    }

    [Fact]
    public unsafe void AGatherOfMoreSegmentsThanIovMaxIsSentInChunksInOrder()
    {
        using var listener = new TcpMigrationListener(new IPEndPoint(IPAddress.Loopback, 0), Quick);
        var (source, destination) = Open(listener, 1);
        using (source)
        using (destination)
        {
            var data = new byte[3000 * 7];
            for (int i = 0; i < data.Length; i++) data[i] = (byte)(i % 251);
            fixed (byte* p = data)
            {
                nint start = (nint)p;
                var segments = Enumerable.Range(0, 3000).Select(i => new IoSegment(start + (i * 7), 7)).ToArray();
                var received = new byte[data.Length];
                var reader = Task.Run(() => destination.Pages[0].ReceiveExactly(received));
                source.Pages[0].SendGather(segments);
                Assert.True(reader.GetAwaiter().GetResult());
                Assert.Equal(data, received);
            }
        }
    }

    [Fact]
    public void ConnectionRefusedIsATransportErrorNamingTheChannel()
    {
        int port;
        using (var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            port = ((IPEndPoint)probe.LocalEndPoint!).Port;
        }
        var e = Assert.Throws<MigrationTransportException>(() =>
            new TcpMigrationConnector(new IPEndPoint(IPAddress.Loopback, port), Quick).Connect(2, CancellationToken.None));
        Assert.Equal($"control: cannot connect to 127.0.0.1:{port}: connection refused (is the destination listening?)", e.Message);
    }

    /// <summary>
    /// A listener whose accept queue is full: Linux drops further SYNs, so a connect to it stays pending (the kernel
    /// would retry the SYN for a minute or more). Filled with connections nobody accepts.
    /// </summary>
    private static (Socket Listener, Socket[] Fillers) SilentListener()
    {
        var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(0);
        var fillers = new Socket[2];
        for (int i = 0; i < fillers.Length; i++)
        {
            fillers[i] = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { Blocking = false };
            try
            {
                fillers[i].Connect(listener.LocalEndPoint!);
            }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.WouldBlock or SocketError.InProgress)
            {
            }
        }
        Thread.Sleep(50); // let the fillers' handshakes reach the queue
        return (listener, fillers);
    }

    [Fact]
    public void AConnectThatGetsNoAnswerEndsAtTheConnectTimeoutWithAClearError()
    {
        var (listener, fillers) = SilentListener();
        try
        {
            var port = ((IPEndPoint)listener.LocalEndPoint!).Port;
            var options = Quick with { ConnectTimeout = TimeSpan.FromMilliseconds(300) };
            var clock = Stopwatch.StartNew();
            var e = Assert.Throws<MigrationTransportException>(() =>
                new TcpMigrationConnector(new IPEndPoint(IPAddress.Loopback, port), options).Connect(1, CancellationToken.None));
            Assert.Equal($"control: no answer from 127.0.0.1:{port} within 0.3 s (connect timeout)", e.Message);
            Assert.InRange(clock.Elapsed, TimeSpan.FromMilliseconds(250), TimeSpan.FromSeconds(5));
        }
        finally
        {
            foreach (var f in fillers) f.Dispose();
            listener.Dispose();
        }
    }

    [Fact]
    public void APendingConnectHonoursTheCallersCancellation()
    {
        var (listener, fillers) = SilentListener();
        try
        {
            using var cancel = new CancellationTokenSource(TimeSpan.FromMilliseconds(200));
            var clock = Stopwatch.StartNew();
            Assert.ThrowsAny<OperationCanceledException>(() =>
                new TcpMigrationConnector(listener.LocalEndPoint!, Quick).Connect(1, cancel.Token));
            Assert.InRange(clock.Elapsed, TimeSpan.FromMilliseconds(150), TimeSpan.FromSeconds(4));
        }
        finally
        {
            foreach (var f in fillers) f.Dispose();
            listener.Dispose();
        }
    }

    [Theory]
    [InlineData(true)]   // the destination's accepted socket: a blocking fd
    [InlineData(false)]  // the source's connected socket: ConnectAsync left the fd non-blocking
    public unsafe void AScatterReceiveFillsEverySegmentInStreamOrderWithMoreSegmentsThanIovMax(bool atDestination)
    {
        using var listener = new TcpMigrationListener(new IPEndPoint(IPAddress.Loopback, 0), Quick);
        var (source, destination) = Open(listener, 1);
        using (source)
        using (destination)
        {
            var (from, to) = atDestination ? (source.Pages[0], destination.Pages[0]) : (destination.Pages[0], source.Pages[0]);
            // 3000 segments of 7 bytes (more than IOV_MAX, so several readv calls), scattered backwards over the
            // destination buffer: the stream's first 7 bytes land at the end.
            var data = new byte[3000 * 7];
            new Random(5).NextBytes(data);
            var landed = GC.AllocateArray<byte>(data.Length, pinned: true);
            nint start = (nint)Unsafe.AsPointer(ref landed[0]);
            var segments = Enumerable.Range(0, 3000).Select(i => new IoSegment(start + ((2999 - i) * 7), 7)).ToArray();
            var receive = Task.Run(() => to.ReceiveScatter(segments));
            from.Send(data.AsSpan(0, 10_000)); // in two pieces, the cut inside a segment
            Thread.Sleep(20);
            from.Send(data.AsSpan(10_000));
            receive.GetAwaiter().GetResult();
            for (int i = 0; i < 3000; i++)
                Assert.True(data.AsSpan(i * 7, 7).SequenceEqual(landed.AsSpan((2999 - i) * 7, 7)), $"segment {i}");
            Assert.Equal(data.Length, ((IByteCounter)to).BytesReceived);
        }
    }

    [Fact]
    public unsafe void AScatterReceiveReportsAPeerThatClosesMidwayAndAHungOneAfterTheTimeout()
    {
        var options = Quick with { ReceiveTimeout = TimeSpan.FromMilliseconds(200) };
        using var listener = new TcpMigrationListener(new IPEndPoint(IPAddress.Loopback, 0), options);
        var (source, destination) = Open(listener, 2, options);
        using (destination)
        {
            var buffer = GC.AllocateArray<byte>(200, pinned: true);
            nint at = (nint)Unsafe.AsPointer(ref buffer[0]);
            IoSegment[] segments = [new(at, 120), new(at + 120, 80)];

            var watch = Stopwatch.StartNew();
            var hung = Assert.Throws<MigrationTransportException>(() => destination.Pages[1].ReceiveScatter(segments));
            Assert.Contains("receive timeout", hung.Message, StringComparison.Ordinal);
            Assert.InRange(watch.Elapsed, TimeSpan.FromMilliseconds(150), TimeSpan.FromSeconds(5));
            var hungSource = Assert.Throws<MigrationTransportException>(() => source.Pages[1].ReceiveScatter(segments));
            Assert.Contains("receive timeout", hungSource.Message, StringComparison.Ordinal);

            source.Pages[0].Send(new byte[130]);
            source.Dispose();
            var closed = Assert.Throws<MigrationTransportException>(() => destination.Pages[0].ReceiveScatter(segments));
            Assert.Equal("pages-0: the peer closed the connection after 130 of 200 bytes", closed.Message);
            // The segments point into it: collected earlier (a pinned array is still collectable once unreferenced), a
            // receive found its memory gone ("readv failed: Bad address", once in a CI run).
            GC.KeepAlive(buffer);
        }
    }

    [Theory]
    [InlineData(true)]   // blocking fd
    [InlineData(false)]  // non-blocking fd (waits in poll)
    public unsafe void AbortingWakesAScatterReceive(bool atDestination)
    {
        using var listener = new TcpMigrationListener(new IPEndPoint(IPAddress.Loopback, 0), Quick);
        var (source, destination) = Open(listener, 1);
        using (source)
        using (destination)
        {
            var channel = atDestination ? destination.Pages[0] : source.Pages[0];
            var buffer = GC.AllocateArray<byte>(64, pinned: true);
            IoSegment[] segments = [new((nint)Unsafe.AsPointer(ref buffer[0]), 64)];
            var receive = Task.Run(() => channel.ReceiveScatter(segments));
            Thread.Sleep(50);
            channel.Abort();
            var e = Assert.Throws<MigrationTransportException>(() => receive.GetAwaiter().GetResult());
            Assert.Equal("pages-0: channel aborted", e.Message);
        }
    }

    [Fact]
    public void APeerClosingMidRecordIsAnErrorAndAtABoundaryACleanEnd()
    {
        using var listener = new TcpMigrationListener(new IPEndPoint(IPAddress.Loopback, 0), Quick);
        var (source, destination) = Open(listener, 1);
        using (destination)
        {
            source.Control.Send(new byte[5]);
            source.Pages[0].Send(new byte[8]);
            source.Dispose();
            var e = Assert.Throws<MigrationTransportException>(() => destination.Control.ReceiveExactly(new byte[10]));
            Assert.Equal("control: the peer closed the connection after 5 of 10 bytes", e.Message);
            Assert.True(destination.Pages[0].ReceiveExactly(new byte[8]));
            Assert.False(destination.Pages[0].ReceiveExactly(new byte[8]));
        }
    }

    [Fact]
    public void ASendToAPeerThatWentAwayFailsWithATransportError()
    {
        using var listener = new TcpMigrationListener(new IPEndPoint(IPAddress.Loopback, 0), Quick);
        var (source, destination) = Open(listener, 1);
        using (source)
        {
            destination.Dispose();
            var chunk = new byte[1 << 20];
            var e = Assert.Throws<MigrationTransportException>(() =>
            {
                for (int i = 0; i < 64; i++) source.Pages[0].Send(chunk); // the reset arrives within a few sends
            });
            Assert.StartsWith("pages-0: send failed:", e.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void AHungPeerIsDetectedByTheReceiveTimeout()
    {
        var options = Quick with { ReceiveTimeout = TimeSpan.FromMilliseconds(200) };
        using var listener = new TcpMigrationListener(new IPEndPoint(IPAddress.Loopback, 0), options);
        var (source, destination) = Open(listener, 1, options);
        using (source)
        using (destination)
        {
            var watch = Stopwatch.StartNew();
            var e = Assert.Throws<MigrationTransportException>(() => destination.Control.ReceiveExactly(new byte[1]));
            Assert.Contains("receive timeout", e.Message, StringComparison.Ordinal);
            Assert.InRange(watch.Elapsed, TimeSpan.FromMilliseconds(150), TimeSpan.FromSeconds(5));
            // The connecting side too (its connect was non-blocking; the fd is made blocking again after it).
            Assert.Contains("receive timeout", Assert.Throws<MigrationTransportException>(() => source.Pages[0].ReceiveExactly(new byte[1])).Message, StringComparison.Ordinal);
            // A wait for data (the urgent receiver's, with --fault-poll) times out as a receive does, once.
            using var wait = new Ferry.Linux.ReadinessWait();
            watch.Restart();
            e = Assert.Throws<MigrationTransportException>(() => ((IPollableChannel)destination.Control).WaitForData(wait));
            Assert.Contains("receive timeout", e.Message, StringComparison.Ordinal);
            Assert.InRange(watch.Elapsed, TimeSpan.FromMilliseconds(150), TimeSpan.FromSeconds(5));
        }
    }

    [Fact]
    public void AChannelToldToWaitWithoutTimeoutOutlastsTheReceiveTimeout()
    {
        var options = Quick with { ReceiveTimeout = TimeSpan.FromMilliseconds(200) };
        using var listener = new TcpMigrationListener(new IPEndPoint(IPAddress.Loopback, 0), options);
        var (source, destination) = Open(listener, 1, options);
        using (source)
        using (destination)
        {
            destination.Pages[0].ReceiveWithoutTimeout();
            var got = new byte[1];
            var receive = Task.Run(() => destination.Pages[0].ReceiveExactly(got));
            Assert.False(receive.Wait(TimeSpan.FromMilliseconds(800)), "the receive ended before any data came");
            source.Pages[0].Send([7]);
            Assert.True(receive.Wait(TimeSpan.FromSeconds(10)) && receive.Result);
            Assert.Equal(7, got[0]);
            // The other channels keep their timeout.
            Assert.Contains("receive timeout", Assert.Throws<MigrationTransportException>(() => destination.Control.ReceiveExactly(new byte[1])).Message, StringComparison.Ordinal);
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void ASenderWhosePeerStopsReadingFailsAfterTheSendTimeout(bool fromSource)
    {
        var options = Quick with { SendTimeout = TimeSpan.FromMilliseconds(300), PageSocketBufferBytes = 64 << 10 };
        using var listener = new TcpMigrationListener(new IPEndPoint(IPAddress.Loopback, 0), options);
        var (source, destination) = Open(listener, 1, options);
        using (source)
        using (destination)
        {
            var sender = fromSource ? source.Pages[0] : destination.Pages[0];
            var chunk = new byte[1 << 20];
            var watch = Stopwatch.StartNew();
            var e = Assert.Throws<MigrationTransportException>(() =>
            {
                for (int i = 0; i < 256; i++) sender.Send(chunk); // nobody reads: the socket buffers fill up
            });
            Assert.Contains("made no progress", e.Message, StringComparison.Ordinal);
            Assert.True(watch.Elapsed < TimeSpan.FromSeconds(5), $"{watch.Elapsed}");
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void AbortUnblocksAThreadBlockedInReceive(bool sourceSide)
    {
        using var listener = new TcpMigrationListener(new IPEndPoint(IPAddress.Loopback, 0), Quick);
        var (source, destination) = Open(listener, 1);
        using (source)
        using (destination)
        {
            var side = sourceSide ? source : destination;
            var blocked = Task.Run(() => side.Pages[0].ReceiveExactly(new byte[1]));
            Thread.Sleep(50);
            side.Abort();
            var e = Assert.Throws<MigrationTransportException>(() => blocked.GetAwaiter().GetResult());
            Assert.Equal("pages-0: channel aborted", e.Message);
        }
    }

    [Fact]
    public void EveryChannelWaitsInTheKernelNotThroughDotNetsSocketEngine()
    {
        // A non-blocking fd makes a receive wait through .NET's epoll thread (or a poll loop): a second wake-up on
        // the fault path. Both ends' fds must be blocking, the connecting side's too (its connect was non-blocking).
        using var listener = new TcpMigrationListener(new IPEndPoint(IPAddress.Loopback, 0), Quick);
        var (source, destination) = Open(listener, 2);
        using (source)
        using (destination)
        {
            foreach (var connection in new[] { source, destination })
            {
                foreach (var channel in new[] { connection.Control }.Concat(connection.Pages).Cast<TcpMigrationChannel>())
                {
                    string info = File.ReadAllText($"/proc/self/fdinfo/{channel.Handle}");
                    string flags = info.Split('\n').Single(l => l.StartsWith("flags:", StringComparison.Ordinal))["flags:".Length..].Trim();
                    Assert.True((Convert.ToInt32(flags, 8) & 0x800) == 0, $"{channel.Name}: O_NONBLOCK set (flags {flags})");
                }
            }
            // And a blocking receive still gets what is sent.
            source.Control.Send([42]);
            Assert.Equal([42], Receive(destination.Control, 1));
            destination.Control.Send([43]);
            Assert.Equal([43], Receive(source.Control, 1));
        }
    }

    [Fact]
    public void TheListenerGroupsTwoConcurrentSourcesCorrectly()
    {
        using var listener = new TcpMigrationListener(new IPEndPoint(IPAddress.Loopback, 0), Quick);
        using var start = new Barrier(2);
        var sources = Enumerable.Range(0, 2).Select(id => Task.Run(() =>
        {
            start.SignalAndWait();
            var c = new TcpMigrationConnector(listener.LocalEndPoint, Quick).Connect(3, CancellationToken.None);
            foreach (var ch in c.Pages.Prepend(c.Control)) ch.Send([(byte)id]);
            return c;
        })).ToArray();
        var accepted = new[] { listener.Accept(CancellationToken.None), listener.Accept(CancellationToken.None) };
        var ids = new List<byte>();
        foreach (var d in accepted)
        {
            byte id = Receive(d.Control, 1)[0];
            foreach (var p in d.Pages) Assert.Equal(id, Receive(p, 1)[0]); // every channel of a group is from one source
            ids.Add(id);
        }
        Assert.Equal(new byte[] { 0, 1 }, ids.Order().ToArray());
        foreach (var s in sources) s.Result.Dispose();
        foreach (var d in accepted) d.Dispose();
    }

    [Fact]
    public void AnIncompleteGroupTimesOutWithAClearErrorAndIsClosed()
    {
        var options = Quick with { GroupTimeout = TimeSpan.FromMilliseconds(300) };
        using var listener = new TcpMigrationListener(new IPEndPoint(IPAddress.Loopback, 0), options);
        using var raw = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        raw.Connect(listener.LocalEndPoint);
        var preamble = new byte[32];
        new TransportPreamble(Guid.NewGuid(), 0, 2).Write(preamble); // control of a 2-page-channel group, alone
        raw.Send(preamble);
        var e = Assert.Throws<MigrationTransportException>(() => listener.Accept(CancellationToken.None));
        Assert.Contains("only 1 of 3 channels (control + 2 page) arrived within 0.3 s; closed them", e.Message, StringComparison.Ordinal);
        raw.ReceiveTimeout = 2000;
        Assert.Equal(0, raw.Receive(new byte[1])); // the listener closed our connection
    }

    [Fact]
    public void StrayConnectionsNeitherDelayNorBreakARealSourceAndAreClosed()
    {
        var options = Quick with { GroupTimeout = TimeSpan.FromMilliseconds(800) };
        using var listener = new TcpMigrationListener(new IPEndPoint(IPAddress.Loopback, 0), options);
        using var silent = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        silent.Connect(listener.LocalEndPoint);
        silent.Send(Encoding.ASCII.GetBytes("GET / HTTP/1.1\r\n\r\n")); // 20 bytes: never a whole preamble
        using var garbage = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        garbage.Connect(listener.LocalEndPoint);
        garbage.Send(new byte[32]); // a whole preamble with the wrong magic
        var watch = Stopwatch.StartNew();
        var (source, destination) = Open(listener, 2, options);
        Assert.True(watch.Elapsed < options.GroupTimeout, $"a stray delayed the real source by {watch.Elapsed}");
        source.Dispose();
        destination.Dispose();
        garbage.ReceiveTimeout = 2000;
        Assert.Equal(0, garbage.Receive(new byte[1])); // closed at once
        using (var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(1500)))
            Assert.ThrowsAny<OperationCanceledException>(() => listener.Accept(cts.Token)); // meanwhile the silent one expires
        silent.ReceiveTimeout = 2000;
        Assert.Equal(0, silent.Receive(new byte[1]));
    }

    [Fact]
    public void AcceptHonoursCancellation()
    {
        using var listener = new TcpMigrationListener(new IPEndPoint(IPAddress.Loopback, 0), Quick);
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(100));
        Assert.ThrowsAny<OperationCanceledException>(() => listener.Accept(cts.Token));
    }
}
