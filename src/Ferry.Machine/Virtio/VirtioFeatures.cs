namespace Ferry.Machine.Virtio;

/// <summary>
/// Feature bits, status bits and interrupt bits of virtio 1.2 (spec 2.1, 2.2, 6; <c>linux/virtio_config.h</c>,
/// <c>virtio_ring.h</c>), with the spec's names. Device-type bits live with their device.
/// </summary>
public static class VirtioFeatures
{
    /// <summary>Descriptors may point at a table of descriptors (spec 2.7.5.3).</summary>
    public const int VIRTIO_RING_F_INDIRECT_DESC = 28;

    /// <summary>used_event / avail_event suppress notifications (spec 2.7.7, 2.7.10).</summary>
    public const int VIRTIO_RING_F_EVENT_IDX = 29;

    /// <summary>A modern (1.x) device; the only kind Ferry offers, and the driver must accept it.</summary>
    public const int VIRTIO_F_VERSION_1 = 32;

    /// <summary>Device status bits (spec 2.1).</summary>
    public const uint ACKNOWLEDGE = 1, DRIVER = 2, DRIVER_OK = 4, FEATURES_OK = 8, DEVICE_NEEDS_RESET = 64, FAILED = 128;

    /// <summary>InterruptStatus bits (spec 4.2.2): a used buffer, a configuration change.</summary>
    public const uint VIRTIO_MMIO_INT_VRING = 1, VIRTIO_MMIO_INT_CONFIG = 2;

    /// <summary>The bit for feature <paramref name="bit"/> in a 64-bit feature word.</summary>
    public static ulong Bit(int bit) => 1UL << bit;
}
