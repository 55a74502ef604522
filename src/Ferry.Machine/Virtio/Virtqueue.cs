using System.Diagnostics;
using System.Runtime.CompilerServices;
using Ferry.Machine.Memory;

namespace Ferry.Machine.Virtio;

/// <summary>
/// A split virtqueue (virtio 1.2 section 2.7) in guest RAM, seen from the device: pops descriptor chains from the
/// available ring, pushes used elements, and decides when the driver needs an interrupt (EVENT_IDX or
/// VRING_AVAIL_F_NO_INTERRUPT).
/// </summary>
/// <remarks>
/// <para>The guest is hostile. Every descriptor is read once into locals and checked before use: buffers inside RAM,
/// indices inside the table, chains no longer than the queue (loops end there), one level of indirection only, lengths
/// that do not overflow, the available index never more than a queue ahead. A breach calls the transport's failure
/// path (DEVICE_NEEDS_RESET, see <see cref="VirtioMmio.Failure"/>) and the queue pops nothing until a reset; no
/// exception leaves and no byte outside RAM is touched.</para>
/// <para>Memory ordering (spec 2.7.13): the available index is read with acquire semantics before the ring entry and
/// descriptors it publishes; a used element is written before the used index, which is stored with release semantics;
/// a full fence separates the used index (or avail_event) store from the load of used_event (or the avail index) that
/// decides whether to notify, the store-load pair both sides of the ring rely on.</para>
/// <para>Every byte the device writes into the rings goes through <see cref="GuestRam.NoteDeviceWrite"/>, so the
/// migration dirty log sees it. During post-copy every ring access first waits for the bytes' page
/// (<see cref="GuestRam.WaitPresent"/>; a null test otherwise), holding <see cref="Sync"/> meanwhile.</para>
/// <para>Threading: all members are called holding <see cref="Sync"/> (devices around each request, the transport to
/// configure, reset, pause and save).</para>
/// </remarks>
public sealed unsafe class Virtqueue
{
    private const ushort VIRTQ_DESC_F_NEXT = 1, VIRTQ_DESC_F_WRITE = 2, VIRTQ_DESC_F_INDIRECT = 4;
    private const ushort VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
    private const int DescSize = 16;

    private readonly GuestRam ram;
    private readonly VirtioMmio transport;

    // Driver-written configuration (QueueNum, QueueDesc/Driver/Device, QueueReady).
    private ushort size;
    private ulong descAddress, availAddress, usedAddress;
    private bool ready;
    // Host pointers to the three rings, set when the queue turns ready (after they were checked against RAM).
    private byte* desc, avail, used;

    // Negotiated ring features (set at FEATURES_OK).
    private bool eventIdx, indirect;
    // The driver set DRIVER_OK: the device may consume buffers (spec 3.1.2).
    private bool driverOk;
    // Processing is paused by the machine (migration); pops fail, nothing is written.
    private bool suspended;

    // Next available-ring entry the device will take.
    private ushort lastAvail;
    // The used index as the device last published it.
    private ushort usedIdx;
    // Used index at the last notification decision, and whether there was one since reset (QEMU signalled_used).
    private ushort signalledUsed;
    private bool signalledValid;
    // Elements pushed since the last decision (without EVENT_IDX, no push means no interrupt).
    private bool pushedSinceSignal;

    internal Virtqueue(GuestRam ram, VirtioMmio transport, int index, ushort maxSize)
    {
        this.ram = ram;
        this.transport = transport;
        Index = index;
        MaxSize = maxSize;
    }

    /// <summary>The transport the queue belongs to (its status, features and configuration interrupt).</summary>
    internal VirtioMmio Transport => transport;

    /// <summary>Held by whoever touches the queue: a device for one request, the transport to change it.</summary>
    public object Sync { get; } = new();

    /// <summary>The queue's number on its device.</summary>
    public int Index { get; }

    /// <summary>QueueNumMax: the largest size the driver may choose.</summary>
    public ushort MaxSize { get; }

    /// <summary>The size the driver chose (QueueNum).</summary>
    public ushort Size => size;

