namespace Ferry.Migration.Transport;

/// <summary>
/// A bounded single-producer single-consumer byte pipe: writers block while it is full, so back-pressure is as
/// real as a TCP window's. Used by <see cref="InMemoryTransport"/>.
/// </summary>
internal sealed class InMemoryPipe(int capacity)
{
    // Ring buffer of pending bytes.
    private readonly byte[] _buffer = new byte[capacity];
    // Monitor (not System.Threading.Lock): readers and writers wait on it with Monitor.Wait.
    private readonly object _lock = new();
    // Index of the oldest pending byte.
    private int _head;
    // Pending bytes.
    private int _count;
    // The writer finished: readers drain what is left, then see end of stream.
    private bool _writerClosed;
    // The reader is gone: writes fail.
    private bool _readerClosed;
    // Either end aborted: every call fails.
    private bool _aborted;

    public int Capacity => _buffer.Length;

    /// <summary>Bytes written and not read yet.</summary>
    public int Buffered
    {
        get
        {
            lock (_lock) return _count;
        }
    }

    /// <summary>Write everything, blocking while full. Throws when the reader is gone, on abort, or on timeout.</summary>
    public void Write(ReadOnlySpan<byte> data, TimeSpan timeout, string name)
    {
        lock (_lock)
        {
            while (!data.IsEmpty)
            {
                while (_count == _buffer.Length && !_aborted && !_readerClosed)
                {
                    if (!Monitor.Wait(_lock, timeout))
                        throw new MigrationTransportException($"{name}: send made no progress for {timeout.TotalSeconds:0.###} s (peer not reading)");
                }
                if (_aborted) throw new MigrationTransportException($"{name}: channel aborted");
                if (_readerClosed) throw new MigrationTransportException($"{name}: send failed: the peer closed the connection");
                int tail = (_head + _count) % _buffer.Length;
                int n = Math.Min(data.Length, Math.Min(_buffer.Length - _count, _buffer.Length - tail));
                data[..n].CopyTo(_buffer.AsSpan(tail));
                _count += n;
                data = data[n..];
                Monitor.PulseAll(_lock);
            }
        }
    }

    /// <summary>
    /// Read at least one byte (up to <paramref name="destination"/>'s length), blocking while empty. Returns 0 at end
    /// of stream; throws on abort or when nothing arrived for <paramref name="timeout"/>.
    /// </summary>
    public int Read(Span<byte> destination, TimeSpan timeout, string name)
    {
        lock (_lock)
        {
            while (_count == 0 && !_writerClosed && !_aborted)
            {
                if (!Monitor.Wait(_lock, timeout))
                    throw new MigrationTransportException($"{name}: no data from the peer for {timeout.TotalSeconds:0.###} s (receive timeout; peer hung?)");
            }
            if (_aborted) throw new MigrationTransportException($"{name}: channel aborted");
            if (_count == 0) return 0;
            int n = Math.Min(destination.Length, Math.Min(_count, _buffer.Length - _head));
            _buffer.AsSpan(_head, n).CopyTo(destination);
            _head = (_head + n) % _buffer.Length;
            _count -= n;
            Monitor.PulseAll(_lock);
            return n;
        }
    }

    public void CloseWriter() => Set(ref _writerClosed);

    public void CloseReader() => Set(ref _readerClosed);

    public void Abort() => Set(ref _aborted);

    private void Set(ref bool flag)
    {
        lock (_lock)
        {
            flag = true;
            Monitor.PulseAll(_lock);
        }
    }
}
