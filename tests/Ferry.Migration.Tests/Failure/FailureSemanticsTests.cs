using Ferry.Migration.InProcess;
using Ferry.Migration.Memory;
using Ferry.Migration.Precopy;
using Ferry.Migration.Protocol;
using Ferry.Migration.Tests.Precopy;
using Ferry.Migration.Transport;
using static Ferry.Migration.Tests.Precopy.MigrationHarness;

namespace Ferry.Migration.Tests.Failure;

/// <summary>
/// DESIGN.md's failure table, one promise per test: before commit the source keeps running unchanged, the migration
/// ends failed/cancelled with the reason, the destination discards (never starts), and a new migration can start at
/// once and succeed.
/// </summary>
[Collection(MigrationCollection.Name)]
public class FailureSemanticsTests
{
    private static RecordingTargetFactory Factory(bool rejectState = false) => new(new InProcessTargetFactory()) { RejectState = rejectState };

    /// <summary>Busy 16 MiB guest: its workload must visibly continue after a failure.</summary>
    private static InProcessGuest Busy() => NewGuest(16, pagesPerSecond: 5_000, writers: 1);

    /// <summary>The same guest migrates successfully right away over a clean transport.</summary>
    private static void AssertNewMigrationSucceeds(InProcessGuest guest)
    {
        using var transport = new InMemoryTransport();
        var outcome = Migrate(guest, transport.Connector, transport.Listener, Options() with { DowntimeLimit = TimeSpan.FromMilliseconds(300) });
        using var _ = outcome.Target;
        Assert.True(outcome.Stats.Status == MigrationStatus.Completed, $"retry: {outcome.Stats.Error} / {outcome.DestinationError}");
        Assert.True(outcome.Stats.Verify!.Match);
        DestinationChecks.AssertSelfCheckAfterStart(outcome.Target!);
    }

    private static void AssertSourceConsistent(InProcessGuest guest)
    {
        guest.Pause();
        try
        {
            Assert.Null(guest.SelfCheck());
        }
        finally
        {
            guest.Resume();
        }
    }

    [Fact]
    public void PrecopyResumesSourceWhenDestinationDiesDuringPrecopy()
    {
        using var guest = Busy();
        using var transport = new InMemoryTransport();
        var plan = new FaultPlan();
        // The destination's end of page channel 1 goes away after 4 MiB of its 8 MiB share of round 0.
        var fault = plan.Close(FaultTarget.Page(1), FaultTrigger.AtOffset(4 << 20), FaultDirection.Receive);
        var factory = Factory();
        var outcome = Migrate(guest, transport.Connector, new FaultInjectingListener(transport.Listener, plan), Options(), factory);
        Assert.Equal(1, fault.TimesFired);
        AssertFailedBeforeCommit(outcome, guest, factory);
        Assert.Single(factory.Created);
        AssertWorkloadContinues(guest);
        AssertSourceConsistent(guest);
        AssertNewMigrationSucceeds(guest);
    }

    [Fact]
    public void FailedMigrationLeavesAnIdleSourceMemoryBitForBitUnchanged()
    {
        using var guest = NewGuest(16, pagesPerSecond: 0);
        var before = MemoryDigest.Compute(guest.Regions);
        using var transport = new InMemoryTransport();
        var plan = new FaultPlan();
        plan.Close(FaultTarget.Page(0), FaultTrigger.AtOffset(2 << 20));
        var factory = Factory();
        var outcome = Migrate(guest, new FaultInjectingConnector(transport.Connector, plan), transport.Listener, Options(), factory);
        AssertFailedBeforeCommit(outcome, guest, factory);
        Assert.Equal(before, MemoryDigest.Compute(guest.Regions));
    }

    [Fact]
    public void SourceResumesWhenTheConnectionBreaksInStopAndCopyBeforeCommit()
    {
        using var guest = Busy();
        using var transport = new InMemoryTransport();
        var plan = new FaultPlan();
        // The link dies right after Complete: the guest is paused, every page and the state are out; no Ready can come.
        var fault = plan.Close(FaultTarget.Control, FaultTrigger.AfterRecord(RecordKind.Complete));
        var factory = Factory();
        var outcome = Migrate(guest, new FaultInjectingConnector(transport.Connector, plan), transport.Listener, Options(), factory);
        Assert.Equal(1, fault.TimesFired);
        AssertFailedBeforeCommit(outcome, guest, factory);
        // It got as far as stop-and-copy: the pre-copy rounds and the final pass were recorded.
        Assert.True(outcome.Stats.Rounds.Count >= 2);
        AssertWorkloadContinues(guest);
        AssertSourceConsistent(guest);
        AssertNewMigrationSucceeds(guest);
    }

    [Fact]
    public void SourceResumesWhenTheDestinationDiesJustBeforeReady()
    {
        using var guest = Busy();
        using var transport = new InMemoryTransport();
        var plan = new FaultPlan();
        // Destination side: its control channel closes as it is about to send Ready (state loaded, not started).
        var fault = plan.Close(FaultTarget.Control, FaultTrigger.BeforeRecord(RecordKind.Ready));
        var factory = Factory();
        var outcome = Migrate(guest, transport.Connector, new FaultInjectingListener(transport.Listener, plan), Options(), factory);
        Assert.Equal(1, fault.TimesFired);
        AssertFailedBeforeCommit(outcome, guest, factory);
        AssertWorkloadContinues(guest);
        AssertNewMigrationSucceeds(guest);
    }

