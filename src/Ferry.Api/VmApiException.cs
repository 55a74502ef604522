using System.Net;

namespace Ferry.Api;

/// <summary>The VM answered a request with an error; the message is its <see cref="ApiError.Error"/> line.</summary>
public sealed class VmApiException : Exception
{
    public VmApiException() { }

    public VmApiException(string message) : base(message) { }

    public VmApiException(string message, Exception innerException) : base(message, innerException) { }

    public HttpStatusCode StatusCode { get; init; }
}
