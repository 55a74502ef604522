using System.Buffers.Binary;
using Ferry.Machine.Cpu;

namespace Ferry.Machine.Tests;

/// <summary>
/// Waiting for the harts to park (<see cref="HartControl.WaitQuiescent"/>, what <see cref="VirtMachine.Pause"/> does
/// after a short spin): it blocks rather than spins, and a parking hart wakes it.
/// </summary>
public class HartControlTests
{
    [Fact]
    public void AWaitForQuiescenceReturnsAtOnceWhenTheHartsAreParkedAlready()
    {
        using var control = new HartControl();
        int checks = 0;
        control.WaitQuiescent(() => ++checks > 0);
        Assert.Equal(1, checks);
    }

    [Fact]
    public void AParkingHartWakesTheWaiter()
    {
        using var control = new HartControl();
        bool parked = false;
        // No periodic re-check: only the hart's Parked() can end this wait.
        var waiter = new Thread(() => control.WaitQuiescent(() => Volatile.Read(ref parked), recheckMilliseconds: Timeout.Infinite)) { IsBackground = true };
        waiter.Start();
        Thread.Sleep(50);
        Assert.True(waiter.IsAlive, "the wait ended before the hart parked");
        Volatile.Write(ref parked, true);
        control.Parked();
        Assert.True(waiter.Join(TimeSpan.FromSeconds(10)), "a parking hart did not wake the waiter");
    }

    // Harts in a tight loop, started (after beforeStart).
    internal static VirtMachine LoopingMachine(int harts = 2, Action<VirtMachine>? beforeStart = null)
    {
        var machine = new VirtMachine(new MachineOptions { MemoryBytes = 2UL << 20, Harts = harts, Rng = false });
        Span<byte> loop = stackalloc byte[8];
        BinaryPrimitives.WriteUInt32LittleEndian(loop, 0x00108093);     // addi x1, x1, 1
        BinaryPrimitives.WriteUInt32LittleEndian(loop[4..], 0xffdff06f); // j -4
        machine.Ram.Write(VirtMachine.RamBase, loop);
        beforeStart?.Invoke(machine);
        machine.Start();
        return machine;
    }

    [Fact]
    public void AHartRunsWithTheGuestCpuSlice()
    {
        // /proc/<tid>/sched names the slice (se.slice, ns) on kernels that have one (EEVDF, 6.6+).
        static ulong? Slice(string task)
        {
            try
            {
                foreach (string line in File.ReadLines($"{task}/sched"))
                {
                    if (line.StartsWith("se.slice ", StringComparison.Ordinal)) return ulong.Parse(line[(line.IndexOf(':') + 1)..].Trim());
                }
            }
            catch (IOException)
            {
                // The thread ended meanwhile.
            }
            return null;
        }
        if (Slice("/proc/thread-self") is null) Assert.Skip("this kernel names no slice");
        using var machine = LoopingMachine();
        while (machine.InstructionsRetired == 0) Thread.Sleep(1);
        // Every hart of the process (other tests' machines run beside this one): one just started may not have set it yet.
        ulong want = (ulong)Ferry.Linux.LatencyPriority.GuestCpuSlice.Ticks * 100;
        var until = DateTime.UtcNow + TimeSpan.FromSeconds(5);
        List<(string Task, ulong? Slice)> harts;
        do
        {
            harts = [.. Directory.EnumerateDirectories("/proc/self/task")
                .Where(t => File.Exists($"{t}/comm") && File.ReadAllText($"{t}/comm").StartsWith("hart", StringComparison.Ordinal))
                .Select(t => (t, Slice(t)))];
        }
        while (harts.Any(h => h.Slice is { } s && s != want) && DateTime.UtcNow < until && Sleep());
        Assert.True(harts.Count >= 2);
        Assert.All(harts, h => Assert.True(h.Slice is null || h.Slice == want, $"{h.Task}: slice {h.Slice} ns"));

        static bool Sleep()
        {
            Thread.Sleep(20);
            return true;
        }
    }

    [Fact]
    public void ARealTimeThreadPausesRunningHartsOverAndOver()
    {
        // Two harts in a tight loop, paused and resumed from a SCHED_FIFO thread where this process may make one
        // (the migration's switchover thread is one): a spinning pauser could keep a hart off its CPU.
        using var machine = LoopingMachine();
        Exception? error = null;
        var pauser = new Thread(() =>
        {
            try
            {
                bool realtime = Ferry.Linux.Libc.SetCurrentThreadRealtime(1);
                for (int i = 0; i < 50; i++)
                {
                    machine.Pause();
                    ulong retired = machine.InstructionsRetired;
                    Thread.Sleep(1);
                    // Paused means stopped: nothing retires until the resume.
                    Assert.Equal(retired, machine.InstructionsRetired);
                    machine.Resume();
                    Thread.Sleep(1);
                }
                if (realtime) Ferry.Linux.Libc.SetCurrentThreadRealtime(0);
            }
            catch (Exception e)
            {
                error = e;
            }
        });
        pauser.Start();
        Assert.True(pauser.Join(TimeSpan.FromSeconds(60)), "pausing from a real-time thread hung");
        Assert.Null(error);
        machine.PowerOff(0);
    }
}

