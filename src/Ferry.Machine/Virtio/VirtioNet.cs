using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Ferry.Linux;
using Ferry.Machine.Board;
using Ferry.Machine.Memory;
using Microsoft.Win32.SafeHandles;

namespace Ferry.Machine.Virtio;

/// <summary>
/// virtio-net (virtio 1.2 section 5.1, device ID 1) without offloads: a receive queue, a transmit queue and a control
/// queue, the MAC and the link status in configuration space, and a host back-end that carries one Ethernet frame per
/// read or write: a tap device
/// (<see cref="OpenTap"/>) or any such file descriptor (one end of a datagram socket pair, in tests). Without a
/// back-end the card has no cable: transmitted frames are dropped and nothing arrives.
/// </summary>
/// <remarks>
/// <para>Offers VIRTIO_NET_F_MAC, STATUS, CTRL_VQ and GUEST_ANNOUNCE (and the transport's VERSION_1 and ring features):
/// no checksum or segmentation offload, no mergeable buffers, so every buffer starts with a 12-byte
/// <c>virtio_net_hdr</c> (the VERSION_1 layout, <c>num_buffers</c> included), which the device strips on transmit and
/// prepends, zeroed with num_buffers = 1, on receive. The tap is opened without IFF_VNET_HDR, so the host sees bare
/// frames. The control queue answers one command, VIRTIO_NET_CTRL_ANNOUNCE_ACK; any other is refused with
/// VIRTIO_NET_ERR (no CTRL_RX, CTRL_VLAN, MQ or CTRL_MAC_ADDR is offered, so Linux sends none).</para>
/// <para>Announce (spec 5.1.6.5.4): after a migration the guest's MAC sits behind another host port, and a switch (a
/// bridge) still sends its frames to the old one until it sees a frame from the new one. So a device whose state was
/// loaded (<see cref="LoadState"/>) asks the guest, once its queues run again, to announce itself: it sets
/// VIRTIO_NET_S_ANNOUNCE in the status and raises a configuration-change interrupt; Linux then sends a gratuitous ARP
/// (and IPv6 neighbour advertisements) for each of its addresses and acks on the control queue, which clears the bit.
/// QEMU does the same after loading its state (<c>virtio_net_post_load_device</c>).</para>
/// <para>Threading: transmission runs inline on the notifying hart's thread (a non-blocking <c>writev</c> straight from
/// guest memory; a full tap queue drops the frame, as a wire would). Reception has its own thread that
/// <c>poll</c>s the back-end and an eventfd: it reads a frame into its buffer, then waits for a receive buffer from the
/// guest (the frame stays put; the tap queues the rest in the kernel), and is woken by the guest's receive-queue
/// notifications, by resets and by <see cref="Dispose"/>. Frames arriving while the driver is not running are dropped.</para>
/// </remarks>
public sealed partial class VirtioNet : IVirtioDevice
{
    /// <summary>The network device's ID.</summary>
    public const uint VIRTIO_ID_NET = 1;

    /// <summary>Feature: the device has a MAC address in configuration space.</summary>
    public const int VIRTIO_NET_F_MAC = 5;

    /// <summary>Feature: configuration space has a status field (link up, announce).</summary>
    public const int VIRTIO_NET_F_STATUS = 16;

    /// <summary>Feature: a control queue follows the receive and transmit queues.</summary>
    public const int VIRTIO_NET_F_CTRL_VQ = 17;

    /// <summary>Feature: the driver announces itself (gratuitous packets) when the status asks it to.</summary>
    public const int VIRTIO_NET_F_GUEST_ANNOUNCE = 21;

    /// <summary>Status bits (configuration space offset 6, little-endian 16 bits).</summary>
    public const ushort VIRTIO_NET_S_LINK_UP = 1, VIRTIO_NET_S_ANNOUNCE = 2;

    /// <summary>Control command class and command that ack an announce; the ack byte's values.</summary>
    public const byte VIRTIO_NET_CTRL_ANNOUNCE = 3, VIRTIO_NET_CTRL_ANNOUNCE_ACK = 0, VIRTIO_NET_OK = 0, VIRTIO_NET_ERR = 1;

