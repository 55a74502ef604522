using System.Net;
using Ferry.Migration;

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
    private readonly HttpClient untimedHttp;
    private readonly SocketsHttpHandler handler;

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
        http = new HttpClient(handler, disposeHandler: false) { BaseAddress = BaseAddress, Timeout = timeout ?? TimeSpan.FromSeconds(30) };
        untimedHttp = new HttpClient(handler, disposeHandler: false) { BaseAddress = BaseAddress, Timeout = Timeout.InfiniteTimeSpan };
        this.handler = handler;
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

    /// <summary>
    /// <c>PUT /vm/migrate</c>: start a live migration and wait, without a time limit, for its statistics. Cancelling
    /// <paramref name="cancellationToken"/> stops waiting, not the migration.
    /// </summary>
    public async Task<MigrationStatistics> MigrateAsync(MigrateRequest request, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        string body = System.Text.Json.JsonSerializer.Serialize(request, ApiJson.Options);
        string json = await SendAsync(HttpMethod.Put, "vm/migrate", cancellationToken, body, untimed: true).ConfigureAwait(false);
        return System.Text.Json.JsonSerializer.Deserialize<MigrationStatistics>(json, ApiJson.Options)
               ?? throw new VmApiException($"{SocketPath}: PUT /vm/migrate answered null");
    }

    public Task CancelMigrationAsync(CancellationToken cancellationToken = default) => SendAsync(HttpMethod.Put, "vm/migrate/cancel", cancellationToken);

    /// <summary><c>PUT /vm/migrate/resume</c>: resume a postcopy-paused migration (to <paramref name="destination"/>, or the same address).</summary>
    public Task ResumeMigrationAsync(string? destination, CancellationToken cancellationToken = default) =>
        SendAsync(HttpMethod.Put, "vm/migrate/resume", cancellationToken,
            System.Text.Json.JsonSerializer.Serialize(new ResumeRequest { Destination = destination }, ApiJson.Options));

    /// <summary>Any path (the OpenAPI document, for one); the body of a success.</summary>
    public Task<string> GetStringAsync(string path, CancellationToken cancellationToken = default) =>
        SendAsync(HttpMethod.Get, path.TrimStart('/'), cancellationToken);

    private async Task<string> SendAsync(HttpMethod method, string path, CancellationToken cancellationToken, string? jsonBody = null, bool untimed = false)
    {
        HttpResponseMessage response;
        try
        {
            using var request = new HttpRequestMessage(method, new Uri(path, UriKind.Relative));
            if (jsonBody is not null) request.Content = new StringContent(jsonBody, System.Text.Encoding.UTF8, "application/json");
            // A migration takes as long as it takes (its own timeout bounds it): only the caller's token ends the wait.
            response = await (untimed ? untimedHttp : http).SendAsync(request, cancellationToken).ConfigureAwait(false);
        }
        catch (HttpRequestException e) when (e.InnerException is ApiSocketException socket)
        {
            throw new ApiSocketException(socket.Message, e) { BadPath = socket.BadPath };
        }
        catch (HttpRequestException e)
        {
            // HttpClient's own message ("An error occurred while sending the request") says nothing; what it wraps does.
            string why = e.Message;
            for (var inner = e.InnerException; inner is not null; inner = inner.InnerException) why += $" ({inner.Message})";
            throw new ApiSocketException($"{SocketPath}: {method} /{path} failed: {why}", e);
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

    public void Dispose()
    {
        http.Dispose();
        untimedHttp.Dispose();
        handler.Dispose();
    }
}
