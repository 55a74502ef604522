namespace Ferry.Api;

/// <summary>
/// The API socket cannot be served or reached. The message is the rest of one line after <c>--api: </c>, and names the
/// path: "<c>/run/vm.sock is in use by another process</c>".
/// </summary>
public sealed class ApiSocketException : Exception
{
    public ApiSocketException() { }

    public ApiSocketException(string message) : base(message) { }

    public ApiSocketException(string message, Exception innerException) : base(message, innerException) { }

    /// <summary>
    /// The path itself is wrong: nothing is there, or it is too long for a socket (as opposed to a socket that refuses):
    /// the caller's mistake.
    /// </summary>
    public bool BadPath { get; init; }
}