    [Fact]
    public void CorruptRunTableFailsTheDestinationAndTheSourceResumes()
    {
        using var guest = Busy();
        using var transport = new InMemoryTransport();
        var plan = new FaultPlan();
        // Byte 20 of page channel 0 lies in the first batch's run table, which is always checksummed.
        plan.Corrupt(FaultTarget.Page(0), FaultTrigger.AtOffset(20));
        var factory = Factory();
        var outcome = Migrate(guest, new FaultInjectingConnector(transport.Connector, plan), transport.Listener, Options(), factory);
        AssertFailedBeforeCommit(outcome, guest, factory);
        Assert.IsAssignableFrom<MigrationException>(outcome.DestinationError);
        Assert.Contains("PageBatch", outcome.DestinationError!.Message, StringComparison.Ordinal);
        // The destination said why before closing: the source's reason names the destination's error.
        Assert.Contains("destination", outcome.Stats.Error, StringComparison.Ordinal);
        AssertWorkloadContinues(guest);
        AssertNewMigrationSucceeds(guest);
    }

    [Fact]
    public void CorruptPageDataDuringPrecopyIsCaughtByVerifyAndTheSourceResumes()
    {
        // Pre-copy data is not checksummed (the guest writes it while it is sent); an idle guest never re-sends the
        // page, so only the digest comparison can catch it, and it must stop the commit.
        using var guest = NewGuest(16, pagesPerSecond: 0);
        using var transport = new InMemoryTransport();
        var plan = new FaultPlan();
        plan.Corrupt(FaultTarget.Page(0), FaultTrigger.AtOffset(100_000));
        var factory = Factory();
        var outcome = Migrate(guest, new FaultInjectingConnector(transport.Connector, plan), transport.Listener, Options(), factory);
        AssertFailedBeforeCommit(outcome, guest, factory);
        Assert.NotNull(outcome.Stats.Verify);
        Assert.False(outcome.Stats.Verify.Match);
        Assert.Contains("digests differ", outcome.Stats.Error, StringComparison.Ordinal);
        AssertNewMigrationSucceeds(guest);
    }

    [Fact]
    public void CancelDuringPrecopyIsIdempotentAndLeavesTheSourceRunning()
    {
        using var guest = Busy();
        using var transport = new InMemoryTransport();
        var factory = Factory();
        // 20 MB/s: round 0 of 16 MiB takes ~0.8 s, so the cancel lands in pre-copy.
        var options = Options() with { MaxBandwidth = 20_000_000 };
        var outcome = Migrate(guest, transport.Connector, transport.Listener, options, factory, duringRun: m =>
        {
            SpinWait.SpinUntil(() => m.Progress.BytesSent > 1 << 20, TimeSpan.FromSeconds(5));
            m.Cancel();
            m.Cancel();
        });
        AssertFailedBeforeCommit(outcome, guest, factory, MigrationStatus.Cancelled);
        Assert.Contains("cancelled", outcome.Stats.Error, StringComparison.Ordinal);
        AssertWorkloadContinues(guest);
        AssertNewMigrationSucceeds(guest);
    }

    [Fact]
    public void CancelAfterCompletionHasNoEffect()
    {
        using var guest = NewGuest(16);
        using var transport = new InMemoryTransport();
        var factory = Factory();
        var dest = new Thread(() => new IncomingMigration(transport.Listener, factory, new IncomingOptions { PeerTimeout = TestPeerTimeout }).Run());
        dest.Start();
        var migration = new OutgoingMigration(guest, transport.Connector, Options());
        var stats = migration.Run(cancellationToken: TestContext.Current.CancellationToken);
        Assert.True(dest.Join(TimeSpan.FromSeconds(10)));
        migration.Cancel();
        migration.Cancel();
        Assert.Equal(MigrationStatus.Completed, stats.Status);
        Assert.Equal(MigrationStatus.Completed, migration.Progress.Status);
        Assert.False(guest.IsRunning, "a cancel after commit must never resume the source");
        var target = Assert.Single(factory.Created);
        Assert.True(target.Started);
        Assert.False(target.Disposed);
        target.Dispose();
    }

    [Fact]
    public void HungDestinationIsDetectedWithinThePeerTimeout()
    {
        using var guest = Busy();
        using var transport = new InMemoryTransport();
        var plan = new FaultPlan();
        // After Welcome the destination's return path goes silent: no keepalive, no Ready, nothing.
        plan.Drop(FaultTarget.Control, FaultTrigger.AfterRecord(RecordKind.Welcome));
        // And it reads pages ever so slowly, so pre-copy cannot finish first.
        plan.Delay(FaultTarget.AnyPage, FaultTrigger.AtOffset(0), TimeSpan.FromMilliseconds(50), FaultDirection.Receive);
        var factory = Factory();
        var outcome = Migrate(guest, transport.Connector, new FaultInjectingListener(transport.Listener, plan), Options(), factory);
        AssertFailedBeforeCommit(outcome, guest, factory);
        Assert.Contains("silent", outcome.Stats.Error, StringComparison.Ordinal);
        // Detected after PeerTimeout (1.5 s) plus at most one keepalive tick (0.5 s); allow a loaded box 2x.
        Assert.True(outcome.Elapsed < TestPeerTimeout * 4, $"took {outcome.Elapsed.TotalSeconds:F1} s");
        AssertWorkloadContinues(guest);
        AssertNewMigrationSucceeds(guest);
    }

