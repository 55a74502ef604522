using Ferry.Machine;
using Ferry.Migration.Guest;

namespace Ferry.Vm.Tests;

/// <summary>
/// The machine's shape (capability Shape): the destination's board is built ahead with a guessed hart count, rebuilt
/// in the source's shape when its shape section comes, so the state then loads without a rebuild inside the downtime;
/// a shape section from the network that is not this board's is refused.
/// </summary>
public sealed class MachineShapeTests
{
    private const ulong Ram = 16UL << 20;

    private static VirtMachineTarget Target(int guess) =>
        (VirtMachineTarget)new VirtMachineTargetFactory { Options = new MachineOptions { Harts = guess, Rng = false } }
            .Create(Guid.NewGuid(), [(VirtMachine.RamBase, Ram)]);

    private static List<StateSection> StateOf(int harts)
    {
        using var source = new VirtMachine(new MachineOptions { MemoryBytes = Ram, Harts = harts, Rng = false });
        return source.SaveState().Select(s => new StateSection(s.Name, s.Version, s.Data)).ToList();
    }

    [Theory]
    [InlineData(1, 3)]
    [InlineData(2, 1)]
    [InlineData(8, 8)]
    public void TheSourcesShapeBuildsTheBoardAheadAndItsStateLoadsWithoutARebuild(int guess, int harts)
    {
        using VirtMachineTarget target = Target(guess);
        target.Reshape(VirtMachineTarget.Shape(harts));
        target.LoadState(StateOf(harts));
        Assert.False(target.RebuiltAtLoad, "the board was rebuilt inside the downtime");
        Assert.Equal(harts, target.Machine!.HartCount);
    }

    [Fact]
    public void WithoutTheShapeAWrongGuessIsRebuiltAtLoad()
    {
        using VirtMachineTarget target = Target(guess: 2);
        target.LoadState(StateOf(3));
        Assert.True(target.RebuiltAtLoad);
        Assert.Equal(3, target.Machine!.HartCount);
    }

    [Fact]
    public void TheSourcesShapeIsItsHartCount()
    {
        using var machine = new VirtMachine(new MachineOptions { MemoryBytes = Ram, Harts = 3, Rng = false });
        StateSection shape = new VirtMachineSource(machine).GetShape();
        Assert.Equal((VirtMachineTarget.ShapeSectionName, 1u), (shape.Name, shape.Version));
        Assert.Equal([3, 0, 0, 0], shape.Data.ToArray());
        using VirtMachineTarget target = Target(guess: 1);
        target.Reshape(shape);
        target.LoadState(StateOf(3));
        Assert.False(target.RebuiltAtLoad);
    }

    public static TheoryData<string, uint, byte[], string> Foreign => new()
    {
        { "hart-count", 1, [1, 0, 0, 0], "a 'hart-count' section, not this board's 'virt-shape'" },
        { VirtMachineTarget.ShapeSectionName, 2, [1, 0, 0, 0], "virt-shape version 2, this build reads 1" },
        { VirtMachineTarget.ShapeSectionName, 1, [1, 0, 0], "virt-shape is 3 bytes, not 4" },
        { VirtMachineTarget.ShapeSectionName, 1, [0, 0, 0, 0], "virt-shape: 0 harts, this build runs 1 to 8" },
        { VirtMachineTarget.ShapeSectionName, 1, [9, 0, 0, 0], "virt-shape: 9 harts, this build runs 1 to 8" },
        { VirtMachineTarget.ShapeSectionName, 1, [0xff, 0xff, 0xff, 0xff], "virt-shape: 4294967295 harts, this build runs 1 to 8" },
    };

    [Theory]
    [MemberData(nameof(Foreign))]
    public void AShapeThatIsNotThisBoardsIsRefusedAndTheBoardBuiltAheadStays(string name, uint version, byte[] data, string why)
    {
        using VirtMachineTarget target = Target(guess: 2);
        var e = Assert.Throws<InvalidDataException>(() => target.Reshape(new StateSection(name, version, data)));
        Assert.Equal(why, e.Message);
        target.LoadState(StateOf(2));
        Assert.False(target.RebuiltAtLoad);
    }
}
