using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using Ferry.Machine;
using Ferry.Machine.Board;
using Ferry.Machine.Tests;
using Ferry.Migration;

namespace Ferry.Vm.Tests;

/// <summary>
/// The built-in Linux guest, running on one <see cref="VirtMachine"/>, live-migrated by the engine over loopback TCP to
/// another in this process, and still alive there: heartbeat, memory self-check, power-off.
/// </summary>
public sealed partial class VmMigrationTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Boot = TimeSpan.FromSeconds(90);
    private const int Harts = 2;
    private const ulong Memory = 256UL << 20;

    [GeneratedRegex(@"heartbeat (\d+) maxstall_us=(\d+)")]
    private static partial Regex Heartbeat();

    private static List<(long Seq, long StallUs)> Heartbeats(string text)
    {
        var list = new List<(long, long)>();
        foreach (Match m in Heartbeat().Matches(text))
        {
            list.Add((long.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture), long.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture)));
        }
        return list;
    }

    private LoopbackVmMigration.Result Migrate(VirtMachine source, SerialLog destinationConsole, bool destinationRng = true)
    {
        // Harts and memory come from the source; Harts = 1 here shows the destination does not take them from its options.
        var factory = new VirtMachineTargetFactory { Options = new MachineOptions { Harts = 1, SerialOut = destinationConsole, Rng = destinationRng } };
        LoopbackVmMigration.Result r = LoopbackVmMigration.Run(source, factory, new MigrationOptions { Timeout = TimeSpan.FromSeconds(120) });
        foreach (string line in LoopbackVmMigration.Describe(r)) output.WriteLine(line);
        return r;
    }

    [Fact]
    public void LiveMigratesARunningLinuxGuestWhoseHeartbeatSelfCheckAndPowerOffContinueOnTheDestination()
    {
        var sourceConsole = new SerialLog();
        var destinationConsole = new SerialLog();
        using VirtMachine source = LinuxGuest.Boot(sourceConsole, "console=ttyS0 ferry.heartbeat=50 ferry.ws=32M ferry.rate=20000", Harts, Memory);
        int at = sourceConsole.WaitFor("dirtier: ", Boot);
        sourceConsole.WaitFor("heartbeat ", TimeSpan.FromSeconds(30), at);
        Thread.Sleep(300); // a few heartbeats while the dirtier writes

        LoopbackVmMigration.Result r = Migrate(source, destinationConsole);
        using VirtMachineTarget? destination = r.Destination;
        Assert.Equal(MigrationStatus.Completed, r.Statistics.Status);
        Assert.Null(r.DestinationError);
        VirtMachine arrived = Assert.IsType<VirtMachine>(destination?.Machine);
        Assert.Equal(Harts, arrived.HartCount);
        // Built in the source's shape ahead of the switchover (its Shape section), though the destination guessed 1 hart.
        Assert.False(destination!.RebuiltAtLoad, "the board was rebuilt inside the downtime");

        // The source never runs again: paused for good, not one more line on its console.
        Assert.False(r.Source.IsRunning);
        int sourceLength = sourceConsole.Text.Length;
        long lastOnSource = Heartbeats(sourceConsole.Text)[^1].Seq;

        // The destination goes on where the source stopped.
        int d = destinationConsole.WaitFor($"heartbeat {lastOnSource + 3} ", TimeSpan.FromSeconds(30));
        var after = Heartbeats(destinationConsole.Text);
        Assert.True(after[0].Seq > lastOnSource, $"the destination's first heartbeat {after[0].Seq} does not follow the source's last {lastOnSource}");
        output.WriteLine($"source's last heartbeat {lastOnSource}; destination's first {after[0].Seq}, stalls seen by the guest (us): {string.Join(", ", after.Select(h => h.StallUs))}");
        Assert.Equal(sourceLength, sourceConsole.Text.Length);

        LinuxGuest.Type(arrived, "selfcheck");
        d = destinationConsole.WaitFor("selfcheck ", TimeSpan.FromSeconds(60), d);
        int lineEnd = destinationConsole.WaitFor("\n", TimeSpan.FromSeconds(5), d);
        string answer = destinationConsole.Text[(d - "selfcheck ".Length)..lineEnd].Trim();
        output.WriteLine(answer);
        Assert.StartsWith("selfcheck ok", answer, StringComparison.Ordinal);

        LinuxGuest.Type(arrived, "poweroff");
        Assert.True(arrived.WaitForExit(TimeSpan.FromSeconds(30), out int code), "the destination did not power off");
        Assert.Equal(0, code);
        Assert.Equal(sourceLength, sourceConsole.Text.Length);
    }

    [Fact]
    public void AGuestAsleepWithTimersArmedKeepsItsHeartbeatOnTheDestination()
    {
        var sourceConsole = new SerialLog();
        var destinationConsole = new SerialLog();
        using VirtMachine source = LinuxGuest.Boot(sourceConsole, "console=ttyS0 ferry.heartbeat=200 ferry.rate=0", Harts, Memory);
        sourceConsole.WaitFor("heartbeat 3 ", Boot);

        LoopbackVmMigration.Result r = Migrate(source, destinationConsole);
        using VirtMachineTarget? destination = r.Destination;
        Assert.Equal(MigrationStatus.Completed, r.Statistics.Status);
        VirtMachine arrived = Assert.IsType<VirtMachine>(destination?.Machine);
        Assert.False(r.Source.IsRunning);

        long lastOnSource = Heartbeats(sourceConsole.Text)[^1].Seq;
        destinationConsole.WaitFor($"heartbeat {lastOnSource + 3} ", TimeSpan.FromSeconds(20));
        var after = Heartbeats(destinationConsole.Text);
        Assert.True(after[0].Seq > lastOnSource);
        output.WriteLine($"source's last heartbeat {lastOnSource}; destination: {string.Join(", ", after.Select(h => $"{h.Seq} (stall {h.StallUs} us)"))}");

        LinuxGuest.Type(arrived, "poweroff");
        Assert.True(arrived.WaitForExit(TimeSpan.FromSeconds(30), out int code), "the destination did not power off");
        Assert.Equal(0, code);
    }

    [Fact]
    public void ALinkCutInStopAndCopyBeforeCommitResumesTheSourceWithItsDevicesAndItMigratesAgain()
    {
        var sourceConsole = new SerialLog();
        var destinationConsole = new SerialLog();
        using VirtMachine source = LinuxGuest.Boot(sourceConsole, "console=ttyS0 ferry.heartbeat=50 ferry.ws=16M ferry.rate=10000", Harts, Memory);
        sourceConsole.WaitFor("dirtier: ", Boot);
        sourceConsole.WaitFor("heartbeat", TimeSpan.FromSeconds(30), sourceConsole.Text.Length);

        // The control link dies right after Complete: the guest is paused, its last pages and its state are out, no
        // Ready can come back. Before commit, the source must run again: harts, virtio devices and all.
        var plan = new Ferry.Migration.Transport.FaultPlan();
        var fault = plan.Close(Ferry.Migration.Transport.FaultTarget.Control,
            Ferry.Migration.Transport.FaultTrigger.AfterRecord(Ferry.Migration.Protocol.RecordKind.Complete));
        var factory = new VirtMachineTargetFactory { Options = new MachineOptions { Harts = Harts, SerialOut = destinationConsole } };
        LoopbackVmMigration.Result cut = LoopbackVmMigration.Run(source, factory, new MigrationOptions { Timeout = TimeSpan.FromSeconds(120) }, faults: plan);
        foreach (string line in LoopbackVmMigration.Describe(cut)) output.WriteLine(line);
        Assert.Equal(1, fault.TimesFired);
        Assert.Equal(MigrationStatus.Failed, cut.Statistics.Status);
        Assert.True(cut.Statistics.Rounds.Count >= 2, "it never reached stop-and-copy");
        Assert.Null(cut.Destination);
        Assert.True(cut.Source.IsRunning);
        Assert.Equal("", destinationConsole.Text);

        int at = sourceConsole.Text.Length;
        sourceConsole.WaitFor("heartbeat", TimeSpan.FromSeconds(10), at);
        LinuxGuest.Type(source, "selfcheck");
        sourceConsole.WaitFor("selfcheck ok", TimeSpan.FromSeconds(60), at);

        // And it moves for real at the next attempt.
        LoopbackVmMigration.Result r = Migrate(source, destinationConsole);
        using VirtMachineTarget? destination = r.Destination;
        Assert.Equal(MigrationStatus.Completed, r.Statistics.Status);
        VirtMachine arrived = Assert.IsType<VirtMachine>(destination?.Machine);
        int d = destinationConsole.WaitFor("heartbeat", TimeSpan.FromSeconds(30));
        LinuxGuest.Type(arrived, "selfcheck");
        destinationConsole.WaitFor("selfcheck ok", TimeSpan.FromSeconds(60), d);
    }

    [Fact]
    public void ADestinationBoardUnlikeTheSourceFailsTheMigrationAndTheSourceRunsOn()
    {
        var sourceConsole = new SerialLog();
        var destinationConsole = new SerialLog();
        using VirtMachine source = LinuxGuest.Boot(sourceConsole, "console=ttyS0 ferry.heartbeat=50 ferry.ws=8M ferry.rate=5000", Harts, Memory);
        sourceConsole.WaitFor("heartbeat 3 ", Boot);

        // The source has a virtio-rng; this destination was given none.
        LoopbackVmMigration.Result r = Migrate(source, destinationConsole, destinationRng: false);
        Assert.Equal(MigrationStatus.Failed, r.Statistics.Status);
        Assert.Contains("virtio-rng on the source, no device here", r.Statistics.Error ?? "", StringComparison.Ordinal);
        Assert.Null(r.Destination);

        // Before commit the source may resume, and does: its heartbeat and memory go on.
        Assert.True(r.Source.IsRunning);
        int at = sourceConsole.Text.Length;
        sourceConsole.WaitFor("heartbeat", TimeSpan.FromSeconds(10), at);
        LinuxGuest.Type(source, "selfcheck");
        sourceConsole.WaitFor("selfcheck ok", TimeSpan.FromSeconds(60), at);
        Assert.Equal("", destinationConsole.Text);
    }
}
