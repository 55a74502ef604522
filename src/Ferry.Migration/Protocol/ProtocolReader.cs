using System.Buffers.Binary;
using System.IO.Hashing;
using Ferry.Migration.Guest;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Protocol;

/// <summary>
/// Reads control records from one channel (one reading thread at a time). Every header is validated before its
/// payload is read; payloads go into one fixed 64 KiB scratch buffer, except a state section's data, which is
/// allocated at exactly its length after the 4 MiB bound was checked.
/// </summary>
public sealed class ProtocolReader
{
    private readonly IMigrationChannel _channel;
    // Payload buffer for every control record (largest control payload is Hello's 4 KiB bound).
    private readonly byte[] _scratch = new byte[MigrationProtocol.ControlScratchBytes];
    // Reused for state section checksums.
    private readonly XxHash3 _hash = new();

    public ProtocolReader(IMigrationChannel channel)
    {
        ArgumentNullException.ThrowIfNull(channel);
        _channel = channel;
    }

    /// <summary>
    /// The next control record, or null if the peer closed the channel cleanly between records.
    /// Throws <see cref="MigrationProtocolException"/> for a malformed record and <see cref="MigrationTransportException"/>
    /// when the channel fails (reset, timeout, closed inside a header).
    /// </summary>
    public ControlMessage? Read()
    {
        var header = RecordHeader.Read(_channel, _scratch);
        if (header is not { } h) return null;
        if (h.Kind is RecordKind.PageBatch or RecordKind.Flush)
            throw new MigrationProtocolException($"{h.Kind} record on {_channel.Name}: only allowed on page channels");
        if (h.Kind == RecordKind.StateSection) return ReadStateSection(h);
        var payload = _scratch.AsSpan(0, (int)h.PayloadLength); // bounded by MaxPayloadLength (<= 4 KiB)
        Wire.ReceiveBody(_channel, payload, h.Kind);
        return Decode(h, payload);
    }

    /// <summary>
    /// The next record that is not a Keepalive, which must be a <typeparamref name="T"/>. Refuse, Cancel and Error
    /// from the peer throw <see cref="MigrationPeerException"/>; any other kind throws
    /// <see cref="MigrationProtocolException"/>; a clean close throws <see cref="MigrationTransportException"/>.
    /// </summary>
    public T Expect<T>() where T : ControlMessage
    {
        while (true)
        {
            var m = Read() ?? throw new MigrationTransportException($"{_channel.Name}: peer closed the channel while {typeof(T).Name} was expected");
            switch (m)
            {
                case T t: return t;
                case KeepaliveMessage: continue;
                default: throw Unexpected(m, typeof(T).Name);
            }
        }
    }

    /// <summary>The exception for receiving <paramref name="m"/> when <paramref name="expected"/> was due.</summary>
    public static MigrationException Unexpected(ControlMessage m, string expected)
    {
        ArgumentNullException.ThrowIfNull(m);
        return m switch
        {
            RefuseMessage r => new MigrationPeerException(RecordKind.Refuse, ProtocolErrorCode.None, r.Reason),
            CancelMessage c => new MigrationPeerException(RecordKind.Cancel, ProtocolErrorCode.None, c.Reason),
            ErrorMessage e => new MigrationPeerException(RecordKind.Error, e.Code, e.Message),
            _ => new MigrationProtocolException($"{m.Kind} record arrived where {expected} was expected"),
        };
    }

    /// <summary>The runs of a MissingPages or PopulatedPages payload (region u16, count u16, runs), each non-empty.</summary>
    private static (ulong, uint)[] ReadRuns(string what, RecordHeader header, ReadOnlySpan<byte> payload, bool allowNone)
    {
        if (payload.Length < MigrationProtocol.MissingPagesFixedSize)
            throw new MigrationProtocolException($"{what} record: payload of {payload.Length} bytes is too short");
        int count = BinaryPrimitives.ReadUInt16LittleEndian(payload[2..]);
        if ((count == 0 && !allowNone) || count > MigrationProtocol.MaxMissingRuns)
            throw new MigrationProtocolException($"{what} record: {count} runs; {(allowNone ? 0 : 1)}..{MigrationProtocol.MaxMissingRuns} allowed");
        Wire.ExpectLength(header, MigrationProtocol.MissingPagesFixedSize + (count * MigrationProtocol.MissingRunSize));
        var runs = new (ulong, uint)[count];
        for (int i = 0, o = MigrationProtocol.MissingPagesFixedSize; i < count; i++, o += MigrationProtocol.MissingRunSize)
        {
            runs[i] = (BinaryPrimitives.ReadUInt64LittleEndian(payload[o..]), BinaryPrimitives.ReadUInt32LittleEndian(payload[(o + 8)..]));
            if (runs[i].Item2 == 0) throw new MigrationProtocolException($"{what} record: run {i} is empty");
        }
        return runs;
    }

