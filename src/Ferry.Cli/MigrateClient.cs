using Ferry.Api;
using Ferry.Migration;

namespace Ferry.Cli;

/// <summary>What <c>ferry migrate</c> was asked to do.</summary>
/// <param name="Api">The source VM's API socket.</param>
/// <param name="Request">The migration to start; null with <paramref name="Cancel"/>.</param>
/// <param name="Cancel">Cancel the migration in flight instead.</param>
/// <param name="Json">Print the statistics as JSON on stdout, nothing else.</param>
internal sealed record MigrateSettings(string Api, MigrateRequest? Request, bool Cancel, bool Json);

/// <summary>
/// <c>ferry migrate --api SOCKET --to HOST:PORT</c>: ask a running VM to live-migrate to a <c>ferry vm receive</c>
/// process, show its progress (from <c>GET /vm</c>) and print the engine's statistics when it ends.
/// </summary>
/// <remarks>
/// Exit codes as <c>ferry bench engine</c>: 0 completed (and verified when asked), 1 failed or cancelled (the VM runs
/// on at the source) or the VM refused or could not be reached, 2 bad command line or no such socket, 3 completed but
/// the digests differ. Ctrl+C cancels the migration and waits for its end (the VM runs on at the source).
/// </remarks>
internal static class MigrateClient
{
    /// <summary>How often progress is asked for: the engine updates it every 250 ms.</summary>
    private static readonly TimeSpan PollInterval = TimeSpan.FromMilliseconds(250);

    public static int Run(MigrateSettings settings, CliConsole console, CancellationToken cancellationToken) =>
        WithClient(settings.Api, console, client =>
        {
            if (settings.Cancel)
            {
                client.CancelMigrationAsync(cancellationToken).GetAwaiter().GetResult();
                return FerryCommand.ExitCompleted;
            }
            MigrateRequest request = settings.Request ?? throw new ArgumentException("no request", nameof(settings));
            var progress = new ProgressView(ProgressView.ModeFor(settings.Json, console.ErrorIsTerminal), console.Error);
            var statistics = progress.RunLive(StatisticsView.CreateConsole(console.Error, console.ErrorIsTerminal),
                () => Migrate(client, request, progress, cancellationToken,
                    paused => console.Error.WriteLine(paused.Resumed
                        ? "ferry: post-copy paused for a lost connection, and was resumed"
                        : $"ferry: post-copy paused{(paused.Reason is null ? "" : $" ({paused.Reason})")}: the VM waits on both " +
                          $"hosts for its memory; resume with 'ferry migrate --api {settings.Api} --resume [--to HOST:PORT]'")));
            if (settings.Json) console.Out.WriteLine(StatisticsView.ToJson(statistics));
            else StatisticsView.Write(StatisticsView.CreateConsole(console.Out, console.OutIsTerminal), statistics);
            return EngineBench.ExitCode(statistics, request.Verify);
        });

    /// <summary>
    /// <c>ferry migrate --resume</c>: ask the VM to resume its post-copy over a new connection; the <c>ferry migrate</c>
    /// that started the migration reports its end. Exit 0 when the VM took the request.
    /// </summary>
    public static int Resume(string api, string? destination, CliConsole console, CancellationToken cancellationToken) =>
        WithClient(api, console, client =>
        {
            client.ResumeMigrationAsync(destination, cancellationToken).GetAwaiter().GetResult();
            console.Error.WriteLine($"ferry: post-copy resuming{(destination is null ? "" : $" to {destination}")}");
            return FerryCommand.ExitCompleted;
        });

    /// <summary>Run <paramref name="action"/> against the VM's API; an unreachable socket or a refusal is one line and an exit code.</summary>
    private static int WithClient(string api, CliConsole console, Func<VmApiClient, int> action)
    {
        using var client = new VmApiClient(api);
        try
        {
            return action(client);
        }
        catch (ApiSocketException e)
        {
            console.Error.WriteLine($"ferry: --api: {e.Message}");
            return e.BadPath ? FerryCommand.ExitUsage : VmClient.ExitFailed;
        }
        catch (VmApiException e)
        {
            console.Error.WriteLine($"ferry: {e.Message}");
            return VmClient.ExitFailed;
        }
    }

    /// <summary>
    /// Start the migration, report its progress until it answers; Ctrl+C asks the VM to cancel it. <paramref name="paused"/>
    /// is told once of each time a post-copy paused for a lost connection, which only a resume ends: with the reason
    /// while it lasts, or that it was resumed already when it ended between two looks.
    /// <paramref name="abandon"/>, asked at each poll with the migration as the VM shows it, may give a reason to stop
    /// waiting for an answer that cannot come (a post-copy paused whose destination is gone, a migration that stopped
    /// moving): <see cref="MigrationAbandonedException"/>.
    /// </summary>
    internal static MigrationStatistics Migrate(VmApiClient client, MigrateRequest request, ProgressView progress,
        CancellationToken cancellationToken, Action<PostcopyPause>? paused = null, Func<MigrationInfo?, string?>? abandon = null)
    {
        int pausesTold = 0;
        // The answer is awaited without the caller's token: a Ctrl+C cancels the migration, and its statistics still come.
        var migration = client.MigrateAsync(request, CancellationToken.None);
        bool cancelSent = false;
        while (!((IAsyncResult)migration).AsyncWaitHandle.WaitOne(PollInterval))
        {
            if (cancellationToken.IsCancellationRequested && !cancelSent)
            {
                cancelSent = true;
                try
                {
                    client.CancelMigrationAsync(CancellationToken.None).GetAwaiter().GetResult();
                }
                catch (VmApiException)
                {
                    // It ended meanwhile: its answer tells how.
                }
            }
            try
            {
                VmInfo info = client.GetInfoAsync(CancellationToken.None).GetAwaiter().GetResult();
                if (info.Migration is { } m && !migration.IsCompleted)
                {
                    progress.Report(m.ToProgress());
                    bool isPaused = m.Status == MigrationStatus.PostcopyPaused;
                    // A count, not the status alone: a pause a resume ended between two looks happened too.
                    if (m.PostcopyPauses > pausesTold)
                    {
                        paused?.Invoke(new PostcopyPause(isPaused ? m.Error : null, Resumed: !isPaused));
                        pausesTold = m.PostcopyPauses;
                    }
                }
                if (!migration.IsCompleted && abandon?.Invoke(info.Migration) is { } why)
                    throw new MigrationAbandonedException(why);
            }
            catch (Exception e) when (e is VmApiException or ApiSocketException)
            {
                // Progress is best effort; the migration's own answer is what counts.
            }
        }
        return migration.GetAwaiter().GetResult();
    }
}

/// <summary>A post-copy pause as <see cref="MigrateClient.Migrate"/> saw it: why (while it lasts), or that it was resumed already.</summary>
internal readonly record struct PostcopyPause(string? Reason, bool Resumed);

/// <summary><see cref="MigrateClient.Migrate"/> stopped waiting for a migration's answer; the message says why.</summary>
internal sealed class MigrationAbandonedException(string message) : Exception(message);
