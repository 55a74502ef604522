using System.Buffers.Binary;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Protocol;

/// <summary>The 8-byte header in front of every record: kind u8, flags u8, reserved u16 (0), payload length u32.</summary>
public readonly record struct RecordHeader(RecordKind Kind, byte Flags, uint PayloadLength)
{
    /// <summary>Encode into the first 8 bytes of <paramref name="destination"/>.</summary>
    public void Write(Span<byte> destination)
    {
        destination[0] = (byte)Kind;
        destination[1] = Flags;
        BinaryPrimitives.WriteUInt16LittleEndian(destination[2..], 0);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[4..], PayloadLength);
    }

    /// <summary>
    /// Decode and validate: known kind, reserved 0, only the kind's defined flag bits, length within the kind's bound.
    /// Nothing after the header has been read when this throws.
    /// </summary>
    public static RecordHeader Parse(ReadOnlySpan<byte> source)
    {
        var kind = (RecordKind)source[0];
        byte flags = source[1];
        ushort reserved = BinaryPrimitives.ReadUInt16LittleEndian(source[2..]);
        uint length = BinaryPrimitives.ReadUInt32LittleEndian(source[4..]);
        long max = MigrationProtocol.MaxPayloadLength(kind);
        if (max < 0)
            throw new MigrationProtocolException($"unknown record kind {(byte)kind} (header {Convert.ToHexString(source[..MigrationProtocol.HeaderSize])})");
        if (reserved != 0)
            throw new MigrationProtocolException($"{kind} record: reserved header field is 0x{reserved:x4}, must be 0");
        byte undefined = (byte)(flags & ~MigrationProtocol.DefinedFlags(kind));
        if (undefined != 0)
            throw new MigrationProtocolException($"{kind} record: undefined flag bits 0x{undefined:x2}");
        if (length > max)
            throw new MigrationProtocolException($"{kind} record claims {length} payload bytes; the limit is {max}");
        return new RecordHeader(kind, flags, length);
    }

    /// <summary>
    /// Read and validate the next header. Returns null if the stream ended cleanly before it (the peer closed
    /// between records).
    /// </summary>
    internal static RecordHeader? Read(IMigrationChannel channel, Span<byte> scratch8)
    {
        if (!channel.ReceiveExactly(scratch8[..MigrationProtocol.HeaderSize])) return null;
        return Parse(scratch8);
    }
}

/// <summary>Small codec helpers shared by the readers and writers.</summary>
internal static class Wire
{
    private static readonly System.Text.UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    /// <summary>
    /// Receive exactly <paramref name="buffer"/>; the record has started, so a clean end is an error, and a transport
    /// one, as an end one byte later is (<see cref="IMigrationChannel.ReceiveExactly"/>): the peer went (a process that
    /// dies closes its sockets cleanly), whatever byte its stream stopped at. A post-copy waits for a resume after a
    /// transport failure; it gave the VM up after a protocol one.
    /// </summary>
    public static void ReceiveBody(IMigrationChannel channel, Span<byte> buffer, RecordKind kind)
    {
        if (buffer.IsEmpty) return;
        if (!channel.ReceiveExactly(buffer))
            throw new MigrationTransportException($"{kind} record: {channel.Name} ended inside the record");
    }

    /// <summary>Encode a protocol string (u16 length + UTF-8), truncated to 1024 bytes at a character boundary.</summary>
    public static int WriteString(Span<byte> destination, string value)
    {
        var body = destination[2..];
        int n;
        if (StrictUtf8.GetMaxByteCount(value.Length) <= MigrationProtocol.MaxStringLength)
        {
            n = StrictUtf8.GetBytes(value, body);
        }
        else
        {
            byte[] all = System.Text.Encoding.UTF8.GetBytes(value); // rare: only long messages
            n = Math.Min(all.Length, MigrationProtocol.MaxStringLength);
            while (n > 0 && n < all.Length && (all[n] & 0xC0) == 0x80) n--; // never split a UTF-8 sequence
            all.AsSpan(0, n).CopyTo(body);
        }
        BinaryPrimitives.WriteUInt16LittleEndian(destination, (ushort)n);
        return 2 + n;
    }

    /// <summary>Decode a protocol string that must fill <paramref name="source"/> exactly.</summary>
    public static string ReadString(ReadOnlySpan<byte> source, RecordKind kind)
    {
        if (source.Length < 2)
            throw new MigrationProtocolException($"{kind} record: too short for its string length");
        int n = BinaryPrimitives.ReadUInt16LittleEndian(source);
        if (n > MigrationProtocol.MaxStringLength)
            throw new MigrationProtocolException($"{kind} record: string of {n} bytes; the limit is {MigrationProtocol.MaxStringLength}");
        if (2 + n != source.Length)
            throw new MigrationProtocolException($"{kind} record: string of {n} bytes does not fill its {source.Length - 2}-byte payload");
        try
        {
            return StrictUtf8.GetString(source.Slice(2, n));
        }
        catch (System.Text.DecoderFallbackException e)
        {
            throw new MigrationProtocolException($"{kind} record: string is not valid UTF-8", e);
        }
    }

    /// <summary>Throw unless a fixed-size payload has exactly its size.</summary>
    public static void ExpectLength(RecordHeader header, int expected)
    {
        if (header.PayloadLength != (uint)expected)
            throw new MigrationProtocolException($"{header.Kind} record: payload is {header.PayloadLength} bytes, must be {expected}");
    }
}
