using System.Globalization;
using System.Text.Json;
using Ferry.Cli;
using Ferry.Migration;
using Ferry.Migration.InProcess;
using Ferry.Migration.Postcopy;

namespace Ferry.Bench;

/// <summary>
/// Post-copy with the in-process guest over loopback TCP (<see cref="LoopbackMigration"/>), every prepaging order in the
/// same run on the same workloads: how much of what the guest needed it had to fault for (faulted share: faults over the
/// pages it wrote during post-copy), and the fault latency (request to page installed) while the bulk push runs beside
/// it. Orders: bubble (Ferry: around each fault, both ways, widening), forward (QEMU: on from the last fault), linear
/// (Cloud Hypervisor: first to last page), and off (no background push for the first <see cref="OffWindow"/> of
/// post-copy: only the pages the guest faults on move, the reference every order is measured against; then the push
/// is let go so the run completes); and bubble+poll, bubble with the destination polling for fault replies
/// (<c>--fault-poll</c>), for its latency and what its CPU costs the push. Orders take turns going first across
/// repetitions.
/// </summary>
internal static class PostcopyBenchmark
{
    private sealed record Case(string Name, DirtyPattern Pattern, double HotsetStart = 0);

    // The in-process guest's hot set begins at its first page, which a first-to-last push meets first: the same hot
    // set in the middle of memory too.
    private static readonly Case[] Cases =
        [new("hotset", DirtyPattern.Hotset), new("hotset-mid", DirtyPattern.Hotset, 0.45), new("sequential", DirtyPattern.Sequential)];
    private sealed record Order(string Name, PrepagingStrategy Strategy, bool PushOff = false, bool FaultPoll = false);

    // bubble+poll: bubble with the destination polling for fault replies (--fault-poll, FaultPollBudget).
    private static readonly Order[] Orders =
        [new("bubble", PrepagingStrategy.Bubble), new("bubble+poll", PrepagingStrategy.Bubble, FaultPoll: true),
         new("forward", PrepagingStrategy.Forward), new("linear", PrepagingStrategy.Linear),
         new("off", PrepagingStrategy.Linear, PushOff: true)];

    /// <summary>The fault poll of "bubble+poll".</summary>
    private static readonly TimeSpan FaultPollBudget = TimeSpan.FromMicroseconds(300);

    /// <summary>How long "off" holds the push back once the guest runs at the destination: longer than any other order's post-copy here.</summary>
    private static readonly TimeSpan OffWindow = TimeSpan.FromSeconds(1);

