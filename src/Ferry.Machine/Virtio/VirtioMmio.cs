using System.Buffers.Binary;
using Ferry.Machine.Board;
using Ferry.Machine.Memory;
using static Ferry.Machine.Virtio.VirtioFeatures;

namespace Ferry.Machine.Virtio;

/// <summary>
/// The virtio-mmio transport, version 2 only (virtio 1.2 section 4.2.2; QEMU <c>hw/virtio/virtio-mmio.c</c>): one
/// 0x1000-byte register window per device, configuration space at 0x100, one level-triggered interrupt line that is
/// high while InterruptStatus is nonzero. With no device behind it (<c>device: null</c>) the window is an empty slot
/// that reads DeviceID 0, as QEMU's unused <c>virt</c> slots do, so Linux skips it.
/// </summary>
/// <remarks>
/// <para>Offers VIRTIO_F_VERSION_1 (which the driver must accept, else FEATURES_OK does not stick),
/// VIRTIO_RING_F_INDIRECT_DESC and VIRTIO_RING_F_EVENT_IDX, plus the device's own bits.</para>
/// <para>When the guest breaks a queue rule (see <see cref="Virtqueue"/>) the device sets DEVICE_NEEDS_RESET, raises a
/// configuration-change interrupt if DRIVER_OK (spec 2.1.2), and pops nothing until the driver writes Status 0;
/// <see cref="FailureReason"/> says why.</para>
/// <para>Threading and locks, always taken in this order: the transport's lock (register writes that change
/// configuration, reset, pause, save and load), a queue's <see cref="Virtqueue.Sync"/> (devices, one request at a
/// time), the interrupt lock (InterruptStatus and the line). QueueNotify and InterruptACK take no transport lock, so
/// harts notifying different queues do not serialize. The interrupt callback runs under the interrupt lock, so levels
/// arrive in order; it must not call back into the device.</para>
/// </remarks>
public sealed class VirtioMmio : IMmioDevice, IDisposable
{
    /// <summary>Bytes of address space the board maps for one device.</summary>
    public const ulong WindowSize = 0x1000;

    // Register offsets (spec 4.2.2, Linux include/uapi/linux/virtio_mmio.h).
    public const int VIRTIO_MMIO_MAGIC_VALUE = 0x000, VIRTIO_MMIO_VERSION = 0x004, VIRTIO_MMIO_DEVICE_ID = 0x008,
        VIRTIO_MMIO_VENDOR_ID = 0x00c, VIRTIO_MMIO_DEVICE_FEATURES = 0x010, VIRTIO_MMIO_DEVICE_FEATURES_SEL = 0x014,
        VIRTIO_MMIO_DRIVER_FEATURES = 0x020, VIRTIO_MMIO_DRIVER_FEATURES_SEL = 0x024, VIRTIO_MMIO_QUEUE_SEL = 0x030,
        VIRTIO_MMIO_QUEUE_NUM_MAX = 0x034, VIRTIO_MMIO_QUEUE_NUM = 0x038, VIRTIO_MMIO_QUEUE_READY = 0x044,
        VIRTIO_MMIO_QUEUE_NOTIFY = 0x050, VIRTIO_MMIO_INTERRUPT_STATUS = 0x060, VIRTIO_MMIO_INTERRUPT_ACK = 0x064,
        VIRTIO_MMIO_STATUS = 0x070, VIRTIO_MMIO_QUEUE_DESC_LOW = 0x080, VIRTIO_MMIO_QUEUE_DESC_HIGH = 0x084,
        VIRTIO_MMIO_QUEUE_AVAIL_LOW = 0x090, VIRTIO_MMIO_QUEUE_AVAIL_HIGH = 0x094, VIRTIO_MMIO_QUEUE_USED_LOW = 0x0a0,
        VIRTIO_MMIO_QUEUE_USED_HIGH = 0x0a4, VIRTIO_MMIO_SHM_SEL = 0x0ac, VIRTIO_MMIO_SHM_LEN_LOW = 0x0b0,
        VIRTIO_MMIO_SHM_LEN_HIGH = 0x0b4, VIRTIO_MMIO_SHM_BASE_LOW = 0x0b8, VIRTIO_MMIO_SHM_BASE_HIGH = 0x0bc,
        VIRTIO_MMIO_CONFIG_GENERATION = 0x0fc, VIRTIO_MMIO_CONFIG = 0x100;

