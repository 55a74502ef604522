using System.Buffers.Binary;
using System.IO.Hashing;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Ferry.Migration.Guest;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Protocol;

/// <summary>
/// Writes control records to one channel. Each record goes out in a single <see cref="IMigrationChannel.Send"/> (or
/// one <see cref="IMigrationChannel.SendGather"/> for a state section larger than the scratch buffer), under a lock,
/// so a keepalive timer thread and the migration thread may share one writer without interleaving records.
/// </summary>
public sealed class ProtocolWriter
{
    private readonly IMigrationChannel _channel;
    // Encoding buffer for every control record; pinned because state sections are sent from it with SendGather.
    private readonly byte[] _scratch = GC.AllocateArray<byte>(MigrationProtocol.ControlScratchBytes, pinned: true);
    // Serialises whole records (keepalives come from another thread).
    private readonly Lock _lock = new();
    // Reused for state section checksums.
    private readonly XxHash3 _hash = new();

    public ProtocolWriter(IMigrationChannel channel)
    {
        ArgumentNullException.ThrowIfNull(channel);
        _channel = channel;
    }

    public void WriteHello(HelloMessage hello) => Write(hello);
    public void WriteWelcome(ProtocolCapabilities capabilities, ushort version = MigrationProtocol.CurrentVersion) => Write(new WelcomeMessage(version, capabilities));
    public void WriteRefuse(string reason) => Write(new RefuseMessage(reason));
    public void WriteComplete(ulong flushSequence, CompleteFlags flags) => Write(new CompleteMessage(flushSequence, flags));
    public void WriteReady(uint digestMicroseconds, uint loadMicroseconds, UInt128? digest, int flushLagMicroseconds = 0) => Write(new ReadyMessage(digestMicroseconds, loadMicroseconds, digest, flushLagMicroseconds));
    public void WriteCommit() => Write(CommitMessage.Instance);
    public void WriteResumed(uint resumeMicroseconds) => Write(new ResumedMessage(resumeMicroseconds));
    public void WriteCancel(string reason) => Write(new CancelMessage(reason));
    public void WriteError(ProtocolErrorCode code, string message) => Write(new ErrorMessage(code, message));
    public void WriteKeepalive(ulong timestamp) => Write(new KeepaliveMessage(timestamp));
    public void WritePageRequest(ushort region, ulong firstPage, uint count) => Write(new PageRequestMessage(region, firstPage, count));

    /// <summary>
    /// Send a PageRequest without allocating (the destination's fault path); same record as
    /// <see cref="WritePageRequest"/>.
    /// </summary>
    public void WritePageRequestNoAlloc(ushort region, ulong firstPage, uint count)
    {
        lock (_lock)
        {
            var p = _scratch.AsSpan(MigrationProtocol.HeaderSize);
            BinaryPrimitives.WriteUInt16LittleEndian(p, region);
            BinaryPrimitives.WriteUInt64LittleEndian(p[2..], firstPage);
            BinaryPrimitives.WriteUInt32LittleEndian(p[10..], count);
            new RecordHeader(RecordKind.PageRequest, 0, 14).Write(_scratch);
            _channel.Send(_scratch.AsSpan(0, MigrationProtocol.HeaderSize + 14));
        }
    }

