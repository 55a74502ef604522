using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Ferry.Machine;
using Ferry.Machine.Tests;
using Ferry.Migration;
using Ferry.Migration.Guest;

namespace Ferry.Vm.Tests;

/// <summary>
/// One TCP connection to the Linux guest's echo server, kept busy across a live migration. In a network namespace the
/// test makes, a bridge stands for the L2 segment both hosts are on: the source machine's tap A and the destination's
/// tap B are its ports, the client is the bridge's own address (10.99.0.1), the guest is 10.99.0.2 and keeps its MAC.
/// </summary>
/// <remarks>
/// Tap B exists (persistent, on the bridge, no carrier) before the migration; the destination's card attaches to it,
/// inside the namespace (<see cref="InNamespaceFactory"/>). Until the bridge hears from the guest's MAC on B it keeps
/// sending the client's frames to A, where the paused source no longer reads: that is what the announce is for.
/// </remarks>
public sealed class NetworkMigrationTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Boot = TimeSpan.FromSeconds(120);
    private static readonly IPAddress Guest = IPAddress.Parse("10.99.0.2");
    private const string GuestMac = "52:54:00:12:34:56";
    private const string Bridge = "fbr0", TapA = "ftapa", TapB = "ftapb";
    private const string Cmdline = "console=ttyS0 ferry.heartbeat=0 ferry.ws=16M ferry.rate=2000 ferry.net=10.99.0.2/24";

    /// <remarks>In post-copy the card writes received frames into guest buffers that may not have arrived yet: its
    /// thread waits for each such page like a hart does, and the stream must not notice beyond a delay.</remarks>
    [Theory]
    [InlineData(MigrationMode.Precopy)]
    [InlineData(MigrationMode.Postcopy)]
    [InlineData(MigrationMode.Hybrid)]
    public void ATcpConnectionKeepsEchoingEveryMessageInOrderAcrossALiveMigrationAndTheGuestAnnouncesItsNewPort(MigrationMode mode) => OnSegment(g =>
    {
        using var stream = new EchoStream(g.Ns.ConnectTcp(Guest, 7));
        stream.WaitFor(50, "echoes before the migration");

        LoopbackVmMigration.Result r = Migrate(g, announce: true, mode);
        if (mode != MigrationMode.Precopy)
        {
            Assert.NotNull(r.Statistics.Postcopy);
            Assert.True(r.Statistics.Verify?.Match, "the guest's memory differs after post-copy");
        }
        long switchedOver = Stopwatch.GetTimestamp();
        VirtMachine arrived = Assert.IsType<VirtMachine>(g.Destination?.Machine);

        // The guest acks the announce, and the stream goes on from the destination while the source still exists.
        WaitUntil(() => arrived.Net!.AnnouncesAcked == 1, "the guest to ack the announce");
        stream.WaitFor(stream.Received + 50, "echoes after the migration");
        Assert.Contains($"dev {TapB}", FdbLine(g.Ns));
        long tapAFrames = TapPackets(g.Ns, TapA);
        stream.WaitFor(stream.Received + 25, "more echoes");
        Assert.Equal(tapAFrames, TapPackets(g.Ns, TapA)); // nothing for the guest goes out of tap A any more

        EchoStream.Summary s = stream.Stop();
        Report(r, s, switchedOver);
        Assert.Equal(s.Sent, s.Received);

        // The source's tap goes with the source.
        g.RemoveSource();
        Assert.Throws<InvalidOperationException>(() => g.Ns.Ip($"link show {TapA}"));
    });

    [Fact]
    public void WithoutTheAnnounceTheConnectionStillRecoversAtTheLatestWhenTheSourceTapGoes() => OnSegment(g =>
    {
        using var stream = new EchoStream(g.Ns.ConnectTcp(Guest, 7));
        stream.WaitFor(50, "echoes before the migration");

        LoopbackVmMigration.Result r = Migrate(g, announce: false);
        long switchedOver = Stopwatch.GetTimestamp();
        Assert.Equal(0, g.Destination!.Machine!.Net!.AnnouncesAcked);

        // The bridge sends the client's frames to tap A until the guest speaks from B. In a busy stream it soon does:
        // an echo whose ACK was lost on tap A is retransmitted when the guest's timer fires (200 ms and more).
        int atSwitchover = stream.Received;
        Thread.Sleep(3000);
        output.WriteLine($"echoes in the 3 s after the switchover, source's tap still there: {stream.Received - atSwitchover}; guest's MAC: {FdbLine(g.Ns)}");

        // Deleting tap A makes the bridge forget the MAC's port, at the latest: it floods, and B gets the frames.
        long removed = Stopwatch.GetTimestamp();
        g.RemoveSource();
        stream.WaitFor(stream.Received + 50, "echoes after the source's tap was removed");
        Assert.Contains($"dev {TapB}", FdbLine(g.Ns));

        EchoStream.Summary s = stream.Stop();
        Report(r, s, switchedOver);
        output.WriteLine($"first echo after the source's tap was removed: {s.FirstReceivedAfter(removed):F0} ms later");
        Assert.Equal(s.Sent, s.Received);
    });

    /// <summary>
    /// An idle connection: everything acked before the switchover, so the guest has no reason to speak afterwards, and
    /// without the announce the bridge keeps the client's next message on tap A until that tap goes away.
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void AnIdleConnectionReachesTheGuestOnTheDestinationThroughTheAnnounceOrOnceTheSourceTapIsGone(bool announce) => OnSegment(g =>
    {
        using Socket client = g.Ns.ConnectTcp(Guest, 7);
        using var stream = new NetworkStream(client, ownsSocket: false);
        byte[] message = [.. Enumerable.Range(0, 64).Select(i => (byte)i)];
        var echo = new byte[message.Length];
        client.Send(message);
        stream.ReadExactly(echo);
        Thread.Sleep(1000); // the guest's delayed ACK and anything else in flight are done

        Migrate(g, announce);

        long sent = Stopwatch.GetTimestamp();
        client.Send(message);
        // With the announce, room for a slow guest and the client's retransmissions (0.2, 0.6, 1.4, 3, 6.2 s).
        bool beforeRemoval = client.Poll(TimeSpan.FromSeconds(announce ? 15 : 3), SelectMode.SelectRead);
        double waited = Stopwatch.GetElapsedTime(sent).TotalMilliseconds;
        long removed = Stopwatch.GetTimestamp();
        g.RemoveSource();
        stream.ReadExactly(echo);
        Assert.Equal(message, echo);
        output.WriteLine(beforeRemoval
            ? $"announce {announce}: the first message after the switchover came back after {waited:F0} ms, with the source's tap still there"
            : $"announce {announce}: no echo in {waited:F0} ms while the source's tap was there; {Stopwatch.GetElapsedTime(removed).TotalMilliseconds:F0} ms after it was removed");
        if (announce) Assert.True(beforeRemoval, "with the announce the bridge should have sent the message to tap B");
    });

    /// <summary>Both machines of one test and the segment they are on.</summary>
    private sealed class Segment(NetworkNamespace ns)
    {
        public NetworkNamespace Ns => ns;
        public SerialLog SourceConsole { get; } = new();
        public SerialLog DestinationConsole { get; } = new();
        public VirtMachine? Source { get; set; }
        public VirtMachineTarget? Destination { get; set; }

        /// <summary>Dispose the source machine, which deletes its tap A.</summary>
        public void RemoveSource()
        {
            Source?.Dispose();
            Source = null;
        }
    }

    /// <summary>
    /// Run <paramref name="test"/> with the source booted on a fresh segment; afterwards both machines are disposed,
    /// the namespace deleted, and no thread may be left in it.
    /// </summary>
    private static void OnSegment(Action<Segment> test)
    {
        using NetworkNamespace ns = MakeSegment();
        var g = new Segment(ns);
        try
        {
            g.Source = BootSource(ns, g.SourceConsole);
            test(g);
        }
        finally
        {
            g.RemoveSource();
            g.Destination?.Dispose();
        }
        Assert.Empty(ns.ThreadsInside(TimeSpan.FromSeconds(10)));
    }

    /// <summary>A namespace with a bridge (the client's address) and tap B on it, waiting for the destination.</summary>
    private static NetworkNamespace MakeSegment()
    {
        NetworkNamespace ns = NetworkNamespace.Create();
        try
        {
            // No STP, no forwarding delay: a port forwards as soon as its tap has a reader.
            ns.Ip($"link add {Bridge} type bridge stp_state 0 forward_delay 0");
            ns.Ip($"addr add 10.99.0.1/24 dev {Bridge}");
            ns.Ip($"link set {Bridge} up");
            ns.Ip($"tuntap add dev {TapB} mode tap");
            ns.Ip($"link set {TapB} master {Bridge} up");
            return ns;
        }
        catch
        {
            ns.Dispose();
            throw;
        }
    }

    /// <summary>The source: its tap A made by the machine inside the namespace, then put on the bridge.</summary>
    private static VirtMachine BootSource(NetworkNamespace ns, SerialLog console)
    {
        VirtMachine m = LinuxGuest.Boot(console, Cmdline, tap: TapA, build: o => ns.Inside(() => new VirtMachine(o)));
        try
        {
            ns.Ip($"link set {TapA} master {Bridge} up");
            console.WaitFor("net: eth0 10.99.0.2/24 up", Boot);
            return m;
        }
        catch
        {
            m.Dispose();
            throw;
        }
    }

    /// <summary>Migrate the source to a destination on tap B; the migration must complete.</summary>
    private LoopbackVmMigration.Result Migrate(Segment g, bool announce, MigrationMode mode = MigrationMode.Precopy)
    {
        var inner = new VirtMachineTargetFactory { Options = new MachineOptions { SerialOut = g.DestinationConsole, TapName = TapB } };
        var factory = new InNamespaceFactory(inner, g.Ns, m => m.Net!.AnnounceAfterLoad = announce);
        var options = new MigrationOptions { Timeout = TimeSpan.FromSeconds(120), Mode = mode, Verify = mode != MigrationMode.Precopy };
        LoopbackVmMigration.Result r = LoopbackVmMigration.Run(g.Source!, factory, options);
        g.Destination = r.Destination;
        foreach (string line in LoopbackVmMigration.Describe(r)) output.WriteLine(line);
        Assert.Equal(MigrationStatus.Completed, r.Statistics.Status);
        return r;
    }

    private void Report(LoopbackVmMigration.Result r, EchoStream.Summary s, long switchedOver)
    {
        output.WriteLine($"{s.Sent} messages sent, {s.Received} echoed in order; downtime {r.Statistics.DowntimeMs:F1} ms; " +
            $"longest echo {s.LongestEchoMs:F0} ms (message {s.LongestEchoSeq}), longest gap between echoes {s.LongestGapMs:F0} ms, " +
            $"median echo {s.MedianEchoMs:F2} ms; first echo sent after the switchover came back {s.FirstEchoOfMessageSentAfter(switchedOver):F0} ms after it was sent");
    }

    /// <summary>The bridge's forwarding entry for the guest's MAC (empty if it has none).</summary>
    private static string FdbLine(NetworkNamespace ns) =>
        ns.Bridge($"fdb show br {Bridge}").Split('\n').FirstOrDefault(l => l.StartsWith(GuestMac, StringComparison.Ordinal) && l.Contains(" master ", StringComparison.Ordinal)) ?? "";

    /// <summary>Frames the host sent out of a tap towards its machine (the tap's transmit count).</summary>
    private static long TapPackets(NetworkNamespace ns, string tap)
    {
        using JsonDocument doc = JsonDocument.Parse(ns.Ip($"-j -s link show {tap}"));
        return doc.RootElement[0].GetProperty("stats64").GetProperty("tx").GetProperty("packets").GetInt64();
    }

    private static void WaitUntil(Func<bool> condition, string what)
    {
        var deadline = Stopwatch.StartNew();
        while (!condition())
        {
            if (deadline.Elapsed > TimeSpan.FromSeconds(60)) throw new TimeoutException($"waited 60 s for {what}");
            Thread.Sleep(10);
        }
    }

    /// <summary>
    /// A client that sends a 64-byte message every 20 ms on one connection (its own thread) and reads the echoes on
    /// another, checking each is the next in sequence and unchanged.
    /// </summary>
    private sealed class EchoStream : IDisposable
    {
        private const int Size = 64;
        private static readonly TimeSpan Period = TimeSpan.FromMilliseconds(20);
        private readonly Socket socket;
        private readonly Thread sender, receiver;
        private readonly object gate = new();
        // Per message: when it was sent and when its echo came back (Stopwatch timestamps), under gate.
        private readonly List<long> sentAt = [], echoedAt = [];
        private volatile bool stopping;
        private Exception? failure;

        public EchoStream(Socket socket)
        {
            this.socket = socket;
            sender = new Thread(Send) { IsBackground = true, Name = "echo sender" };
            receiver = new Thread(Receive) { IsBackground = true, Name = "echo receiver" };
            receiver.Start();
            sender.Start();
        }

        public int Received
        {
            get { lock (gate) return echoedAt.Count; }
        }

        /// <summary>Wait (up to 60 s) until <paramref name="count"/> echoes have come back.</summary>
        public void WaitFor(int count, string what)
        {
            var deadline = Stopwatch.StartNew();
            lock (gate)
            {
                while (echoedAt.Count < count)
                {
                    if (failure is not null) throw new InvalidOperationException($"the echo stream failed: {failure.Message}", failure);
                    TimeSpan left = TimeSpan.FromSeconds(60) - deadline.Elapsed;
                    if (left <= TimeSpan.Zero) throw new TimeoutException($"{echoedAt.Count} of {count} {what} after 60 s ({sentAt.Count} sent)");
                    Monitor.Wait(gate, left);
                }
            }
        }

        public sealed record Summary(int Sent, int Received, double LongestEchoMs, int LongestEchoSeq, double LongestGapMs, double MedianEchoMs, long[] SentAt, long[] EchoedAt)
        {
            /// <summary>How long the echo of the first message sent after <paramref name="t"/> took.</summary>
            public double FirstEchoOfMessageSentAfter(long t)
            {
                int i = Array.FindIndex(SentAt, s => s >= t);
                return i < 0 ? double.NaN : Stopwatch.GetElapsedTime(SentAt[i], EchoedAt[i]).TotalMilliseconds;
            }

            /// <summary>Time from <paramref name="t"/> to the first echo after it.</summary>
            public double FirstReceivedAfter(long t)
            {
                int i = Array.FindIndex(EchoedAt, e => e >= t);
                return i < 0 ? double.NaN : Stopwatch.GetElapsedTime(t, EchoedAt[i]).TotalMilliseconds;
            }
        }

        /// <summary>Stop sending, wait for every echo, and summarize.</summary>
        public Summary Stop()
        {
            stopping = true;
            sender.Join();
            int sent;
            lock (gate) sent = sentAt.Count;
            WaitFor(sent, "echoes of the last messages");
            lock (gate)
            {
                var echo = new double[sent];
                double gap = 0;
                for (int i = 0; i < sent; i++)
                {
                    echo[i] = Stopwatch.GetElapsedTime(sentAt[i], echoedAt[i]).TotalMilliseconds;
                    if (i > 0) gap = Math.Max(gap, Stopwatch.GetElapsedTime(echoedAt[i - 1], echoedAt[i]).TotalMilliseconds);
                }
                int longest = Array.IndexOf(echo, echo.Max());
                double[] sorted = [.. echo.Order()];
                return new Summary(sent, echoedAt.Count, echo[longest], longest, gap, sorted[sent / 2], [.. sentAt], [.. echoedAt]);
            }
        }

        private void Send()
        {
            var message = new byte[Size];
            long start = Stopwatch.GetTimestamp();
            try
            {
                for (int seq = 0; !stopping; seq++)
                {
                    Fill(message, seq);
                    lock (gate) sentAt.Add(Stopwatch.GetTimestamp());
                    socket.Send(message);
                    // Absolute deadlines: a late wake-up does not slow the stream down.
                    TimeSpan wait = Period * (seq + 1) - Stopwatch.GetElapsedTime(start);
                    if (wait > TimeSpan.Zero) Thread.Sleep(wait);
                }
            }
            catch (Exception e)
            {
                Fail(e);
            }
        }

        private void Receive()
        {
            var got = new byte[Size];
            var want = new byte[Size];
            try
            {
                using var stream = new NetworkStream(socket, ownsSocket: false);
                for (int seq = 0; ; seq++)
                {
                    stream.ReadExactly(got);
                    Fill(want, seq);
                    if (!got.AsSpan().SequenceEqual(want))
                    {
                        throw new InvalidDataException($"echo {seq} is not message {seq}: it carries sequence number {BinaryPrimitives.ReadInt32LittleEndian(got)}");
                    }
                    lock (gate)
                    {
                        echoedAt.Add(Stopwatch.GetTimestamp());
                        Monitor.PulseAll(gate);
                    }
                }
            }
            catch (Exception e) when (!stopping || e is InvalidDataException)
            {
                Fail(e);
            }
            catch (Exception)
            {
                // The socket was closed by Dispose.
            }
        }

        private static void Fill(byte[] message, int seq)
        {
            BinaryPrimitives.WriteInt32LittleEndian(message, seq);
            for (int i = 4; i < message.Length; i++) message[i] = (byte)(seq * 7 + i);
        }

        private void Fail(Exception e)
        {
            lock (gate)
            {
                failure ??= e;
                Monitor.PulseAll(gate);
            }
        }

        public void Dispose()
        {
            stopping = true;
            socket.Dispose();
            sender.Join();
            receiver.Join();
        }
    }

    /// <summary>
    /// Builds the destination inside the namespace, so its tap (B) is the namespace's: the target's creation and its
    /// state load run there (either may build the board and open the tap); <paramref name="loaded"/> sees the
    /// machine after the load, before it starts.
    /// </summary>
    private sealed class InNamespaceFactory(VirtMachineTargetFactory inner, NetworkNamespace ns, Action<VirtMachine> loaded) : IMigrationTargetFactory
    {
        public IMigrationTarget Create(Guid vmId, IReadOnlyList<(ulong GuestPhysicalAddress, ulong Size)> regions) =>
            new Target((VirtMachineTarget)ns.Inside(() => inner.Create(vmId, regions)), ns, loaded);

        private sealed class Target(VirtMachineTarget target, NetworkNamespace ns, Action<VirtMachine> loaded) : IMigrationTarget, IPostcopyTarget, LoopbackVmMigration.IWrappedTarget
        {
            public VirtMachineTarget Inner => target;

            public IPostcopyMemory BeginPostcopy(IReadOnlyList<Ferry.Migration.Memory.DirtyBitmap> missing, IPageFaultSink sink) =>
                target.BeginPostcopy(missing, sink);

            public void PreparePostcopy(TimeSpan budget, IReadOnlyList<Ferry.Migration.Memory.DirtyBitmap>? holdsData, CancellationToken stop) =>
                target.PreparePostcopy(budget, holdsData, stop);

            public IReadOnlyList<MemoryRegion> Regions => target.Regions;

            public bool TransparentHugePages => ((IMigrationTarget)target).TransparentHugePages;

            public void LoadState(IReadOnlyList<StateSection> sections)
            {
                ns.Inside(() =>
                {
                    target.LoadState(sections);
                    return 0;
                });
                loaded(target.Machine!);
            }

            public void Start() => target.Start();

            public void Dispose() => target.Dispose();
        }
    }
}
