using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Ferry.Migration.Guest;

namespace Ferry.Migration.InProcess;

/// <summary>
/// What the in-process workload writes into a page, and how a page is checked against it.
/// Word 0: the page's sequence number (how many times it was written; 0 = never). Word 1: the page's own global
/// index (catches a page landing at the wrong place). Word <see cref="Slot"/>(seq): a value mixed from both, so
/// each write also changes bytes at a varying offset, not only the header.
/// </summary>
internal static class PageFormat
{
    /// <summary>A never-written page of a <see cref="MemoryFill.Zero"/> guest is all zeros; word 1 is then 0.</summary>
    public static unsafe void Write(nint page, ulong index, ulong seq)
    {
        // SAFETY: page is the address of a whole guest page inside a live mapping owned by the caller.
        ulong* q = (ulong*)page;
        q[Slot(seq)] = Mix(seq, index);
        q[1] = index;
        q[0] = seq;
    }

    /// <summary>
    /// A native page of zeros that is never written: what an unpopulated page of private anonymous guest memory
    /// reads as, so the self-check can check such a page without faulting it in (~3 s per GiB on this host).
    /// </summary>
    public static readonly nint ZeroPage = AllocateZeroPage();

    /// <summary>
    /// Null if the page agrees with having been written <paramref name="expectedSeq"/> times (null: any number of
    /// times, for pages past the tracked range), else why not.
    /// </summary>
    public static unsafe string? Check(nint page, ulong index, ulong? expectedSeq, MemoryFill fill)
    {
        // SAFETY: as in Write; read only.
        ulong* q = (ulong*)page;
        ulong seq = q[0];
        if (expectedSeq is { } want && (uint)seq != (uint)want)
        {
            return $"sequence {seq} but the workload wrote it {want} times";
        }

        if (seq == 0)
        {
            // Never written: a zero guest's page is still zero in its header; a random guest's has its index.
            ulong wantIndex = fill == MemoryFill.Zero ? 0 : index;
            return q[1] == wantIndex ? null : $"never written but holds index {q[1]}, expected {wantIndex}";
        }

        if (q[1] != index)
        {
            return $"holds page index {q[1]}";
        }

        ulong mixed = q[Slot(seq)];
        return mixed == Mix(seq, index) ? null : $"data word {Slot(seq)} is {mixed:x16}, expected {Mix(seq, index):x16}";
    }

    /// <summary>
    /// Fill <paramref name="length"/> bytes with incompressible xorshift output, four independent 64-bit lanes per
    /// Vector256 (about 4x the single-lane speed), then stamp each page's header as never-written (seq 0, own index).
    /// A 1 GiB Random guest measured 0.18 s to create with huge pages against 0.81 s with 4 KiB pages (memory the
    /// kernel already had; memory fresh to this VM host adds ~2.7 s/GiB of host faults that nothing here avoids).
    /// </summary>
    public static unsafe void FillRandom(nint start, ulong length, ulong firstIndex, ulong seed)
    {
        var state = Vector256.Create(seed | 1, (seed * 3) | 1, (seed * 5) | 1, (seed * 7) | 1);
        state ^= Vector256.Create(0x9E3779B97F4A7C15UL);
        // SAFETY: [start, start + length) is inside a live mapping owned by the caller; length is a page multiple.
        byte* p = (byte*)start;
        for (ulong offset = 0; offset < length; offset += 32)
        {
            state ^= Vector256.ShiftLeft(state, 13);
            state ^= Vector256.ShiftRightLogical(state, 7);
            state ^= Vector256.ShiftLeft(state, 17);
            state.Store((ulong*)(p + offset));
        }

        for (ulong page = 0; page < length >> MemoryRegion.PageShift; page++)
        {
            ulong* q = (ulong*)(p + (page << MemoryRegion.PageShift));
            q[0] = 0;
            q[1] = firstIndex + page;
        }
    }

    private static unsafe nint AllocateZeroPage()
    {
        // SAFETY: a fresh, exclusively owned, page-aligned 4 KiB allocation, cleared once and never freed (one per process).
        void* page = NativeMemory.AlignedAlloc(MemoryRegion.PageSize, MemoryRegion.PageSize);
        new Span<byte>(page, MemoryRegion.PageSize).Clear();
        return (nint)page;
    }

    /// <summary>
    /// What page <paramref name="index"/>'s counter is XOR-ed with in memory. Zero for a <see cref="MemoryFill.Zero"/>
    /// guest, so its counter pages stay untouched zero pages until written. For a <see cref="MemoryFill.Random"/>
    /// guest a seed-derived value, so the counter pages too hold incompressible bytes from the start, as that fill
    /// promises of every page (a zero counter page would travel as a zero page and skew a benchmark's byte counts).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint CounterKey(ulong index, ulong seed, MemoryFill fill) =>
        fill == MemoryFill.Zero ? 0 : (uint)(Mix(seed, index) >> 32);

    /// <summary>Word 2..511, varying with the sequence number.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int Slot(ulong seq) => 2 + (int)((seq * 0x9E3779B97F4A7C15UL >> 32) % 510);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Mix(ulong seq, ulong index) => (seq * 0xBF58476D1CE4E5B9UL) ^ (index * 0x94D049BB133111EBUL) ^ 0x5A5A5A5A5A5A5A5AUL;
}
