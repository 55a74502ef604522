using System.Runtime.InteropServices;
using Ferry.Migration.Guest;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Tests.Protocol;

/// <summary>
/// A channel over byte arrays: receives replay <see cref="Input"/> (clean end = false, end inside a read = transport
/// error, like a closed socket); sends append to <see cref="Output"/>. Receiving allocates nothing.
/// </summary>
internal sealed class ByteStreamChannel(byte[]? input = null, string name = "test") : IMigrationChannel
{
    private int _position;
    private readonly MemoryStream _output = new();

    public byte[] Input { get; set; } = input ?? [];
    public string Name => name;
    public byte[] Output => _output.ToArray();
    public int SendCalls { get; private set; }
    public int GatherCalls { get; private set; }
    public int LastSegmentCount { get; private set; }

    public void Send(ReadOnlySpan<byte> data)
    {
        SendCalls++;
        _output.Write(data);
    }

    public unsafe void SendGather(ReadOnlySpan<IoSegment> segments)
    {
        GatherCalls++;
        LastSegmentCount = segments.Length;
        foreach (var s in segments) _output.Write(new ReadOnlySpan<byte>((void*)s.Address, s.Length));
    }

    public bool ReceiveExactly(Span<byte> buffer)
    {
        if (buffer.IsEmpty) return true;
        int left = Input.Length - _position;
        if (left == 0) return false;
        if (left < buffer.Length)
        {
            _position = Input.Length;
            throw new MigrationTransportException($"{Name}: the peer closed the connection after {left} of {buffer.Length} bytes");
        }
        Input.AsSpan(_position, buffer.Length).CopyTo(buffer);
        _position += buffer.Length;
        return true;
    }

    /// <summary>Scatter receives so far, and the segment count of each (the first 64).</summary>
    public int ScatterCalls { get; private set; }
    public int[] ScatterSegmentCounts { get; } = new int[64];

    public unsafe void ReceiveScatter(ReadOnlySpan<IoSegment> segments)
    {
        if (ScatterCalls < ScatterSegmentCounts.Length) ScatterSegmentCounts[ScatterCalls] = segments.Length;
        ScatterCalls++;
        foreach (var s in segments)
        {
            if (!ReceiveExactly(new Span<byte>((void*)s.Address, s.Length)))
                throw new MigrationTransportException($"{Name}: the peer closed the connection before the data it announced");
        }
    }

    public void Rewind() => _position = 0;

    public void Abort() { }
    public void Dispose() { }
}

/// <summary>Native, page-aligned guest memory split into regions, as a VMM would mmap it.</summary>
internal sealed unsafe class NativeGuestMemory : IDisposable
{
    private readonly void* _base;
    private readonly nuint _bytes;

    /// <param name="regions">(gpa, pages) per region.</param>
    public NativeGuestMemory(params (ulong Gpa, int Pages)[] regions)
    {
        int total = regions.Sum(r => r.Pages);
        _bytes = (nuint)total * MemoryRegion.PageSize;
        _base = NativeMemory.AlignedAlloc(_bytes, MemoryRegion.PageSize);
        NativeMemory.Clear(_base, _bytes);
        var list = new List<MemoryRegion>();
        nint host = (nint)_base;
        foreach (var (gpa, pages) in regions)
        {
            list.Add(new MemoryRegion(gpa, (ulong)pages * MemoryRegion.PageSize, host));
            host += pages * MemoryRegion.PageSize;
        }
        Regions = list;
    }

    public IReadOnlyList<MemoryRegion> Regions { get; }

    public Span<byte> Region(int i) => new((void*)Regions[i].HostAddress, (int)Regions[i].Size);

    public Span<byte> Page(int region, ulong page) => new((void*)Regions[region].PageAddress(page), MemoryRegion.PageSize);

    public Span<byte> All => new(_base, (int)_bytes);

    /// <summary>Fill every byte with a pattern derived from its offset and <paramref name="seed"/>.</summary>
    public void FillPattern(int seed)
    {
        var all = All;
        for (int i = 0; i < all.Length; i++) all[i] = (byte)((i * 31) ^ (i >> 12) ^ seed);
    }

    public void Dispose() => NativeMemory.AlignedFree(_base);
}