    /// <summary>
    /// Decode a complete control payload (any kind but PageBatch and Flush). Used by <see cref="Read"/>; public for
    /// tests and tools that hold a record in memory.
    /// </summary>
    public static ControlMessage Decode(RecordHeader header, ReadOnlySpan<byte> payload)
    {
        if (payload.Length != header.PayloadLength)
            throw new ArgumentException("payload length differs from the header's", nameof(payload));
        switch (header.Kind)
        {
            case RecordKind.Hello: return DecodeHello(payload);
            case RecordKind.Welcome:
                {
                    Wire.ExpectLength(header, 10);
                    ushort version = BinaryPrimitives.ReadUInt16LittleEndian(payload);
                    if (version is < MigrationProtocol.OldestSupportedVersion or > MigrationProtocol.CurrentVersion)
                        throw new MigrationProtocolException($"Welcome record: the destination chose protocol version {version}; this source speaks {MigrationProtocol.OldestSupportedVersion}..{MigrationProtocol.CurrentVersion}");
                    return new WelcomeMessage(version, (ProtocolCapabilities)BinaryPrimitives.ReadUInt64LittleEndian(payload[2..]));
                }
            case RecordKind.Refuse: return new RefuseMessage(Wire.ReadString(payload, header.Kind));
            case RecordKind.Cancel: return new CancelMessage(Wire.ReadString(payload, header.Kind));
            case RecordKind.Error:
                {
                    if (payload.Length < 4)
                        throw new MigrationProtocolException($"Error record: payload of {payload.Length} bytes is too short for a code and a string");
                    var code = (ProtocolErrorCode)BinaryPrimitives.ReadUInt16LittleEndian(payload);
                    if (code == ProtocolErrorCode.None)
                        throw new MigrationProtocolException("Error record: code 0 is reserved");
                    return new ErrorMessage(code, Wire.ReadString(payload[2..], header.Kind));
                }
            case RecordKind.Complete:
                Wire.ExpectLength(header, 8);
                return new CompleteMessage(BinaryPrimitives.ReadUInt64LittleEndian(payload), (CompleteFlags)header.Flags);
            case RecordKind.Ready:
                {
                    bool digest = (header.Flags & (byte)ReadyFlags.DigestPresent) != 0;
                    Wire.ExpectLength(header, digest ? 28 : 12);
                    return new ReadyMessage(
                        BinaryPrimitives.ReadUInt32LittleEndian(payload),
                        BinaryPrimitives.ReadUInt32LittleEndian(payload[4..]),
                        digest ? BinaryPrimitives.ReadUInt128LittleEndian(payload[12..]) : null,
                        BinaryPrimitives.ReadInt32LittleEndian(payload[8..]));
                }
            case RecordKind.Commit:
                Wire.ExpectLength(header, 0);
                return CommitMessage.Instance;
            case RecordKind.Resumed:
                Wire.ExpectLength(header, 4);
                return new ResumedMessage(BinaryPrimitives.ReadUInt32LittleEndian(payload));
            case RecordKind.Keepalive:
                Wire.ExpectLength(header, 8);
                return new KeepaliveMessage(BinaryPrimitives.ReadUInt64LittleEndian(payload));
            case RecordKind.PageRequest:
                {
                    Wire.ExpectLength(header, 14);
                    uint count = BinaryPrimitives.ReadUInt32LittleEndian(payload[10..]);
                    if (count is 0 or > MigrationProtocol.MaxRequestPages)
                        throw new MigrationProtocolException($"PageRequest record: count {count} outside 1..{MigrationProtocol.MaxRequestPages}");
                    return new PageRequestMessage(BinaryPrimitives.ReadUInt16LittleEndian(payload), BinaryPrimitives.ReadUInt64LittleEndian(payload[2..]), count);
                }
            case RecordKind.MissingPages:
                {
                    // The runs first: they check the payload's length before anything is read from it.
                    var runs = ReadRuns("MissingPages", header, payload, allowNone: false);
                    return new MissingPagesMessage(BinaryPrimitives.ReadUInt16LittleEndian(payload), runs);
                }
            case RecordKind.PopulatedPages:
                {
                    bool last = (header.Flags & PopulatedPagesMessage.LastFlag) != 0;
                    var runs = ReadRuns("PopulatedPages", header, payload, allowNone: last);
                    return new PopulatedPagesMessage(BinaryPrimitives.ReadUInt16LittleEndian(payload), runs, last);
                }
            case RecordKind.ResumeReady:
                Wire.ExpectLength(header, 8);
                return new ResumeReadyMessage(BinaryPrimitives.ReadUInt64LittleEndian(payload));
            case RecordKind.PostcopyDone:
                {
                    bool digest = (header.Flags & (byte)ReadyFlags.DigestPresent) != 0;
                    Wire.ExpectLength(header, MigrationProtocol.PostcopyDoneFixedSize + (digest ? 16 : 0));
                    return new PostcopyDoneMessage(
                        BinaryPrimitives.ReadUInt32LittleEndian(payload),
                        BinaryPrimitives.ReadUInt32LittleEndian(payload[4..]),
                        BinaryPrimitives.ReadUInt32LittleEndian(payload[8..]),
                        BinaryPrimitives.ReadUInt32LittleEndian(payload[12..]),
                        BinaryPrimitives.ReadUInt64LittleEndian(payload[16..]),
                        BinaryPrimitives.ReadUInt64LittleEndian(payload[24..]),
                        BinaryPrimitives.ReadUInt64LittleEndian(payload[32..]),
                        BinaryPrimitives.ReadUInt64LittleEndian(payload[40..]),
                        digest ? BinaryPrimitives.ReadUInt128LittleEndian(payload[MigrationProtocol.PostcopyDoneFixedSize..]) : null);
                }
            case RecordKind.StateSection:
                {
                    var (name, version, dataLength, prefix) = ParseSectionPrefix(header, payload);
                    if (payload.Length < prefix + dataLength + MigrationProtocol.TrailerSize)
                        throw new MigrationProtocolException($"StateSection '{name}': truncated");
                    ulong sum = BinaryPrimitives.ReadUInt64LittleEndian(payload[(prefix + dataLength)..]);
                    if (XxHash3.HashToUInt64(payload[..(prefix + dataLength)]) != sum)
                        throw new MigrationProtocolException($"StateSection '{name}': checksum mismatch");
                    return new StateSectionMessage(new StateSection(name, version, payload.Slice(prefix, dataLength).ToArray()));
                }
            default:
                throw new MigrationProtocolException($"{header.Kind} record cannot be decoded as a control record");
        }
    }