    /// <summary>"virt" in little-endian ASCII.</summary>
    public const uint MagicValue = 0x74726976;

    /// <summary>The modern transport; legacy version 1 is not offered.</summary>
    public const uint Version = 2;

    /// <summary>"QEMU": Linux matches no driver on the vendor, and QEMU's guests see this value.</summary>
    public const uint VendorId = 0x554d4551;

    /// <summary>Ring features every device offers.</summary>
    public static readonly ulong TransportFeatures = Bit(VIRTIO_F_VERSION_1) | Bit(VIRTIO_RING_F_INDIRECT_DESC) | Bit(VIRTIO_RING_F_EVENT_IDX);

    private const uint StateMagic = 0x54524956; // "VIRT"
    private const ushort StateVersion = 1;
    private const int StateFixedSize = 4 + 2 + 2 + 4 + 4 * 4 + 8 + 4 * 3 + 1 + 2 + 4;
    private const int QueueStateSize = 2 + 1 + 8 * 3 + 2 * 3 + 1;

    /// <summary>Largest device-type section accepted on load.</summary>
    public const int MaxDeviceStateSize = 64 * 1024;

    private readonly object gate = new();
    private readonly object irqGate = new();
    private readonly IVirtioDevice? device;
    private readonly Action<bool> interrupt;
    private readonly Virtqueue[] queues;
    // Everything offered to the driver: transport bits and the device's.
    private readonly ulong offered;

    // Device status as the driver wrote it (DEVICE_NEEDS_RESET is added on read from `broken`).
    private volatile uint status;
    private uint deviceFeaturesSel, driverFeaturesSel, queueSel;
    private ulong driverFeatures;
    // Bumped when the device changes its configuration space on its own.
    private uint configGeneration;
    // InterruptStatus and the level last given to the line; under irqGate.
    private uint interruptStatus;
    private bool lineLevel;
    // The guest broke a rule: DEVICE_NEEDS_RESET until status 0.
    private volatile bool broken;
    private string? failureReason;
    // Paused by the machine (Pause/Resume).
    private bool paused;

    /// <summary>
    /// A transport for <paramref name="device"/> (null: an empty slot), reaching guest memory in <paramref name="ram"/>,
    /// driving <paramref name="interrupt"/> with the line's level (the board connects it to a PLIC source).
    /// </summary>
    public VirtioMmio(GuestRam ram, IVirtioDevice? device, Action<bool> interrupt)
    {
        ArgumentNullException.ThrowIfNull(ram);
        ArgumentNullException.ThrowIfNull(interrupt);
        this.device = device;
        this.interrupt = interrupt;
        if (device is null)
        {
            queues = [];
            return;
        }
        IReadOnlyList<ushort> sizes = device.QueueMaxSizes;
        queues = new Virtqueue[sizes.Count];
        for (int i = 0; i < queues.Length; i++)
        {
            ushort max = sizes[i];
            if (max == 0 || (max & (max - 1)) != 0) throw new ArgumentException($"queue {i} maximum size {max} is not a power of 2", nameof(device));
            queues[i] = new Virtqueue(ram, this, i, max);
            queues[i].Reset(full: true);
        }
        offered = TransportFeatures | device.DeviceFeatures;
        device.Attach(queues);
    }

    /// <summary>The device behind the window, or null for an empty slot.</summary>
    public IVirtioDevice? Device => device;

    /// <summary>The device's queues (empty for an empty slot).</summary>
    public IReadOnlyList<Virtqueue> Queues => queues;

    /// <summary>True after the guest broke a queue rule, until it resets the device.</summary>
    public bool IsBroken => broken;

    /// <summary>What the guest did wrong, while <see cref="IsBroken"/>.</summary>
    public string? FailureReason => Volatile.Read(ref failureReason);

    /// <summary>The Status register as the guest reads it.</summary>
    public uint Status => status | (broken ? DEVICE_NEEDS_RESET : 0);

