namespace Ferry.Machine.Memory;

/// <summary>
/// Post-copy was aborted (<see cref="GuestRam.AbortPostcopy"/>): pages of the guest's RAM will never arrive, so the
/// guest cannot go on. Thrown to every thread that waits, or would wait, for such a page (a hart, a device); the
/// machine stops and reports it as its <see cref="VirtMachine.Failure"/>. The message reads "VM lost: " and the reason.
/// An <see cref="InvalidOperationException"/>, as <see cref="VirtMachine.WaitForExit()"/> throws for any failure.
/// </summary>
public sealed class VmLostException : InvalidOperationException
{
    public VmLostException(Exception reason)
        : base("VM lost: " + (reason ?? throw new ArgumentNullException(nameof(reason))).Message, reason)
    {
    }

    public VmLostException(string message, Exception inner) : base(message, inner) { }

    public VmLostException(string message) : base(message) { }

    public VmLostException() { }
}
