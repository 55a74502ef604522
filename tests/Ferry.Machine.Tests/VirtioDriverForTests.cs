using System.Buffers.Binary;
using Ferry.Machine.Memory;
using Ferry.Machine.Virtio;
using static Ferry.Machine.Virtio.VirtioMmio;

namespace Ferry.Machine.Tests;

/// <summary>
/// A virtio driver written by hand, as the tests' guest: builds descriptor tables and rings in an 8 MiB
/// <see cref="GuestRam"/>, drives the transport's registers, and reads the used ring back. Queue q's rings sit at
/// 0x8001_0000 + q * 0x1_0000 (descriptors, then available ring +0x1000, used ring +0x2000); buffers from 0x8040_0000.
/// </summary>
internal sealed class VirtioDriverForTests : IDisposable
{
    public const ulong RamBase = 0x8000_0000;
    public const ulong RamSize = 8UL << 20;
    public const ushort VIRTQ_DESC_F_NEXT = 1, VIRTQ_DESC_F_WRITE = 2, VIRTQ_DESC_F_INDIRECT = 4;

    /// <summary>VERSION_1 with both ring features.</summary>
    public static readonly ulong AllRingFeatures = VirtioMmio.TransportFeatures;

    /// <summary>VERSION_1 only.</summary>
    public static readonly ulong Version1 = VirtioFeatures.Bit(VirtioFeatures.VIRTIO_F_VERSION_1);

    private ulong nextData = RamBase + 0x40_0000;
    private readonly ushort[] nextDesc;
    private readonly ushort[] availIdx;
    private readonly ushort[] sizes;
    private int raises;
    private volatile bool level;
    private readonly bool ownsRam;

    public VirtioDriverForTests(IVirtioDevice? device, GuestRam? ram = null)
    {
        ownsRam = ram is null;
        Ram = ram ?? new GuestRam(RamBase, RamSize);
        Device = device;
        Mmio = new VirtioMmio(Ram, device, l =>
        {
            level = l;
            if (l) Interlocked.Increment(ref raises);
        });
        int n = device?.QueueMaxSizes.Count ?? 0;
        nextDesc = new ushort[n];
        availIdx = new ushort[n];
        sizes = new ushort[n];
    }

    public GuestRam Ram { get; }
    public IVirtioDevice? Device { get; }
    public VirtioMmio Mmio { get; }

    /// <summary>The interrupt line's level.</summary>
    public bool Line => level;

    /// <summary>Rising edges of the line so far.</summary>
    public int Raises => Volatile.Read(ref raises);

    public uint Reg(int offset) => (uint)Mmio.Read((ulong)offset, 4);

    public void SetReg(int offset, uint value) => Mmio.Write((ulong)offset, 4, value);

    public static ulong Desc(int q) => RamBase + 0x1_0000 + (ulong)q * 0x1_0000;
    public static ulong Avail(int q) => Desc(q) + 0x1000;
    public static ulong Used(int q) => Desc(q) + 0x2000;