    /// <summary>Bytes of virtio_net_hdr with VIRTIO_F_VERSION_1 (spec 5.1.6).</summary>
    public const int HeaderSize = 12;

    /// <summary>Queue size offered, QEMU's default.</summary>
    public const ushort QueueSize = 256;

    /// <summary>Control queue size offered, QEMU's (a driver has one command in flight at a time).</summary>
    public const ushort ControlQueueSize = 64;

    /// <summary>Largest frame carried (a tap's maximum with GSO off is MTU + 14; 64 KiB covers any MTU).</summary>
    public const int MaxFrame = 65536;

    /// <summary>Receive queue index.</summary>
    public const int ReceiveQueue = 0;

    /// <summary>Transmit queue index.</summary>
    public const int TransmitQueue = 1;

    /// <summary>Control queue index (after the one queue pair: no VIRTIO_NET_F_MQ).</summary>
    public const int ControlQueue = 2;

    private const uint StateMagic = 0x54454e56; // "VNET"
    private const ushort StateVersion = 1;

    private readonly byte[] mac = new byte[6];
    private readonly SafeFileHandle? frames;
    private readonly int framesFd = -1;
    private readonly SafeFileHandle wakeFd;
    private readonly Thread? receiver;
    private volatile bool stopping;
    private int disposed;

    private Virtqueue? rx, tx, ctrl;
    // One chain per consumer: the receive thread's, the transmitting hart's (under tx.Sync), the control queue's.
    private DescriptorChain? rxChain, txChain, ctrlChain;
    // VIRTIO_NET_S_ANNOUNCE while the guest has been asked to announce and has not acked (under `mac`).
    private bool announcing;
    // 1 after LoadState: ask for an announce when the queues next run (Interlocked).
    private int announceAfterLoad;
    // The transmit gather list, reused (under tx.Sync).
    private readonly iovec[] txVector = new iovec[DescriptorChain.MaxSegments];
    // The frame the receive thread holds for the guest.
    private readonly byte[] rxFrame = new byte[MaxFrame];
    private int rxPending;
    private readonly byte[] rxHeader = new byte[HeaderSize];

    /// <summary>
    /// A card with MAC <paramref name="macAddress"/> on back-end <paramref name="frameDevice"/> (owned from now on; set
    /// non-blocking here), or with no back-end if null.
    /// </summary>
    public VirtioNet(SafeFileHandle? frameDevice, ReadOnlySpan<byte> macAddress)
    {
        if (macAddress.Length != 6) throw new ArgumentException("a MAC address is 6 bytes", nameof(macAddress));
        if ((macAddress[0] & 1) != 0) throw new ArgumentException("a MAC address must not be multicast", nameof(macAddress));
        macAddress.CopyTo(mac);
        rxHeader[10] = 1; // num_buffers (spec 5.1.6.4: 1 without VIRTIO_NET_F_MRG_RXBUF)
        int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (efd < 0) throw Libc.LastError("eventfd");
        wakeFd = new SafeFileHandle(efd, ownsHandle: true);
        if (frameDevice is null) return;
        frames = frameDevice;
        framesFd = (int)frameDevice.DangerousGetHandle();
        int flags = fcntl(framesFd, F_GETFL, 0);
        if (flags < 0 || fcntl(framesFd, F_SETFL, flags | O_NONBLOCK) < 0)
        {
            LinuxException e = Libc.LastError("fcntl");
            wakeFd.Dispose();
            throw e;
        }
        receiver = new Thread(Receive) { IsBackground = true, Name = "virtio-net rx" };
        receiver.Start();
    }

