using Ferry.Api;

namespace Ferry.Cli.Tests;

/// <summary>
/// The VM process's API before its machine exists (the first boot, a reboot): requests wait for the machine rather
/// than being refused for a moment's timing.
/// </summary>
public class VmControlSlotTests
{
    private sealed class Machine : IVmControl
    {
        public int Pauses;

        public VmState State => VmState.Running;

        public VmInfo Info => new(VmState.Running, 1, 0, 0, 0);

        public void Pause() => Pauses++;

        public void Resume() { }

        public void Shutdown() { }
    }

    [Fact]
    public async Task APauseWhileTheMachineStartsWaitsForItAndGoesToIt()
    {
        var slot = new VmControlSlot(VmState.Running);
        var pause = Task.Run(slot.Pause, TestContext.Current.CancellationToken);
        await Task.Delay(100, TestContext.Current.CancellationToken);
        Assert.False(pause.IsCompleted, "the pause did not wait for the machine");
        var machine = new Machine();
        slot.Set(machine);
        await pause.WaitAsync(TimeSpan.FromSeconds(5), TestContext.Current.CancellationToken);
        Assert.Equal(1, machine.Pauses);
    }

    [Fact]
    public async Task AStartThatEndsWithoutAMachineAnswersWithWhatItEndedIn()
    {
        var slot = new VmControlSlot(VmState.Running);
        var pause = Task.Run(slot.Pause, TestContext.Current.CancellationToken);
        await Task.Delay(100, TestContext.Current.CancellationToken);
        slot.SetIdle(VmState.Shutdown);
        var e = await Assert.ThrowsAsync<VmStateException>(() => pause.WaitAsync(TimeSpan.FromSeconds(5), TestContext.Current.CancellationToken));
        Assert.Equal("cannot pause: the VM is shut down", e.Message);
    }

    [Fact]
    public void ARequestToAVmThatMigratedAwayIsRefusedAtOnce()
    {
        var slot = new VmControlSlot(VmState.Migrated);
        var e = Assert.Throws<VmStateException>(slot.Pause);
        Assert.Equal("cannot pause: the VM migrated away", e.Message);
    }
}