    [Fact]
    public void DestinationDiscardsWhenTheSourceGoesSilent()
    {
        using var guest = Busy();
        using var transport = new InMemoryTransport();
        var plan = new FaultPlan();
        // Everything the source sends after 1 MiB of page channel 0 vanishes, and its control goes quiet after Hello.
        plan.Drop(FaultTarget.AnyPage, FaultTrigger.AtOffset(1 << 20));
        plan.Drop(FaultTarget.Control, FaultTrigger.AfterRecord(RecordKind.Hello));
        var factory = Factory();
        // 5 MB/s: round 0 of 16 MiB would take 3.4 s, so the source is still in pre-copy when the destination's
        // 1.5 s peer timeout runs out.
        var outcome = Migrate(guest, new FaultInjectingConnector(transport.Connector, plan), transport.Listener,
            Options() with { MaxBandwidth = 5_000_000 }, factory);
        AssertFailedBeforeCommit(outcome, guest, factory);
        Assert.Contains("silent", outcome.DestinationError!.Message, StringComparison.Ordinal);
        AssertWorkloadContinues(guest);
    }

    [Fact]
    public void DestinationRejectingTheStateMakesTheSourceResume()
    {
        using var guest = Busy();
        using var transport = new InMemoryTransport();
        var factory = Factory(rejectState: true);
        var outcome = Migrate(guest, transport.Connector, transport.Listener, Options(), factory);
        AssertFailedBeforeCommit(outcome, guest, factory);
        Assert.Contains("StateLoadFailed", outcome.Stats.Error, StringComparison.Ordinal);
        AssertWorkloadContinues(guest);
        AssertNewMigrationSucceeds(guest);
    }

    [Fact]
    public void WrongTokenIsRefusedBeforeAnyMemoryMovesAndTheSourceKeepsRunning()
    {
        using var guest = Busy();
        using var transport = new InMemoryTransport();
        var factory = Factory();
        var outcome = Migrate(guest, transport.Connector, transport.Listener, Options(), factory,
            incoming: new IncomingOptions { Token = "secret", PeerTimeout = TestPeerTimeout }, token: "guess");
        AssertFailedBeforeCommit(outcome, guest, factory);
        Assert.Contains("token", outcome.Stats.Error, StringComparison.Ordinal);
        Assert.Empty(factory.Created);
        Assert.Equal(0, outcome.Stats.BytesSent);
        AssertWorkloadContinues(guest);
    }

    [Fact]
    public void TooLargeGuestIsRefusedByTheDestinationLimit()
    {
        using var guest = Busy();
        using var transport = new InMemoryTransport();
        var factory = Factory();
        var outcome = Migrate(guest, transport.Connector, transport.Listener, Options(), factory,
            incoming: new IncomingOptions { MaxMemoryBytes = 8 << 20, PeerTimeout = TestPeerTimeout });
        AssertFailedBeforeCommit(outcome, guest, factory);
        Assert.Contains("limit", outcome.Stats.Error, StringComparison.Ordinal);
        Assert.Empty(factory.Created);
    }

    [Theory]
    [InlineData(typeof(IOException))]
    [InlineData(typeof(InvalidDataException))]
    public void ADestinationThatCannotBuildTheGuestRefusesItSayingWhyAndTheSourceRunsOn(Type thrown)
    {
        using var guest = Busy();
        using var transport = new InMemoryTransport();
        const string Why = "/var/lib/vm/disk.img: no room for the copied disk image (64 MiB)";
        var outcome = Migrate(guest, transport.Connector, transport.Listener, Options(),
            new RecordingTargetFactory(new FailingFactory((Exception)Activator.CreateInstance(thrown, Why)!)));
        Assert.Equal(MigrationStatus.Failed, outcome.Stats.Status);
        // A refusal at the handshake, in the destination's words, as for a guest over its limit: not an internal error.
        Assert.Equal($"peer sent Refuse: {Why}", outcome.Stats.Error);
        Assert.Contains(Why, outcome.DestinationError?.Message, StringComparison.Ordinal);
        Assert.True(guest.IsRunning);
        Assert.Equal(0, outcome.Stats.Pages.Normal);
        AssertWorkloadContinues(guest);
    }

    private sealed class FailingFactory(Exception failure) : Guest.IMigrationTargetFactory
    {
        public Guest.IMigrationTarget Create(Guid vmId, IReadOnlyList<(ulong GuestPhysicalAddress, ulong Size)> regions) => throw failure;
    }
}