/// <summary>
/// A block's budget counts instructions; a request from another thread (a pause, a TLB flush, an interrupt) must not
/// wait for 4,096 of them when each takes the slow path (a guest touching a new page every few instructions).
/// </summary>
public class HartSignalTests
{
    // auipc x2, 0x100 (x2 = RAM + 1 MiB); lui x3, 1 (x3 = 4096); loop: sd x0, 0(x2); add x2, x2, x3; j loop.
    private static readonly uint[] StoreToANewPageEveryIteration = [0x00100117, 0x000011b7, 0x00013023, 0x00310133, 0xff9ff06f];

    private static Hart HartAtTheLoop(VirtMachine machine)
    {
        var code = new byte[StoreToANewPageEveryIteration.Length * 4];
        for (int i = 0; i < StoreToANewPageEveryIteration.Length; i++)
            BinaryPrimitives.WriteUInt32LittleEndian(code.AsSpan(i * 4), StoreToANewPageEveryIteration[i]);
        machine.Ram.Write(VirtMachine.RamBase, code);
        Hart hart = machine.GetHart(0);
        hart.Reset(VirtMachine.RamBase);
        return hart;
    }

    [Fact]
    public void AWriteFlushRequestedWhileTheHartTakesItsSignalIsMarkedDone()
    {
        // A dirty-log harvest asks every hart to drop its write entries and waits for each to say so. A request that
        // lands while the hart is taking its signal for something else (a kick: a timer, an interrupt line) must be
        // marked done: with the ticket read before the signal, its bit was taken and flushed for, an older ticket
        // marked done, and the harvest waited for good (a post-copy demo's source spun 12 minutes).
        long ticket = 0;
        int armed = 0;
        using var requested = new ManualResetEventSlim();
        Hart hart = null!;
        using var machine = HartControlTests.LoopingMachine(harts: 1, beforeStart: m =>
        {
            hart = m.GetHart(0);
            hart.SignalTaken = () =>
            {
                // Once, from the hart's own signal-taking: the harvest's request lands right there.
                if (Interlocked.Exchange(ref armed, 0) != 1) return;
                ticket = hart.RequestWriteFlush();
                requested.Set();
            };
        });
        Volatile.Write(ref armed, 1);
        hart.Kick();
        Assert.True(requested.Wait(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken));
        var until = DateTime.UtcNow + TimeSpan.FromSeconds(5);
        while (!hart.WriteFlushDone(ticket) && DateTime.UtcNow < until) Thread.Sleep(1);
        Assert.True(hart.WriteFlushDone(ticket), $"request {ticket} was never marked done");
    }

    [Fact]
    public void WithNothingAskedABlockOfSlowStoresRunsToItsBudget()
    {
        using var machine = new VirtMachine(new MachineOptions { MemoryBytes = 16UL << 20, Harts = 1, Rng = false });
        Hart hart = HartAtTheLoop(machine);
        hart.StepBlock();
        Assert.InRange(hart.Instret, 4096UL, 4100UL);
    }

    [Fact]
    public void ALoopWithAnAtomicInItEndsItsBlockAtTheBudget()
    {
        // auipc x2, 0x100; li x3, 1; lui x4, 25 (102,400 turns); loop: amoadd.w x0, x3, (x2); addi x4, x4, -1;
        // bnez x4, loop; self: j self. The atomic runs out of line: the block's count of instructions must go on across
        // it (the guest's dirtier loops like this, and its block once ran 300,000 instructions without a look at the
        // timer or a pause).
        using var machine = new VirtMachine(new MachineOptions { MemoryBytes = 16UL << 20, Harts = 1, Rng = false });
        uint[] program = [0x00100117, 0x00100193, 0x00019237, 0x0031202f, 0xfff20213, 0xfe021ce3, 0x0000006f];
        var code = new byte[program.Length * 4];
        for (int i = 0; i < program.Length; i++) BinaryPrimitives.WriteUInt32LittleEndian(code.AsSpan(i * 4), program[i]);
        machine.Ram.Write(VirtMachine.RamBase, code);
        Hart hart = machine.GetHart(0);
        hart.Reset(VirtMachine.RamBase);
        hart.StepBlock();
        Assert.InRange(hart.Instret, 4096UL, 4100UL);
        Assert.InRange(hart.Pc, VirtMachine.RamBase + 12, VirtMachine.RamBase + 20); // still in the loop
    }

    [Fact]
    public void ARequestPendingEndsTheBlockAtTheNextSlowPath()
    {
        using var machine = new VirtMachine(new MachineOptions { MemoryBytes = 16UL << 20, Harts = 1, Rng = false });
        Hart hart = HartAtTheLoop(machine);
        hart.Kick(); // as Pause, a flush request or an interrupt line does
        hart.StepBlock();
        Assert.Equal(3UL, hart.Instret); // auipc, lui, and the first store: the block ends after it
        Assert.Equal(VirtMachine.RamBase + 12, hart.Pc);
    }
}
