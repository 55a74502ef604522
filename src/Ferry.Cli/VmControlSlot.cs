using Ferry.Api;
using Ferry.Migration;

namespace Ferry.Cli;

/// <summary>
/// What a VM process's API socket serves for the whole life of the process: the current machine's control, or, when
/// there is no machine (before an incoming VM arrived, between the two boots of a reboot, after the end), a state and
/// refusals. One socket for the process, so a client never finds it missing for a moment.
/// </summary>
/// <remarks>
/// Idle in state <see cref="VmState.Running"/> means the machine is on its way (the API answers before the first boot's
/// machine exists, and between the two boots of a reboot): a request then waits for it, up to <see cref="StartWait"/>,
/// rather than being refused for a moment's timing (a client that paused right after the socket first answered was
/// told the VM was restarting).
/// </remarks>
internal sealed class VmControlSlot : IVmControl
{
    /// <summary>How long a request waits for a machine that is starting.</summary>
    public static readonly TimeSpan StartWait = TimeSpan.FromSeconds(10);

    private readonly object gate = new();
    private volatile IVmControl current;

    public VmControlSlot(VmState idleState, Action? shutdownWhileIdle = null) => current = new Idle(idleState, shutdownWhileIdle);

    /// <summary>Serve <paramref name="control"/> from now on.</summary>
    public void Set(IVmControl control) => Replace(control);

    /// <summary>No machine from now on: <paramref name="state"/>, and everything else refused.</summary>
    public void SetIdle(VmState state, Action? shutdown = null) => Replace(new Idle(state, shutdown));

    private void Replace(IVmControl control)
    {
        lock (gate)
        {
            current = control;
            Monitor.PulseAll(gate);
        }
    }

    // The control a request goes to: the current one, or, while a machine is starting, the next one.
    private IVmControl Target()
    {
        var c = current;
        if (!Starting(c)) return c;
        long deadline = Environment.TickCount64 + (long)StartWait.TotalMilliseconds;
        lock (gate)
        {
            while (Starting(current) && Environment.TickCount64 is var now && now < deadline) Monitor.Wait(gate, (int)(deadline - now));
            return current;
        }
    }

    private static bool Starting(IVmControl c) => c is Idle { State: VmState.Running };

    public VmState State => current.State;

    public VmInfo Info => current.Info;

    public void Pause() => Target().Pause();

    public void Resume() => Target().Resume();

    public void Shutdown() => Target().Shutdown();

    public Task<MigrationStatistics> MigrateAsync(MigrateRequest request) => Target().MigrateAsync(request);

    /// <inheritdoc/>
    /// <remarks>
    /// Once the VM migrated, this process has only its teardown left (unmapping the guest's memory, the API's last
    /// replies), and runs it lowered (LatencyPriority.LowerProcess): measured on a 2-core host migrating to itself (a
    /// local migration, as for a VMM upgrade), that work took 33 ms of CPU in the destination guest's first 60 ms. Not
    /// before the answer is out: on a busy host a process on idle CPU did not write it within the API's 5 s of grace,
    /// and the client saw the response end prematurely (two CPU-bound loops beside a migration with --copy-disk: 8 of 17
    /// runs failed so, none of 6 after).
    /// </remarks>
    public void MigrationAnswered()
    {
        if (State == VmState.Migrated) Ferry.Linux.LatencyPriority.LowerProcess();
    }

    public void CancelMigration() => Target().CancelMigration();

    public void ResumeMigration(string? destination) => Target().ResumeMigration(destination);

    private sealed class Idle(VmState state, Action? shutdown) : IVmControl
    {
        public VmState State => state;

        public VmInfo Info => new(state, 0, 0, 0, 0);

        public void Pause() => throw Refused("pause");

        public void Resume() => throw Refused("resume");

        public void Shutdown()
        {
            if (shutdown is null) throw Refused("shut down");
            shutdown();
        }

        public Task<MigrationStatistics> MigrateAsync(MigrateRequest request) => throw Refused("migrate");

        private VmStateException Refused(string action) => new(state switch
        {
            VmState.Incoming => $"cannot {action}: the VM has not arrived yet",
            VmState.Migrated => $"cannot {action}: the VM migrated away",
            VmState.Shutdown => $"cannot {action}: the VM is shut down",
            _ => $"cannot {action}: the VM is still starting",
        });
    }
}
