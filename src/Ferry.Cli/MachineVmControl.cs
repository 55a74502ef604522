using Ferry.Api;
using Ferry.Machine;
using Ferry.Migration;
using Ferry.Migration.Precopy;
using Ferry.Migration.Transport;
using Ferry.Vm;

namespace Ferry.Cli;

/// <summary>
/// The API's view of a <see cref="VirtMachine"/>: its state machine (running ⇄ paused → shutdown, running → migrated)
/// over the machine's calls, and its live migrations.
/// </summary>
/// <remarks>
/// One lock orders the state changes: two pauses at once cannot both reach the machine, and a resume cannot slip in
/// between a pause and its state. <see cref="VirtMachine.Pause"/> runs under it; it waits only for each hart's next
/// block boundary. A migration runs on its own thread; while it does, pause, resume, shutdown and a second migration
/// are refused (the engine pauses and resumes the machine itself). A completed migration powers the machine off here
/// (exit code 0: the VM runs on the destination); a failed or cancelled one leaves it running.
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
    // The migration in flight and where it goes; null when none is.
    private OutgoingMigration? outgoing;
    private string destination = "";
    // The last migration's outcome, shown by Info until the next one starts.
    private MigrationInfo? lastMigration;

    /// <param name="startedAt">When the harts started (<paramref name="time"/>'s ticks), if before now: a VM that ran
    /// here in post-copy before this control took over.</param>
    public MachineVmControl(VirtMachine machine, TimeProvider time, long? startedAt = null)
    {
        this.machine = machine;
        this.time = time;
        this.startedAt = startedAt ?? time.GetTimestamp();
    }

    public VmState State => state;

    /// <summary>Where the VM went, once a migration completed; null before.</summary>
    public string? MigratedTo { get; private set; }

    public VmInfo Info
    {
        get
        {
            lock (gate)
            {
                // While a post-copy is paused, why (the lost connection) is its error.
                MigrationInfo? migration = outgoing is null ? lastMigration
                    : MigrationInfo.From(destination, outgoing.Progress) with { Error = outgoing.PausedReason, PostcopyPauses = outgoing.PostcopyPauses };
                return new VmInfo(state, machine.HartCount, machine.Ram.Size,
                    (long)time.GetElapsedTime(startedAt).TotalMilliseconds, machine.InstructionsRetired, migration);
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
            if (state is VmState.Shutdown or VmState.Migrated) throw new VmStateException($"the VM is already {Name(state)}");
            RequireNoMigration("shut down");
            state = VmState.Shutdown;
            // Harts leave at their next block boundary, paused ones at once; the VM process's WaitForExit returns 0.
            machine.PowerOff(0);
        }
    }

    public Task<MigrationStatistics> MigrateAsync(MigrateRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        MigrationOptions options = request.ToOptions();
        if (!HostPort.TryParse(request.Destination, allowPortZero: false, out var endpoint, out string reason))
        {
            throw new ArgumentException($"destination '{request.Destination}' {reason}");
        }
        var done = new TaskCompletionSource<MigrationStatistics>(TaskCreationOptions.RunContinuationsAsynchronously);
        OutgoingMigration migration;
        lock (gate)
        {
            RequireNoMigration("migrate");
            Require(VmState.Running, "migrate");
            var source = new VirtMachineSource(machine, request.CopyDisk);
            migration = new OutgoingMigration(source, new TcpMigrationConnector(endpoint), options);
            outgoing = migration;
            destination = request.Destination;
            lastMigration = null;
        }
        // Its own thread, above the harts: the engine's rounds and switchover must not wait behind guest code.
        var thread = new Thread(() => Run(migration, done)) { Name = "ferry migration", IsBackground = true, Priority = ThreadPriority.AboveNormal };
        thread.Start();
        return done.Task;
    }

    private void Run(OutgoingMigration migration, TaskCompletionSource<MigrationStatistics> done)
    {
        MigrationStatistics statistics;
        try
        {
            statistics = migration.Run();
        }
        catch (Exception e)
        {
            // The engine reports failures in its statistics; anything else is a bug, but the API still answers.
            statistics = new MigrationStatistics { Status = MigrationStatus.Failed, Error = e.Message };
        }
        lock (gate)
        {
            outgoing = null;
            lastMigration = MigrationInfo.From(destination, migration.Progress) with { Status = statistics.Status, Error = statistics.Error };
            if (statistics.Status == MigrationStatus.Completed)
            {
                // The destination runs the VM now; this copy stays paused for good and the process ends with 0.
                state = VmState.Migrated;
                MigratedTo = destination;
            }
        }
        done.SetResult(statistics);
        if (statistics.Status == MigrationStatus.Completed) machine.PowerOff(0);
    }

    public void CancelMigration()
    {
        lock (gate)
        {
            if (outgoing is null) throw new VmStateException("no migration is in progress");
            outgoing.Cancel();
        }
    }

    public void ResumeMigration(string? destination)
    {
        IMigrationConnector? connector = null;
        if (destination is not null)
        {
            if (!HostPort.TryParse(destination, allowPortZero: false, out var endpoint, out string reason))
                throw new ArgumentException($"destination '{destination}' {reason}");
            connector = new TcpMigrationConnector(endpoint);
        }
        lock (gate)
        {
            if (outgoing is null) throw new VmStateException("no migration is in progress");
            try
            {
                outgoing.ResumePostcopy(connector);
            }
            catch (InvalidOperationException e)
            {
                throw new VmStateException(e.Message);
            }
            if (destination is not null) this.destination = destination;
        }
    }

    /// <summary>The guest is gone (it powered off, or Ctrl+C): the API answers "shutdown" (or "migrated") until it stops.</summary>
    public void MarkShutdown()
    {
        lock (gate)
        {
            if (state != VmState.Migrated) state = VmState.Shutdown;
        }
    }

    private void RequireNoMigration(string action)
    {
        if (outgoing is not null) throw new VmStateException($"cannot {action}: a migration is in progress (ferry migrate --cancel stops it)");
    }

    private void Require(VmState wanted, string action)
    {
        if (state == wanted) return;
        throw new VmStateException(state switch
        {
            VmState.Shutdown or VmState.Migrated => $"cannot {action}: the VM is {Name(state)}",
            VmState.Paused => action == "pause" ? "the VM is already paused" : $"cannot {action}: the VM is paused",
            _ => "the VM is not paused",
        });
    }

    private static string Name(VmState s) => s switch
    {
        VmState.Shutdown => "shut down",
        VmState.Migrated => "migrated",
        _ => s.ToString().ToLowerInvariant(),
    };
}
