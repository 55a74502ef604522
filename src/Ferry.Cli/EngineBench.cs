using Ferry.Linux;
using Ferry.Migration;

namespace Ferry.Cli;

/// <summary><c>ferry bench engine</c>: one loopback migration with the given workload, then its statistics.</summary>
public static class EngineBench
{
    public static int Run(EngineBenchSettings settings, CliConsole console, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        ArgumentNullException.ThrowIfNull(console);
        if (!HostMemory.CheckFits(settings.MemoryBytes, settings.Fill, console.Error)) return FerryCommand.ExitUsage;

        var result = LoopbackMigration.RunLive(settings, console, cancellationToken);
        if (result is null) return FerryCommand.ExitMigrationFailed;
        using (result)
        {
            var s = result.Statistics;
            if (settings.Json)
                console.Out.WriteLine(StatisticsView.ToJson(s));
            else
                StatisticsView.Write(StatisticsView.CreateConsole(console.Out, console.OutIsTerminal), s);
            return ExitCode(s, settings.Verify);
        }
    }

    /// <summary>0 completed (and verified when asked), 3 completed with a digest mismatch, 1 otherwise.</summary>
    public static int ExitCode(MigrationStatistics statistics, bool verifyRequested)
    {
        ArgumentNullException.ThrowIfNull(statistics);
        if (statistics.Status != MigrationStatus.Completed) return FerryCommand.ExitMigrationFailed;
        if (verifyRequested && statistics.Verify is not { Match: true }) return FerryCommand.ExitVerifyFailed;
        return FerryCommand.ExitCompleted;
    }
}
