using System.Security.Cryptography;

namespace Ferry.Machine.Virtio;

/// <summary>
/// virtio-rng, the entropy device (virtio 1.2 section 5.4, device ID 4): one request queue whose device-writable
/// buffers are filled from the host's CSPRNG (<see cref="RandomNumberGenerator"/>), written straight into guest RAM.
/// No features, no configuration space, no state.
/// </summary>
/// <remarks>Requests are served inline on the notifying hart's thread: a fill of at most <see cref="MaxRequestBytes"/>
/// costs microseconds, less than waking another thread.</remarks>
public sealed class VirtioRng : IVirtioDevice
{
    /// <summary>The entropy device's ID.</summary>
    public const uint VIRTIO_ID_RNG = 4;

    /// <summary>Queue size offered (QEMU offers 8; Linux keeps one request in flight).</summary>
    public const ushort QueueSize = 64;

    /// <summary>Bytes filled per request at most, so a huge buffer cannot hold a hart for long. Linux asks for 64.</summary>
    public const int MaxRequestBytes = 64 * 1024;

    private Virtqueue? queue;
    private DescriptorChain? chain;

    public uint DeviceId => VIRTIO_ID_RNG;

    public ulong DeviceFeatures => 0;

    public IReadOnlyList<ushort> QueueMaxSizes { get; } = [QueueSize];

    public int ConfigSize => 0;

    public void Attach(IReadOnlyList<Virtqueue> queues)
    {
        ArgumentNullException.ThrowIfNull(queues);
        queue = queues[0];
        chain = queue.CreateChain();
    }

    public void ReadConfig(int offset, Span<byte> data) { }

    public void WriteConfig(int offset, ReadOnlySpan<byte> data) { }

    public void Notify(int queueIndex)
    {
        if (queue is null || chain is null) return;
        lock (queue.Sync)
        {
            while (queue.TryPop(chain))
            {
                int written = 0;
                foreach (DescriptorChain.GuestRange r in chain.Ranges(writable: true, 0, MaxRequestBytes))
                {
                    RandomNumberGenerator.Fill(chain.HostSpan(r));
                    chain.Written(r);
                    written += r.Length;
                }
                queue.Push(chain.Head, (uint)written);
            }
            queue.NotifyIfNeeded();
        }
    }

    public void Reset() { }

    public byte[] SaveState() => [];

    public void LoadState(ReadOnlySpan<byte> state)
    {
        if (!state.IsEmpty) throw new InvalidDataException($"virtio-rng has no state, section holds {state.Length} bytes");
    }

    public void Dispose() { }
}
