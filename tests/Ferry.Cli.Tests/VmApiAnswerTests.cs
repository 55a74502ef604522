using Ferry.Api;
using Ferry.Migration;

namespace Ferry.Cli.Tests;

/// <summary>The API tells the VM when a migration's answer is out: what a migrated VM process does after it waits for it.</summary>
public class VmApiAnswerTests
{
    private sealed class MigratingVm : IVmControl
    {
        public readonly TaskCompletionSource Answered = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public volatile bool ResultHandedOut;
        public VmState State => VmState.Migrated;
        public VmInfo Info => new(State, 0, 0, 0, 0);
        public void Pause() { }
        public void Resume() { }
        public void Shutdown() { }

        public Task<MigrationStatistics> MigrateAsync(MigrateRequest request) => Task.Run(() =>
        {
            ResultHandedOut = true;
            return new MigrationStatistics { Status = MigrationStatus.Completed };
        });

        public void MigrationAnswered() => Answered.TrySetResult();
    }

    [Fact]
    public async Task TheVmIsToldOnceAMigrationsAnswerIsOut()
    {
        string socket = Path.Combine(Path.GetTempPath(), $"ferry-answer-{Guid.NewGuid():N}.sock");
        var vm = new MigratingVm();
        await using var server = await VmApiServer.StartAsync(socket, vm, TestContext.Current.CancellationToken);
        using var client = new VmApiClient(socket);
        var statistics = await client.MigrateAsync(new MigrateRequest { Destination = "127.0.0.1:4444" }, TestContext.Current.CancellationToken);
        Assert.Equal(MigrationStatus.Completed, statistics.Status);
        Assert.True(vm.ResultHandedOut);
        // The client has the answer; the server side's completion follows (it may run just after the client returns).
        await vm.Answered.Task.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
    }
}