    /// <summary>True while the device may consume buffers: ready, DRIVER_OK, not paused, device not broken.</summary>
    public bool IsLive => ready && driverOk && !suspended && !transport.IsBroken;

    /// <summary>A chain to pop into, for one consumer (allocate once, reuse for every request).</summary>
    public DescriptorChain CreateChain() => new(ram);

    /// <summary>
    /// The device found the driver breaking its device type's rules in a chain it popped (a block request without a
    /// status byte): DEVICE_NEEDS_RESET, as for a ring fault. Do not push the chain.
    /// </summary>
    public void ReportFailure(string reason) => transport.Failure($"queue {Index}: {reason}");

    /// <summary>Guest addresses of the rings and the QueueNum the driver wrote, for the transport's registers.</summary>
    internal ulong DescAddress { get => descAddress; set { if (!ready) descAddress = value; } }
    internal ulong AvailAddress { get => availAddress; set { if (!ready) availAddress = value; } }
    internal ulong UsedAddress { get => usedAddress; set { if (!ready) usedAddress = value; } }
    internal ushort Num { get => size; set { if (!ready) size = value; } }
    internal bool Ready => ready;
    internal bool Suspended { get => suspended; set => suspended = value; }

    /// <summary>Ring features the driver accepted.</summary>
    internal void SetFeatures(bool eventIndex, bool indirectDescriptors)
    {
        eventIdx = eventIndex;
        indirect = indirectDescriptors;
    }

    internal bool DriverOk { set => driverOk = value; }

    /// <summary>
    /// QueueReady = 1: check the size and the rings (power-of-2 size up to <see cref="MaxSize"/>, alignment, every ring
    /// byte inside RAM) and start. Returns null, or what was wrong (the queue stays off).
    /// </summary>
    internal string? Enable()
    {
        if (ready) return null;
        if (CheckRings(size, descAddress, availAddress, usedAddress) is { } error) return error;
        desc = Host(descAddress);
        avail = Host(availAddress);
        used = Host(usedAddress);
        ready = true;
        return null;
    }

    private string? CheckRings(ushort num, ulong descAt, ulong availAt, ulong usedAt)
    {
        if (num == 0 || num > MaxSize || (num & (num - 1)) != 0)
        {
            return $"queue {Index}: size {num} is not a power of 2 up to {MaxSize}";
        }
        // Spec 2.7: descriptor table 16-byte aligned, available ring 2, used ring 4.
        if ((descAt & 15) != 0 || (availAt & 1) != 0 || (usedAt & 3) != 0)
        {
            return $"queue {Index}: misaligned ring (desc 0x{descAt:x}, avail 0x{availAt:x}, used 0x{usedAt:x})";
        }
        if (!ram.Contains(descAt, (ulong)num * DescSize) || !ram.Contains(availAt, 6 + 2UL * num) || !ram.Contains(usedAt, 6 + 8UL * num))
        {
            return $"queue {Index}: ring outside RAM (desc 0x{descAt:x}, avail 0x{availAt:x}, used 0x{usedAt:x})";
        }
        return null;
    }

    /// <summary>Back to the reset state (QueueReady = 0, or a device reset): forgets positions; a reset also forgets addresses.</summary>
    internal void Reset(bool full)
    {
        ready = false;
        desc = avail = used = null;
        lastAvail = usedIdx = signalledUsed = 0;
        signalledValid = false;
        pushedSinceSignal = false;
        if (!full) return;
        size = MaxSize;
        descAddress = availAddress = usedAddress = 0;
        eventIdx = indirect = false;
        driverOk = false;
    }

