using System.Buffers.Binary;
using Ferry.Machine.Memory;

namespace Ferry.Machine.Tests;

/// <summary>
/// The hooks live migration needs, proved on real guest programs: the dirty log (harts' stores and device writes,
/// caught again after a harvest) and pause with the whole hart state moved to a fresh machine.
/// </summary>
public sealed class MachineStateTests
{
    private const ulong Mailbox = 0x8020_0000;
    private const ulong Go = 0x8020_1000;
    private const ulong Data = 0x8030_0000;

    private static int PageOf(ulong gpa) => (int)((gpa - VirtMachine.RamBase) >> 12);

    private static ulong ReadWord(GuestRam ram, ulong gpa)
    {
        Span<byte> b = stackalloc byte[8];
        ram.Read(gpa, b);
        return BinaryPrimitives.ReadUInt64LittleEndian(b);
    }

    private static void WriteWord(GuestRam ram, ulong gpa, ulong value)
    {
        Span<byte> b = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, value);
        ram.Write(gpa, b);
    }

    private static void WaitFor(Func<bool> condition, VirtMachine m, string what)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (!condition())
        {
            Assert.False(m.WaitForExit(TimeSpan.Zero, out int code), $"guest exited ({code}) before {what}");
            Assert.True(DateTime.UtcNow < deadline, $"timed out waiting for {what}");
            Thread.Sleep(1);
        }
    }

    private static SortedSet<int> Pages(ulong[] bitmap)
    {
        var set = new SortedSet<int>();
        for (int w = 0; w < bitmap.Length; w++)
        {
            for (int b = 0; b < 64; b++)
            {
                if ((bitmap[w] & (1UL << b)) != 0) set.Add(w * 64 + b);
            }
        }
        return set;
    }

    [Fact]
    public void DirtyLogHoldsExactlyThePagesWrittenByHartAndDevice()
    {
        using var m = new VirtMachine(new MachineOptions { MemoryBytes = 8UL << 20 });
        m.LoadFirmware(Programs.Elf("dirty_log"));
        m.Start();

        // Step 1: the guest is ready (its start-up code has run); tracking starts now, and the host lets it go.
        WaitFor(() => ReadWord(m.Ram, Mailbox) == 1, m, "step 1");
        m.StartDirtyLog();
        WriteWord(m.Ram, Go, 1);

        // Step 2: the guest stored into ten pages and its mailbox; the host's own write of GO counts too.
        WaitFor(() => ReadWord(m.Ram, Mailbox) == 2, m, "step 2");
        var expected = new SortedSet<int> { PageOf(Mailbox), PageOf(Go) };
        for (int k = 0; k < 10; k++) expected.Add(PageOf(Data + (ulong)k * 3 * 4096));
        Assert.Equal(expected, Pages(m.HarvestDirty()));

        // A device writes a page; then the host lets the guest go on.
        const ulong deviceWrite = 0x8040_5000;
        m.Ram.Write(deviceWrite + 100, new byte[300]);
        WriteWord(m.Ram, Go, 2);

        // Step 3: the guest wrote a page it had written before the harvest (its fast path must be gone): caught again.
        WaitFor(() => ReadWord(m.Ram, Mailbox) == 3, m, "step 3");
        var expected2 = new SortedSet<int> { PageOf(Mailbox), PageOf(Data), PageOf(deviceWrite), PageOf(Go) };
        Assert.Equal(expected2, Pages(m.HarvestDirty()));

        // Nothing written since: the next harvest is empty while the guest spins reading.
        Thread.Sleep(20);
        Assert.Empty(Pages(m.HarvestDirty()));

        WriteWord(m.Ram, Go, 3);
        Assert.True(m.WaitForExit(TimeSpan.FromSeconds(20), out int exit));
        Assert.Equal(0, exit);
    }

    [Fact]
    public void PausedThousandsOfTimesAndMovedToFreshMachinesTheProgramFinishesTheSame()
    {
        string program = Programs.Elf("pause_state");
        const ulong memory = 2UL << 20;

        var reference = new MemoryStream();
        using (var m = new VirtMachine(new MachineOptions { MemoryBytes = memory, SerialOut = reference }))
        {
            m.LoadFirmware(program);
            m.Start();
            Assert.True(m.WaitForExit(TimeSpan.FromSeconds(60), out int code));
            Assert.Equal(0, code);
        }
        string expected = System.Text.Encoding.ASCII.GetString(reference.ToArray());
        Assert.Contains("00000000000f4240", expected, StringComparison.Ordinal); // the LR/SC counter reached 1,000,000

        var serial = new MemoryStream();
        var random = new Random(12345);
        var current = new VirtMachine(new MachineOptions { MemoryBytes = memory, SerialOut = serial });
        current.LoadFirmware(program);
        current.Pause(); // harts start parked, so each run below is exactly as long as the test says
        current.Start();
        int moves = 0;
        int exitCode;
        try
        {
            while (true)
            {
                // Run a random number of instructions (counted, not timed, so a loaded host still gets thousands of
                // pauses), then pause wherever that lands; every few moves, a timed run and Pause() instead.
                if (moves % 8 == 7)
                {
                    current.Resume();
                    Thread.SpinWait(random.Next(0, 20_000));
                    current.Pause();
                }
                else
                {
                    current.RunInstructions((ulong)random.Next(1, 40_000));
                }
                if (current.WaitForExit(TimeSpan.Zero, out exitCode)) break;
                byte[] hart = current.SaveHartState(0);
                var next = new VirtMachine(new MachineOptions { MemoryBytes = memory, SerialOut = serial });
                CopyRam(current.Ram, next.Ram);
                next.LoadHartState(0, hart);
                current.Dispose();
                current = next;
                current.Pause();
                current.Start();
                moves++;
            }
        }
        finally
        {
            current.Dispose();
        }
        Assert.Equal(0, exitCode);
        Assert.Equal(expected, System.Text.Encoding.ASCII.GetString(serial.ToArray()));
        Assert.True(moves >= 1000, $"only {moves} moves before the program finished");
    }

    private static unsafe void CopyRam(GuestRam from, GuestRam to) =>
        new ReadOnlySpan<byte>(from.Host, checked((int)from.Size)).CopyTo(new Span<byte>(to.Host, checked((int)to.Size)));

    [Fact]
    public void AMachineStartedPausedRunsNothingTakesStateAndGivesBackItsRamUntilResumed()
    {
        // A loop: count in x1 and store it at 0x8000_0100, forever.
        var program = new byte[16];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(program, 0x00000117);      // auipc x2, 0
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(program.AsSpan(4), 0x00108093); // addi x1, x1, 1
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(program.AsSpan(8), 0x10113023); // sd x1, 256(x2)
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(program.AsSpan(12), 0xff9ff06f); // j -8
        var ram = new Memory.GuestRam(VirtMachine.RamBase, 2UL << 20);
        ram.Write(VirtMachine.RamBase, program);
        var first = new VirtMachine(new MachineOptions { MemoryBytes = 2UL << 20, Harts = 2 }, ram);
        first.StartPaused();
        Thread.Sleep(50);
        Assert.Equal(0UL, first.InstructionsRetired);
        // Parked, never run: the RAM can still go to a board of another shape, untouched.
        Memory.GuestRam back = first.DisposeKeepingRam();
        Assert.Same(ram, back);
        using var second = new VirtMachine(new MachineOptions { MemoryBytes = 2UL << 20, Harts = 1 }, back);
        second.StartPaused();
        second.LoadState(second.SaveState());
        Assert.Equal(0UL, second.InstructionsRetired);

        second.Resume();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (second.InstructionsRetired < 100_000 && clock.Elapsed < TimeSpan.FromSeconds(30)) Thread.Sleep(1);
        second.Pause();
        Assert.True(second.InstructionsRetired >= 100_000, "the resumed hart did not run");
        var stored = new byte[8];
        second.Ram.Read(VirtMachine.RamBase + 0x100, stored);
        Assert.NotEqual(0UL, BitConverter.ToUInt64(stored));
        // It ran: its RAM is its own now.
        Assert.Throws<InvalidOperationException>(() => second.DisposeKeepingRam());
    }

    [Fact]
    public void HartStateRejectsForeignAndDamagedSections()
    {
        using var m = new VirtMachine(new MachineOptions { MemoryBytes = 2UL << 20 });
        byte[] good = m.SaveHartState(0);
        m.LoadHartState(0, good);
        Assert.Throws<InvalidDataException>(() => m.LoadHartState(0, good.AsSpan(0, good.Length - 1)));
        byte[] foreign = (byte[])good.Clone();
        foreign[0] ^= 0xff;
        Assert.Throws<InvalidDataException>(() => m.LoadHartState(0, foreign));
        byte[] future = (byte[])good.Clone();
        future[4] = 99;
        Assert.Contains("version 99", Assert.Throws<InvalidDataException>(() => m.LoadHartState(0, future)).Message, StringComparison.Ordinal);
    }
}
