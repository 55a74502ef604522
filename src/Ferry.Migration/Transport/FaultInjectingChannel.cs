using System.Buffers.Binary;
using Ferry.Migration.Protocol;

namespace Ferry.Migration.Transport;

/// <summary>
/// A channel that passes bytes through to an inner one except where a <see cref="Fault"/> says otherwise. Offsets
/// count the bytes of one direction of this channel from 0. Record triggers follow the record headers in the stream
/// (any chunking); they are exact for sends, and for receives take effect at the first byte after the header was seen.
/// </summary>
public sealed class FaultInjectingChannel : IMigrationChannel, IByteCounter
{
    private readonly IMigrationChannel _inner;
    private readonly Direction _send;
    private readonly Direction _receive;

    public FaultInjectingChannel(IMigrationChannel inner, IEnumerable<Fault> faults)
    {
        ArgumentNullException.ThrowIfNull(inner);
        ArgumentNullException.ThrowIfNull(faults);
        _inner = inner;
        var all = faults.ToArray();
        _send = new Direction(all.Where(f => f.Direction == FaultDirection.Send));
        _receive = new Direction(all.Where(f => f.Direction == FaultDirection.Receive));
    }

    public string Name => _inner.Name;
    public long BytesSent => Volatile.Read(ref _send.Position);
    public long BytesReceived => Volatile.Read(ref _receive.Position);

    /// <summary>Per-direction progress and armed faults.</summary>
    private sealed class Direction(IEnumerable<Fault> faults)
    {
        public readonly Armed[] Faults = faults.Select(f => new Armed(f)).ToArray();
        // Bytes of this direction so far (the offset of the next byte).
        public long Position;
        // A Drop or Truncate started: bytes vanish.
        public bool Dropping;
        // A Truncate on receive started: end of stream.
        public bool EndOfStream;
        // A Close started: every call fails.
        public bool Closed;
        // Record tracking: bytes of the current header collected so far, and where the current record started.
        public readonly byte[] Header = new byte[MigrationProtocol.HeaderSize];
        public int HeaderFill;
        public long RecordStart;
        public long PayloadLeft;
    }

    private sealed class Armed(Fault fault)
    {
        public readonly Fault Fault = fault;
        // Stream offset where the fault starts; -1 until its trigger is known.
        public long Start = fault.Trigger is FaultTrigger.OffsetTrigger o ? o.Offset : -1;
        // Records of the trigger's kind seen so far.
        public int Seen;
        // One-shot faults (all but Delay) are done once applied.
        public bool Done;
        public bool Fired;

        public void Fire()
        {
            if (Fired) return;
            Fired = true;
            Fault.MarkFired();
        }
    }

    public void Send(ReadOnlySpan<byte> data)
    {
        var d = _send;
        Track(d, data);
        BeginOperation(d, data.Length);
        while (!data.IsEmpty)
        {
            long pos = d.Position;
            bool corrupt = ApplyDue(d, pos, out _);
            int n = (int)Math.Min(data.Length, NextStart(d, pos) - pos);
            if (corrupt)
            {
                Span<byte> flipped = [(byte)~data[0]];
                if (!d.Dropping) _inner.Send(flipped);
                n = 1;
            }
            else if (!d.Dropping)
            {
                _inner.Send(data[..n]);
            }
            data = data[n..];
            Volatile.Write(ref d.Position, pos + n);
        }
    }

    public void SendGather(ReadOnlySpan<IoSegment> segments)
    {
        foreach (var s in segments)
        {
            unsafe
            {
                // SAFETY: the caller keeps every segment valid until SendGather returns (interface contract).
                Send(new ReadOnlySpan<byte>((void*)s.Address, s.Length));
            }
        }
    }

    public bool ReceiveExactly(Span<byte> buffer)
    {
        var d = _receive;
        BeginOperation(d, buffer.Length);
        int got = 0;
        while (got < buffer.Length)
        {
            long pos = d.Position;
            bool corrupt = ApplyDue(d, pos, out bool endOfStream);
            if (endOfStream || d.EndOfStream)
                return got == 0 ? false : throw new MigrationTransportException($"{Name}: the peer closed the connection after {got} of {buffer.Length} bytes (injected truncation)");
            if (d.Dropping)
            {
                // Everything from here on vanishes: swallow the stream until the inner channel fails or ends.
                Span<byte> sink = stackalloc byte[4096];
                while (_inner.ReceiveExactly(sink[..1])) { }
                return got == 0 ? false : throw new MigrationTransportException($"{Name}: the peer closed the connection after {got} of {buffer.Length} bytes");
            }
            int n = (int)Math.Min(buffer.Length - got, NextStart(d, pos) - pos);
            var piece = buffer.Slice(got, n);
            if (!_inner.ReceiveExactly(piece))
                return got == 0 ? false : throw new MigrationTransportException($"{Name}: the peer closed the connection after {got} of {buffer.Length} bytes");
            if (corrupt) piece[0] ^= 0xFF;
            Track(d, piece);
            got += n;
            Volatile.Write(ref d.Position, pos + n);
        }
        return true;
    }

