using System.Buffers.Binary;

namespace Ferry.Migration.Transport;

/// <summary>
/// First 32 bytes of every TCP connection, before any protocol record, so the listener can group a source's
/// connections into one <see cref="MigrationConnection"/>:
/// magic "FERRYTCP" 8 | connection id 16 | channel index u16 (0 = control, k+1 = page channel k) |
/// page channel count u16 (1..16) | reserved u32 (0).
/// </summary>
internal readonly record struct TransportPreamble(Guid ConnectionId, int ChannelIndex, int PageChannels)
{
    public const int Size = 32;

    private static ReadOnlySpan<byte> Magic => "FERRYTCP"u8;

    public void Write(Span<byte> b)
    {
        Magic.CopyTo(b);
        ConnectionId.TryWriteBytes(b[8..24], bigEndian: true, out _);
        BinaryPrimitives.WriteUInt16LittleEndian(b[24..], (ushort)ChannelIndex);
        BinaryPrimitives.WriteUInt16LittleEndian(b[26..], (ushort)PageChannels);
        BinaryPrimitives.WriteUInt32LittleEndian(b[28..], 0);
    }

    /// <summary>Parse and validate; a bad preamble is a stray or hostile connection.</summary>
    public static TransportPreamble Parse(ReadOnlySpan<byte> b)
    {
        if (!b[..8].SequenceEqual(Magic))
            throw new MigrationTransportException("connection preamble has the wrong magic (not a Ferry migration connection)");
        int index = BinaryPrimitives.ReadUInt16LittleEndian(b[24..]);
        int pages = BinaryPrimitives.ReadUInt16LittleEndian(b[26..]);
        uint reserved = BinaryPrimitives.ReadUInt32LittleEndian(b[28..]);
        if (pages is 0 or > Protocol.MigrationProtocol.MaxPageChannels || index > pages || reserved != 0)
            throw new MigrationTransportException($"connection preamble is invalid (channel {index} of {pages} page channels, reserved 0x{reserved:x})");
        return new TransportPreamble(new Guid(b[8..24], bigEndian: true), index, pages);
    }

    public static string ChannelName(int index) => index == 0 ? "control" : $"pages-{index - 1}";
}
