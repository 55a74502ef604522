using Ferry.Migration;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.AspNetCore.Routing;

namespace Ferry.Api;

/// <summary>
/// The routes of the VM API. Requests that change state are <c>PUT</c>s (as Cloud Hypervisor's <c>vm.pause</c>):
/// 204 when done, 409 <see cref="ApiError"/> when the VM's state does not allow it.
/// </summary>
/// <remarks>
/// <code>
/// GET /vm            200 VmInfo
/// PUT /vm/pause      204 | 409    running → paused
/// PUT /vm/resume     204 | 409    paused → running
/// PUT /vm/shutdown   204 | 409    running or paused → shutdown; the VM process then exits 0
/// PUT /vm/migrate    200 MigrationStatistics | 400 | 409   live-migrate (MigrateRequest); answers when it ends
/// PUT /vm/migrate/cancel  204 | 409   cancel the migration in flight; the VM runs on here (a paused post-copy: abandon it)
/// PUT /vm/migrate/resume  204 | 400 | 409   resume a postcopy-paused migration over a new connection
/// GET /openapi/v1.json            this API's OpenAPI document
/// </code>
/// </remarks>
public static class VmApiEndpoints
{
    public static IEndpointRouteBuilder MapVmEndpoints(this IEndpointRouteBuilder routes, IVmControl vm)
    {
        ArgumentNullException.ThrowIfNull(routes);
        ArgumentNullException.ThrowIfNull(vm);
        var group = routes.MapGroup("/vm").WithTags("vm");
        group.MapGet("", () => TypedResults.Ok(vm.Info))
            .WithName("GetVm")
            .WithSummary("The VM's state, size and counters.");
        group.MapPut("/pause", () => Change(vm.Pause))
            .WithName("PauseVm")
            .WithSummary("Stop every hart at an instruction boundary; returns once all have stopped.");
        group.MapPut("/resume", () => Change(vm.Resume))
            .WithName("ResumeVm")
            .WithSummary("Let a paused VM run again.");
        group.MapPut("/shutdown", () => Change(vm.Shutdown))
            .WithName("ShutdownVm")
            .WithSummary("Power the guest off; the VM process exits 0 once the response is sent.");
        group.MapPut("/migrate", async Task<Results<Ok<MigrationStatistics>, BadRequest<ApiError>, Conflict<ApiError>>> (MigrateRequest request, HttpContext context) =>
            {
                Task<MigrationStatistics> migration;
                try
                {
                    migration = vm.MigrateAsync(request);
                }
                catch (VmStateException e)
                {
                    return TypedResults.Conflict(new ApiError(e.Message));
                }
                catch (ArgumentException e)
                {
                    return TypedResults.BadRequest(new ApiError(e.Message));
                }
                // Not tied to the request: a client that goes away does not stop the migration (ferry migrate --cancel does).
                var statistics = await migration.ConfigureAwait(false);
                context.Response.OnCompleted(() =>
                {
                    vm.MigrationAnswered();
                    return Task.CompletedTask;
                });
                return TypedResults.Ok(statistics);
            })
            .WithName("MigrateVm")
            .WithSummary("Live-migrate the VM to a 'ferry vm receive' destination; answers with the statistics when the migration ends. GET /vm shows its progress.");
        group.MapPut("/migrate/cancel", () => Change(vm.CancelMigration))
            .WithName("CancelMigration")
            .WithSummary("Cancel the migration in flight; the VM keeps running here. A post-copy paused by a lost connection is abandoned (the VM is lost).");
        group.MapPut("/migrate/resume", Results<NoContent, BadRequest<ApiError>, Conflict<ApiError>> (ResumeRequest? request) =>
            {
                try
                {
                    vm.ResumeMigration(request?.Destination);
                    return TypedResults.NoContent();
                }
                catch (VmStateException e)
                {
                    return TypedResults.Conflict(new ApiError(e.Message));
                }
                catch (ArgumentException e)
                {
                    return TypedResults.BadRequest(new ApiError(e.Message));
                }
            })
            .WithName("ResumeMigration")
            .WithSummary("Resume a post-copy paused by a lost connection, over a new one (to 'destination' if given).");
        return routes;
    }

    private static Results<NoContent, Conflict<ApiError>> Change(Action change)
    {
        try
        {
            change();
            return TypedResults.NoContent();
        }
        catch (VmStateException e)
        {
            return TypedResults.Conflict(new ApiError(e.Message));
        }
    }
}