    /// <summary>The features both sides agreed on (valid once the driver set FEATURES_OK).</summary>
    public ulong NegotiatedFeatures => (status & FEATURES_OK) != 0 ? driverFeatures : 0;

    /// <summary>The InterruptStatus register.</summary>
    public uint InterruptStatus
    {
        get { lock (irqGate) return interruptStatus; }
    }

    /// <summary>Read a register (4-byte aligned, 4 bytes) or configuration space (any size); anything else reads 0.</summary>
    public ulong Read(ulong offset, int size)
    {
        if (offset >= VIRTIO_MMIO_CONFIG) return ReadConfig((int)(offset - VIRTIO_MMIO_CONFIG), size);
        if (size != 4 || (offset & 3) != 0) return 0;
        switch ((int)offset)
        {
            case VIRTIO_MMIO_MAGIC_VALUE: return MagicValue;
            case VIRTIO_MMIO_VERSION: return Version;
            case VIRTIO_MMIO_DEVICE_ID: return device?.DeviceId ?? 0;
            case VIRTIO_MMIO_VENDOR_ID: return VendorId;
        }
        if (device is null) return 0;
        lock (gate)
        {
            switch ((int)offset)
            {
                case VIRTIO_MMIO_DEVICE_FEATURES:
                    return deviceFeaturesSel switch { 0 => (uint)offered, 1 => (uint)(offered >> 32), _ => 0 };
                case VIRTIO_MMIO_QUEUE_NUM_MAX:
                    return SelectedQueue()?.MaxSize ?? 0u;
                case VIRTIO_MMIO_QUEUE_READY:
                    return SelectedQueue() is { } q && ReadyOf(q) ? 1u : 0u;
                case VIRTIO_MMIO_INTERRUPT_STATUS:
                    return InterruptStatus;
                case VIRTIO_MMIO_STATUS:
                    return Status;
                case VIRTIO_MMIO_SHM_LEN_LOW:
                case VIRTIO_MMIO_SHM_LEN_HIGH:
                case VIRTIO_MMIO_SHM_BASE_LOW:
                case VIRTIO_MMIO_SHM_BASE_HIGH:
                    // No shared memory regions: a missing region reads length -1 (spec 4.2.2).
                    return uint.MaxValue;
                case VIRTIO_MMIO_CONFIG_GENERATION:
                    return configGeneration;
                default:
                    // Write-only registers and holes read 0.
                    return 0;
            }
        }
    }

