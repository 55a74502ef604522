using System.Net;

namespace Ferry.Api;

/// <summary>
/// A client of one VM's API socket (what <c>ferry vm status|pause|resume|shutdown</c> use). Each call is one request;
/// failures are exceptions whose message is one line: <see cref="ApiSocketException"/> when the socket cannot be
/// reached, <see cref="VmApiException"/> when the VM answered with an error.
/// </summary>
public sealed class VmApiClient : IDisposable
{
    // The host name is never resolved: every connection goes to the socket.
    private static readonly Uri BaseAddress = new("http://localhost/");

    private readonly HttpClient http;

    public VmApiClient(string socketPath, TimeSpan? timeout = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(socketPath);
        SocketPath = socketPath;
        var handler = new SocketsHttpHandler
        {
            ConnectCallback = (_, cancellationToken) => ApiSocket.ConnectAsync(socketPath, cancellationToken),
            UseProxy = false,
        };
        // 30 s: a pause waits for every hart's next block boundary, normally well under a millisecond.
        http = new HttpClient(handler, disposeHandler: true) { BaseAddress = BaseAddress, Timeout = timeout ?? TimeSpan.FromSeconds(30) };
    }

    public string SocketPath { get; }

    /// <summary><c>GET /vm</c>, decoded.</summary>
    public async Task<VmInfo> GetInfoAsync(CancellationToken cancellationToken = default)
    {
        string json = await GetInfoJsonAsync(cancellationToken).ConfigureAwait(false);
        return System.Text.Json.JsonSerializer.Deserialize<VmInfo>(json, ApiJson.Options)
               ?? throw new VmApiException($"{SocketPath}: GET /vm answered null");
    }

    /// <summary><c>GET /vm</c>, the body as the VM sent it.</summary>
    public Task<string> GetInfoJsonAsync(CancellationToken cancellationToken = default) =>
        SendAsync(HttpMethod.Get, "vm", cancellationToken);

    public Task PauseAsync(CancellationToken cancellationToken = default) => SendAsync(HttpMethod.Put, "vm/pause", cancellationToken);

    public Task ResumeAsync(CancellationToken cancellationToken = default) => SendAsync(HttpMethod.Put, "vm/resume", cancellationToken);

    public Task ShutdownAsync(CancellationToken cancellationToken = default) => SendAsync(HttpMethod.Put, "vm/shutdown", cancellationToken);

    /// <summary>Any path (the OpenAPI document, for one); the body of a success.</summary>
    public Task<string> GetStringAsync(string path, CancellationToken cancellationToken = default) =>
        SendAsync(HttpMethod.Get, path.TrimStart('/'), cancellationToken);

    private async Task<string> SendAsync(HttpMethod method, string path, CancellationToken cancellationToken)
    {
        HttpResponseMessage response;
        try
        {
            using var request = new HttpRequestMessage(method, new Uri(path, UriKind.Relative));
            response = await http.SendAsync(request, cancellationToken).ConfigureAwait(false);
        }
        catch (HttpRequestException e) when (e.InnerException is ApiSocketException socket)
        {
            throw new ApiSocketException(socket.Message, e) { BadPath = socket.BadPath };
        }
        catch (HttpRequestException e)
        {
            throw new ApiSocketException($"{SocketPath}: {method} /{path} failed: {e.Message}", e);
        }
        catch (TaskCanceledException e) when (!cancellationToken.IsCancellationRequested)
        {
            throw new ApiSocketException($"{SocketPath}: {method} /{path} had no answer in {http.Timeout.TotalSeconds:0} s", e);
        }
        using (response)
        {
            string body = await response.Content.ReadAsStringAsync(cancellationToken).ConfigureAwait(false);
            if (response.IsSuccessStatusCode) return body;
            throw new VmApiException(ErrorMessage(response.StatusCode, body)) { StatusCode = response.StatusCode };
        }
    }

    /// <summary>The server's <c>error</c> line when it sent one, else the status.</summary>
    private static string ErrorMessage(HttpStatusCode status, string body)
    {
        try
        {
            var error = System.Text.Json.JsonSerializer.Deserialize<ApiError>(body, ApiJson.Options);
            if (!string.IsNullOrEmpty(error?.Error)) return error.Error;
        }
        catch (System.Text.Json.JsonException)
        {
            // Not our error document: fall back to the status.
        }
        return $"the VM answered {(int)status} {status}";
    }

    public void Dispose() => http.Dispose();
}
