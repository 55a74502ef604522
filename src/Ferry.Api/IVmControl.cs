using Ferry.Migration;

namespace Ferry.Api;

/// <summary>
/// What the API socket can ask of the VM it serves. The VM process implements it over its machine; the API knows
/// nothing else about the machine, so a test or a later migration controller can stand behind it instead.
/// </summary>
/// <remarks>
/// Threading: every member is called from Kestrel's thread pool, possibly by several requests at once, while the
/// guest runs. Implementations serialise the state changes themselves; <see cref="Pause"/> returns only once every
/// hart has stopped, so a <see cref="Info"/> that follows it sees instruction counts that no longer move.
/// A request that does not apply in the current state throws <see cref="VmStateException"/> (the API's 409); the
/// state is then unchanged.
/// </remarks>
public interface IVmControl
{
    /// <summary>The current state; a value, safe to read at any time.</summary>
    VmState State { get; }

    /// <summary>State, size and counters, read at one moment.</summary>
    VmInfo Info { get; }

    /// <summary>Stop every hart at an instruction boundary; returns once all are stopped. Only from <see cref="VmState.Running"/>.</summary>
    void Pause();

    /// <summary>Let the paused harts run again. Only from <see cref="VmState.Paused"/>.</summary>
    void Resume();

    /// <summary>
    /// Power the guest off (as its own power-off would, with exit code 0); the VM process then exits 0. Returns at once:
    /// the response is sent before the server stops. From running or paused.
    /// </summary>
    void Shutdown();

    /// <summary>
    /// Live-migrate the running VM to <see cref="MigrateRequest.Destination"/>; the task ends with the migration, with
    /// its statistics whatever the outcome. Completed: the VM runs on the destination and this VM process exits 0 once
    /// the answer is sent. Failed or cancelled: the VM runs on here and can migrate again. Throws
    /// <see cref="VmStateException"/> when the VM is not running or a migration is in flight (409), and
    /// <see cref="ArgumentException"/> for a request that is not valid (400). Progress shows in <see cref="Info"/>.
    /// </summary>
    Task<MigrationStatistics> MigrateAsync(MigrateRequest request) =>
        throw new VmStateException("this VM cannot migrate");

    /// <summary>
    /// The answer to <see cref="MigrateAsync"/> has been sent (or its client went away): what is left of a VM that
    /// migrated is its teardown, which nobody waits for.
    /// </summary>
    void MigrationAnswered() { }

    /// <summary>Cancel the migration in flight (the VM runs on here); <see cref="VmStateException"/> when there is none.</summary>
    void CancelMigration() => throw new VmStateException("no migration is in progress");

    /// <summary>
    /// Resume a post-copy paused by a lost connection, over a new one (to <paramref name="destination"/>, HOST:PORT, or
    /// the same address when null); <see cref="VmStateException"/> unless a migration is postcopy-paused,
    /// <see cref="ArgumentException"/> for a bad address.
    /// </summary>
    void ResumeMigration(string? destination) => throw new VmStateException("no migration is paused in post-copy");
}