    /// <summary>Write a register (4-byte aligned, 4 bytes) or configuration space; anything else is ignored.</summary>
    public void Write(ulong offset, int size, ulong value)
    {
        if (device is null) return;
        if (offset >= VIRTIO_MMIO_CONFIG)
        {
            WriteConfig((int)(offset - VIRTIO_MMIO_CONFIG), size, value);
            return;
        }
        if (size != 4 || (offset & 3) != 0) return;
        uint v = (uint)value;
        switch ((int)offset)
        {
            case VIRTIO_MMIO_QUEUE_NOTIFY:
                // Without VIRTIO_F_NOTIFICATION_DATA the value is the queue index.
                if (v < (uint)queues.Length) device.Notify((int)v);
                return;
            case VIRTIO_MMIO_INTERRUPT_ACK:
                lock (irqGate)
                {
                    interruptStatus &= ~v;
                    UpdateLine();
                }
                return;
        }
        lock (gate)
        {
            switch ((int)offset)
            {
                case VIRTIO_MMIO_DEVICE_FEATURES_SEL:
                    deviceFeaturesSel = v;
                    return;
                case VIRTIO_MMIO_DRIVER_FEATURES:
                    // Features are fixed once FEATURES_OK is set (spec 3.1.1).
                    if ((status & FEATURES_OK) != 0 || driverFeaturesSel > 1) return;
                    int shift = (int)driverFeaturesSel * 32;
                    driverFeatures = (driverFeatures & ~(0xffff_ffffUL << shift)) | ((ulong)v << shift);
                    return;
                case VIRTIO_MMIO_DRIVER_FEATURES_SEL:
                    driverFeaturesSel = v;
                    return;
                case VIRTIO_MMIO_QUEUE_SEL:
                    queueSel = v;
                    return;
                case VIRTIO_MMIO_STATUS:
                    WriteStatus(v);
                    return;
            }
            if (SelectedQueue() is not { } q) return;
            bool kick = false;
            lock (q.Sync)
            {
                switch ((int)offset)
                {
                    case VIRTIO_MMIO_QUEUE_NUM:
                        q.Num = v <= ushort.MaxValue ? (ushort)v : (ushort)0;
                        break;
                    case VIRTIO_MMIO_QUEUE_READY:
                        if ((v & 1) == 0)
                        {
                            q.Reset(full: false);
                        }
                        else if (q.Enable() is { } error)
                        {
                            Failure(error);
                        }
                        else
                        {
                            kick = q.IsLive;
                        }
                        break;
                    case VIRTIO_MMIO_QUEUE_DESC_LOW: q.DescAddress = Low(q.DescAddress, v); break;
                    case VIRTIO_MMIO_QUEUE_DESC_HIGH: q.DescAddress = High(q.DescAddress, v); break;
                    case VIRTIO_MMIO_QUEUE_AVAIL_LOW: q.AvailAddress = Low(q.AvailAddress, v); break;
                    case VIRTIO_MMIO_QUEUE_AVAIL_HIGH: q.AvailAddress = High(q.AvailAddress, v); break;
                    case VIRTIO_MMIO_QUEUE_USED_LOW: q.UsedAddress = Low(q.UsedAddress, v); break;
                    case VIRTIO_MMIO_QUEUE_USED_HIGH: q.UsedAddress = High(q.UsedAddress, v); break;
                    default: break; // read-only registers, QueueReset (VIRTIO_F_RING_RESET is not offered), holes
                }
            }
            if (kick) device.Notify(q.Index);
        }
    }

    private static ulong Low(ulong old, uint v) => (old & 0xffff_ffff_0000_0000) | v;

    private static ulong High(ulong old, uint v) => (old & 0xffff_ffff) | ((ulong)v << 32);

    private Virtqueue? SelectedQueue() => queueSel < (uint)queues.Length ? queues[queueSel] : null;

    private static bool ReadyOf(Virtqueue q)
    {
        lock (q.Sync) return q.Ready;
    }

    private ulong ReadConfig(int offset, int size)
    {
        if (device is null || size is not (1 or 2 or 4 or 8) || offset + size > device.ConfigSize) return 0;
        Span<byte> bytes = stackalloc byte[8];
        bytes.Clear();
        lock (gate) device.ReadConfig(offset, bytes[..size]);
        return BinaryPrimitives.ReadUInt64LittleEndian(bytes);
    }