    private StateSectionMessage ReadStateSection(RecordHeader h)
    {
        // Name length first: it bounds how much of the prefix there is.
        var p = _scratch.AsSpan();
        if (h.PayloadLength < 1 + 8 + MigrationProtocol.TrailerSize)
            throw new MigrationProtocolException($"StateSection record: payload of {h.PayloadLength} bytes is too short");
        Wire.ReceiveBody(_channel, p[..1], h.Kind);
        int nameLength = p[0];
        if (nameLength is 0 or > MigrationProtocol.MaxSectionNameLength)
            throw new MigrationProtocolException($"StateSection record: name length {nameLength} outside 1..{MigrationProtocol.MaxSectionNameLength}");
        if (h.PayloadLength < 1 + nameLength + 8 + MigrationProtocol.TrailerSize)
            throw new MigrationProtocolException($"StateSection record: payload of {h.PayloadLength} bytes is too short for a {nameLength}-byte name");
        Wire.ReceiveBody(_channel, p.Slice(1, nameLength + 8), h.Kind);
        var (name, version, dataLength, prefix) = ParseSectionPrefix(h, p[..(1 + nameLength + 8)]);
        // Bound checked in ParseSectionPrefix; this is the one peer-sized allocation in the control path.
        var data = dataLength == 0 ? [] : GC.AllocateUninitializedArray<byte>(dataLength);
        Wire.ReceiveBody(_channel, data, h.Kind);
        Wire.ReceiveBody(_channel, p.Slice(prefix, MigrationProtocol.TrailerSize), h.Kind);
        _hash.Reset();
        _hash.Append(p[..prefix]);
        _hash.Append(data);
        if (_hash.GetCurrentHashAsUInt64() != BinaryPrimitives.ReadUInt64LittleEndian(p[prefix..]))
            throw new MigrationProtocolException($"StateSection '{name}' (version {version}, {dataLength} bytes): checksum mismatch");
        return new StateSectionMessage(new StateSection(name, version, data));
    }

