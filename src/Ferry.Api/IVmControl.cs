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
}
