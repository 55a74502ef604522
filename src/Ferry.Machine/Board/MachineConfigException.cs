namespace Ferry.Machine.Board;

/// <summary>
/// The machine cannot be built or loaded as asked (not an ELF, not RISC-V, a segment outside RAM, memory too small).
/// The message is one line meant for the user, naming what was wrong.
/// </summary>
public sealed class MachineConfigException : Exception
{
    public MachineConfigException(string message) : base(message) { }
    public MachineConfigException(string message, Exception inner) : base(message, inner) { }
    public MachineConfigException() { }
}
