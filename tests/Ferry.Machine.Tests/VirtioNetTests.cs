using System.Buffers.Binary;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Ferry.Machine.Virtio;
using Microsoft.Win32.SafeHandles;
using static Ferry.Machine.Tests.VirtioDriverForTests;
using static Ferry.Machine.Virtio.VirtioNet;

namespace Ferry.Machine.Tests;

/// <summary>
/// virtio-net: header handling and queues over a datagram socket pair standing in for the tap (one frame per
/// message), and one end-to-end test through a real tap device when running as root.
/// </summary>
public sealed partial class VirtioNetTests : IDisposable
{
    private static readonly byte[] Mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    private readonly Socket peer;
    private readonly VirtioDriverForTests d;

    public VirtioNetTests()
    {
        (SafeFileHandle card, peer) = SocketPair();
        d = new VirtioDriverForTests(new VirtioNet(card, Mac));
    }

    /// <summary>A datagram socket pair: the card's end (its back-end), and the peer's.</summary>
    private static unsafe (SafeFileHandle Card, Socket Peer) SocketPair()
    {
        int* sv = stackalloc int[2];
        if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv) != 0) throw new InvalidOperationException($"socketpair: errno {Marshal.GetLastPInvokeError()}");
        return (new SafeFileHandle(sv[0], ownsHandle: true), new Socket(new SafeSocketHandle(sv[1], ownsHandle: true)) { ReceiveTimeout = 10_000 });
    }

    [Fact]
    public void AFrameThatArrivesBeforeTheCardIsOnItsTransportIsDropped()
    {
        // The receive thread runs from the card's construction; the board attaches the queues after. A frame in between
        // (a broadcast on the tap's bridge) found no receive queue: the thread ended with a null reference, and the
        // process with it.
        (SafeFileHandle card, Socket other) = SocketPair();
        using var _ = other;
        using var net = new VirtioNet(card, Mac);
        other.Send(Frame(60, 1));
        Assert.True(SpinWait.SpinUntil(() => net.DroppedFrames == 1, TimeSpan.FromSeconds(10)), "the frame was not dropped");
    }

    public void Dispose()
    {
        d.Dispose();
        peer.Dispose();
    }

    private VirtioNet Net => (VirtioNet)d.Device!;

    private static byte[] Frame(int length, byte seed)
    {
        var f = new byte[length];
        for (int i = 0; i < length; i++) f[i] = (byte)(seed + i);
        return f;
    }

    [Fact]
    public void TheMacAndALinkThatIsUpAreInConfigurationSpaceWithTheAnnounceFeatures()
    {
        for (int i = 0; i < 6; i++) Assert.Equal(Mac[i], (byte)d.Mmio.Read((ulong)(VirtioMmio.VIRTIO_MMIO_CONFIG + i), 1));
        Assert.Equal(VIRTIO_NET_S_LINK_UP, Status());
        d.SetReg(VirtioMmio.VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        uint expected = (1u << VIRTIO_NET_F_MAC) | (1u << VIRTIO_NET_F_STATUS) | (1u << VIRTIO_NET_F_CTRL_VQ) | (1u << VIRTIO_NET_F_GUEST_ANNOUNCE) | (3u << 28);
        Assert.Equal(expected, d.Reg(VirtioMmio.VIRTIO_MMIO_DEVICE_FEATURES));
        Assert.Equal(VIRTIO_ID_NET, d.Reg(VirtioMmio.VIRTIO_MMIO_DEVICE_ID));
    }

    private static readonly ulong AnnounceFeatures = AllRingFeatures | VirtioFeatures.Bit(VIRTIO_NET_F_MAC) | VirtioFeatures.Bit(VIRTIO_NET_F_STATUS)
        | VirtioFeatures.Bit(VIRTIO_NET_F_CTRL_VQ) | VirtioFeatures.Bit(VIRTIO_NET_F_GUEST_ANNOUNCE);

    private ushort Status() => (ushort)d.Mmio.Read(VirtioMmio.VIRTIO_MMIO_CONFIG + 6, 2);

    /// <summary>The device's state loaded back as a migration's destination does: devices paused, loaded, resumed.</summary>
    private void Arrive()
    {
        d.Mmio.Pause();
        d.Mmio.LoadState(d.Mmio.SaveState());
        d.Mmio.Resume();
    }

    /// <summary>Send control command (class, command) as Linux does: header, then a writable ack byte; returns the ack.</summary>
    private byte Command(byte cls, byte cmd)
    {
        ulong ack = d.Alloc(1, fill: 0xff);
        int before = d.UsedIdx(ControlQueue);
        d.Post(ControlQueue, new Buf(d.Put([cls, cmd]), 2), new Buf(ack, 1, Write: true));
        d.Kick(ControlQueue);
        Assert.Equal(before + 1, d.UsedIdx(ControlQueue));
        Assert.Equal(1u, d.UsedElem(ControlQueue, before).Length);
        return d.Get(ack, 1)[0];
    }

    [Fact]
    public void AfterItsStateIsLoadedTheDeviceAsksTheGuestToAnnounceAndTheAckClearsTheRequest()
    {
        Assert.True(d.Start(AnnounceFeatures));
        d.Ack();

        Arrive();

        Assert.Equal(VIRTIO_NET_S_LINK_UP | VIRTIO_NET_S_ANNOUNCE, Status());
        Assert.Equal(VirtioFeatures.VIRTIO_MMIO_INT_CONFIG, d.Reg(VirtioMmio.VIRTIO_MMIO_INTERRUPT_STATUS) & VirtioFeatures.VIRTIO_MMIO_INT_CONFIG);
        Assert.Equal(VIRTIO_NET_OK, Command(VIRTIO_NET_CTRL_ANNOUNCE, VIRTIO_NET_CTRL_ANNOUNCE_ACK));
        Assert.Equal(VIRTIO_NET_S_LINK_UP, Status());
        Assert.Equal(1, Net.AnnouncesAcked);

        // Asked once per arrival: a second ack, and any other command, is refused.
        Assert.Equal(VIRTIO_NET_ERR, Command(VIRTIO_NET_CTRL_ANNOUNCE, VIRTIO_NET_CTRL_ANNOUNCE_ACK));
        Assert.Equal(VIRTIO_NET_ERR, Command(0, 0)); // VIRTIO_NET_CTRL_RX_PROMISC: CTRL_RX is not offered
        Assert.Equal(1, Net.AnnouncesAcked);
    }

    [Fact]
    public void ADriverWithoutGuestAnnounceOrADeviceToldNotToIsNotAskedToAnnounce()
    {
        Assert.True(d.Start(AnnounceFeatures & ~VirtioFeatures.Bit(VIRTIO_NET_F_GUEST_ANNOUNCE)));
        d.Ack();
        Arrive();
        Assert.Equal(VIRTIO_NET_S_LINK_UP, Status());
        Assert.Equal(0u, d.Reg(VirtioMmio.VIRTIO_MMIO_INTERRUPT_STATUS) & VirtioFeatures.VIRTIO_MMIO_INT_CONFIG);

        Assert.True(d.Start(AnnounceFeatures));
        d.Ack();
        Net.AnnounceAfterLoad = false;
        Arrive();
        Assert.Equal(VIRTIO_NET_S_LINK_UP, Status());
        Assert.Equal(0u, d.Reg(VirtioMmio.VIRTIO_MMIO_INTERRUPT_STATUS) & VirtioFeatures.VIRTIO_MMIO_INT_CONFIG);
    }

    [Fact]
    public void AResetForgetsAPendingAnnounce()
    {
        Assert.True(d.Start(AnnounceFeatures));
        Arrive();
        Assert.Equal(VIRTIO_NET_S_LINK_UP | VIRTIO_NET_S_ANNOUNCE, Status());

        Assert.True(d.Start(AnnounceFeatures));

        Assert.Equal(VIRTIO_NET_S_LINK_UP, Status());
    }

    [Fact]
    public void TransmitStripsTheHeaderAndSendsTheFrameInOneMessage()
    {
        Assert.True(d.Start(AllRingFeatures | VirtioFeatures.Bit(VIRTIO_NET_F_MAC)));
        byte[] frame = Frame(60, 1);
        ulong header = d.Alloc(HeaderSize, fill: 0xaa);

        d.Post(TransmitQueue, new Buf(header, HeaderSize), new Buf(d.Put(frame.AsSpan(0, 20)), 20), new Buf(d.Put(frame.AsSpan(20)), 40));
        d.Kick(TransmitQueue);

        var got = new byte[2048];
        int n = peer.Receive(got);
        Assert.Equal(frame, got[..n]);
        Assert.Equal(1, d.UsedIdx(TransmitQueue));
        Assert.Equal(0u, d.UsedElem(TransmitQueue, 0).Length);
        Assert.True(d.Line);
    }

    [Fact]
    public void ReceivePrependsAZeroedHeaderWithOneBuffer()
    {
        Assert.True(d.Start(AllRingFeatures));
        ulong buf = d.Alloc(1526, fill: 0xcc);
        d.Post(ReceiveQueue, new Buf(buf, 1526, Write: true));
        d.Kick(ReceiveQueue);
        byte[] frame = Frame(100, 7);

        peer.Send(frame);
        d.WaitUsed(ReceiveQueue, 1);

        Assert.Equal((uint)(HeaderSize + 100), d.UsedElem(ReceiveQueue, 0).Length);
        byte[] header = d.Get(buf, HeaderSize);
        Assert.Equal(1, BinaryPrimitives.ReadUInt16LittleEndian(header.AsSpan(10)));
        Assert.All(header[..10], b => Assert.Equal(0, b));
        Assert.Equal(frame, d.Get(buf + HeaderSize, 100));
        Assert.True(d.Line);
    }

    [Fact]
    public void AFrameWaitsForAReceiveBufferAndTheNextFramesQueueBehindIt()
    {
        Assert.True(d.Start(AllRingFeatures));
        peer.Send(Frame(80, 1));
        peer.Send(Frame(90, 2));
        Thread.Sleep(50);
        Assert.Equal(0, d.UsedIdx(ReceiveQueue));

        ulong a = d.Alloc(1526), b = d.Alloc(1526);
        d.Post(ReceiveQueue, new Buf(a, 1526, Write: true));
        d.Post(ReceiveQueue, new Buf(b, 1526, Write: true));
        d.Kick(ReceiveQueue);
        d.WaitUsed(ReceiveQueue, 2);

        Assert.Equal(Frame(80, 1), d.Get(a + HeaderSize, 80));
        Assert.Equal(Frame(90, 2), d.Get(b + HeaderSize, 90));
        Assert.Equal(0, Net.DroppedFrames);
    }

    [Fact]
    public void FramesArrivingBeforeTheDriverRunsAreDropped()
    {
        peer.Send(Frame(60, 3));

        VirtioDriverForTests.WaitFor(() => Net.DroppedFrames == 1, "the frame to be dropped");
        Assert.True(d.Start(AllRingFeatures));
        ulong a = d.Alloc(1526);
        d.Post(ReceiveQueue, new Buf(a, 1526, Write: true));
        d.Kick(ReceiveQueue);
        peer.Send(Frame(70, 4));
        d.WaitUsed(ReceiveQueue, 1);
        Assert.Equal(Frame(70, 4), d.Get(a + HeaderSize, 70));
    }

    [Fact]
    public void AFrameTooBigForTheBufferReturnsTheBufferEmpty()
    {
        Assert.True(d.Start(AllRingFeatures));
        d.Post(ReceiveQueue, new Buf(d.Alloc(64), 64, Write: true));
        d.Kick(ReceiveQueue);

        peer.Send(Frame(200, 5));
        d.WaitUsed(ReceiveQueue, 1);

        Assert.Equal(0u, d.UsedElem(ReceiveQueue, 0).Length);
        Assert.Equal(1, Net.DroppedFrames);
    }

    [Fact]
    public void ATransmitChainShorterThanItsHeaderNeedsAReset() =>
        AssertABrokenChainNeedsAReset(AllRingFeatures, TransmitQueue, () => new Buf(d.Alloc(8), 8));

    [Fact]
    public void AControlChainWithoutItsAckByteNeedsAReset() =>
        AssertABrokenChainNeedsAReset(AnnounceFeatures, ControlQueue, () => new Buf(d.Put([VIRTIO_NET_CTRL_ANNOUNCE, VIRTIO_NET_CTRL_ANNOUNCE_ACK]), 2));

    [Fact]
    public void AReceiveBufferTheDeviceCannotWriteNeedsAReset() =>
        AssertABrokenChainNeedsAReset(AllRingFeatures, ReceiveQueue, () => new Buf(d.Alloc(1526), 1526), () => peer.Send(Frame(60, 3)));

    /// <summary>
    /// Start the driver with <paramref name="features"/>, post the one-buffer chain <paramref name="buffer"/> on
    /// <paramref name="queue"/>, kick it (then <paramref name="then"/>): the device asks for a reset and uses nothing.
    /// </summary>
    private void AssertABrokenChainNeedsAReset(ulong features, int queue, Func<Buf> buffer, Action? then = null)
    {
        Assert.True(d.Start(features));
        d.Post(queue, buffer());
        d.Kick(queue);
        then?.Invoke();
        Assert.True(SpinWait.SpinUntil(() => d.NeedsReset, TimeSpan.FromSeconds(10)), "the device did not ask for a reset");
        Assert.Equal(0, d.UsedIdx(queue));
    }

    [Fact]
    public void StateCarriesTheMac()
    {
        byte[] state = Net.SaveState();
        using var other = new VirtioNet(null, [0x02, 0, 0, 0, 0, 1]);

        other.LoadState(state);

        Assert.Equal(Mac, other.MacAddress.ToArray());
    }

    [Fact]
    public void ArpThroughARealTapIsAnswered()
    {
        // The tap and its address live in a namespace of the test's own, deleted at the end.
        using NetworkNamespace ns = NetworkNamespace.Create();
        const string name = "ftap0";
        const byte subnet = 1;
        using var tap = new VirtioDriverForTests(ns.Inside(() => VirtioNet.OpenTap(name, Mac)));
        ns.Ip($"addr add 10.213.{subnet}.1/24 dev {name}");
        ns.Ip($"link set {name} up");
        Assert.True(tap.Start(AllRingFeatures | VirtioFeatures.Bit(VIRTIO_NET_F_MAC), queueSize: 64));
        var rx = new List<ulong>();
        for (int i = 0; i < 32; i++)
        {
            ulong b = tap.Alloc(1526);
            rx.Add(b);
            tap.Post(ReceiveQueue, new Buf(b, 1526, Write: true));
        }
        tap.Kick(ReceiveQueue);

        // Who has 10.213.<subnet>.1? Tell 10.213.<subnet>.2.
        byte[] arp = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, .. Mac, 0x08, 0x06,
            0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01, .. Mac, 10, 213, subnet, 2,
            0, 0, 0, 0, 0, 0, 10, 213, subnet, 1];
        tap.Post(TransmitQueue, new Buf(tap.Alloc(HeaderSize), HeaderSize), new Buf(tap.Put(arp), (uint)arp.Length));
        tap.Kick(TransmitQueue);

        // The kernel may send IPv6 neighbour discovery first; look through what arrives for the ARP reply.
        bool answered = false;
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        int seen = 0;
        while (!answered && DateTime.UtcNow < deadline)
        {
            for (; seen < tap.UsedIdx(ReceiveQueue); seen++)
            {
                (uint id, uint length) = tap.UsedElem(ReceiveQueue, seen);
                byte[] f = tap.Get(rx[(int)id], (int)length)[HeaderSize..];
                answered |= f.Length >= 42 && f[12] == 0x08 && f[13] == 0x06 && f[21] == 2 && f.AsSpan(0, 6).SequenceEqual(Mac)
                    && f.AsSpan(38, 4).SequenceEqual(new byte[] { 10, 213, subnet, 2 });
            }
            Thread.Sleep(5);
        }
        Assert.True(answered, "no ARP reply came back through the tap");
    }

    private const int AF_UNIX = 1, SOCK_DGRAM = 2, SOCK_CLOEXEC = 0x80000;

    [LibraryImport("libc", SetLastError = true)]
    private static unsafe partial int socketpair(int domain, int type, int protocol, int* sv);
}
