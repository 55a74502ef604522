using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Ferry.Linux;
using Ferry.Migration.Guest;
using Ferry.Migration.Transport;

namespace Ferry.Bench;

/// <summary>
/// The yardstick for the engine's throughput: the same guest memory sent over N loopback TCP sockets with plain
/// <c>send</c> calls of 1 MiB, received with plain <c>recv</c> calls, no framing, no checksums, no dirty log.
/// </summary>
/// <remarks>
/// The receiver writes into an anonymous mapping of the guest's size, faulted in before the clock starts as the
/// engine's preallocated destination is (page faults on this VM host cost 0.1-2.7 s/GiB and swamped the comparison);
/// <see cref="Measure"/> can also receive into one reused 1 MiB buffer, the cheapest possible receiver. Socket buffers are the page channels'
/// (<see cref="TcpTransportOptions.PageSocketBufferBytes"/>) so the yardstick and the engine get the same TCP windows.
/// </remarks>
internal static class EnginePlainTcpCopy
{
    /// <summary>1 MiB per send/recv: the engine's largest page batch (256 pages).</summary>
    private const int ChunkBytes = 1 << 20;

    /// <summary>Copy every byte of <paramref name="regions"/> over <paramref name="sockets"/> connections; returns bytes/s.</summary>
    public static double Measure(IReadOnlyList<MemoryRegion> regions, int sockets, bool receiveIntoMapping)
    {
        // Each socket carries a contiguous share of memory: the simplest plain copy.
        var totalBytes = regions.Aggregate(0UL, (sum, r) => sum + r.Size);
        var bufferBytes = new TcpTransportOptions().PageSocketBufferBytes;
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(sockets);
        var clients = new Socket[sockets];
        var servers = new Socket[sockets];
        for (var i = 0; i < sockets; i++)
        {
            clients[i] = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)
            {
                SendBufferSize = bufferBytes,
            };
            clients[i].Connect(listener.LocalEndPoint!);
            servers[i] = listener.Accept();
            servers[i].ReceiveBufferSize = bufferBytes;
        }

        using var destination = receiveIntoMapping ? GuestMemoryMapping.Create(totalBytes) : null;
        // Faulted in before the clock starts, as the engine's destination is (Preallocate): page faults on this VM host
        // cost 0.1 to 2.7 s/GiB depending on whether the host still holds the memory, which swamped the comparison.
        destination?.Populate();
        var shares = Split(regions, sockets);
        var threads = new List<Thread>();
        var clock = new Stopwatch();
        using var start = new ManualResetEventSlim();
        for (var i = 0; i < sockets; i++)
        {
            var client = clients[i];
            var server = servers[i];
            var share = shares[i];
            threads.Add(new Thread(() =>
            {
                start.Wait();
                foreach (var (address, length, _) in share) SendAll(client, address, length);
                client.Shutdown(SocketShutdown.Send);
            }) { Name = $"plain-send-{i}" });
            threads.Add(new Thread(() =>
            {
                var scratch = receiveIntoMapping ? null : GC.AllocateUninitializedArray<byte>(ChunkBytes, pinned: true);
                start.Wait();
                foreach (var (_, length, offset) in share)
                {
                    if (destination is not null) ReceiveAll(server, destination.Address + (nint)offset, length);
                    else ReceiveDiscard(server, scratch!, length);
                }
            }) { Name = $"plain-recv-{i}" });
        }
        foreach (var t in threads) t.Start();
        clock.Start();
        start.Set();
        foreach (var t in threads) t.Join();
        clock.Stop();
        foreach (var s in clients) s.Dispose();
        foreach (var s in servers) s.Dispose();
        return totalBytes / clock.Elapsed.TotalSeconds;
    }

    /// <summary>Memory cut into <paramref name="parts"/> contiguous shares: (host address, length, offset in the whole).</summary>
    private static List<(nint Address, ulong Length, ulong Offset)>[] Split(IReadOnlyList<MemoryRegion> regions, int parts)
    {
        var total = regions.Aggregate(0UL, (sum, r) => sum + r.Size);
        var perPart = (total / (ulong)parts + MemoryRegion.PageSize - 1) & ~(ulong)(MemoryRegion.PageSize - 1);
        var result = Enumerable.Range(0, parts).Select(_ => new List<(nint, ulong, ulong)>()).ToArray();
        ulong offset = 0;
        foreach (var region in regions)
        {
            ulong done = 0;
            while (done < region.Size)
            {
                var part = (int)Math.Min((ulong)parts - 1, offset / perPart);
                var partEnd = (ulong)(part + 1) * perPart;
                var length = Math.Min(region.Size - done, partEnd - offset);
                result[part].Add((region.HostAddress + (nint)done, length, offset));
                done += length;
                offset += length;
            }
        }
        return result;
    }

    private static unsafe void SendAll(Socket socket, nint address, ulong length)
    {
        for (ulong sent = 0; sent < length;)
        {
            var n = (int)Math.Min((ulong)ChunkBytes, length - sent);
            // SAFETY: [address, address + length) is mapped guest memory that outlives this call.
            var span = new ReadOnlySpan<byte>((void*)(address + (nint)sent), n);
            sent += (ulong)socket.Send(span);
        }
    }

    private static unsafe void ReceiveAll(Socket socket, nint address, ulong length)
    {
        for (ulong received = 0; received < length;)
        {
            var n = (int)Math.Min((ulong)ChunkBytes, length - received);
            // SAFETY: [address, address + length) lies inside the destination mapping, owned by the caller.
            var got = socket.Receive(new Span<byte>((void*)(address + (nint)received), n));
            if (got == 0) throw new IOException("plain copy: sender closed early");
            received += (ulong)got;
        }
    }

    private static void ReceiveDiscard(Socket socket, byte[] scratch, ulong length)
    {
        for (ulong received = 0; received < length;)
        {
            var got = socket.Receive(scratch, 0, (int)Math.Min((ulong)scratch.Length, length - received), SocketFlags.None);
            if (got == 0) throw new IOException("plain copy: sender closed early");
            received += (ulong)got;
        }
    }
}
