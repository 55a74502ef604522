using Ferry.Linux;
using Ferry.Machine.Cpu;

namespace Ferry.Machine.Tests;

[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class CodeSlabCollection
{
    /// <summary>The slab is one per process: these tests look at its free list, which no other test may use meanwhile.</summary>
    public const string Name = "CodeSlab";
}

/// <summary>
/// The memory harts decode guest code into: zeroed blocks (a zero slot means "not decoded yet"), recycled zeroed, and
/// faulted in ahead when reserved, so that a destination's harts take no page fault decoding right after a migration.
/// </summary>
[Collection(CodeSlabCollection.Name)]
public sealed unsafe class CodeSlabTests
{
    [Fact]
    public void RentedBlocksAreZeroedAndDoNotOverlap()
    {
        var blocks = new List<nint>();
        try
        {
            for (int i = 0; i < 100; i++) blocks.Add((nint)CodeSlab.Rent());
            foreach (nint b in blocks)
            {
                Assert.Equal(0, b % 16);
                Assert.True(new ReadOnlySpan<byte>((void*)b, CodeSlab.BlockBytes).IndexOfAnyExcept((byte)0) < 0, $"block 0x{b:x} is not zeroed");
                new Span<byte>((void*)b, CodeSlab.BlockBytes).Fill(0xa5);
            }
            var sorted = blocks.Order().ToArray();
            for (int i = 1; i < sorted.Length; i++)
            {
                Assert.True(sorted[i] - sorted[i - 1] >= CodeSlab.BlockBytes, $"blocks 0x{sorted[i - 1]:x} and 0x{sorted[i]:x} overlap");
            }
        }
        finally
        {
            foreach (nint b in blocks) CodeSlab.Return((Insn*)b);
        }
    }

    [Fact]
    public void AReturnedBlockIsZeroedBeforeItIsRentedAgain()
    {
        Insn* block = CodeSlab.Rent();
        new Span<byte>(block, CodeSlab.BlockBytes).Fill(0xff);
        CodeSlab.Return(block);
        // Still mapped (the slab never unmaps), and nothing else rents while this collection runs.
        Assert.True(new ReadOnlySpan<byte>(block, CodeSlab.BlockBytes).IndexOfAnyExcept((byte)0) < 0, "a returned block kept old slots");
    }

    [Fact]
    public void ReservedBlocksAreFreeAndAlreadyFaultedIn()
    {
        const int Wanted = 200;
        CodeSlab.Reserve(Wanted);
        Assert.True(CodeSlab.FreeBlocks >= Wanted, $"{CodeSlab.FreeBlocks} free after reserving {Wanted}");
        var blocks = new List<nint>();
        try
        {
            using var pagemap = Pagemap.OpenSelf();
            int pages = CodeSlab.BlockBytes / 4096;
            var bitmap = new ulong[1];
            for (int i = 0; i < Wanted; i++)
            {
                nint b = (nint)CodeSlab.Rent();
                blocks.Add(b);
                // Asked before anything touches the block: renting must not be what faults it in.
                bitmap[0] = 0;
                ulong present = pagemap.OrPopulated(b, (ulong)CodeSlab.BlockBytes, bitmap, 0);
                Assert.True(present == (ulong)pages, $"block {i} at 0x{b:x}: {present} of {pages} pages present");
            }
        }
        finally
        {
            foreach (nint b in blocks) CodeSlab.Return((Insn*)b);
        }
    }
}