    /// <summary>Callback triggers and delays, checked once per operation.</summary>
    private static void BeginOperation(Direction d, int length)
    {
        if (d.Closed) throw new MigrationTransportException("channel closed by an injected fault");
        foreach (var a in d.Faults)
        {
            if (a.Start < 0 && a.Fault.Trigger is FaultTrigger.CallbackTrigger c && c.Condition())
                a.Start = d.Position;
            if (a.Fault.Kind == FaultKind.Delay && a.Start >= 0 && a.Start < d.Position + Math.Max(length, 1))
            {
                a.Fire();
                Thread.Sleep(a.Fault.Delay);
            }
        }
    }

    /// <summary>Apply one-shot faults starting at or before <paramref name="pos"/>; true if the byte at pos is to be corrupted.</summary>
    private bool ApplyDue(Direction d, long pos, out bool endOfStream)
    {
        bool corrupt = false;
        endOfStream = false;
        foreach (var a in d.Faults)
        {
            if (a.Done || a.Start < 0 || a.Start > pos || a.Fault.Kind == FaultKind.Delay) continue;
            a.Done = true;
            a.Fire();
            switch (a.Fault.Kind)
            {
                case FaultKind.Drop:
                    d.Dropping = true;
                    break;
                case FaultKind.Corrupt:
                    corrupt = true;
                    break;
                case FaultKind.Truncate:
                    _inner.Dispose();
                    if (d == _send) d.Dropping = true;
                    else d.EndOfStream = endOfStream = true;
                    break;
                case FaultKind.Close:
                    _inner.Dispose();
                    d.Closed = true;
                    throw new MigrationTransportException($"{Name}: connection closed at byte {pos} (injected fault)");
            }
        }
        return corrupt;
    }

    /// <summary>Offset of the next pending one-shot fault after <paramref name="pos"/> (long.MaxValue if none).</summary>
    private static long NextStart(Direction d, long pos)
    {
        long next = long.MaxValue;
        foreach (var a in d.Faults)
        {
            if (!a.Done && a.Start > pos && a.Fault.Kind != FaultKind.Delay) next = Math.Min(next, a.Start);
        }
        return next;
    }

    /// <summary>Follow record headers through <paramref name="data"/> (which starts at d.Position) to resolve record triggers.</summary>
    private static void Track(Direction d, ReadOnlySpan<byte> data)
    {
        long pos = d.Position;
        while (!data.IsEmpty)
        {
            if (d.PayloadLeft > 0)
            {
                long skip = Math.Min(d.PayloadLeft, data.Length);
                d.PayloadLeft -= skip;
                data = data[(int)skip..];
                pos += skip;
                continue;
            }
            if (d.HeaderFill == 0) d.RecordStart = pos;
            int take = Math.Min(MigrationProtocol.HeaderSize - d.HeaderFill, data.Length);
            data[..take].CopyTo(d.Header.AsSpan(d.HeaderFill));
            d.HeaderFill += take;
            data = data[take..];
            pos += take;
            if (d.HeaderFill < MigrationProtocol.HeaderSize) break;
            d.HeaderFill = 0;
            var kind = (RecordKind)d.Header[0];
            long length = BinaryPrimitives.ReadUInt32LittleEndian(d.Header.AsSpan(4));
            d.PayloadLeft = length;
            foreach (var a in d.Faults)
            {
                if (a.Start >= 0 || a.Fault.Trigger is not FaultTrigger.RecordTrigger r || r.Kind != kind) continue;
                if (++a.Seen == r.Nth) a.Start = r.After ? d.RecordStart + MigrationProtocol.HeaderSize + length : d.RecordStart;
            }
        }
    }

    public long BytesReadable => _inner.BytesReadable;

    public void Abort() => _inner.Abort();

    public void ReceiveWithoutTimeout() => _inner.ReceiveWithoutTimeout();

    public void Dispose() => _inner.Dispose();
}
