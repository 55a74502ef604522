using System.Diagnostics;
using Ferry.Machine;
using Ferry.Machine.Board;
using Ferry.Machine.Tests;

namespace Ferry.Vm.Tests;

/// <summary>The machine's side of the guest contract without the engine: state sections, the dirty log, the throttle.</summary>
public sealed class MachineStateTests
{
    private static VirtMachine Board(int harts = 2) => new(new MachineOptions { MemoryBytes = 8UL << 20, Harts = harts });

    private static byte[] Data(IReadOnlyList<MachineStateSection> sections, string name) => sections.Single(s => s.Name == name).Data.ToArray();

    [Fact]
    public void SavesEveryPartAsANamedSection()
    {
        using VirtMachine m = Board();
        var names = m.SaveState().Select(s => s.Name).ToList();
        Assert.Equal(m.StateSectionCount, names.Count);
        Assert.Equal(names.Count, names.Distinct().Count());
        Assert.Contains("machine", names);
        Assert.Contains("hart.0", names);
        Assert.Contains("hart.1", names);
        Assert.Contains("clint", names);
        Assert.Contains("plic", names);
        Assert.Contains("uart", names);
        Assert.Contains("rtc", names);
        Assert.Contains("virtio.7", names);
    }

    [Fact]
    public void LoadStateRefusesASourceBoardWithOtherHarts()
    {
        using VirtMachine one = Board(harts: 1);
        using VirtMachine two = Board(harts: 2);
        var e = Assert.Throws<InvalidDataException>(() => two.LoadState(one.SaveState()));
        Assert.Contains("harts", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void LoadStateRefusesMissingDuplicatedUnknownAndOtherVersionSections()
    {
        using VirtMachine a = Board();
        using VirtMachine b = Board();
        var sections = a.SaveState().ToList();
        Assert.Contains("missing", Assert.Throws<InvalidDataException>(() => b.LoadState(sections.Where(s => s.Name != "uart").ToList())).Message, StringComparison.Ordinal);
        Assert.Contains("twice", Assert.Throws<InvalidDataException>(() => b.LoadState([.. sections, sections[1]])).Message, StringComparison.Ordinal);
        Assert.Contains("unknown", Assert.Throws<InvalidDataException>(() => b.LoadState([.. sections, new MachineStateSection("hart.9", 1, new byte[8])])).Message, StringComparison.Ordinal);
        Assert.Contains("version", Assert.Throws<InvalidDataException>(() => b.LoadState([.. sections.Where(s => s.Name != "rtc"), sections.Single(s => s.Name == "rtc") with { Version = 2 }])).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void LoadStateRefusesACorruptSectionAndLeavesTheMachineAsItWas()
    {
        using VirtMachine a = Board();
        using VirtMachine b = Board();
        // Give the source's harts a state unlike the destination's reset state.
        byte[] hart = Data(a.SaveState(), "hart.0");
        hart[8 + 8 * 5] = 0x5a; // x5
        a.LoadHartState(0, hart);
        var sections = a.SaveState().ToList();
        byte[] before = Data(b.SaveState(), "hart.0");

        // The PLIC is loaded last: by then the harts have taken their new state, and must get the old one back.
        byte[] plic = Data(sections, "plic");
        plic[0] ^= 0xff;
        var corrupt = sections.Select(s => s.Name == "plic" ? s with { Data = plic } : s).ToList();
        var e = Assert.Throws<InvalidDataException>(() => b.LoadState(corrupt));
        Assert.Contains("plic", e.Message, StringComparison.Ordinal);
        Assert.Equal(before, Data(b.SaveState(), "hart.0"));

        b.LoadState(sections);
        Assert.Equal(hart, Data(b.SaveState(), "hart.0"));
    }

    [Fact]
    public void HarvestIntoACallersBitmapOrsThePagesWrittenAndStartsClean()
    {
        using VirtMachine m = Board();
        var bitmap = new ulong[m.Ram.DirtyWords];
        m.StartDirtyLog();
        m.Ram.Write(VirtMachine.RamBase + 5 * 4096 + 12, [1, 2, 3]);
        bitmap[0] = 1UL << 40; // already set by the caller: kept
        m.HarvestDirty(bitmap);
        Assert.Equal((1UL << 40) | (1UL << 5), bitmap[0]);

        Array.Clear(bitmap);
        m.HarvestDirty(bitmap);
        Assert.All(bitmap, w => Assert.Equal(0UL, w));

        m.Ram.Write(VirtMachine.RamBase + 200 * 4096, [9]);
        m.HarvestDirty(bitmap);
        Assert.Equal(1UL << (200 % 64), bitmap[200 / 64]);

        // The engine harvests once per round: no allocation there.
        long allocated = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 10; i++) m.HarvestDirty(bitmap);
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - allocated);
        m.StopDirtyLog();
    }

    [Fact]
    public void PopulatedPagesIncludeEveryPageWrittenAndNotUntouchedOnes()
    {
        using VirtMachine m = Board();
        m.Ram.Write(VirtMachine.RamBase + 3 * 4096, [7]);
        var bitmap = new ulong[m.Ram.DirtyWords];
        m.GetPopulatedPages(bitmap);
        Assert.NotEqual(0UL, bitmap[0] & (1UL << 3));
        Assert.True(GuestCount(bitmap) < (long)(m.Ram.Size >> 12), "an untouched 8 MiB mapping reports every page populated");
    }

    private static long GuestCount(ulong[] bitmap) => bitmap.Sum(w => (long)System.Numerics.BitOperations.PopCount(w));

    [Fact]
    public void APlainPauseKeepsTheDisksLockOnlyTheMigrationsHandoverDropsIt()
    {
        string image = Path.Combine(Path.GetTempPath(), $"ferry-pause-{Guid.NewGuid():N}.img");
        File.WriteAllBytes(image, new byte[1 << 20]);
        try
        {
            using var m = new VirtMachine(new MachineOptions { MemoryBytes = 8UL << 20, DiskPath = image });
            // What `ferry vm pause` does: the disk stays this VM's.
            m.PauseDevices();
            Assert.True(m.Disk!.LockHeld);
            Assert.Throws<MachineConfigException>(() => new Ferry.Machine.Virtio.VirtioBlk(image).Dispose());
            m.ResumeDevices();

            // What a migration's source does after pausing.
            m.PauseDevices();
            m.ReleaseDiskLock();
            new Ferry.Machine.Virtio.VirtioBlk(image).Dispose();
            Assert.True(m.AcquireDiskLock(TimeSpan.FromSeconds(1)));
            Assert.Throws<MachineConfigException>(() => new Ferry.Machine.Virtio.VirtioBlk(image).Dispose());
        }
        finally
        {
            File.Delete(image);
        }
    }

    [Fact]
    public void AThrottledLinuxGuestKeepsRunningAndStillPausesAtOnce()
    {
        var console = new SerialLog();
        using var m = new VirtMachine(new MachineOptions { MemoryBytes = 256UL << 20, Harts = 2, SerialOut = console });
        byte[] dtb = VirtDeviceTree.CreateBlob(m.DeviceTreeOptions("console=ttyS0 ferry.heartbeat=50 ferry.ws=8M ferry.rate=20000", null), minimumSize: 16 * 1024);
        m.LoadLinux(File.ReadAllBytes(LinuxGuest.Firmware), File.ReadAllBytes(LinuxGuest.Image), default, dtb);
        m.Start();
        int at = console.WaitFor("heartbeat 2 ", TimeSpan.FromSeconds(90));

        m.SetThrottle(80);
        Assert.Equal(80, m.Throttle);
        at = console.WaitFor("heartbeat", TimeSpan.FromSeconds(10), at);
        var sw = Stopwatch.StartNew();
        m.Pause();
        // A throttled hart sleeps at most 8 ms of each 10 ms slice, parked: a pause need not wait for it.
        Assert.True(sw.ElapsedMilliseconds < 500, $"pause took {sw.ElapsedMilliseconds} ms");
        m.SetThrottle(0);
        m.Resume();
        console.WaitFor("heartbeat", TimeSpan.FromSeconds(10), at);
    }
}
