using System.Net.Sockets;
using Ferry.Linux;

namespace Ferry.Migration.Transport;

/// <summary>
/// One TCP connection as a migration channel. Sends go through <c>writev(2)</c> on the socket's fd (one syscall for
/// a whole page batch gathered from guest memory), receives through <c>readv(2)</c> straight into the caller's memory
/// (which may be guest memory). Neither goes through .NET's socket engine (see <see cref="Read"/>).
/// </summary>
public sealed class TcpMigrationChannel : IMigrationChannel, IByteCounter, IPollableChannel
{
    // iovec arrays for gathered sends and scattered receives, one per direction (one thread each, as the interface
    // allows), reused: a batch needs at most 258 (header and runs, up to 256 data runs, trailer).
    private iovec[] _sendIovecs = new iovec[512];
    private iovec[] _receiveIovecs = new iovec[512];

    private readonly Socket _socket;
    // SendTimeout in ms for poll() when the fd is non-blocking and the peer does not read; -1 = forever.
    private readonly int _sendTimeoutMs;
    // The bound on a receive: the transport's, or infinite once ReceiveWithoutTimeout was called.
    private TimeSpan _receiveTimeout;
    private long _sent;
    private long _received;
    // 1 once Abort or Dispose ran: later failures are reported as "aborted", not as a network error.
    private int _aborted;

    internal TcpMigrationChannel(Socket socket, string name, TcpTransportOptions options)
    {
        _socket = socket;
        Name = name;
        _sendTimeoutMs = TcpTransportOptions.ToMilliseconds(options.SendTimeout);
        _receiveTimeout = options.ReceiveTimeout;
        _socket.ReceiveTimeout = TcpTransportOptions.ToMilliseconds(options.ReceiveTimeout) is var r && r < 0 ? 0 : r;
        // SO_SNDTIMEO and SO_RCVTIMEO bound a writev or readv blocked on a blocking fd (every socket the transport
        // makes); poll() bounds them on a non-blocking one (a socket connected through .NET's engine, to a host name).
        // Either way a peer that stops reading or writing is detected.
        _socket.SendTimeout = _sendTimeoutMs < 0 ? 0 : _sendTimeoutMs;
    }

    public string Name { get; }

    public long BytesSent => Volatile.Read(ref _sent);

    public long BytesReceived => Volatile.Read(ref _received);

    /// <summary>The socket's fd (for tests that check how it is set up).</summary>
    internal nint Handle => _socket.Handle;

    /// <summary>The remote end, for logs.</summary>
    public System.Net.EndPoint? RemoteEndPoint => _socket.RemoteEndPoint;

    public unsafe void Send(ReadOnlySpan<byte> data)
    {
        if (data.IsEmpty) return;
        fixed (byte* p = data)
        {
            Span<iovec> iov = stackalloc iovec[1];
            // SAFETY: data is pinned by `fixed` for the whole write.
            iov[0] = new iovec { iov_base = (nint)p, iov_len = (nuint)data.Length };
            Write(iov, data.Length);
        }
    }

    public void SendGather(ReadOnlySpan<IoSegment> segments) => Write(Describe(segments, ref _sendIovecs, out long total), total);

    private void Write(Span<iovec> iov, long total)
    {
        bool added = false;
        try
        {
            // Hold a reference on the fd so a concurrent Dispose cannot close it (and let it be reused) mid-writev.
            _socket.SafeHandle.DangerousAddRef(ref added);
            int fd = (int)_socket.SafeHandle.DangerousGetHandle();
            if (!Libc.WriteVectorFully(fd, iov, _sendTimeoutMs))
                throw Failure($"send made no progress for {_sendTimeoutMs} ms (peer not reading)");
            Interlocked.Add(ref _sent, total);
        }
        catch (LinuxException e)
        {
            throw Failure(e.Errno switch
            {
                Libc.EPIPE => "send failed: the peer closed the connection",
                Libc.ECONNRESET => "send failed: connection reset by the peer",
                _ => $"send failed: {e.Message}",
            }, e);
        }
        catch (ObjectDisposedException e)
        {
            throw Failure("send on a closed channel", e);
        }
        finally
        {
            if (added) _socket.SafeHandle.DangerousRelease();
        }
    }

    public unsafe bool ReceiveExactly(Span<byte> buffer)
    {
        if (buffer.IsEmpty) return true;
        fixed (byte* p = buffer)
        {
            Span<iovec> iov = stackalloc iovec[1];
            // SAFETY: buffer is pinned by `fixed` for the whole read.
            iov[0] = new iovec { iov_base = (nint)p, iov_len = (nuint)buffer.Length };
            long got = Read(iov);
            if (got == 0 && Volatile.Read(ref _aborted) == 0) return false;
            if (got < buffer.Length) throw Failure($"the peer closed the connection after {got} of {buffer.Length} bytes");
        }
        return true;
    }

    public void ReceiveScatter(ReadOnlySpan<IoSegment> segments)
    {
        var iov = Describe(segments, ref _receiveIovecs, out long total);
        long got = Read(iov);
        if (got < total) throw Failure($"the peer closed the connection after {got} of {total} bytes");
    }

