using Ferry.Api;
using Ferry.Machine;
using Ferry.Migration;
using Ferry.Migration.Precopy;
using Ferry.Migration.Protocol;

namespace Ferry.Cli;

/// <summary>
/// The API of a <c>ferry vm receive</c> process whose VM runs here while post-copy still brings its memory: the VM is
/// running, and its migration shows <c>postcopy-active</c> (or <c>postcopy-paused</c>, a lost connection waiting for
/// the source's resume) with the memory still to come. Nothing may change the VM until every page is here: the
/// engine owns it, and a pause or a shutdown now would stop a guest whose only other copy of its memory is the
/// source's.
/// </summary>
internal sealed class PostcopyVmControl(VirtMachine machine, IncomingMigration incoming, TimeProvider time) : IVmControl
{
    /// <summary>When the guest started here (TimeProvider ticks): its uptime counts from here, after post-copy too.</summary>
    public long StartedAt { get; } = time.GetTimestamp();

    public VmState State => VmState.Running;

    public VmInfo Info
    {
        get
        {
            var migration = incoming.PostcopyStatus is { } status
                ? new MigrationInfo
                {
                    Status = status,
                    RemainingBytes = incoming.PostcopyPagesToCome * MigrationProtocol.PageSize,
                    ElapsedMs = time.GetElapsedTime(StartedAt).TotalMilliseconds,
                }
                : null;
            return new VmInfo(VmState.Running, machine.HartCount, machine.Ram.Size,
                (long)time.GetElapsedTime(StartedAt).TotalMilliseconds, machine.InstructionsRetired, migration);
        }
    }

    public void Pause() => throw Refused("pause");

    public void Resume() => throw Refused("resume");

    public void Shutdown() => throw Refused("shut down");

    public Task<MigrationStatistics> MigrateAsync(MigrateRequest request) => throw Refused("migrate");

    public void CancelMigration() => throw Refused("cancel the migration");

    public void ResumeMigration(string? destination) =>
        throw new VmStateException("cannot resume the migration here: its source resumes it (ferry migrate --resume on the source's API)");

    private static VmStateException Refused(string action) =>
        new($"cannot {action}: the VM's memory is still arriving (post-copy)");
}
