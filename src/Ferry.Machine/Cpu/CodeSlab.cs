using Ferry.Linux;

namespace Ferry.Machine.Cpu;

/// <summary>
/// The native memory of decoded-code pages (<see cref="CodePage.Insns"/>): zeroed 32 KiB blocks carved from 2 MiB
/// huge-page mappings and recycled through a free list, shared by every hart of the process.
/// </summary>
/// <remarks>
/// <para><b>Why not the C heap</b>: a hart decodes every code page it runs anew in a fresh process, and a migration's
/// destination is one. Measured on a destination right after the switchover (<c>perf record -e
/// exceptions:page_fault_user</c>, <c>ferry demo --mode precopy</c>): the two harts took ~1,000 first-touch faults
/// on their <c>calloc</c>'d slots in 170 ms, 12-25 µs each on this VM host (a fault here is a trip through the host's
/// shadow page tables), while the guest's heartbeat saw 14-24 ms stalls. The source's harts held 167 and 286 decoded
/// pages at the pause. Blocks from here are faulted in ahead (<see cref="Reserve"/>, called by a receiving process
/// while it waits) and mapped as huge pages, which the interpreter also walks with fewer TLB misses.</para>
/// <para><b>Lifetime</b>: a block returns when its <see cref="CodePage"/> is finalized (a dropped page stays in use
/// while a hart still runs it), zeroed by the finalizer thread so that renting stays cheap. Mappings are never
/// unmapped: the slab is as large as the most code the process held at once, as the C heap was.</para>
/// </remarks>
internal static unsafe class CodeSlab
{
    /// <summary>Bytes of one block: the slots of one 4 KiB frame (one per halfword).</summary>
    public static readonly int BlockBytes = CodePage.Slots * sizeof(Insn);

    /// <summary>Blocks a hart of a running Linux guest holds, rounded up (167 and 286 measured; see the remarks).</summary>
    public const int BlocksPerHart = 256;

    private const int ChunkBytes = 2 << 20;
    private static readonly int BlocksPerChunk = ChunkBytes / BlockBytes;

    // Guards free and chunks.
    private static readonly Lock gate = new();
    // Zeroed blocks, most recently returned on top (likeliest still in the caches).
    private static readonly Stack<nint> free = new();
    // Every mapping made, kept for the life of the process: blocks of each are in use or in free.
    private static readonly List<GuestMemoryMapping> chunks = [];

    /// <summary>Blocks on the free list now.</summary>
    public static int FreeBlocks
    {
        get { lock (gate) return free.Count; }
    }

    /// <summary>A zeroed block of <see cref="BlockBytes"/>. Any thread.</summary>
    public static Insn* Rent()
    {
        lock (gate)
        {
            // Faulted in as it is used, as the C heap's memory was: a hart is not held for a whole chunk's faults.
            if (free.Count == 0) AddChunk(NewChunk(populate: false));
            return (Insn*)free.Pop();
        }
    }

    /// <summary>Give back a block from <see cref="Rent"/> that nothing reads any more. Any thread.</summary>
    public static void Return(Insn* block)
    {
        new Span<byte>(block, BlockBytes).Clear();
        lock (gate) free.Push((nint)block);
    }

    /// <summary>
    /// Make sure at least <paramref name="blocks"/> blocks are free and faulted in (<c>MADV_POPULATE_WRITE</c>), so
    /// that renting them costs no page fault. Slow (~3.4 ms per 2 MiB on this host): call it where nothing waits.
    /// </summary>
    public static void Reserve(int blocks)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(blocks);
        GuestMemoryMapping[] existing;
        lock (gate) existing = [.. chunks];
        // Blocks already free may never have been touched (their chunk was added by Rent): fault those in too. A
        // chunk whose pages are all present costs one quick system call. Outside the lock: harts may rent meanwhile.
        foreach (var chunk in existing) chunk.Populate();
        while (true)
        {
            lock (gate)
            {
                if (free.Count >= blocks) return;
            }
            var chunk = NewChunk(populate: true);
            lock (gate) AddChunk(chunk);
        }
    }

    private static GuestMemoryMapping NewChunk(bool populate)
    {
        var chunk = GuestMemoryMapping.Create(ChunkBytes);
        // False only on kernels older than 5.14: the blocks are then faulted in on use.
        if (populate) _ = chunk.Populate();
        return chunk;
    }

    private static void AddChunk(GuestMemoryMapping chunk)
    {
        chunks.Add(chunk);
        // Pushed last to first so that blocks are rented in address order.
        for (int b = BlocksPerChunk - 1; b >= 0; b--) free.Push(chunk.Address + b * BlockBytes);
    }
}
