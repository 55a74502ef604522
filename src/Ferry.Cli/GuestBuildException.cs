namespace Ferry.Cli;

/// <summary>The built-in guest could not be built, or there is none here. The message is one line for stderr.</summary>
internal sealed class GuestBuildException : Exception
{
    public GuestBuildException() { }

    public GuestBuildException(string message) : base(message) { }

    public GuestBuildException(string message, Exception innerException) : base(message, innerException) { }
}
