using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace Ferry.Machine.Tests;

/// <summary>
/// The built-in Linux guest's network through a real tap: the machine's virtio-net card on a tap created in a network
/// namespace the test makes (<see cref="NetworkNamespace"/>), with the host's end at 10.99.0.1 and the guest at
/// 10.99.0.2; nothing leaves the namespace.
/// </summary>
public sealed class NetworkTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Boot = TimeSpan.FromSeconds(120);
    private static readonly IPAddress Guest = IPAddress.Parse("10.99.0.2");
    private const string Tap = "ftap0";

    [Fact]
    public void TheGuestAnswersPingAndItsEchoServerReturnsEveryByteThroughATapInATestMadeNamespace()
    {
        using NetworkNamespace ns = NetworkNamespace.Create();
        var console = new SerialLog();
        using (VirtMachine m = LinuxGuest.Boot(console, "console=ttyS0 ferry.heartbeat=0 ferry.rate=0 ferry.net=10.99.0.2/24", tap: Tap,
            build: o => ns.Inside(() => new VirtMachine(o))))
        {
            ns.Ip($"addr add 10.99.0.1/24 dev {Tap}");
            ns.Ip($"link set {Tap} up");
            console.WaitFor("net: eth0 10.99.0.2/24 up", Boot);

            // ICMP echo from the namespace: the guest's kernel answers on its own.
            using (Socket icmp = ns.Inside(() => new Socket(AddressFamily.InterNetwork, SocketType.Raw, ProtocolType.Icmp) { ReceiveTimeout = 10_000 }))
            {
                var pings = new List<double>();
                for (ushort seq = 1; seq <= 5; seq++) pings.Add(Ping(icmp, Guest, seq).TotalMilliseconds);
                output.WriteLine($"ping 10.99.0.2: {string.Join(", ", pings.Select(p => $"{p:F2}"))} ms");
            }

            // Frames sent before the tap was up, or arriving before the driver ran, are dropped; none after.
            long dropped = m.Net!.DroppedFrames;
            using Socket client = ns.ConnectTcp(Guest, 7);
            foreach (int size in new[] { 1, 2, 100, 1448, 1449, 4096, 16384, 16385, 65536 })
            {
                byte[] sent = Pattern(size, (byte)size);
                byte[] got = RoundTrip(client, sent);
                Assert.True(sent.AsSpan().SequenceEqual(got), $"the echo of {size} bytes differs from what was sent");
            }
            var rtts = new List<double>();
            byte[] small = Pattern(64, 7);
            for (int i = 0; i < 200; i++)
            {
                long t = Stopwatch.GetTimestamp();
                Assert.True(small.AsSpan().SequenceEqual(RoundTrip(client, small)));
                rtts.Add(Stopwatch.GetElapsedTime(t).TotalMilliseconds);
            }
            rtts.Sort();
            output.WriteLine($"64-byte echo round trip over 200: median {rtts[100]:F2} ms, p90 {rtts[180]:F2} ms, max {rtts[^1]:F2} ms");

            LinuxGuest.Type(m, "status");
            int at = console.WaitFor("conns=1 ", TimeSpan.FromSeconds(30));
            output.WriteLine(console.Text[console.Text.LastIndexOf("status", at, StringComparison.Ordinal)..].Split('\n')[0]);
            output.WriteLine($"frames dropped while booting: {dropped}");
            Assert.Equal(dropped, m.Net.DroppedFrames);
        }
        Assert.Empty(ns.ThreadsInside(TimeSpan.FromSeconds(10)));
    }

    private static byte[] Pattern(int length, byte seed)
    {
        var b = new byte[length];
        for (int i = 0; i < length; i++) b[i] = (byte)(seed + i * 31 + (i >> 8));
        return b;
    }

    /// <summary>Send <paramref name="data"/> and read back as many bytes (the reader runs alongside: the echo comes back while the rest is sent).</summary>
    private static byte[] RoundTrip(Socket s, byte[] data)
    {
        Task send = Task.Run(() => s.Send(data));
        var got = new byte[data.Length];
        using (var stream = new NetworkStream(s, ownsSocket: false)) stream.ReadExactly(got);
        send.GetAwaiter().GetResult();
        return got;
    }

    /// <summary>One ICMP echo request on a raw socket; the time until its reply (throws on a timeout).</summary>
    private static TimeSpan Ping(Socket raw, IPAddress to, ushort seq)
    {
        const ushort id = 0x4652;
        var request = new byte[8 + 32];
        request[0] = 8; // echo request
        BinaryPrimitives.WriteUInt16BigEndian(request.AsSpan(4), id);
        BinaryPrimitives.WriteUInt16BigEndian(request.AsSpan(6), seq);
        Pattern(32, (byte)seq).CopyTo(request, 8);
        BinaryPrimitives.WriteUInt16BigEndian(request.AsSpan(2), Checksum(request));
        long t = Stopwatch.GetTimestamp();
        raw.SendTo(request, new IPEndPoint(to, 0));
        var reply = new byte[1500];
        while (true)
        {
            EndPoint from = new IPEndPoint(IPAddress.Any, 0);
            int n = raw.ReceiveFrom(reply, ref from);
            int ip = (reply[0] & 0xf) * 4; // a raw IPv4 socket receives the IP header too
            if (n >= ip + 8 + 32 && reply[ip] == 0 && BinaryPrimitives.ReadUInt16BigEndian(reply.AsSpan(ip + 4)) == id
                && BinaryPrimitives.ReadUInt16BigEndian(reply.AsSpan(ip + 6)) == seq)
            {
                Assert.True(reply.AsSpan(ip + 8, 32).SequenceEqual(request.AsSpan(8)), "the ping's payload came back changed");
                return Stopwatch.GetElapsedTime(t);
            }
        }
    }

    private static ushort Checksum(ReadOnlySpan<byte> data)
    {
        uint sum = 0;
        for (int i = 0; i + 1 < data.Length; i += 2) sum += BinaryPrimitives.ReadUInt16BigEndian(data[i..]);
        if ((data.Length & 1) != 0) sum += (uint)data[^1] << 8;
        while (sum > 0xffff) sum = (sum & 0xffff) + (sum >> 16);
        return (ushort)~sum;
    }
}
