using BenchmarkDotNet.Attributes;
using Ferry.Linux;
using Ferry.Migration.Guest;
using Ferry.Migration.Memory;

namespace Ferry.Bench;

/// <summary>
/// Zero-page detection over 256 pages (1 MiB, L2-resident so the test's own cost is measured, not DRAM) against the
/// obvious byte loop. Page kinds: all zero (the full scan), data in the first line (the common non-zero page, which
/// the first-line check rejects at once), and a single non-zero last byte (the worst non-zero case).
/// </summary>
[MemoryDiagnoser]
public unsafe class ZeroPageBenchmarks
{
    private const int Pages = 256;
    private GuestMemoryMapping _memory = null!;

    [Params("zero", "first-line", "last-byte")]
    public string Kind { get; set; } = "zero";

    [GlobalSetup]
    public void Setup()
    {
        _memory = GuestMemoryMapping.Create(Pages * MemoryRegion.PageSize);
        byte* p = (byte*)_memory.Address;
        for (int i = 0; i < Pages; i++)
        {
            byte* page = p + (i * MemoryRegion.PageSize);
            new Span<byte>(page, MemoryRegion.PageSize).Clear();
            switch (Kind)
            {
                case "first-line":
                    page[8] = 1;
                    break;
                case "last-byte":
                    page[MemoryRegion.PageSize - 1] = 1;
                    break;
            }
        }
    }

    [GlobalCleanup]
    public void Cleanup() => _memory.Dispose();

    [Benchmark(Baseline = true, OperationsPerInvoke = Pages)]
    public int NaiveByteLoop()
    {
        int zero = 0;
        byte* p = (byte*)_memory.Address;
        for (int i = 0; i < Pages; i++)
        {
            byte* page = p + (i * MemoryRegion.PageSize);
            bool isZero = true;
            for (int b = 0; b < MemoryRegion.PageSize; b++)
            {
                if (page[b] != 0)
                {
                    isZero = false;
                    break;
                }
            }

            zero += isZero ? 1 : 0;
        }

        return zero;
    }

    [Benchmark(OperationsPerInvoke = Pages)]
    public int SpanIndexOfAnyExcept()
    {
        int zero = 0;
        byte* p = (byte*)_memory.Address;
        for (int i = 0; i < Pages; i++)
        {
            zero += new ReadOnlySpan<byte>(p + (i * MemoryRegion.PageSize), MemoryRegion.PageSize).IndexOfAnyExcept((byte)0) < 0 ? 1 : 0;
        }

        return zero;
    }

    [Benchmark(OperationsPerInvoke = Pages)]
    public int ZeroPageIsZero()
    {
        int zero = 0;
        nint p = _memory.Address;
        for (int i = 0; i < Pages; i++)
        {
            zero += ZeroPage.IsZero(p + (i * MemoryRegion.PageSize)) ? 1 : 0;
        }

        return zero;
    }

    [Benchmark(OperationsPerInvoke = Pages)]
    public int ZeroPageVector256()
    {
        int zero = 0;
        byte* p = (byte*)_memory.Address;
        for (int i = 0; i < Pages; i++)
        {
            zero += ZeroPage.IsZeroVector256(p + (i * MemoryRegion.PageSize)) ? 1 : 0;
        }

        return zero;
    }

    [Benchmark(OperationsPerInvoke = Pages)]
    public int ZeroPageScalar()
    {
        int zero = 0;
        byte* p = (byte*)_memory.Address;
        for (int i = 0; i < Pages; i++)
        {
            zero += ZeroPage.IsZeroScalar(p + (i * MemoryRegion.PageSize)) ? 1 : 0;
        }

        return zero;
    }
}

/// <summary>
/// Walking the dirty runs of a 4 GiB guest's bitmap (1 Mi pages) at typical densities, per run found; and the cost of
/// one whole walk, which the engine pays per pre-copy round.
/// </summary>
[MemoryDiagnoser]
public class DirtyBitmapBenchmarks
{
    private const ulong Pages = 1 << 20;
    private DirtyBitmap _bitmap = null!;

    /// <summary>Share of pages dirty: 0.1% (converging), 10% (busy), 50% random (worst for runs).</summary>
    [Params(0.001, 0.1, 0.5)]
    public double Density { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _bitmap = new DirtyBitmap(Pages);
        var rng = new Random(1);
        for (ulong i = 0; i < Pages; i++)
        {
            if (rng.NextDouble() < Density)
            {
                _bitmap.Set(i);
            }
        }
    }

    [Benchmark]
    public ulong WalkAllRuns()
    {
        ulong pages = 0;
        foreach (var run in _bitmap.Runs(0, Pages, 64))
        {
            pages += run.Length;
        }

        return pages;
    }

    [Benchmark]
    public ulong Count() => _bitmap.Count();
}

/// <summary>XxHash128 digest of 64 MiB of random guest memory (GB/s = 64 MiB / mean).</summary>
public unsafe class MemoryDigestBenchmarks
{
    private GuestMemoryMapping _memory = null!;
    private MemoryRegion[] _regions = null!;

    [GlobalSetup]
    public void Setup()
    {
        _memory = GuestMemoryMapping.Create(64 << 20);
        new Random(1).NextBytes(new Span<byte>((byte*)_memory.Address, 64 << 20));
        _regions = [new MemoryRegion(0, _memory.Length, _memory.Address)];
    }

    [GlobalCleanup]
    public void Cleanup() => _memory.Dispose();

    [Benchmark]
    public UInt128 Digest64MiB() => MemoryDigest.Compute(_regions);
}
