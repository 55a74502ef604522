using System.Globalization;
using Ferry.Api;

namespace Ferry.Cli;

/// <summary>
/// <c>ferry vm status|pause|resume|shutdown --api SOCKET</c>: one request to a running VM's API socket.
/// </summary>
/// <remarks>
/// Exit codes: 0 done; 1 the VM could not be reached (the socket refuses: its VM is gone), did not answer, or refused
/// the request (pausing a paused VM: its error line on stderr); 2 a bad command line, or no file at the socket's path
/// (a wrong path is the caller's mistake, as a missing <c>--firmware</c> file is). Errors are one line on stderr.
/// </remarks>
internal static class VmClient
{
    public const int ExitFailed = 1;

    /// <summary>Print the VM's state: a table, or with <paramref name="json"/> the JSON body as the VM sent it.</summary>
    public static int Status(string socket, bool json, CliConsole console, CancellationToken cancellationToken) =>
        Call(socket, console, async client =>
        {
            if (json)
            {
                console.Out.WriteLine(await client.GetInfoJsonAsync(cancellationToken).ConfigureAwait(false));
                return;
            }
            var info = await client.GetInfoAsync(cancellationToken).ConfigureAwait(false);
            foreach (var (label, value) in Describe(info)) console.Out.WriteLine($"{label + ":",-14}{value}");
        });

    /// <summary><c>PUT /vm/{action}</c>: pause, resume or shutdown. Silent when it worked.</summary>
    public static int Change(string socket, string action, CliConsole console, CancellationToken cancellationToken) =>
        Call(socket, console, client => action switch
        {
            "pause" => client.PauseAsync(cancellationToken),
            "resume" => client.ResumeAsync(cancellationToken),
            "shutdown" => client.ShutdownAsync(cancellationToken),
            _ => throw new ArgumentOutOfRangeException(nameof(action), action, "not a VM action"),
        });

    /// <summary>The lines of <c>ferry vm status</c>, label and value.</summary>
    internal static IEnumerable<(string Label, string Value)> Describe(VmInfo info)
    {
        yield return ("state", info.State.ToString().ToLowerInvariant());
        yield return ("harts", info.Harts.ToString(CultureInfo.InvariantCulture));
        yield return ("memory", Units.FormatBytes(info.MemoryBytes));
        yield return ("uptime", FormatUptime(info.UptimeMs));
        yield return ("instructions", info.Instructions.ToString("N0", CultureInfo.InvariantCulture));
        if (info.Migration is { } m)
        {
            string line = m.Status switch
            {
                Migration.MigrationStatus.Setup or Migration.MigrationStatus.Active or Migration.MigrationStatus.Device => ProgressView.Describe(m.ToProgress()),
                // A destination's post-copy: what it still waits for.
                Migration.MigrationStatus.PostcopyActive or Migration.MigrationStatus.PostcopyPaused when m.Destination.Length == 0 =>
                    $"{StatisticsView.Name(m.Status)}, {Units.FormatBytes((ulong)m.RemainingBytes)} of memory still to come",
                _ => $"{StatisticsView.Name(m.Status)}{(m.Error is null ? "" : ": " + m.Error)}",
            };
            yield return ("migration", m.Destination.Length == 0 ? $"{line} (incoming)" : $"{line} (to {m.Destination})");
        }
    }

    /// <summary>"850 ms", "12.3 s", "4 min 05 s", "2 h 03 min".</summary>
    internal static string FormatUptime(long ms)
    {
        var t = TimeSpan.FromMilliseconds(ms);
        return ms switch
        {
            < 1000 => string.Create(CultureInfo.InvariantCulture, $"{ms} ms"),
            < 60_000 => string.Create(CultureInfo.InvariantCulture, $"{ms / 1000.0:0.0} s"),
            < 3_600_000 => string.Create(CultureInfo.InvariantCulture, $"{t.Minutes} min {t.Seconds:00} s"),
            _ => string.Create(CultureInfo.InvariantCulture, $"{(long)t.TotalHours} h {t.Minutes:00} min"),
        };
    }

    private static int Call(string socket, CliConsole console, Func<VmApiClient, Task> request)
    {
        using var client = new VmApiClient(socket);
        try
        {
            request(client).GetAwaiter().GetResult();
            return FerryCommand.ExitCompleted;
        }
        catch (ApiSocketException e)
        {
            console.Error.WriteLine($"ferry: --api: {e.Message}");
            return e.BadPath ? FerryCommand.ExitUsage : ExitFailed;
        }
        catch (VmApiException e)
        {
            console.Error.WriteLine($"ferry: {e.Message}");
            return ExitFailed;
        }
    }
}