    /// <summary>
    /// The driver's initialization (spec 3.1.1) with <paramref name="features"/>: true if the device accepted them and
    /// DRIVER_OK is set, false (stopping after FEATURES_OK) if not.
    /// </summary>
    public bool Start(ulong features, ushort queueSize = 16)
    {
        SetReg(VIRTIO_MMIO_STATUS, 0);
        SetReg(VIRTIO_MMIO_STATUS, VirtioFeatures.ACKNOWLEDGE);
        SetReg(VIRTIO_MMIO_STATUS, VirtioFeatures.ACKNOWLEDGE | VirtioFeatures.DRIVER);
        SetReg(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        SetReg(VIRTIO_MMIO_DRIVER_FEATURES, (uint)features);
        SetReg(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        SetReg(VIRTIO_MMIO_DRIVER_FEATURES, (uint)(features >> 32));
        SetReg(VIRTIO_MMIO_STATUS, VirtioFeatures.ACKNOWLEDGE | VirtioFeatures.DRIVER | VirtioFeatures.FEATURES_OK);
        if ((Reg(VIRTIO_MMIO_STATUS) & VirtioFeatures.FEATURES_OK) == 0) return false;
        for (int q = 0; q < sizes.Length; q++) SetUpQueue(q, queueSize);
        SetReg(VIRTIO_MMIO_STATUS, VirtioFeatures.ACKNOWLEDGE | VirtioFeatures.DRIVER | VirtioFeatures.FEATURES_OK | VirtioFeatures.DRIVER_OK);
        return true;
    }

    public void SetUpQueue(int q, ushort size, ulong? desc = null)
    {
        SetReg(VIRTIO_MMIO_QUEUE_SEL, (uint)q);
        Assert.Equal(0u, Reg(VIRTIO_MMIO_QUEUE_READY));
        Assert.True(Reg(VIRTIO_MMIO_QUEUE_NUM_MAX) >= size);
        SetReg(VIRTIO_MMIO_QUEUE_NUM, size);
        ulong d = desc ?? Desc(q);
        // A driver starts from zeroed rings (Linux allocates them zeroed).
        Ram.Write(Desc(q), new byte[0x3000]);
        SetReg(VIRTIO_MMIO_QUEUE_DESC_LOW, (uint)d);
        SetReg(VIRTIO_MMIO_QUEUE_DESC_HIGH, (uint)(d >> 32));
        SetReg(VIRTIO_MMIO_QUEUE_AVAIL_LOW, (uint)Avail(q));
        SetReg(VIRTIO_MMIO_QUEUE_AVAIL_HIGH, (uint)(Avail(q) >> 32));
        SetReg(VIRTIO_MMIO_QUEUE_USED_LOW, (uint)Used(q));
        SetReg(VIRTIO_MMIO_QUEUE_USED_HIGH, (uint)(Used(q) >> 32));
        SetReg(VIRTIO_MMIO_QUEUE_READY, 1);
        sizes[q] = size;
        nextDesc[q] = 0;
        availIdx[q] = 0;
    }

    /// <summary>A 16-byte aligned guest buffer of <paramref name="length"/> bytes filled with <paramref name="fill"/>.</summary>
    public ulong Alloc(int length, byte fill = 0)
    {
        ulong at = nextData;
        nextData += ((ulong)length + 15) & ~15UL;
        if (length > 0) Ram.Write(at, Enumerable.Repeat(fill, length).ToArray());
        return at;
    }

    public ulong Put(ReadOnlySpan<byte> bytes)
    {
        ulong at = Alloc(bytes.Length);
        Ram.Write(at, bytes);
        return at;
    }

    public byte[] Get(ulong gpa, int length)
    {
        var b = new byte[length];
        Ram.Read(gpa, b);
        return b;
    }

    public ushort U16(ulong gpa) => BinaryPrimitives.ReadUInt16LittleEndian(Get(gpa, 2));

    public void SetU16(ulong gpa, ushort v)
    {
        Span<byte> b = stackalloc byte[2];
        BinaryPrimitives.WriteUInt16LittleEndian(b, v);
        Ram.Write(gpa, b);
    }

    /// <summary>One descriptor's fields.</summary>
    public readonly record struct Buf(ulong Address, uint Length, bool Write = false, ushort Flags = 0);

    /// <summary>Write descriptor <paramref name="index"/> of the table at <paramref name="table"/>.</summary>
    public void WriteDesc(ulong table, int index, ulong address, uint length, ushort flags, ushort next)
    {
        Span<byte> d = stackalloc byte[16];
        BinaryPrimitives.WriteUInt64LittleEndian(d, address);
        BinaryPrimitives.WriteUInt32LittleEndian(d[8..], length);
        BinaryPrimitives.WriteUInt16LittleEndian(d[12..], flags);
        BinaryPrimitives.WriteUInt16LittleEndian(d[14..], next);
        Ram.Write(table + (ulong)index * 16, d);
    }

    /// <summary>Lay out <paramref name="bufs"/> as a chain in fresh descriptors of queue <paramref name="q"/> and make it available.</summary>
    public ushort Post(int q, params Buf[] bufs)
    {
        ushort head = nextDesc[q];
        for (int i = 0; i < bufs.Length; i++)
        {
            int index = (head + i) % sizes[q];
            ushort flags = (ushort)(bufs[i].Flags | (bufs[i].Write ? VIRTQ_DESC_F_WRITE : 0) | (i + 1 < bufs.Length ? VIRTQ_DESC_F_NEXT : 0));
            WriteDesc(Desc(q), index, bufs[i].Address, bufs[i].Length, flags, (ushort)((index + 1) % sizes[q]));
        }
        nextDesc[q] = (ushort)((head + bufs.Length) % sizes[q]);
        Publish(q, head);
        return head;
    }

    /// <summary>Make the chain at <paramref name="head"/> available (ring entry, then the index).</summary>
    public void Publish(int q, ushort head)
    {
        SetU16(Avail(q) + 4 + 2UL * (ushort)(availIdx[q] % sizes[q]), head);
        availIdx[q]++;
        SetU16(Avail(q) + 2, availIdx[q]);
    }

    /// <summary>Write an indirect table of <paramref name="bufs"/> (chained in order) and return its address.</summary>
    public ulong Table(params Buf[] bufs)
    {
        ulong table = Alloc(bufs.Length * 16);
        for (int i = 0; i < bufs.Length; i++)
        {
            ushort flags = (ushort)(bufs[i].Flags | (bufs[i].Write ? VIRTQ_DESC_F_WRITE : 0) | (i + 1 < bufs.Length ? VIRTQ_DESC_F_NEXT : 0));
            WriteDesc(table, i, bufs[i].Address, bufs[i].Length, flags, (ushort)(i + 1));
        }
        return table;
    }

    public void Kick(int q) => SetReg(VIRTIO_MMIO_QUEUE_NOTIFY, (uint)q);

    public ushort UsedIdx(int q) => U16(Used(q) + 2);

    public (uint Id, uint Length) UsedElem(int q, int i)
    {
        byte[] e = Get(Used(q) + 4 + 8UL * (ulong)(i % sizes[q]), 8);
        return (BinaryPrimitives.ReadUInt32LittleEndian(e), BinaryPrimitives.ReadUInt32LittleEndian(e.AsSpan(4)));
    }

    /// <summary>Wait (up to 10 s) until the used index reaches <paramref name="count"/>; for devices with their own thread.</summary>
    public void WaitUsed(int q, int count)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (UsedIdx(q) < count)
        {
            if (DateTime.UtcNow > deadline) Assert.Fail($"queue {q}: used index {UsedIdx(q)}, expected {count}");
            Thread.Sleep(1);
        }
    }

    /// <summary>Wait (up to 10 s) for <paramref name="condition"/>.</summary>
    public static void WaitFor(Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (!condition())
        {
            if (DateTime.UtcNow > deadline) Assert.Fail($"timed out waiting for {what}");
            Thread.Sleep(1);
        }
    }

    public void SetUsedEvent(int q, ushort value) => SetU16(Avail(q) + 4 + 2UL * sizes[q], value);

    public ushort AvailEvent(int q) => U16(Used(q) + 4 + 8UL * sizes[q]);

    public void SetAvailFlags(int q, ushort flags) => SetU16(Avail(q), flags);

    public bool NeedsReset => (Reg(VIRTIO_MMIO_STATUS) & VirtioFeatures.DEVICE_NEEDS_RESET) != 0;

    public void Ack() => SetReg(VIRTIO_MMIO_INTERRUPT_ACK, Reg(VIRTIO_MMIO_INTERRUPT_STATUS));

    public void Dispose()
    {
        Mmio.Dispose();
        if (ownsRam) Ram.Dispose();
    }
}
