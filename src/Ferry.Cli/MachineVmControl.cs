using Ferry.Api;
using Ferry.Machine;

namespace Ferry.Cli;

/// <summary>The API's view of a <see cref="VirtMachine"/>: its state machine (running ⇄ paused → shutdown) over the machine's calls.</summary>
/// <remarks>
/// One lock orders the state changes: two pauses at once cannot both reach the machine, and a resume cannot slip in
/// between a pause and its state. <see cref="VirtMachine.Pause"/> runs under it; it waits only for each hart's next
/// block boundary.
/// </remarks>
internal sealed class MachineVmControl : IVmControl
{
    private readonly VirtMachine machine;
    private readonly TimeProvider time;
    private readonly Lock gate = new();
    // When the harts were started (TimeProvider ticks): uptime counts from here.
    private readonly long startedAt;
    // Written under the gate; read without it (an enum is read whole).
    private volatile VmState state = VmState.Running;

    public MachineVmControl(VirtMachine machine, TimeProvider time)
    {
        this.machine = machine;
        this.time = time;
        startedAt = time.GetTimestamp();
    }

    public VmState State => state;

    public VmInfo Info
    {
        get
        {
            lock (gate)
            {
                return new VmInfo(state, machine.HartCount, machine.Ram.Size,
                    (long)time.GetElapsedTime(startedAt).TotalMilliseconds, machine.InstructionsRetired);
            }
        }
    }

    public void Pause()
    {
        lock (gate)
        {
            Require(VmState.Running, "pause");
            machine.Pause();
            state = VmState.Paused;
        }
    }

    public void Resume()
    {
        lock (gate)
        {
            Require(VmState.Paused, "resume");
            machine.Resume();
            state = VmState.Running;
        }
    }

    public void Shutdown()
    {
        lock (gate)
        {
            if (state == VmState.Shutdown) throw new VmStateException("the VM is already shut down");
            state = VmState.Shutdown;
            // Harts leave at their next block boundary, paused ones at once; the VM process's WaitForExit returns 0.
            machine.PowerOff(0);
        }
    }

    /// <summary>The guest is gone (it powered off, or Ctrl+C): the API answers "shutdown" until it stops.</summary>
    public void MarkShutdown()
    {
        lock (gate) state = VmState.Shutdown;
    }

    private void Require(VmState wanted, string action)
    {
        if (state == wanted) return;
        throw new VmStateException(state switch
        {
            VmState.Shutdown => $"cannot {action}: the VM is shut down",
            VmState.Paused => "the VM is already paused",
            _ => "the VM is not paused",
        });
    }
}
