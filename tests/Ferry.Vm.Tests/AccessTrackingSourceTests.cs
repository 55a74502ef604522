using System.Buffers.Binary;
using System.Diagnostics;
using Ferry.Machine;
using Ferry.Migration.Guest;

namespace Ferry.Vm.Tests;

/// <summary>
/// <see cref="VirtMachineSource"/> as an <see cref="IAccessTrackingSource"/>: RAM is region 0, so the machine's accessed
/// pages are the engine's first bits, and a copied disk's region after RAM gets none.
/// </summary>
public sealed class AccessTrackingSourceTests : IDisposable
{
    private const ulong Ram = 8UL << 20;
    private const ulong RamPages = Ram / 4096;
    // The M-mode program's code, the page it loads and the page it stores to; Untouched it never reaches.
    private const ulong Code = 0, Loaded = 5, Stored = 6, Untouched = 7;
    private const ulong Value = 0x0123_4567_89ab_cdef;
    private readonly string dir = Directory.CreateTempSubdirectory("ferry-access-").FullName;

    public void Dispose() => Directory.Delete(dir, recursive: true);

    private static uint Lui(int rd, uint imm20) => (imm20 << 12) | ((uint)rd << 7) | 0x37;
    private static uint Auipc(int rd) => ((uint)rd << 7) | 0x17;
    private static uint Add(int rd, int rs1, int rs2) => ((uint)rs2 << 20) | ((uint)rs1 << 15) | ((uint)rd << 7) | 0x33;
    private static uint Ld(int rd, int rs1) => ((uint)rs1 << 15) | (3u << 12) | ((uint)rd << 7) | 0x03;
    private static uint Sd(int rs2, int rs1) => ((uint)rs2 << 20) | ((uint)rs1 << 15) | (3u << 12) | 0x23;

    [Fact]
    public void HarvestAccessedPagesNamesTheRamPagesTheHartUsedAndNothingOfTheCopiedDisk()
    {
        string image = Path.Combine(dir, "disk.img");
        File.WriteAllBytes(image, new byte[64 << 10]);
        using var m = new VirtMachine(new MachineOptions { MemoryBytes = Ram, DiskPath = image, Rng = false });
        const int T0 = 5, S0 = 8, S1 = 9, S2 = 18, A0 = 10;
        uint[] program =
        [
            Auipc(S0), Lui(T0, (uint)Loaded), Add(S1, S0, T0), Lui(T0, (uint)Stored), Add(S2, S0, T0),
            Ld(A0, S1), Sd(A0, S2),
            0x0000006f, // jal x0, 0
        ];
        var code = new byte[4 * program.Length];
        for (int i = 0; i < program.Length; i++) BinaryPrimitives.WriteUInt32LittleEndian(code.AsSpan(4 * i), program[i]);
        m.Ram.Write(VirtMachine.RamBase + Code * 4096, code);
        m.Ram.Write(VirtMachine.RamBase + Loaded * 4096, BitConverter.GetBytes(Value));
        m.Ram.Write(VirtMachine.RamBase + Untouched * 4096, BitConverter.GetBytes(Value));
        m.Start();
        var stored = new byte[8];
        var deadline = Stopwatch.StartNew();
        while (BinaryPrimitives.ReadUInt64LittleEndian(stored) != Value)
        {
            Assert.True(deadline.Elapsed < TimeSpan.FromSeconds(20), "the program did not store");
            Thread.Sleep(1);
            m.Ram.Read(VirtMachine.RamBase + Stored * 4096, stored);
        }

        var source = new VirtMachineSource(m, copyDisk: true);
        IAccessTrackingSource tracking = source;
        source.Pause();
        var bitmap = new ulong[(source.TotalPages + 63) / 64];
        tracking.HarvestAccessedPages(bitmap);

        var pages = Enumerable.Range(0, (int)source.TotalPages).Where(p => (bitmap[p >> 6] & (1UL << p)) != 0).Select(p => (ulong)p).ToArray();
        Assert.Equal([Code, Loaded, Stored], pages);
        Assert.True(source.TotalPages > RamPages, "the disk is a region of its own");
        source.Resume();
    }
}