    /// <summary>Name, version and data length, validated against the header's payload length.</summary>
    private static (string Name, uint Version, int DataLength, int Prefix) ParseSectionPrefix(RecordHeader h, ReadOnlySpan<byte> p)
    {
        if (p.Length < 1)
            throw new MigrationProtocolException("StateSection record: empty payload");
        int n = p[0];
        if (n is 0 or > MigrationProtocol.MaxSectionNameLength)
            throw new MigrationProtocolException($"StateSection record: name length {n} outside 1..{MigrationProtocol.MaxSectionNameLength}");
        if (p.Length < 1 + n + 8)
            throw new MigrationProtocolException("StateSection record: truncated before its data length");
        var nameBytes = p.Slice(1, n);
        foreach (byte b in nameBytes)
        {
            if (b is < 0x20 or > 0x7e)
                throw new MigrationProtocolException($"StateSection record: name byte 0x{b:x2} is not printable ASCII");
        }
        string name = System.Text.Encoding.ASCII.GetString(nameBytes);
        uint version = BinaryPrimitives.ReadUInt32LittleEndian(p[(1 + n)..]);
        uint dataLength = BinaryPrimitives.ReadUInt32LittleEndian(p[(1 + n + 4)..]);
        if (dataLength > MigrationProtocol.MaxSectionDataLength)
            throw new MigrationProtocolException($"StateSection '{name}': data of {dataLength} bytes; the limit is {MigrationProtocol.MaxSectionDataLength}");
        int prefix = 1 + n + 8;
        if (h.PayloadLength != (ulong)prefix + dataLength + MigrationProtocol.TrailerSize)
            throw new MigrationProtocolException($"StateSection '{name}': payload is {h.PayloadLength} bytes but its fields need {prefix + dataLength + MigrationProtocol.TrailerSize}");
        return (name, version, (int)dataLength, prefix);
    }

    private static HelloMessage DecodeHello(ReadOnlySpan<byte> p)
    {
        if (p.Length < 10 || !p[..8].SequenceEqual(MigrationProtocol.Magic))
            throw new MigrationProtocolException($"Hello record: bad magic {Convert.ToHexString(p[..Math.Min(8, p.Length)])}, expected \"FERRYMIG\" (not a Ferry migration stream)");
        ushort version = BinaryPrimitives.ReadUInt16LittleEndian(p[8..]);
        // The version decides the layout of everything after it, so it is checked before any other field.
        if (version is < MigrationProtocol.OldestSupportedVersion or > MigrationProtocol.CurrentVersion)
            throw new MigrationProtocolException($"Hello record: protocol version {version} is not supported; this receiver accepts {MigrationProtocol.OldestSupportedVersion}..{MigrationProtocol.CurrentVersion}");
        if (p.Length < MigrationProtocol.HelloFixedSize + 2)
            throw new MigrationProtocolException($"Hello record: {p.Length} bytes is too short");
        var vmId = new Guid(p[10..26], bigEndian: true);
        uint pageSize = BinaryPrimitives.ReadUInt32LittleEndian(p[26..]);
        if (pageSize != MigrationProtocol.PageSize)
            throw new MigrationProtocolException($"Hello record: page size {pageSize} is not supported (only {MigrationProtocol.PageSize})");
        ushort channels = BinaryPrimitives.ReadUInt16LittleEndian(p[30..]);
        if (channels is 0 or > MigrationProtocol.MaxPageChannels)
            throw new MigrationProtocolException($"Hello record: {channels} page channels; 1..{MigrationProtocol.MaxPageChannels} allowed");
        var caps = (ProtocolCapabilities)BinaryPrimitives.ReadUInt64LittleEndian(p[32..]);
        int count = BinaryPrimitives.ReadUInt16LittleEndian(p[40..]);
        if (count is 0 or > MigrationProtocol.MaxRegions)
            throw new MigrationProtocolException($"Hello record: {count} memory regions; 1..{MigrationProtocol.MaxRegions} allowed");
        int o = MigrationProtocol.HelloFixedSize;
        if (p.Length < o + (count * 16) + 2)
            throw new MigrationProtocolException($"Hello record: {p.Length} bytes cannot hold {count} regions");
        var regions = new (ulong, ulong)[count];
        for (int i = 0; i < count; i++, o += 16)
            regions[i] = (BinaryPrimitives.ReadUInt64LittleEndian(p[o..]), BinaryPrimitives.ReadUInt64LittleEndian(p[(o + 8)..]));
        // Structure only (aligned, sorted, disjoint); the total is the receiver's policy (MigrationProtocol.Evaluate).
        MigrationProtocol.ValidateRegions(regions, ulong.MaxValue);
        int tokenLength = BinaryPrimitives.ReadUInt16LittleEndian(p[o..]);
        if (tokenLength > MigrationProtocol.MaxTokenLength)
            throw new MigrationProtocolException($"Hello record: token of {tokenLength} bytes; the limit is {MigrationProtocol.MaxTokenLength}");
        if (p.Length != o + 2 + tokenLength)
            throw new MigrationProtocolException($"Hello record: payload is {p.Length} bytes but its fields need {o + 2 + tokenLength}");
        return new HelloMessage(version, vmId, pageSize, channels, caps, regions, p.Slice(o + 2, tokenLength).ToArray());
    }
}
