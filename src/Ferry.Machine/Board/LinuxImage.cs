using System.Buffers.Binary;

namespace Ferry.Machine.Board;

/// <summary>The RISC-V Linux <c>Image</c> header (Documentation/riscv/boot-image-header.rst): checked before loading.</summary>
public static class LinuxImage
{
    private const int HeaderSize = 64;
    private const ulong Magic = 0x5643534952; // "RISCV\0\0\0", little-endian, at offset 48
    private const uint Magic2 = 0x05435352;   // "RSC\x05" at offset 56

    /// <summary>Throws <see cref="MachineConfigException"/> unless <paramref name="image"/> is a RISC-V Linux Image.</summary>
    public static void Check(ReadOnlySpan<byte> image)
    {
        if (image.Length < HeaderSize) throw new MachineConfigException($"the kernel is {image.Length} bytes: too short for a RISC-V Linux Image");
        if (BinaryPrimitives.ReadUInt64LittleEndian(image[48..]) != Magic || BinaryPrimitives.ReadUInt32LittleEndian(image[56..]) != Magic2)
        {
            throw new MachineConfigException("the kernel is not a RISC-V Linux Image (no RISCV magic in its header)");
        }
    }

    /// <summary>Bytes the kernel occupies once running (the header's image_size, at least the file's length).</summary>
    public static ulong LoadSize(ReadOnlySpan<byte> image)
    {
        ulong size = BinaryPrimitives.ReadUInt64LittleEndian(image[16..]);
        return Math.Max(size, (ulong)image.Length);
    }
}
