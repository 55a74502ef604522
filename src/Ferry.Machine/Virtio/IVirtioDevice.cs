namespace Ferry.Machine.Virtio;

/// <summary>
/// A virtio device type behind the transport (<see cref="VirtioMmio"/>): what the guest sees in DeviceID, the
/// device-type feature bits, the configuration space, and the work done on its queues.
/// </summary>
/// <remarks>
/// <para>Call order: the transport calls <see cref="Attach"/> once from its constructor, then any of the others.
/// <see cref="Dispose"/> comes last.</para>
/// <para>Threading: <see cref="ReadConfig"/>, <see cref="WriteConfig"/> and <see cref="Notify"/> run on the hart thread
/// that made the MMIO access, several at once. <see cref="Notify"/> must be quick: it runs a short request inline or
/// wakes the device's own thread. Every access to a <see cref="Virtqueue"/> (pop, push, notify) is made holding that
/// queue's <see cref="Virtqueue.Sync"/>; the transport takes the same lock to reset, pause or save a queue, so a device
/// that holds it across one request (pop, I/O, push) never has a request cut in half. A device must never call back
/// into the transport's registers while holding it.</para>
/// <para><see cref="Reset"/> is called under the transport's lock after every queue has been reset (so no further pop
/// succeeds): the device drops what it holds for the guest (a received packet waiting for a buffer) and keeps running.</para>
/// </remarks>
public interface IVirtioDevice : IDisposable
{
    /// <summary>The virtio device ID (spec 5): 1 net, 2 block, 4 entropy.</summary>
    uint DeviceId { get; }

    /// <summary>Device-type feature bits offered; the transport adds VERSION_1, INDIRECT_DESC and EVENT_IDX.</summary>
    ulong DeviceFeatures { get; }

    /// <summary>Largest size of each queue (the number of queues is the array's length; each a power of 2).</summary>
    IReadOnlyList<ushort> QueueMaxSizes { get; }

    /// <summary>Bytes of configuration space; reads beyond it return zeros.</summary>
    int ConfigSize { get; }

    /// <summary>Receives the transport's queues, one per entry of <see cref="QueueMaxSizes"/>, in order.</summary>
    void Attach(IReadOnlyList<Virtqueue> queues);

    /// <summary>Read <paramref name="data"/>.Length bytes of configuration space at <paramref name="offset"/> (in range).</summary>
    void ReadConfig(int offset, Span<byte> data);

    /// <summary>The driver wrote configuration space (in range); read-only fields ignore it.</summary>
    void WriteConfig(int offset, ReadOnlySpan<byte> data);

    /// <summary>
    /// The driver made buffers available on queue <paramref name="queue"/>, or the transport asks the device to look
    /// (the queue became live, processing resumed after a pause or a state load).
    /// </summary>
    void Notify(int queue);

    /// <summary>The driver reset the device (status 0); queues are already reset.</summary>
    void Reset();

    /// <summary>Guest-visible device-type state as a section (configuration the guest could have changed).</summary>
    byte[] SaveState();

    /// <summary>
    /// Replace the device-type state from <see cref="SaveState"/>'s section; throws <see cref="InvalidDataException"/>
    /// (device unchanged) if it cannot be used here, e.g. a disk of another size.
    /// </summary>
    void LoadState(ReadOnlySpan<byte> state);
}
