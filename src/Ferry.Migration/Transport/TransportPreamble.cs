using System.Buffers.Binary;

namespace Ferry.Migration.Transport;

/// <summary>
/// First 32 bytes of every TCP connection, before any protocol record, so the listener can group a source's
/// connections into one <see cref="MigrationConnection"/>:
/// magic "FERRYTCP" 8 | connection id 16 | channel index u16 (0 = control, k+1 = page channel k) |
/// page channel count u16 (1..16) | urgent u8 (0 or 1) | reserved u8[3] (0).
/// With urgent = 1 the group has one more member, index count + 1: the post-copy urgent channel, which carries
/// faulted pages so they never queue behind bulk pages (capability UrgentChannel).
/// </summary>
internal readonly record struct TransportPreamble(Guid ConnectionId, int ChannelIndex, int PageChannels, bool Urgent = false)
{
    public const int Size = 32;

    private static ReadOnlySpan<byte> Magic => "FERRYTCP"u8;

    public void Write(Span<byte> b)
    {
        Magic.CopyTo(b);
        ConnectionId.TryWriteBytes(b[8..24], bigEndian: true, out _);
        BinaryPrimitives.WriteUInt16LittleEndian(b[24..], (ushort)ChannelIndex);
        BinaryPrimitives.WriteUInt16LittleEndian(b[26..], (ushort)PageChannels);
        b[28] = Urgent ? (byte)1 : (byte)0;
        b[29] = b[30] = b[31] = 0;
    }

    /// <summary>Parse and validate; a bad preamble is a stray or hostile connection.</summary>
    public static TransportPreamble Parse(ReadOnlySpan<byte> b)
    {
        if (!b[..8].SequenceEqual(Magic))
            throw new MigrationTransportException("connection preamble has the wrong magic (not a Ferry migration connection)");
        int index = BinaryPrimitives.ReadUInt16LittleEndian(b[24..]);
        int pages = BinaryPrimitives.ReadUInt16LittleEndian(b[26..]);
        byte urgent = b[28];
        uint reserved = (uint)(b[29] | (b[30] << 8) | (b[31] << 16));
        if (pages is 0 or > Protocol.MigrationProtocol.MaxPageChannels || urgent > 1 || index > pages + urgent || reserved != 0)
            throw new MigrationTransportException($"connection preamble is invalid (channel {index} of {pages} page channels, urgent {urgent}, reserved 0x{reserved:x})");
        return new TransportPreamble(new Guid(b[8..24], bigEndian: true), index, pages, urgent == 1);
    }

    /// <summary>Members in the group: control, the page channels, and the urgent channel if any.</summary>
    public int GroupSize => PageChannels + 1 + (Urgent ? 1 : 0);

    public static string ChannelName(int index, int pageChannels = int.MaxValue) =>
        index == 0 ? "control" : index > pageChannels ? "urgent" : $"pages-{index - 1}";
}
