namespace Ferry.Api;

/// <summary>
/// An <see cref="IVmControl"/> request that does not apply in the VM's current state (pausing a paused VM, resuming a
/// running one, anything after shutdown). The message is one line for a person; the API answers 409 with it.
/// </summary>
public sealed class VmStateException : Exception
{
    public VmStateException() { }

    public VmStateException(string message) : base(message) { }

    public VmStateException(string message, Exception innerException) : base(message, innerException) { }
}
