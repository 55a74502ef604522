using System.Buffers.Binary;
using System.IO.Hashing;

namespace Ferry.Migration.InProcess;

/// <summary>
/// Section "device", version 1: a stand-in for an emulated device's registers and queues, 2 KiB (about a virtio
/// device's config space plus queue state) of seed-derived bytes ending in their CRC-32. It is opaque to the engine;
/// it exists so a migration moves more than one section and so a corrupted or truncated section is caught on load.
/// </summary>
internal static class DeviceState
{
    public const string SectionName = "device";
    public const uint SectionVersion = 1;
    public const int Size = 2048;

    public static byte[] Create(ulong seed)
    {
        var data = new byte[Size];
        var rng = WriterState.Seeded(seed, -7); // a stream no writer uses (writers are 0..255)
        for (int i = 0; i < Size - 4; i += 4)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(data.AsSpan(i), (uint)rng.Next());
        }

        BinaryPrimitives.WriteUInt32LittleEndian(data.AsSpan(Size - 4), Crc32.HashToUInt32(data.AsSpan(0, Size - 4)));
        return data;
    }

    public static byte[] Validate(ReadOnlySpan<byte> data)
    {
        if (data.Length != Size)
        {
            throw new InvalidDataException($"device section is {data.Length} bytes, expected {Size}");
        }

        if (BinaryPrimitives.ReadUInt32LittleEndian(data[^4..]) != Crc32.HashToUInt32(data[..^4]))
        {
            throw new InvalidDataException("device section checksum mismatch");
        }

        return data.ToArray();
    }
}
