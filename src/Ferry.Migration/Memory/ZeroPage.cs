using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Ferry.Migration.Guest;

namespace Ferry.Migration.Memory;

/// <summary>
/// Finds all-zero 4 KiB pages so they can be sent as one bit instead of 4096 bytes (DESIGN.md, performance).
/// Allocation-free; called once per page on the engine's hot path.
/// </summary>
/// <remarks>
/// The first 64-byte cache line is tested on its own first: a page in use almost always has data there (page
/// headers, the start of heap objects), so most non-zero pages are rejected after one line instead of a full scan.
/// The rest is OR-reduced 256 bytes at a time (4 x Vector512 or 8 x Vector256) with an exit after each block, so a
/// page that differs anywhere early still stops early, while a zero page costs 16 compare-and-branch steps, not 64.
/// </remarks>
public static class ZeroPage
{
    private const int Size = MemoryRegion.PageSize;

    /// <summary>
    /// True if the 4 KiB page at <paramref name="pageAddress"/> is all zero bytes. The address must be readable for
    /// <see cref="MemoryRegion.PageSize"/> bytes; it need not be aligned (unaligned vector loads are used).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe bool IsZero(nint pageAddress)
    {
        // SAFETY: the caller guarantees PageSize readable bytes at pageAddress (guest memory is mmap'd, never moved).
        byte* p = (byte*)pageAddress;
        if (Vector512.IsHardwareAccelerated)
        {
            return IsZeroVector512(p);
        }

        return Vector256.IsHardwareAccelerated ? IsZeroVector256(p) : IsZeroScalar(p);
    }

    /// <summary>True if <paramref name="page"/> (exactly one page) is all zeros. Span form of <see cref="IsZero(nint)"/>.</summary>
    public static unsafe bool IsZero(ReadOnlySpan<byte> page)
    {
        if (page.Length != Size)
        {
            throw new ArgumentException($"a page is {Size} bytes, got {page.Length}", nameof(page));
        }

        // SAFETY: the span is pinned for the call and covers exactly PageSize bytes.
        fixed (byte* p = page)
        {
            return IsZero((nint)p);
        }
    }

    /// <summary>AVX-512 path. Internal so tests can exercise every path on one machine.</summary>
    internal static unsafe bool IsZeroVector512(byte* p)
    {
        if (Vector512.Load(p) != Vector512<byte>.Zero)
        {
            return false;
        }

        // Block 0 re-reads the first line from L1; keeping every block 256-byte aligned avoids a ragged tail.
        for (int offset = 0; offset < Size; offset += 256)
        {
            var acc = Vector512.Load(p + offset) | Vector512.Load(p + offset + 64)
                | Vector512.Load(p + offset + 128) | Vector512.Load(p + offset + 192);
            if (acc != Vector512<byte>.Zero)
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>AVX2 / NEON-width path.</summary>
    internal static unsafe bool IsZeroVector256(byte* p)
    {
        if ((Vector256.Load(p) | Vector256.Load(p + 32)) != Vector256<byte>.Zero)
        {
            return false;
        }

        for (int offset = 0; offset < Size; offset += 256)
        {
            var acc = Vector256.Load(p + offset) | Vector256.Load(p + offset + 32)
                | Vector256.Load(p + offset + 64) | Vector256.Load(p + offset + 96)
                | Vector256.Load(p + offset + 128) | Vector256.Load(p + offset + 160)
                | Vector256.Load(p + offset + 192) | Vector256.Load(p + offset + 224);
            if (acc != Vector256<byte>.Zero)
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>Portable path without SIMD: 8 bytes at a time, one cache line per check.</summary>
    internal static unsafe bool IsZeroScalar(byte* p)
    {
        ulong* q = (ulong*)p;
        for (int i = 0; i < Size / 8; i += 8)
        {
            if ((q[i] | q[i + 1] | q[i + 2] | q[i + 3] | q[i + 4] | q[i + 5] | q[i + 6] | q[i + 7]) != 0)
            {
                return false;
            }
        }

        return true;
    }
}
