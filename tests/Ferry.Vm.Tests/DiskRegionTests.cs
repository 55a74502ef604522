using Ferry.Machine;
using Ferry.Migration.Guest;

namespace Ferry.Vm.Tests;

/// <summary>
/// The destination's checks on a copied disk's region, without a guest: the layout a hostile or mismatched source
/// announces is refused before anything is overwritten, and a size unlike the source's disk when the state arrives.
/// </summary>
public sealed class DiskRegionTests : IDisposable
{
    private const ulong Ram = 8UL << 20;
    private readonly string dir = Directory.CreateTempSubdirectory("ferry-diskregion-").FullName;

    public void Dispose() => Directory.Delete(dir, recursive: true);

    private string Image(string name, long bytes, byte fill)
    {
        string path = Path.Combine(dir, name);
        File.WriteAllBytes(path, Enumerable.Repeat(fill, (int)bytes).ToArray());
        return path;
    }

    private static VirtMachineTargetFactory Factory(string? disk) => new() { Options = new MachineOptions { DiskPath = disk } };

    [Fact]
    public void ADiskRegionElsewhereTooLargeOrBeyondASecondIsRefusedAndTheImageKept()
    {
        string image = Image("destination.img", 64 << 10, 0xee);
        (ulong, ulong) ram = (VirtMachine.RamBase, Ram);

        var elsewhere = Assert.Throws<InvalidDataException>(() => Factory(image).Create(Guid.NewGuid(), [ram, (VirtMachineSource.DiskRegionAddress + 4096, 1 << 20)]));
        Assert.Contains("a copied disk is at 0x100000000000000", elsewhere.Message, StringComparison.Ordinal);
        var huge = Assert.Throws<InvalidDataException>(() => Factory(image).Create(Guid.NewGuid(), [ram, (VirtMachineSource.DiskRegionAddress, VirtMachineSource.MaxCopiedDiskBytes + 4096)]));
        Assert.Contains("more than the 1024 GiB", huge.Message, StringComparison.Ordinal);
        Assert.Throws<InvalidDataException>(() => Factory(image).Create(Guid.NewGuid(), [ram, (VirtMachineSource.DiskRegionAddress, 4096), (VirtMachineSource.DiskRegionAddress + 4096, 4096)]));

        Assert.Equal(Enumerable.Repeat((byte)0xee, 64 << 10), File.ReadAllBytes(image));
    }

    [Fact]
    public void ADiskRegionUnlikeTheSourcesDiskIsRefusedWhenTheStateArrives()
    {
        string sourceImage = Image("source.img", 2 << 20, 1);
        string destinationImage = Image("destination.img", 64 << 10, 2);
        using var source = new VirtMachine(new MachineOptions { MemoryBytes = Ram, DiskPath = sourceImage });
        var sections = source.SaveState().Select(s => new StateSection(s.Name, s.Version, s.Data)).ToList();

        // The source announced a 1 MiB disk region, but its disk has 2 MiB.
        using var target = (VirtMachineTarget)Factory(destinationImage).Create(Guid.NewGuid(), [(VirtMachine.RamBase, Ram), (VirtMachineSource.DiskRegionAddress, 1 << 20)]);
        Assert.True(target.ReceivesDisk);
        Assert.Equal(1L << 20, new FileInfo(destinationImage).Length);
        var e = Assert.Throws<InvalidDataException>(() => target.LoadState(sections));
        Assert.Contains("4096 sectors", e.Message, StringComparison.Ordinal);
    }
}