    public static int Run(string[] args, TextWriter output, TextWriter error)
    {
        if (!BenchArguments.TrySplit(args, new HashSet<string> { "--model-only" }, out var flags, out var problem))
        {
            error.WriteLine($"Ferry.Bench postcopy: {problem}");
            return 2;
        }
        ulong memory = 1UL << 30;
        int repetitions = 3;
        long rate = 20_000;
        string? json = null;
        bool modelOnly = false;
        foreach (var (flag, value) in flags)
        {
            switch (flag)
            {
                case "--memory" when Units.TryParseSize(value, out var m, out _) && m > 0: memory = m; break;
                case "--repetitions" when int.TryParse(value, CultureInfo.InvariantCulture, out var r) && r > 0: repetitions = r; break;
                case "--dirty-rate" when long.TryParse(value, CultureInfo.InvariantCulture, out var d) && d > 0: rate = d; break;
                case "--json": json = value; break;
                case "--model-only": modelOnly = true; break;
                default:
                    error.WriteLine($"Ferry.Bench postcopy: bad flag {flag} {value}");
                    return 2;
            }
        }
        WriteModel(output, memory, rate, repetitions);
        if (modelOnly) return 0;
        output.WriteLine($"post-copy: {Units.FormatBytes(memory)}, {rate} pages/s, 2 writers, {repetitions} repetitions (medians), loopback TCP, 2 page channels + urgent");
        output.WriteLine($"{"workload",-11} {"order",-11} {"faults",7} {"working set",12} {"faulted",8} {"p50 us",7} {"p99 us",7} {"max us",7} {"downtime",9} {"post-copy",10} {"verify",6}");
        var rows = new List<object>();
        foreach (var c in Cases)
        {
            var results = Orders.ToDictionary(o => o, _ => new List<MigrationStatistics>());
            for (int i = 0; i < repetitions; i++)
            {
                for (int k = 0; k < Orders.Length; k++)
                {
                    var order = Orders[(k + i) % Orders.Length];
                    var settings = new EngineBenchSettings
                    {
                        MemoryBytes = memory, Fill = MemoryFill.Random, DirtyRatePagesPerSecond = rate, Pattern = c.Pattern, HotsetStart = c.HotsetStart,
                        Writers = 2, Mode = MigrationMode.Postcopy, Prepaging = order.Strategy, Verify = true,
                        // Off: a cap of a byte a second on the page channels (the urgent channel has none) lets a batch
                        // per channel out, then holds the push until ReleasePush lifts it.
                        MaxBandwidth = order.PushOff ? 1 : 0,
                        FaultPoll = order.FaultPoll ? FaultPollBudget : TimeSpan.Zero,
                    };
                    using var result = LoopbackMigration.Run(settings, null, CancellationToken.None, order.PushOff ? ReleasePush : null);
                    results[order].Add(result.Statistics);
                    var s = result.Statistics;
                    if (s.Status != MigrationStatus.Completed || s.Verify?.Match != true)
                    {
                        // A failed run is a finding, not a figure: say what failed, on stderr, beside the table.
                        error.WriteLine($"{c.Name} {order.Name} run {i + 1}: {s.Status}{(s.Error is { } e ? $": {e}" : "")}; "
                            + (s.Verify is { } v ? $"digests source {v.SourceDigest}, destination {v.DestDigest}" : "no verification result"));
                    }
                }
            }
            foreach (var order in Orders)
            {
                var runs = results[order];
                double Median(Func<MigrationStatistics, double> f) => runs.Select(f).Order().ElementAt(runs.Count / 2);
                var pc = (MigrationStatistics s) => s.Postcopy ?? new PostcopyStatistics();
                bool ok = runs.All(s => s.Status == MigrationStatus.Completed && s.Verify?.Match == true);
                var row = new
                {
                    workload = c.Name, order = order.Name,
                    faults = Median(s => pc(s).Faults), working_set = Median(s => pc(s).WorkingSetPages ?? 0),
                    faulted_share = Median(s => pc(s).FaultedShare ?? 0),
                    p50_us = Median(s => pc(s).FaultLatencyUs.P50), p99_us = Median(s => pc(s).FaultLatencyUs.P99), max_us = Median(s => pc(s).FaultLatencyUs.Max),
                    downtime_ms = Median(s => s.DowntimeMs), postcopy_ms = Median(s => pc(s).Milliseconds), intact = ok,
                };
                rows.Add(row);
                output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{row.workload,-11} {row.order,-11} {row.faults,7:F0} {row.working_set,12:F0} {row.faulted_share,8:P1} {row.p50_us,7:F0} {row.p99_us,7:F0} {row.max_us,7:F0} {row.downtime_ms,7:F1}ms {row.postcopy_ms,8:F0}ms {(ok ? "ok" : "FAIL"),6}"));
            }
        }
        if (json is not null)
        {
            File.WriteAllText(json, JsonSerializer.Serialize(rows, new JsonSerializerOptions { WriteIndented = true }));
            output.WriteLine($"wrote {json}");
        }
        return 0;
    }

    /// <summary>"Off": once post-copy runs, wait <see cref="OffWindow"/>, then lift the page channels' cap.</summary>
    private static void ReleasePush(Ferry.Migration.Precopy.OutgoingMigration migration) =>
        new Thread(() =>
        {
            while (migration.Progress.Status is not (MigrationStatus.PostcopyActive or MigrationStatus.Completed or MigrationStatus.Failed or MigrationStatus.Cancelled))
                Thread.Sleep(1);
            Thread.Sleep(OffWindow);
            migration.MaxBandwidth = 0;
        }) { IsBackground = true, Name = "bench-release-push" }.Start();

    // The same orders in PrepagingSimulation: no network, no clock, the same writes for every order (seeds 1..n).
    private static void WriteModel(TextWriter output, ulong memory, long rate, int repetitions)
    {
        output.WriteLine($"model (PrepagingSimulation, deterministic): {Units.FormatBytes(memory)}, {rate} pages/s, 2 writers, seeds 1-{repetitions} (medians)");
        output.WriteLine($"{"workload",-11} {"order",-8} {"faults",7} {"working set",12} {"faulted",8} {"post-copy",10}");
        foreach (var c in Cases)
        {
            var pattern = c.Pattern == DirtyPattern.Sequential ? SimulatedPattern.Sequential : SimulatedPattern.Hotset;
            foreach (var order in Orders.Where(o => !o.PushOff && !o.FaultPoll).Select(o => o.Strategy))
            {
                var runs = Enumerable.Range(1, repetitions)
                    .Select(seed => PrepagingSimulation.Run(order, pattern, (ulong)seed, memory / 4096, writesPerSecond: rate, hotStart: c.HotsetStart)).ToList();
                double Median(Func<SimulatedPostcopy, double> f) => runs.Select(f).Order().ElementAt(runs.Count / 2);
                output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{c.Name,-11} {order.ToString().ToLowerInvariant(),-8} {Median(r => r.Faults),7:F0} {Median(r => r.WorkingSet),12:F0} {Median(r => r.FaultedShare),8:P1} {Median(r => r.Milliseconds),8:F0}ms"));
            }
        }
    }
}