    /// <summary>
    /// Attach to the host tap interface <paramref name="name"/> (created if missing; a tap not made persistent
    /// disappears when the card is disposed). Needs CAP_NET_ADMIN, or a persistent tap owned by this user. Throws
    /// <see cref="MachineConfigException"/> with the reason.
    /// </summary>
    public static VirtioNet OpenTap(string name, ReadOnlySpan<byte> macAddress)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (name.Length is 0 or >= IFNAMSIZ || name.Any(ch => ch is < '!' or > '~' or '/'))
        {
            throw new MachineConfigException($"tap name '{name}' is not an interface name (1 to {IFNAMSIZ - 1} printable characters)");
        }
        int fd = Libc.open("/dev/net/tun", Libc.O_RDWR | Libc.O_CLOEXEC | O_NONBLOCK);
        if (fd < 0) throw new MachineConfigException("/dev/net/tun: cannot open", Libc.LastError("open"));
        var handle = new SafeFileHandle(fd, ownsHandle: true);
        try
        {
            SetInterface(fd, name);
            return new VirtioNet(handle, macAddress);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>TUNSETIFF: bind the fd to tap <paramref name="name"/>, frames without packet information.</summary>
    private static unsafe void SetInterface(int fd, string name)
    {
        // struct ifreq: char ifr_name[IFNAMSIZ]; short ifr_flags; padded to 40 bytes.
        byte* ifr = stackalloc byte[40];
        new Span<byte>(ifr, 40).Clear();
        for (int i = 0; i < name.Length; i++) ifr[i] = (byte)name[i];
        *(short*)(ifr + IFNAMSIZ) = IFF_TAP | IFF_NO_PI;
        // SAFETY: ifr is a 40-byte struct ifreq on our stack, TUNSETIFF reads and writes at most that.
        if (Libc.ioctl(fd, TUNSETIFF, ifr) >= 0) return;
        int errno = Marshal.GetLastPInvokeError();
        string why = errno switch
        {
            Libc.EPERM or Libc.EACCES => "permission denied (needs CAP_NET_ADMIN or a persistent tap owned by this user)",
            EBUSY => "in use by another process",
            EINVAL => "exists and is not a tap",
            _ => Marshal.GetPInvokeErrorMessage(errno),
        };
        throw new MachineConfigException($"tap {name}: {why}", new LinuxException("ioctl(TUNSETIFF)", errno));
    }

    /// <summary>The MAC address the guest sees.</summary>
    public ReadOnlySpan<byte> MacAddress => mac;

    /// <summary>Frames dropped: received while the driver was not running or too big for its buffer, or not sent.</summary>
    public long DroppedFrames => Interlocked.Read(ref dropped);

    private long dropped;

    public uint DeviceId => VIRTIO_ID_NET;

    /// <summary>
    /// Whether a device whose state was loaded asks the guest to announce itself (default true). Off, the guest stays
    /// silent after a migration and the host's switch finds its new port only when the guest next transmits (or when
    /// the old port goes away). Set it before the machine starts.
    /// </summary>
    public bool AnnounceAfterLoad { get; set; } = true;

    /// <summary>Announces the guest acked on the control queue.</summary>
    public int AnnouncesAcked => Volatile.Read(ref announcesAcked);

    private int announcesAcked;

    public ulong DeviceFeatures => VirtioFeatures.Bit(VIRTIO_NET_F_MAC) | VirtioFeatures.Bit(VIRTIO_NET_F_STATUS)
        | VirtioFeatures.Bit(VIRTIO_NET_F_CTRL_VQ) | VirtioFeatures.Bit(VIRTIO_NET_F_GUEST_ANNOUNCE);

    public IReadOnlyList<ushort> QueueMaxSizes { get; } = [QueueSize, QueueSize, ControlQueueSize];

    /// <summary>mac[6] and status (le16): MQ and MTU are not offered.</summary>
    public int ConfigSize => 8;

    public void Attach(IReadOnlyList<Virtqueue> queues)
    {
        ArgumentNullException.ThrowIfNull(queues);
        tx = queues[TransmitQueue];
        ctrl = queues[ControlQueue];
        rxChain = queues[ReceiveQueue].CreateChain();
        txChain = tx.CreateChain();
        ctrlChain = ctrl.CreateChain();
        // Last: the receive thread, running since construction, delivers once it sees the queue (and its chain).
        Volatile.Write(ref rx, queues[ReceiveQueue]);
    }

    public void ReadConfig(int offset, Span<byte> data)
    {
        Span<byte> config = stackalloc byte[8];
        lock (mac)
        {
            mac.CopyTo(config);
            // The link is always up: a tap has no cable to pull, and without a back-end Linux saw it up before STATUS too.
            BinaryPrimitives.WriteUInt16LittleEndian(config[6..], (ushort)(VIRTIO_NET_S_LINK_UP | (announcing ? VIRTIO_NET_S_ANNOUNCE : 0)));
        }
        config.Slice(offset, data.Length).CopyTo(data);
    }

    /// <summary>The MAC and the status are read-only (VIRTIO_NET_F_CTRL_MAC_ADDR is not offered).</summary>
    public void WriteConfig(int offset, ReadOnlySpan<byte> data) { }

    public void Notify(int queue)
    {
        if (Volatile.Read(ref announceAfterLoad) != 0) AnnounceIfLoaded();
        if (queue == TransmitQueue) Transmit();
        else if (queue == ControlQueue) Control();
        else Wake();
    }

    /// <summary>
    /// The receive thread drops a frame it holds (the queue is no longer live) and looks again; a pending announce is
    /// forgotten with the driver that was asked (QEMU's <c>virtio_net_reset</c> too).
    /// </summary>
    public void Reset()
    {
        lock (mac) announcing = false;
        Wake();
    }

    /// <summary>Section "VNET": the MAC the guest saw.</summary>
    public byte[] SaveState()
    {
        var s = new byte[8 + 6];
        BinaryPrimitives.WriteUInt32LittleEndian(s, StateMagic);
        BinaryPrimitives.WriteUInt16LittleEndian(s.AsSpan(4), StateVersion);
        lock (mac) mac.CopyTo(s, 8);
        return s;
    }

    /// <summary>
    /// Adopts the saved MAC: the guest's view wins over the configured one. The guest has probably moved: it is asked to
    /// announce itself once the queues run (<see cref="AnnounceAfterLoad"/>). An announce pending at the source is not
    /// carried: this one replaces it.
    /// </summary>
    public void LoadState(ReadOnlySpan<byte> state)
    {
        if (state.Length != 14 || BinaryPrimitives.ReadUInt32LittleEndian(state) != StateMagic) throw new InvalidDataException("not a virtio-net section");
        ushort version = BinaryPrimitives.ReadUInt16LittleEndian(state[4..]);
        if (version != StateVersion) throw new InvalidDataException($"virtio-net section version {version}, this build reads {StateVersion}");
        lock (mac) state[8..].CopyTo(mac);
        Volatile.Write(ref announceAfterLoad, 1);
    }

    /// <summary>
    /// The first notification after <see cref="LoadState"/> (the transport kicks every queue when the machine resumes
    /// its devices): set VIRTIO_NET_S_ANNOUNCE and raise a configuration-change interrupt, if the driver runs and took
    /// GUEST_ANNOUNCE. Holds no queue lock here: the transport's lock comes first (IVirtioDevice).
    /// </summary>
    private void AnnounceIfLoaded()
    {
        if (Interlocked.Exchange(ref announceAfterLoad, 0) == 0 || !AnnounceAfterLoad) return;
        VirtioMmio transport = ctrl!.Transport;
        if ((transport.Status & VirtioFeatures.DRIVER_OK) == 0) return;
        if ((transport.NegotiatedFeatures & VirtioFeatures.Bit(VIRTIO_NET_F_GUEST_ANNOUNCE)) == 0) return;
        lock (mac) announcing = true;
        transport.ConfigChanged();
    }

    /// <summary>
    /// Answer every available control command (inline on the notifying hart: Linux spins until the buffer is used).
    /// A command is a 2-byte header (class, command) and its data, then one writable byte for the ack.
    /// </summary>
    private void Control()
    {
        Virtqueue q = ctrl!;
        DescriptorChain c = ctrlChain!;
        Span<byte> header = stackalloc byte[2];
        Span<byte> ack = stackalloc byte[1];
        lock (q.Sync)
        {
            while (q.TryPop(c))
            {
                if (c.ReadableLength < 2 || c.WritableLength < 1)
                {
                    // As QEMU ("virtio-net ctrl missing headers"): no command to answer, or nowhere to answer it.
                    q.ReportFailure("virtio-net control chain without its 2-byte header or its ack byte");
                    break;
                }
                ack[0] = VIRTIO_NET_ERR;
                if (c.Read(0, header) == 2 && header[0] == VIRTIO_NET_CTRL_ANNOUNCE && header[1] == VIRTIO_NET_CTRL_ANNOUNCE_ACK)
                {
                    // Spec 5.1.6.5.4: the bit is cleared before the buffer is marked used. An ack with nothing pending
                    // is an error (QEMU's answer too).
                    lock (mac)
                    {
                        if (announcing)
                        {
                            announcing = false;
                            ack[0] = VIRTIO_NET_OK;
                            Interlocked.Increment(ref announcesAcked);
                        }
                    }
                }
                q.Push(c.Head, (uint)c.Write(0, ack));
            }
            q.NotifyIfNeeded();
        }
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref disposed, 1) != 0) return;
        stopping = true;
        Wake();
        receiver?.Join();
        frames?.Dispose();
        wakeFd.Dispose();
    }

    /// <summary>Send every available transmit chain: header stripped, the frame written from guest memory in one writev.</summary>
    private unsafe void Transmit()
    {
        if (stopping) return;
        Virtqueue q = tx!;
        DescriptorChain c = txChain!;
        lock (q.Sync)
        {
            while (q.TryPop(c))
            {
                if (c.ReadableLength < HeaderSize)
                {
                    // As QEMU ("virtio-net header incorrect"): the driver is broken, not the frame.
                    q.ReportFailure($"virtio-net transmit chain shorter than its {HeaderSize}-byte header");
                    break;
                }
                if (c.ReadableLength == HeaderSize || c.ReadableLength - HeaderSize > MaxFrame || frames is null)
                {
                    Interlocked.Increment(ref dropped);
                }
                else
                {
                    int n = 0;
                    foreach (DescriptorChain.GuestRange r in c.Ranges(writable: false, HeaderSize, c.ReadableLength - HeaderSize))
                    {
                        txVector[n++] = new iovec { iov_base = c.HostAddress(r), iov_len = (nuint)r.Length };
                    }
                    // SAFETY: every iovec points into guest RAM checked when the chain was popped; RAM outlives the call.
                    fixed (iovec* v = txVector)
                    {
                        // One writev is one frame on a tap or a datagram socket; EAGAIN (queue full) and errors drop it.
                        if (Libc.writev(framesFd, v, n) < 0) Interlocked.Increment(ref dropped);
                    }
                }
                q.Push(c.Head, 0);
            }
            q.NotifyIfNeeded();
        }
    }

    private unsafe void Wake()
    {
        if (wakeFd.IsClosed) return;
        ulong one = 1;
        // SAFETY: writes the 8-byte counter increment eventfd expects from a local.
        _ = write((int)wakeFd.DangerousGetHandle(), &one, 8);
    }

    /// <summary>The receive thread: see the class remarks.</summary>
    private unsafe void Receive()
    {
        int wfd = (int)wakeFd.DangerousGetHandle();
        bool backendUp = true;
        var fds = stackalloc pollfd[2];
        while (!stopping)
        {
            fds[0] = new pollfd { fd = wfd, events = Libc.POLLIN };
            // Read no new frame while one waits for a guest buffer: the kernel queues (and, if full, drops) the rest.
            fds[1] = new pollfd { fd = backendUp && rxPending == 0 ? framesFd : -1, events = Libc.POLLIN };
            if (Libc.poll(fds, 2, -1) < 0)
            {
                if (Marshal.GetLastPInvokeError() == Libc.EINTR) continue;
                // Not the guest's doing, and nothing to answer it with: the card receives no more (thrown here, it
                // ended the process).
                return;
            }
            if ((fds[0].revents & Libc.POLLIN) != 0)
            {
                ulong counter;
                _ = read(wfd, &counter, 8);
            }
            if (stopping) return;
            if (rxPending == 0 && fds[1].revents != 0)
            {
                fixed (byte* b = rxFrame)
                {
                    nint n = read(framesFd, b, MaxFrame);
                    if (n > 0)
                    {
                        rxPending = (int)n;
                    }
                    else if (n == 0 || Marshal.GetLastPInvokeError() is not (Libc.EAGAIN or Libc.EINTR))
                    {
                        // The peer closed (a socket pair) or the tap was deleted: the cable is out.
                        backendUp = false;
                    }
                }
            }
            if (rxPending > 0 && !TryDeliver()) return;
        }
    }

    /// <summary>
    /// <see cref="Deliver"/>; false if post-copy was aborted while it waited for a page of guest RAM: the guest is gone
    /// (the machine stops and reports it), and the receive thread ends.
    /// </summary>
    private bool TryDeliver()
    {
        try
        {
            Deliver();
            return true;
        }
        catch (VmLostException)
        {
            return false;
        }
    }

    /// <summary>Hand the held frame to the guest if it has a buffer; drop it if the driver is not running.</summary>
    private void Deliver()
    {
        if (Volatile.Read(ref rx) is not { } q)
        {
            // Not on its transport yet (the board attaches the queues after it builds the card): no driver either.
            rxPending = 0;
            Interlocked.Increment(ref dropped);
            return;
        }
        DescriptorChain c = rxChain!;
        lock (q.Sync)
        {
            if (!q.TryPop(c))
            {
                // Live but out of buffers, or paused: keep the frame and wait for a notification. Otherwise drop it.
                if (!q.IsLive && !q.Suspended)
                {
                    rxPending = 0;
                    Interlocked.Increment(ref dropped);
                }
                return;
            }
            if (c.WritableLength == 0)
            {
                // As QEMU ("receive queue contains no in buffers"): a receive buffer the device cannot write. The frame
                // stays held; a reset drops it.
                q.ReportFailure("virtio-net receive buffer with nothing writable");
                return;
            }
            uint written = 0;
            if (c.WritableLength < HeaderSize + rxPending)
            {
                // Without mergeable buffers a frame must fit in one chain; Linux posts 1518 + header, so only a
                // frame beyond the MTU lands here. The buffer goes back empty (Linux counts a length error).
                Interlocked.Increment(ref dropped);
            }
            else
            {
                c.Write(0, rxHeader);
                c.Write(HeaderSize, rxFrame.AsSpan(0, rxPending));
                written = (uint)(HeaderSize + rxPending);
            }
            rxPending = 0;
            q.Push(c.Head, written);
            q.NotifyIfNeeded();
        }
    }

    // <linux/if_tun.h>, <linux/if.h>, <sys/eventfd.h>, <fcntl.h>; not in Ferry.Linux's Libc yet.
    private const int IFNAMSIZ = 16;
    private const short IFF_TAP = 0x0002, IFF_NO_PI = 0x1000;
    private static readonly nuint TUNSETIFF = Libc._IOW('T', 202, sizeof(int));
    private const int EFD_CLOEXEC = 0x80000, EFD_NONBLOCK = 0x800;
    private const int F_GETFL = 3, F_SETFL = 4, O_NONBLOCK = 0x800;
    private const int EBUSY = 16, EINVAL = 22;

    [LibraryImport("libc", SetLastError = true)]
    private static partial int eventfd(uint initval, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fcntl(int fd, int cmd, int arg);

    [LibraryImport("libc", SetLastError = true)]
    private static unsafe partial nint read(int fd, void* buf, nuint count);

    [LibraryImport("libc", SetLastError = true)]
    private static unsafe partial nint write(int fd, void* buf, nuint count);
}