    /// <summary>
    /// Take the next available chain into <paramref name="chain"/>. False if the queue is not live, has nothing
    /// available, or the driver broke a rule (then the device is marked as needing a reset). With EVENT_IDX, an empty
    /// queue first publishes avail_event so the driver's next addition notifies, then looks once more.
    /// </summary>
    public bool TryPop(DescriptorChain chain)
    {
        ArgumentNullException.ThrowIfNull(chain);
        Debug.Assert(Monitor.IsEntered(Sync));
        if (!IsLive) return false;
        ram.WaitPresent(availAddress + 2, 2);
        ushort availIdx = Volatile.Read(ref *(ushort*)(avail + 2));
        if (availIdx == lastAvail)
        {
            if (!eventIdx) return false;
            SetAvailEvent(lastAvail);
            Interlocked.MemoryBarrier();
            availIdx = Volatile.Read(ref *(ushort*)(avail + 2));
            if (availIdx == lastAvail) return false;
        }
        if ((ushort)(availIdx - lastAvail) > size)
        {
            return Fail($"queue {Index}: available index moved from {lastAvail} to {availIdx}, more than the queue's {size}");
        }
        // The acquire above orders this read after the index.
        ulong entry = 4 + 2 * (ulong)(lastAvail & (size - 1));
        ram.WaitPresent(availAddress + entry, 2);
        ushort head = Unsafe.ReadUnaligned<ushort>(avail + entry);
        lastAvail++;
        if (eventIdx) SetAvailEvent(lastAvail);
        return Walk(head, chain);
    }

    /// <summary>Follow the chain at <paramref name="head"/>, checking every descriptor (see the class remarks).</summary>
    private bool Walk(ushort head, DescriptorChain chain)
    {
        chain.Clear(head);
        if (head >= size) return Fail($"queue {Index}: head index {head} outside the queue's {size} descriptors");
        byte* table = desc;
        ulong tableAddress = descAddress;
        int tableSize = size;
        int index = head;
        // Descriptors visited in the current table: a chain longer than its table has a loop.
        int visited = 0;
        bool inIndirect = false;
        while (true)
        {
            ram.WaitPresent(tableAddress + (ulong)(index * DescSize), DescSize);
            byte* d = table + index * DescSize;
            ulong address = Unsafe.ReadUnaligned<ulong>(d);
            uint length = Unsafe.ReadUnaligned<uint>(d + 8);
            ushort flags = Unsafe.ReadUnaligned<ushort>(d + 12);
            ushort next = Unsafe.ReadUnaligned<ushort>(d + 14);
            if (++visited > tableSize) return Fail($"queue {Index}: descriptor chain at {head} loops or exceeds {tableSize} entries");

            if ((flags & VIRTQ_DESC_F_INDIRECT) != 0)
            {
                // Spec 2.7.5.3.1: only with the feature, never nested, never together with NEXT; QEMU and Linux also
                // put it only at the head.
                if (!indirect) return Fail($"queue {Index}: indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC");
                if (inIndirect) return Fail($"queue {Index}: indirect descriptor inside an indirect table");
                if ((flags & VIRTQ_DESC_F_NEXT) != 0 || index != head || visited != 1)
                {
                    return Fail($"queue {Index}: indirect descriptor that is not a whole chain");
                }
                if (length == 0 || length % DescSize != 0 || length / DescSize > DescriptorChain.MaxSegments)
                {
                    return Fail($"queue {Index}: indirect table of {length} bytes");
                }
                if (!ram.Contains(address, length)) return Fail($"queue {Index}: indirect table 0x{address:x}+0x{length:x} outside RAM");
                table = Host(address);
                tableAddress = address;
                tableSize = (int)(length / DescSize);
                index = 0;
                visited = 0;
                inIndirect = true;
                continue;
            }

            if (length != 0 && !ram.Contains(address, length))
            {
                return Fail($"queue {Index}: buffer 0x{address:x}+0x{length:x} outside RAM");
            }
            if (!chain.Add(address, length, (flags & VIRTQ_DESC_F_WRITE) != 0, out string? error)) return Fail($"queue {Index}: {error}");
            if ((flags & VIRTQ_DESC_F_NEXT) == 0) return true;
            if (next >= tableSize) return Fail($"queue {Index}: next index {next} outside a table of {tableSize}");
            index = next;
        }
    }