    /// <summary>Send one state section (name and version checked here; a bad one is the caller's bug).</summary>
    public void WriteStateSection(StateSection section)
    {
        ArgumentNullException.ThrowIfNull(section);
        lock (_lock)
        {
            var data = section.Data.Span;
            int prefix = EncodeSectionPrefix(section, _scratch);
            _hash.Reset();
            _hash.Append(_scratch.AsSpan(MigrationProtocol.HeaderSize, prefix - MigrationProtocol.HeaderSize));
            _hash.Append(data);
            ulong sum = _hash.GetCurrentHashAsUInt64();
            if (prefix + data.Length + MigrationProtocol.TrailerSize <= _scratch.Length)
            {
                data.CopyTo(_scratch.AsSpan(prefix));
                BinaryPrimitives.WriteUInt64LittleEndian(_scratch.AsSpan(prefix + data.Length), sum);
                _channel.Send(_scratch.AsSpan(0, prefix + data.Length + MigrationProtocol.TrailerSize));
                return;
            }
            // Large section: gather prefix, the caller's data (pinned for the call) and the trailer in one send.
            BinaryPrimitives.WriteUInt64LittleEndian(_scratch.AsSpan(prefix), sum);
            using var pin = section.Data.Pin();
            Span<IoSegment> segments = stackalloc IoSegment[3];
            unsafe
            {
                // SAFETY: _scratch is a pinned array and the data is pinned by `pin` until SendGather returns.
                nint scratch = (nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_scratch));
                segments[0] = new IoSegment(scratch, prefix);
                segments[1] = new IoSegment((nint)pin.Pointer, data.Length);
                segments[2] = new IoSegment(scratch + prefix, MigrationProtocol.TrailerSize);
            }
            _channel.SendGather(segments);
        }
    }

    /// <summary>Send any control record.</summary>
    public void Write(ControlMessage message)
    {
        ArgumentNullException.ThrowIfNull(message);
        if (message is StateSectionMessage s)
        {
            WriteStateSection(s.Section);
            return;
        }
        lock (_lock)
        {
            int n = Encode(message, _scratch);
            _channel.Send(_scratch.AsSpan(0, n));
        }
    }

    /// <summary>
    /// Encode a whole record (header and payload) into <paramref name="destination"/>; returns its length.
    /// Arguments outside the protocol's limits throw <see cref="ArgumentException"/>: sending them is a local bug.
    /// </summary>
    public static int Encode(ControlMessage message, Span<byte> destination)
    {
        ArgumentNullException.ThrowIfNull(message);
        var p = destination[MigrationProtocol.HeaderSize..];
        int length;
        byte flags = 0;
        switch (message)
        {
            case HelloMessage h:
                length = EncodeHello(h, p);
                break;
            case WelcomeMessage w:
                BinaryPrimitives.WriteUInt16LittleEndian(p, w.Version);
                BinaryPrimitives.WriteUInt64LittleEndian(p[2..], (ulong)w.Capabilities);
                length = 10;
                break;
            case RefuseMessage r:
                length = Wire.WriteString(p, r.Reason);
                break;
            case CancelMessage c:
                length = Wire.WriteString(p, c.Reason);
                break;
            case ErrorMessage e:
                BinaryPrimitives.WriteUInt16LittleEndian(p, (ushort)e.Code);
                length = 2 + Wire.WriteString(p[2..], e.Message);
                break;
            case CompleteMessage c:
                BinaryPrimitives.WriteUInt64LittleEndian(p, c.FlushSequence);
                flags = (byte)c.Flags;
                length = 8;
                break;
            case ReadyMessage r:
                BinaryPrimitives.WriteUInt32LittleEndian(p, r.DigestMicroseconds);
                BinaryPrimitives.WriteUInt32LittleEndian(p[4..], r.LoadMicroseconds);
                BinaryPrimitives.WriteInt32LittleEndian(p[8..], r.FlushLagMicroseconds);
                length = 12;
                if (r.Digest is { } d)
                {
                    BinaryPrimitives.WriteUInt128LittleEndian(p[12..], d);
                    flags = (byte)ReadyFlags.DigestPresent;
                    length = 28;
                }
                break;
            case CommitMessage:
                length = 0;
                break;
            case ResumedMessage r:
                BinaryPrimitives.WriteUInt32LittleEndian(p, r.ResumeMicroseconds);
                length = 4;
                break;
            case KeepaliveMessage k:
                BinaryPrimitives.WriteUInt64LittleEndian(p, k.Timestamp);
                length = 8;
                break;
            case PageRequestMessage r:
                if (r.Count is 0 or > MigrationProtocol.MaxRequestPages)
                    throw new ArgumentException($"PageRequest count {r.Count} outside 1..{MigrationProtocol.MaxRequestPages}", nameof(message));
                BinaryPrimitives.WriteUInt16LittleEndian(p, r.Region);
                BinaryPrimitives.WriteUInt64LittleEndian(p[2..], r.FirstPage);
                BinaryPrimitives.WriteUInt32LittleEndian(p[10..], r.Count);
                length = 14;
                break;
            case MissingPagesMessage m:
                length = EncodeRuns("MissingPages", m.Region, m.Runs, allowNone: false, p, nameof(message));
                break;
            case PopulatedPagesMessage populated:
                length = EncodeRuns("PopulatedPages", populated.Region, populated.Runs, allowNone: populated.Last, p, nameof(message));
                if (populated.Last) flags = PopulatedPagesMessage.LastFlag;
                break;
            case ResumeReadyMessage ready:
                BinaryPrimitives.WriteUInt64LittleEndian(p, ready.MissingPages);
                length = 8;
                break;
            case PostcopyDoneMessage done:
                BinaryPrimitives.WriteUInt32LittleEndian(p, done.Faults);
                BinaryPrimitives.WriteUInt32LittleEndian(p[4..], done.LatencyP50Us);
                BinaryPrimitives.WriteUInt32LittleEndian(p[8..], done.LatencyP99Us);
                BinaryPrimitives.WriteUInt32LittleEndian(p[12..], done.LatencyMaxUs);
                BinaryPrimitives.WriteUInt64LittleEndian(p[16..], done.BlockedMicroseconds);
                BinaryPrimitives.WriteUInt64LittleEndian(p[24..], done.WorkingSetPages);
                BinaryPrimitives.WriteUInt64LittleEndian(p[32..], done.InstalledPages);
                BinaryPrimitives.WriteUInt64LittleEndian(p[40..], done.DuplicatePages);
                length = MigrationProtocol.PostcopyDoneFixedSize;
                if (done.Digest is { } doneDigest)
                {
                    BinaryPrimitives.WriteUInt128LittleEndian(p[length..], doneDigest);
                    flags = (byte)ReadyFlags.DigestPresent;
                    length += 16;
                }
                break;
            case StateSectionMessage s:
                {
                    int prefix = EncodeSectionPrefix(s.Section, destination);
                    var data = s.Section.Data.Span;
                    data.CopyTo(destination[prefix..]);
                    ulong sum = XxHash3.HashToUInt64(destination[MigrationProtocol.HeaderSize..(prefix + data.Length)]);
                    BinaryPrimitives.WriteUInt64LittleEndian(destination[(prefix + data.Length)..], sum);
                    return prefix + data.Length + MigrationProtocol.TrailerSize;
                }
            default:
                throw new ArgumentException($"cannot encode {message.GetType().Name}", nameof(message));
        }
        new RecordHeader(message.Kind, flags, (uint)length).Write(destination);
        return MigrationProtocol.HeaderSize + length;
    }

    private static int EncodeHello(HelloMessage h, Span<byte> p)
    {
        if (h.Regions.Count is 0 or > MigrationProtocol.MaxRegions)
            throw new ArgumentException($"Hello needs 1..{MigrationProtocol.MaxRegions} regions, not {h.Regions.Count}", nameof(h));
        if (h.Token.Length > MigrationProtocol.MaxTokenLength)
            throw new ArgumentException($"token of {h.Token.Length} bytes exceeds {MigrationProtocol.MaxTokenLength}", nameof(h));
        if (h.PageChannels is 0 or > MigrationProtocol.MaxPageChannels)
            throw new ArgumentException($"Hello needs 1..{MigrationProtocol.MaxPageChannels} page channels, not {h.PageChannels}", nameof(h));
        MigrationProtocol.Magic.CopyTo(p);
        BinaryPrimitives.WriteUInt16LittleEndian(p[8..], h.Version);
        h.VmId.TryWriteBytes(p[10..26], bigEndian: true, out _);
        BinaryPrimitives.WriteUInt32LittleEndian(p[26..], h.PageSize);
        BinaryPrimitives.WriteUInt16LittleEndian(p[30..], h.PageChannels);
        BinaryPrimitives.WriteUInt64LittleEndian(p[32..], (ulong)h.Capabilities);
        BinaryPrimitives.WriteUInt16LittleEndian(p[40..], (ushort)h.Regions.Count);
        int o = MigrationProtocol.HelloFixedSize;
        foreach (var (gpa, size) in h.Regions)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(p[o..], gpa);
            BinaryPrimitives.WriteUInt64LittleEndian(p[(o + 8)..], size);
            o += 16;
        }
        BinaryPrimitives.WriteUInt16LittleEndian(p[o..], (ushort)h.Token.Length);
        h.Token.Span.CopyTo(p[(o + 2)..]);
        return o + 2 + h.Token.Length;
    }

    /// <summary>Region, run count and runs (MissingPages, PopulatedPages). Returns the payload's length.</summary>
    private static int EncodeRuns(string what, ushort region, (ulong First, uint Count)[] runs, bool allowNone, Span<byte> p, string paramName)
    {
        if ((runs.Length == 0 && !allowNone) || runs.Length > MigrationProtocol.MaxMissingRuns)
            throw new ArgumentException($"{what} of {runs.Length} runs; {(allowNone ? 0 : 1)}..{MigrationProtocol.MaxMissingRuns}", paramName);
        BinaryPrimitives.WriteUInt16LittleEndian(p, region);
        BinaryPrimitives.WriteUInt16LittleEndian(p[2..], (ushort)runs.Length);
        int length = MigrationProtocol.MissingPagesFixedSize;
        foreach (var (first, count) in runs)
        {
            if (count == 0) throw new ArgumentException($"{what} run of 0 pages", paramName);
            BinaryPrimitives.WriteUInt64LittleEndian(p[length..], first);
            BinaryPrimitives.WriteUInt32LittleEndian(p[(length + 8)..], count);
            length += MigrationProtocol.MissingRunSize;
        }
        return length;
    }

    /// <summary>Record header, name length, name, version, data length. Returns bytes written.</summary>
    private static int EncodeSectionPrefix(StateSection s, Span<byte> destination)
    {
        string name = s.Name;
        if (name.Length is 0 or > MigrationProtocol.MaxSectionNameLength)
            throw new ArgumentException($"state section name '{name}' must be 1..{MigrationProtocol.MaxSectionNameLength} characters", nameof(s));
        if (s.Data.Length > MigrationProtocol.MaxSectionDataLength)
            throw new ArgumentException($"state section '{name}' has {s.Data.Length} bytes; the limit is {MigrationProtocol.MaxSectionDataLength}", nameof(s));
        var p = destination[MigrationProtocol.HeaderSize..];
        p[0] = (byte)name.Length;
        for (int i = 0; i < name.Length; i++)
        {
            char c = name[i];
            if (c is < ' ' or > '~')
                throw new ArgumentException($"state section name '{name}' is not printable ASCII", nameof(s));
            p[1 + i] = (byte)c;
        }
        int o = 1 + name.Length;
        BinaryPrimitives.WriteUInt32LittleEndian(p[o..], s.Version);
        BinaryPrimitives.WriteUInt32LittleEndian(p[(o + 4)..], (uint)s.Data.Length);
        int payload = o + 8 + s.Data.Length + MigrationProtocol.TrailerSize;
        new RecordHeader(RecordKind.StateSection, 0, (uint)payload).Write(destination);
        return MigrationProtocol.HeaderSize + o + 8;
    }
}