    /// <summary>
    /// Fill <paramref name="iov"/> from the socket with readv(2) on its fd; returns the bytes read (fewer only at the
    /// end of the stream). Not <see cref="Socket.Receive(Span{byte})"/>: on an fd that is (or once was) non-blocking,
    /// .NET waits for data through its epoll thread, which then wakes the receiver, a second wake-up on every record,
    /// by a thread of ordinary priority (measured with perf sched: the source's return path, which serves post-copy's
    /// page requests, woke only after that thread did, behind the bulk push for up to a scheduler tick).
    /// </summary>
    private long Read(Span<iovec> iov)
    {
        bool added = false;
        try
        {
            // Hold a reference on the fd so a concurrent Dispose cannot close it (and let it be reused) mid-readv.
            _socket.SafeHandle.DangerousAddRef(ref added);
            int fd = (int)_socket.SafeHandle.DangerousGetHandle();
            long got = Libc.ReadVectorFully(fd, iov, TcpTransportOptions.ToMilliseconds(_receiveTimeout), out bool timedOut);
            Interlocked.Add(ref _received, got);
            if (timedOut) throw ReceiveTimedOut();
            return got;
        }
        catch (LinuxException e)
        {
            throw Failure(e.Errno == Libc.ECONNRESET ? "receive failed: connection reset by the peer" : $"receive failed: {e.Message}", e);
        }
        catch (ObjectDisposedException e)
        {
            throw Failure("receive on a closed channel", e);
        }
        finally
        {
            if (added) _socket.SafeHandle.DangerousRelease();
        }
    }

    public void ReceiveWithoutTimeout()
    {
        _receiveTimeout = Timeout.InfiniteTimeSpan;
        _socket.ReceiveTimeout = 0; // SO_RCVTIMEO off: a readv on the blocking fd waits for data
    }

    /// <inheritdoc/>
    public unsafe long BytesReadable
    {
        get
        {
            bool added = false;
            try
            {
                _socket.SafeHandle.DangerousAddRef(ref added);
                int queued = 0;
                return Libc.ioctl((int)_socket.SafeHandle.DangerousGetHandle(), FIONREAD, &queued) == 0 ? queued : -1;
            }
            catch (ObjectDisposedException)
            {
                return -1; // closed: the receive that follows reports it
            }
            finally
            {
                if (added) _socket.SafeHandle.DangerousRelease();
            }
        }
    }

    // <asm-generic/ioctls.h>: bytes in a socket's receive queue (SIOCINQ).
    private const nuint FIONREAD = 0x541B;

    public bool HasData()
    {
        bool added = false;
        try
        {
            // A reference on the fd so a concurrent Dispose cannot close it (and let it be reused) mid-poll.
            _socket.SafeHandle.DangerousAddRef(ref added);
            return ReadinessWait.HasData((int)_socket.SafeHandle.DangerousGetHandle());
        }
        catch (ObjectDisposedException)
        {
            return true; // closed: the receive that follows reports it
        }
        finally
        {
            if (added) _socket.SafeHandle.DangerousRelease();
        }
    }

    public ReadinessWait.Result WaitForData(ReadinessWait wait)
    {
        bool added = false;
        try
        {
            _socket.SafeHandle.DangerousAddRef(ref added);
            var woke = wait.Wait((int)_socket.SafeHandle.DangerousGetHandle(), TcpTransportOptions.ToMilliseconds(_receiveTimeout));
            // As a receive that waited as long: a wait and the read after it must not take the timeout twice.
            return woke == ReadinessWait.Result.TimedOut ? throw ReceiveTimedOut() : woke;
        }
        catch (ObjectDisposedException)
        {
            return ReadinessWait.Result.Ready; // closed: the receive that follows reports it
        }
        finally
        {
            if (added) _socket.SafeHandle.DangerousRelease();
        }
    }

    /// <summary>
    /// Describe <paramref name="segments"/> as iovecs in <paramref name="buffer"/> (grown if too small: once, for a
    /// gather beyond a batch's 258 segments), with their total length.
    /// </summary>
    internal static Span<iovec> Describe(ReadOnlySpan<IoSegment> segments, ref iovec[] buffer, out long total)
    {
        if (buffer.Length < segments.Length) buffer = new iovec[segments.Length];
        var iov = buffer.AsSpan(0, segments.Length);
        total = 0;
        for (int i = 0; i < segments.Length; i++)
        {
            if (segments[i].Length < 0) throw new ArgumentException($"segment {i} has a negative length", nameof(segments));
            iov[i] = new iovec { iov_base = segments[i].Address, iov_len = (nuint)segments[i].Length };
            total += segments[i].Length;
        }
        return iov;
    }

    private MigrationTransportException ReceiveTimedOut() =>
        Failure($"no data from the peer for {_receiveTimeout.TotalSeconds:0.###} s (receive timeout; peer hung?)");

    private MigrationTransportException Failure(string what, Exception? inner = null)
    {
        string message = Volatile.Read(ref _aborted) != 0 ? $"{Name}: channel aborted" : $"{Name}: {what}";
        return inner is null ? new MigrationTransportException(message) : new MigrationTransportException(message, inner);
    }

    /// <summary>
    /// Shut the socket down both ways: a thread blocked in writev or recv on it returns at once (close alone would
    /// not wake it on Linux), and the peer sees the connection end.
    /// </summary>
    public void Abort()
    {
        if (Interlocked.Exchange(ref _aborted, 1) != 0) return;
        try
        {
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (SocketException)
        {
            // Not connected any more: nothing to wake.
        }
        catch (ObjectDisposedException)
        {
        }
    }

    public void Dispose()
    {
        Volatile.Write(ref _aborted, 1);
        _socket.Dispose();
    }
}
