using System.Net.Sockets;

namespace Ferry.Api;

/// <summary>The unix socket path's checks and connections, shared by the server and the client.</summary>
internal static class ApiSocket
{
    /// <summary>Longest path a <c>sockaddr_un</c> holds: 108 bytes including the terminating NUL.</summary>
    public const int MaxPathBytes = 107;

    public static UnixDomainSocketEndPoint EndPoint(string path)
    {
        if (System.Text.Encoding.UTF8.GetByteCount(path) > MaxPathBytes)
        {
            throw new ApiSocketException($"{path} is too long for a unix socket (at most {MaxPathBytes} bytes)") { BadPath = true };
        }
        return new UnixDomainSocketEndPoint(path);
    }

    /// <summary>
    /// Make <paramref name="path"/> free to bind: nothing there is fine; a socket that a live server answers on is an
    /// error; a stale socket (a server that died without removing it: connect is refused) is deleted.
    /// </summary>
    /// <remarks>
    /// .NET does not say whether a path is a socket, and connecting to a regular file is refused as a dead socket is.
    /// What tells them apart: a socket's size is always 0. So a directory or a file with contents is never deleted;
    /// an empty regular file is taken for a stale socket.
    /// </remarks>
    public static void ClaimPath(string path)
    {
        var endPoint = EndPoint(path);
        EndPoint(Path.GetFullPath(path)); // what the server binds
        if (Directory.Exists(path)) throw new ApiSocketException($"{path} is a directory");
        string? parent = Path.GetDirectoryName(Path.GetFullPath(path));
        if (parent is not null && !Directory.Exists(parent))
        {
            throw new ApiSocketException($"cannot listen on {path}: no such directory {parent}");
        }
        var file = new FileInfo(path);
        if (!file.Exists) return;
        using (var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            try
            {
                probe.Connect(endPoint);
                throw new ApiSocketException($"{path} is in use by another process");
            }
            catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionRefused)
            {
                // Nobody listening: stale, or not a socket at all.
            }
            catch (SocketException e)
            {
                throw new ApiSocketException($"cannot check {path}: {e.Message}", e);
            }
        }
        if (file.Length != 0) throw new ApiSocketException($"{path} exists and is not a socket");
        file.Delete();
    }

    /// <summary>A connected stream to the server at <paramref name="path"/>; <see cref="ApiSocketException"/> if there is none.</summary>
    public static async ValueTask<Stream> ConnectAsync(string path, CancellationToken cancellationToken)
    {
        var endPoint = EndPoint(path);
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await socket.ConnectAsync(endPoint, cancellationToken).ConfigureAwait(false);
            return new NetworkStream(socket, ownsSocket: true);
        }
        catch (SocketException e)
        {
            socket.Dispose();
            if (!File.Exists(path) && !Directory.Exists(path))
            {
                throw new ApiSocketException($"cannot connect to {path}: no such file", e) { BadPath = true };
            }
            throw new ApiSocketException(e.SocketErrorCode == SocketError.ConnectionRefused
                ? $"cannot connect to {path}: connection refused (no VM is serving it)"
                : $"cannot connect to {path}: {e.Message}", e);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }
}
