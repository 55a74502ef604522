using System.Buffers.Binary;

namespace Ferry.Machine;

/// <summary>
/// The 8-byte header every fixed-size device or hart section starts with: magic (u32), version (u16), total size
/// (u16), little-endian. One check for all of them, so each names its problem the same way.
/// </summary>
internal static class StateHeader
{
    public const int Size = 8;

    public static void Write(Span<byte> section, uint magic, ushort version)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(section, magic);
        BinaryPrimitives.WriteUInt16LittleEndian(section[4..], version);
        BinaryPrimitives.WriteUInt16LittleEndian(section[6..], checked((ushort)section.Length));
    }

    /// <summary>
    /// Throws <see cref="InvalidDataException"/> naming <paramref name="what"/> unless <paramref name="section"/> is
    /// <paramref name="size"/> bytes with this magic, version and size field.
    /// </summary>
    public static void Check(ReadOnlySpan<byte> section, string what, uint magic, ushort version, int size)
    {
        if (section.Length < Size) throw new InvalidDataException($"{what} section is {section.Length} bytes, shorter than its header");
        if (BinaryPrimitives.ReadUInt32LittleEndian(section) != magic) throw new InvalidDataException($"not a {what} section");
        ushort v = BinaryPrimitives.ReadUInt16LittleEndian(section[4..]);
        if (v != version) throw new InvalidDataException($"{what} section version {v}, this build reads {version}");
        if (section.Length != size) throw new InvalidDataException($"{what} section is {section.Length} bytes, expected {size}");
        if (BinaryPrimitives.ReadUInt16LittleEndian(section[6..]) != size) throw new InvalidDataException($"{what} section size field is wrong");
    }
}
