using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace Ferry.Api;

/// <summary>
/// The VM's API: HTTP/JSON on a unix socket (as Cloud Hypervisor's and Firecracker's <c>--api-sock</c>), served by
/// Kestrel beside the running guest. Endpoints: see <see cref="VmApiEndpoints"/>; the OpenAPI document is at
/// <c>/openapi/v1.json</c>.
/// </summary>
/// <remarks>
/// The server never writes to the console: the VM process's stdout is the guest's serial line. It does not own
/// Ctrl+C or SIGTERM either: those are the VM process's (Ctrl+C powers the guest off). The socket file is the owner's alone
/// (mode 0600). Disposing the server stops it, lets requests in flight finish (a shutdown's 204 reaches its client),
/// and removes the socket file.
/// </remarks>
public sealed class VmApiServer : IAsyncDisposable
{
    private readonly WebApplication app;
    private int disposed;

    private VmApiServer(WebApplication app, string socketPath)
    {
        this.app = app;
        SocketPath = socketPath;
    }

    /// <summary>The socket's path, absolute.</summary>
    public string SocketPath { get; }

    /// <summary>
    /// Listen on <paramref name="socketPath"/> and serve <paramref name="vm"/>. A stale socket file is replaced; a live
    /// one, or a path that cannot be bound, is an <see cref="ApiSocketException"/> and nothing is left listening.
    /// </summary>
    public static async Task<VmApiServer> StartAsync(string socketPath, IVmControl vm, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(socketPath);
        ArgumentNullException.ThrowIfNull(vm);
        ApiSocket.ClaimPath(socketPath);
        // Kestrel takes absolute paths only; messages keep the caller's spelling.
        string fullPath = Path.GetFullPath(socketPath);

        // The empty builder reads no appsettings.json, no ASPNETCORE_* variables and adds no logging provider: the
        // server's behaviour is this code's alone, and nothing reaches the guest's console.
        var builder = WebApplication.CreateEmptyBuilder(new WebApplicationOptions { ApplicationName = "ferry" });
        builder.WebHost.UseKestrelCore().ConfigureKestrel(kestrel =>
        {
            kestrel.ListenUnixSocket(fullPath);
            kestrel.AddServerHeader = false;
        });
        builder.Services.AddSingleton<IHostLifetime, HostedByCaller>();
        builder.Services.AddRoutingCore();
        builder.Services.ConfigureHttpJsonOptions(json => ApiJson.Configure(json.SerializerOptions));
        builder.Services.AddOpenApi(openApi => openApi.AddDocumentTransformer((document, _, _) =>
        {
            document.Info.Title = "Ferry VM API";
            document.Info.Description = "Control of one Ferry virtual machine over its unix socket.";
            return Task.CompletedTask;
        }));
        var app = builder.Build();
        app.MapOpenApi();
        app.MapVmEndpoints(vm);
        try
        {
            await app.StartAsync(cancellationToken).ConfigureAwait(false);
            // The API can pause and power off the guest: only the VM's owner may connect (connect needs write permission).
            if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(fullPath, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        }
        catch (Exception e) when (e is IOException or System.Net.Sockets.SocketException or UnauthorizedAccessException)
        {
            await app.DisposeAsync().ConfigureAwait(false);
            throw new ApiSocketException($"cannot listen on {socketPath}: {e.Message}", e);
        }
        catch
        {
            await app.DisposeAsync().ConfigureAwait(false);
            throw;
        }
        return new VmApiServer(app, fullPath);
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref disposed, 1) != 0) return;
        // 5 s for requests in flight: they are all short (a pause waits for the harts' next block boundary).
        using (var grace = new CancellationTokenSource(TimeSpan.FromSeconds(5)))
        {
            await app.StopAsync(grace.Token).ConfigureAwait(false);
        }
        await app.DisposeAsync().ConfigureAwait(false);
        try
        {
            File.Delete(SocketPath);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Nothing to do: the next server on this path replaces a stale socket.
        }
    }

    /// <summary>The host's lifetime belongs to the VM process: no console messages, no signal handlers.</summary>
    private sealed class HostedByCaller : IHostLifetime
    {
        public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
