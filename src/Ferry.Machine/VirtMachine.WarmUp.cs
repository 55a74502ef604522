using System.Buffers.Binary;
using System.Reflection;
using System.Runtime.CompilerServices;

namespace Ferry.Machine;

public sealed partial class VirtMachine
{
    /// <summary>
    /// Run, on a throwaway 2 MiB machine, the code a migration's destination first runs inside the downtime: building
    /// a board, loading its state, starting harts and executing guest code. The first call of each of those methods
    /// is a JIT compilation (or a ReadyToRun fix-up); in a fresh VM process that cost lands in the downtime, after the
    /// guest is paused on the source. Measured for a 1 GiB, 2-hart board: building and loading 44 ms on first use,
    /// 2.3 ms after a warm-up. A receiving VM process calls this while it waits for the source to connect.
    /// </summary>
    public static void WarmUp()
    {
        CompileInterpreter();
        using var machine = new VirtMachine(new MachineOptions { MemoryBytes = MinMemory, Harts = 2 });
        // A loop every hart runs from the reset vector: count in x1 and store it, so loads, stores, branches and the
        // dirty log's paths are all compiled.
        Span<byte> program = stackalloc byte[16];
        BinaryPrimitives.WriteUInt32LittleEndian(program, 0x00000117);      // auipc x2, 0
        BinaryPrimitives.WriteUInt32LittleEndian(program[4..], 0x00108093); // loop: addi x1, x1, 1
        BinaryPrimitives.WriteUInt32LittleEndian(program[8..], 0x10113023); // sd x1, 256(x2)
        BinaryPrimitives.WriteUInt32LittleEndian(program[12..], 0xff9ff06f); // j loop
        machine.Ram.Write(RamBase, program);
        machine.StartDirtyLog();
        machine.Start();
        machine.Pause();
        machine.RunInstructions(200_000);
        machine.PauseDevices();
        IReadOnlyList<MachineStateSection> state = machine.SaveState();
        machine.LoadState(state);
        machine.HarvestDirty();
        machine.StopDirtyLog();
        machine.ResumeDevices();
        machine.PowerOff(0);
    }

    /// <summary>
    /// Compile the interpreter's hot methods now: those marked <see cref="MethodImplOptions.AggressiveOptimization"/>,
    /// which the runtime compiles fully optimised on their first call and never again. Without the mark they ran their
    /// precompiled (ReadyToRun) code first and were recompiled optimised once hot, and in a destination that was right
    /// after the switchover: ~80 methods of the harts' paths in the first second, ~95 ms of a CPU the harts needed
    /// (<c>perf sched</c>, <c>DOTNET_JitStdOutFile</c>). First calls here instead, while the process waits.
    /// </summary>
    private static void CompileInterpreter()
    {
        foreach (Type type in new[] { typeof(Cpu.Hart), typeof(Cpu.Decoder), typeof(Board.Clint), typeof(Board.Plic), typeof(Board.Uart16550), typeof(Board.AddressSpace), typeof(Memory.GuestRam) })
        {
            foreach (MethodInfo method in type.GetMethods(BindingFlags.Instance | BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly))
            {
                if ((method.MethodImplementationFlags & MethodImplAttributes.AggressiveOptimization) != 0) RuntimeHelpers.PrepareMethod(method.MethodHandle);
            }
        }
        // Every device's register accesses: the warm-up program touches none, and a migrated guest's first timer,
        // console and interrupt-controller accesses come in its first milliseconds on the destination. There the
        // harts compiled them on first call (the runtime's JIT events: the CLINT's, UART's and PLIC's Read and Write,
        // optimised because they loop, 3-10 ms after the resume), each a stall of the guest.
        foreach (Type type in typeof(VirtMachine).Assembly.GetTypes())
        {
            if (type.IsAbstract || type.ContainsGenericParameters || !typeof(Board.IMmioDevice).IsAssignableFrom(type)) continue;
            foreach (MethodInfo method in type.GetInterfaceMap(typeof(Board.IMmioDevice)).TargetMethods) RuntimeHelpers.PrepareMethod(method.MethodHandle);
        }
    }

    /// <summary>
    /// Fault in, ahead, the memory <paramref name="harts"/> harts of a running Linux guest decode its code into (see
    /// <see cref="Cpu.CodeSlab"/>): a destination's harts decode every page afresh right after the switchover, where
    /// each first touch of that memory was a page fault the guest waited on. ~8 MiB per hart, ~30 ms per hart here;
    /// a receiving VM process calls this while it waits for the source.
    /// </summary>
    public static void ReserveDecodedCode(int harts)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(harts);
        Cpu.CodeSlab.Reserve(harts * Cpu.CodeSlab.BlocksPerHart);
    }
}