    private void WriteConfig(int offset, int size, ulong value)
    {
        if (device is null || size is not (1 or 2 or 4 or 8) || offset + size > device.ConfigSize) return;
        Span<byte> bytes = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, value);
        lock (gate) device.WriteConfig(offset, bytes[..size]);
    }

    /// <summary>The Status register: 0 resets; FEATURES_OK only sticks for an acceptable feature set; DRIVER_OK starts the queues.</summary>
    private void WriteStatus(uint value)
    {
        if (value == 0)
        {
            ResetLocked();
            return;
        }
        uint old = status;
        value &= ~DEVICE_NEEDS_RESET; // the device's bit, not the driver's
        if ((value & FEATURES_OK) != 0 && (old & FEATURES_OK) == 0)
        {
            // Spec 3.1.1: the device refuses FEATURES_OK for features it did not offer; Ferry refuses legacy drivers.
            if ((driverFeatures & ~offered) != 0 || (driverFeatures & Bit(VIRTIO_F_VERSION_1)) == 0)
            {
                value &= ~FEATURES_OK;
            }
            else
            {
                bool eventIdx = (driverFeatures & Bit(VIRTIO_RING_F_EVENT_IDX)) != 0;
                bool indirect = (driverFeatures & Bit(VIRTIO_RING_F_INDIRECT_DESC)) != 0;
                foreach (Virtqueue q in queues)
                {
                    lock (q.Sync) q.SetFeatures(eventIdx, indirect);
                }
            }
        }
        status = value;
        bool wasLive = Live(old);
        bool live = Live(value);
        if (live == wasLive) return;
        foreach (Virtqueue q in queues)
        {
            lock (q.Sync) q.DriverOk = live;
        }
        if (live) KickAll();
    }

    // Queues run once DRIVER_OK is set on top of an accepted FEATURES_OK.
    private static bool Live(uint s) => (s & (DRIVER_OK | FEATURES_OK)) == (DRIVER_OK | FEATURES_OK);

    private void KickAll()
    {
        for (int i = 0; i < queues.Length; i++) device!.Notify(i);
    }

    /// <summary>Device reset (status 0, spec 2.4): queues off and forgotten, the device told, interrupts cleared.</summary>
    private void ResetLocked()
    {
        foreach (Virtqueue q in queues)
        {
            lock (q.Sync) q.Reset(full: true);
        }
        device?.Reset();
        status = 0;
        driverFeatures = 0;
        deviceFeaturesSel = driverFeaturesSel = queueSel = 0;
        Volatile.Write(ref failureReason, null);
        broken = false;
        lock (irqGate)
        {
            interruptStatus = 0;
            UpdateLine();
        }
    }

    /// <summary>A queue saw a used buffer worth an interrupt (called holding the queue's lock).</summary>
    internal void SignalUsed() => Raise(VIRTIO_MMIO_INT_VRING);

    /// <summary>
    /// The guest broke a rule (called from a queue or a device, possibly holding a queue's lock): DEVICE_NEEDS_RESET and
    /// a configuration-change interrupt if DRIVER_OK. The first reason is kept.
    /// </summary>
    internal void Failure(string reason)
    {
        if (Interlocked.CompareExchange(ref failureReason, reason, null) is not null) return;
        broken = true;
        if ((status & DRIVER_OK) != 0) Raise(VIRTIO_MMIO_INT_CONFIG);
    }

    /// <summary>The device changed its configuration space on its own: new generation, configuration interrupt.</summary>
    public void ConfigChanged()
    {
        lock (gate) configGeneration++;
        if ((status & DRIVER_OK) != 0) Raise(VIRTIO_MMIO_INT_CONFIG);
    }

    private void Raise(uint bits)
    {
        lock (irqGate)
        {
            interruptStatus |= bits;
            UpdateLine();
        }
    }

    private void UpdateLine()
    {
        bool level = interruptStatus != 0;
        if (level == lineLevel) return;
        lineLevel = level;
        interrupt(level);
    }

    /// <summary>
    /// Stop all queue processing at a request boundary: waits for a request in flight to be pushed; afterwards the
    /// device neither pops, pushes nor writes guest RAM until <see cref="Resume"/>. Notifications meanwhile are not
    /// lost (<see cref="Resume"/> looks at every queue). The machine calls it before the final dirty-log harvest of a
    /// migration and before <see cref="SaveState"/>.
    /// </summary>
    public void Pause()
    {
        lock (gate)
        {
            paused = true;
            foreach (Virtqueue q in queues)
            {
                lock (q.Sync) q.Suspended = true;
            }
        }
    }

    /// <summary>
    /// Undo <see cref="Pause"/> and let the device look at every queue: on this thread, or with
    /// <paramref name="kickOnPool"/> on a thread-pool thread (a queue in RAM that has not arrived yet, in post-copy, then
    /// blocks that thread, not the caller).
    /// </summary>
    public void Resume(bool kickOnPool = false)
    {
        lock (gate)
        {
            paused = false;
            foreach (Virtqueue q in queues)
            {
                lock (q.Sync) q.Suspended = false;
            }
            if (device is null) return;
            if (!kickOnPool)
            {
                KickAll();
                return;
            }
        }
        ThreadPool.UnsafeQueueUserWorkItem(static v => v.KickIfRunning(), this, preferLocal: false);
    }

    private void KickIfRunning()
    {
        try
        {
            lock (gate)
            {
                if (!paused && device is not null) KickAll();
            }
        }
        catch (Memory.VmLostException)
        {
            // Post-copy was aborted while a request queued before the pause waited here for a page of guest RAM: the
            // guest is gone (the machine stops and reports it), and the request with it. Let out of a pool work item,
            // the exception would end the process before the loss is reported.
        }
    }

    /// <summary>
    /// The guest-visible state as a section: magic "VIRT", version, size, the transport registers, each queue's
    /// configuration and ring positions, then the device-type section. Consistent at a request boundary; for migration
    /// call it while paused (<see cref="Pause"/>).
    /// </summary>
    public byte[] SaveState()
    {
        lock (gate)
        {
            byte[] deviceState = device?.SaveState() ?? [];
            int size = StateFixedSize + queues.Length * QueueStateSize + deviceState.Length;
            var buf = new byte[size];
            var w = new SpanWriter(buf);
            w.U32(StateMagic);
            w.U16(StateVersion);
            w.U16(0);
            w.U32((uint)size);
            w.U32(device?.DeviceId ?? 0);
            w.U32(status);
            w.U32(deviceFeaturesSel);
            w.U32(driverFeaturesSel);
            w.U64(driverFeatures);
            w.U32(queueSel);
            w.U32(InterruptStatus);
            w.U32(configGeneration);
            w.U8(broken ? (byte)1 : (byte)0);
            w.U16((ushort)queues.Length);
            foreach (Virtqueue q in queues)
            {
                Virtqueue.QueueState s;
                lock (q.Sync) s = q.Save();
                w.U16(s.Size);
                w.U8(s.Ready ? (byte)1 : (byte)0);
                w.U64(s.Desc);
                w.U64(s.Avail);
                w.U64(s.Used);
                w.U16(s.LastAvail);
                w.U16(s.UsedIdx);
                w.U16(s.SignalledUsed);
                w.U8(s.SignalledValid ? (byte)1 : (byte)0);
            }
            w.U32((uint)deviceState.Length);
            deviceState.CopyTo(buf.AsSpan(w.Position));
            return buf;
        }
    }

    /// <summary>
    /// Replace the state from <see cref="SaveState"/>'s section (version 1 only). Throws <see cref="InvalidDataException"/>
    /// naming the problem (foreign, other version, another device type or queue count, a queue the driver could not
    /// have configured, rings outside RAM, a device section the device rejects); the transport is unchanged then.
    /// Drives the interrupt line to the restored level and, unless paused, lets the device look at its queues.
    /// </summary>
    public void LoadState(ReadOnlySpan<byte> s)
    {
        if (s.Length < StateFixedSize) throw new InvalidDataException($"virtio section is {s.Length} bytes, less than {StateFixedSize}");
        var r = new SpanReader(s);
        if (r.U32() != StateMagic) throw new InvalidDataException("not a virtio-mmio section");
        ushort version = r.U16();
        if (version != StateVersion) throw new InvalidDataException($"virtio section version {version}, this build reads {StateVersion}");
        r.U16();
        if (r.U32() != (uint)s.Length) throw new InvalidDataException("virtio section size field is wrong");
        uint id = r.U32();
        if (id != (device?.DeviceId ?? 0)) throw new InvalidDataException($"virtio section is for device id {id}, this slot holds {device?.DeviceId ?? 0}");
        uint newStatus = r.U32() & ~DEVICE_NEEDS_RESET;
        uint newDevSel = r.U32();
        uint newDrvSel = r.U32();
        ulong newDriverFeatures = r.U64();
        uint newQueueSel = r.U32();
        uint newInterrupt = r.U32() & (VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
        uint newGeneration = r.U32();
        bool newBroken = r.U8() != 0;
        int queueCount = r.U16();
        if (queueCount != queues.Length) throw new InvalidDataException($"virtio section has {queueCount} queues, the device {queues.Length}");
        if ((newDriverFeatures & ~offered) != 0 && (newStatus & FEATURES_OK) != 0)
        {
            throw new InvalidDataException($"virtio section negotiated features 0x{newDriverFeatures:x} this device does not offer (0x{offered:x})");
        }
        if (s.Length < StateFixedSize + queueCount * QueueStateSize) throw new InvalidDataException("virtio section is too short for its queues");
        var states = new Virtqueue.QueueState[queueCount];
        for (int i = 0; i < queueCount; i++)
        {
            states[i] = new Virtqueue.QueueState(r.U16(), r.U8() != 0, r.U64(), r.U64(), r.U64(), r.U16(), r.U16(), r.U16(), r.U8() != 0);
            if (queues[i].Check(states[i]) is { } error) throw new InvalidDataException($"virtio section: {error}");
        }
        int deviceLength = (int)Math.Min(r.U32(), int.MaxValue);
        if (deviceLength > MaxDeviceStateSize || r.Position + deviceLength != s.Length)
        {
            throw new InvalidDataException("virtio section's device part does not match its size");
        }
        ReadOnlySpan<byte> deviceState = s.Slice(r.Position, deviceLength);
        if (device is null)
        {
            if (deviceLength != 0) throw new InvalidDataException("virtio section for an empty slot carries device state");
            return;
        }

        lock (gate)
        {
            // The device validates its own section before changing anything: the last step that may throw.
            device.LoadState(deviceState);
            foreach (Virtqueue q in queues)
            {
                lock (q.Sync) q.Reset(full: true);
            }
            device.Reset();
            status = newStatus;
            deviceFeaturesSel = newDevSel;
            driverFeaturesSel = newDrvSel;
            driverFeatures = newDriverFeatures;
            queueSel = newQueueSel;
            configGeneration = newGeneration;
            Volatile.Write(ref failureReason, newBroken ? "restored from a device that needed a reset" : null);
            broken = newBroken;
            bool features = (newStatus & FEATURES_OK) != 0;
            for (int i = 0; i < queues.Length; i++)
            {
                Virtqueue q = queues[i];
                lock (q.Sync)
                {
                    q.Load(states[i]);
                    if (features)
                    {
                        q.SetFeatures((newDriverFeatures & Bit(VIRTIO_RING_F_EVENT_IDX)) != 0,
                            (newDriverFeatures & Bit(VIRTIO_RING_F_INDIRECT_DESC)) != 0);
                    }
                    q.DriverOk = Live(newStatus);
                    q.Suspended = paused;
                }
            }
            lock (irqGate)
            {
                interruptStatus = newInterrupt;
                UpdateLine();
            }
            if (!paused && Live(newStatus)) KickAll();
        }
    }

    /// <summary>Stops the device's threads and releases its host resources.</summary>
    /// <summary>
    /// Stop the device for good and dispose of it. A kick that <see cref="Resume"/> queued on the pool and that has not
    /// run yet then does nothing; one running now is waited for (it holds the transport's lock while it reads guest
    /// RAM, which the machine unmaps next; one that waits for a post-copy page is let go by the machine's abort first).
    /// </summary>
    public void Dispose()
    {
        lock (gate) paused = true;
        device?.Dispose();
    }

    private ref struct SpanWriter(Span<byte> buffer)
    {
        private readonly Span<byte> buffer = buffer;
        public int Position { get; private set; }
        public void U8(byte v) => buffer[Position++] = v;
        public void U16(ushort v) { BinaryPrimitives.WriteUInt16LittleEndian(buffer[Position..], v); Position += 2; }
        public void U32(uint v) { BinaryPrimitives.WriteUInt32LittleEndian(buffer[Position..], v); Position += 4; }
        public void U64(ulong v) { BinaryPrimitives.WriteUInt64LittleEndian(buffer[Position..], v); Position += 8; }
    }

    private ref struct SpanReader(ReadOnlySpan<byte> buffer)
    {
        private readonly ReadOnlySpan<byte> buffer = buffer;
        public int Position { get; private set; }
        public byte U8() => buffer[Position++];
        public ushort U16() { ushort v = BinaryPrimitives.ReadUInt16LittleEndian(buffer[Position..]); Position += 2; return v; }
        public uint U32() { uint v = BinaryPrimitives.ReadUInt32LittleEndian(buffer[Position..]); Position += 4; return v; }
        public ulong U64() { ulong v = BinaryPrimitives.ReadUInt64LittleEndian(buffer[Position..]); Position += 8; return v; }
    }
}