    /// <summary>
    /// Return chain <paramref name="head"/> to the driver with <paramref name="written"/> bytes written into it: the
    /// element, then the used index (release). Call <see cref="NotifyIfNeeded"/> after a batch.
    /// </summary>
    public void Push(ushort head, uint written)
    {
        Debug.Assert(Monitor.IsEntered(Sync));
        if (!ready || transport.IsBroken) return;
        ulong slot = 4 + 8UL * (uint)(usedIdx & (size - 1));
        ram.WaitPresent(usedAddress + slot, 8);
        ram.WaitPresent(usedAddress + 2, 2);
        Unsafe.WriteUnaligned(used + slot, (ulong)head | ((ulong)written << 32));
        ram.NoteDeviceWrite(usedAddress + slot, 8);
        usedIdx++;
        Volatile.Write(ref *(ushort*)(used + 2), usedIdx);
        ram.NoteDeviceWrite(usedAddress + 2, 2);
        pushedSinceSignal = true;
    }

    /// <summary>
    /// Raise the used-buffer interrupt if the driver wants one for what was pushed since the last call: with
    /// EVENT_IDX when the used index passed used_event (spec 2.7.10, <c>vring_need_event</c>), else unless the driver
    /// set VRING_AVAIL_F_NO_INTERRUPT.
    /// </summary>
    public void NotifyIfNeeded()
    {
        Debug.Assert(Monitor.IsEntered(Sync));
        if (!ready || !pushedSinceSignal || transport.IsBroken) return;
        pushedSinceSignal = false;
        // Our used-index store must be visible before we read the driver's used_event / flags (store-load).
        Interlocked.MemoryBarrier();
        bool notify;
        if (eventIdx)
        {
            ram.WaitPresent(availAddress + 4 + 2UL * size, 2);
            ushort usedEvent = Volatile.Read(ref *(ushort*)(avail + 4 + 2 * size));
            ushort old = signalledUsed;
            bool valid = signalledValid;
            signalledUsed = usedIdx;
            signalledValid = true;
            notify = !valid || (ushort)(usedIdx - usedEvent - 1) < (ushort)(usedIdx - old);
        }
        else
        {
            ram.WaitPresent(availAddress, 2);
            notify = (Volatile.Read(ref *(ushort*)avail) & VIRTQ_AVAIL_F_NO_INTERRUPT) == 0;
        }
        if (notify) transport.SignalUsed();
    }

    private void SetAvailEvent(ushort value)
    {
        ulong offset = 4 + 8UL * size;
        ram.WaitPresent(usedAddress + offset, 2);
        Volatile.Write(ref *(ushort*)(used + offset), value);
        ram.NoteDeviceWrite(usedAddress + offset, 2);
    }

    private bool Fail(string reason)
    {
        transport.Failure(reason);
        return false;
    }

    private byte* Host(ulong gpa) => ram.Host + (gpa - ram.Base);

    /// <summary>The queue as a state record (driver configuration and device positions).</summary>
    internal QueueState Save() => new(size, ready, descAddress, availAddress, usedAddress, lastAvail, usedIdx, signalledUsed, signalledValid);

    /// <summary>Null if <paramref name="s"/> is a state this queue could be in, else what is wrong with it.</summary>
    internal string? Check(QueueState s) => s.Ready ? CheckRings(s.Size, s.Desc, s.Avail, s.Used) : null;

    /// <summary>Restore <see cref="Save"/>'s record, which <see cref="Check"/> accepted.</summary>
    internal void Load(QueueState s)
    {
        Reset(full: true);
        size = s.Size;
        descAddress = s.Desc;
        availAddress = s.Avail;
        usedAddress = s.Used;
        if (s.Ready && Enable() is { } error) throw new InvalidOperationException(error); // Check said otherwise
        lastAvail = s.LastAvail;
        usedIdx = s.UsedIdx;
        signalledUsed = s.SignalledUsed;
        signalledValid = s.SignalledValid;
    }

    /// <summary>What a queue's state section holds.</summary>
    internal readonly record struct QueueState(ushort Size, bool Ready, ulong Desc, ulong Avail, ulong Used,
        ushort LastAvail, ushort UsedIdx, ushort SignalledUsed, bool SignalledValid);
}
