using Ferry.Migration.Guest;
using Ferry.Migration.InProcess;
using Ferry.Migration.Precopy;
using Ferry.Migration.Tests.Precopy;
using Ferry.Migration.Transport;
using static Ferry.Migration.Tests.Precopy.MigrationHarness;

namespace Ferry.Migration.Tests.Postcopy;

/// <summary>
/// A region that must be whole before the guest runs at the destination (<see cref="MemoryRegion.PrecopyOnly"/>, as
/// Ferry's machine marks a copied disk): a migration ending in post-copy moves it with its pre-copy rounds and its
/// switchover, and never names a page of it missing.
/// </summary>
[Collection(MigrationCollection.Name)]
public class PrecopyOnlyRegionTests
{
    /// <summary>
    /// A guest whose every harvest reports pages of its pre-copy-only region dirty (<see cref="SecondRegionPrecopyOnly"/>):
    /// no round ever leaves nothing dirty (pre-copy cannot converge before its round limit however the writers were
    /// scheduled).
    /// </summary>
    [Fact]
    public void PurePostcopyWhosePrecopyOnlyRegionNeverConvergesFailsAtTheRoundLimitAndTheGuestRunsOn()
    {
        using var inner = NewGuest(64, pagesPerSecond: 2_000, split: true);
        using var transport = new InMemoryTransport();
        var factory = new RecordingTargetFactory(new InProcessTargetFactory());
        var options = Options() with { Mode = MigrationMode.Postcopy, MaxRounds = 3, DowntimeLimit = TimeSpan.FromMicroseconds(1) };
        var outcome = Migrate(new SecondRegionPrecopyOnly(inner), transport.Connector, transport.Listener, options, factory);
        // The cancel strategy at the round limit, before any pause: as pre-copy's, the source runs on.
        AssertFailedBeforeCommit(outcome, inner, factory);
        Assert.Equal(3, outcome.Stats.Rounds.Count);
        AssertWorkloadContinues(inner);
    }

    [Fact]
    public void ADestinationThatDiesDuringPurePostcopysRoundsOfThePrecopyOnlyRegionLeavesTheGuestRunningAtTheSource()
    {
        // Nothing has paused yet: pre-copy's failure case, whatever mode was asked for.
        using var inner = NewGuest(64, pagesPerSecond: 2_000, split: true);
        using var transport = new InMemoryTransport();
        var plan = new FaultPlan();
        // The destination's end of page channel 1 goes away 1 MiB into its share of that region's first round.
        var fault = plan.Close(FaultTarget.Page(1), FaultTrigger.AtOffset(1 << 20), FaultDirection.Receive);
        var factory = new RecordingTargetFactory(new InProcessTargetFactory());
        var options = Options() with { Mode = MigrationMode.Postcopy };
        var outcome = Migrate(new SecondRegionPrecopyOnly(inner), transport.Connector, new FaultInjectingListener(transport.Listener, plan), options, factory);
        Assert.Equal(1, fault.TimesFired);
        AssertFailedBeforeCommit(outcome, inner, factory);
        Assert.Null(outcome.Stats.Postcopy);
        AssertWorkloadContinues(inner);

        // And it migrates again at once, the same way.
        using var again = new InMemoryTransport();
        var retry = Migrate(new SecondRegionPrecopyOnly(inner), again.Connector, again.Listener, options);
        using var _ = retry.Target;
        PostcopyMigrationTests.AssertCompletedInPostcopy(retry, inner);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void PurePostcopysRoundsOfThePrecopyOnlyRegionSlowAGuestThatOutrunsThemAsPrecopyDoes(bool autoConverge)
    {
        // Every round after the first re-sends the always-dirty pages and finds them dirty again: a rest that never
        // shrinks, dirtied faster than half of what each round moved. Two such rounds in a row are a throttle step.
        // The writers idle, so that those pages are all each round finds.
        using var inner = NewGuest(64, pagesPerSecond: 0, split: true);
        using var transport = new InMemoryTransport();
        var options = Options() with
        {
            Mode = MigrationMode.Postcopy, MaxRounds = 5, TimeoutStrategy = TimeoutStrategy.Force,
            DowntimeLimit = TimeSpan.FromMicroseconds(1), AutoConverge = autoConverge,
        };
        var outcome = Migrate(new SecondRegionPrecopyOnly(inner), transport.Connector, transport.Listener, options);
        using var _ = outcome.Target;
        Assert.True(outcome.Stats.Status == MigrationStatus.Completed, $"status {outcome.Stats.Status}: {outcome.Stats.Error} / {outcome.DestinationError}");
        Assert.True(outcome.Stats.Verify?.Match, "digests differ");
        var rounds = outcome.Stats.Rounds;
        Assert.Equal(5, rounds.Count);
        Assert.All(rounds, r => Assert.True(r.Pages > 0));
        Assert.All(rounds.Take(3), r => Assert.Equal(0, r.ThrottlePercent));
        // Rounds 1 and 2 were high: from round 3 the guest ran at the first step, as pre-copy's auto-converge sets it.
        int step = autoConverge ? options.ThrottleInitial : 0;
        Assert.Equal([step, step], rounds.Skip(3).Select(r => r.ThrottlePercent));
    }

    [Theory]
    [InlineData(MigrationMode.Hybrid, TimeoutStrategy.Cancel)]
    [InlineData(MigrationMode.Precopy, TimeoutStrategy.Postcopy)]
    [InlineData(MigrationMode.Postcopy, TimeoutStrategy.Force)]
    public void AMigrationEndingInPostcopyBringsThePrecopyOnlyRegionWholeBeforeTheGuestRuns(MigrationMode mode, TimeoutStrategy strategy)
    {
        // Uniform writes over both regions, and a limit no rest fits: pre-copy ends at its round limit, in post-copy
        // (pure post-copy's rounds of that region alone there by the force strategy).
        using var inner = NewGuest(64, pagesPerSecond: 20_000, split: true);
        using var transport = new InMemoryTransport();
        var source = new SecondRegionPrecopyOnly(inner);
        var factory = new RecordingTargetFactory(new InProcessTargetFactory());
        var options = Options() with { Mode = mode, TimeoutStrategy = strategy, MaxRounds = 3, DowntimeLimit = TimeSpan.FromMicroseconds(1) };
        var reports = new List<MigrationProgress>();
        var progress = new SynchronousProgress(p => { lock (reports) reports.Add(p); });
        var outcome = Migrate(source, transport.Connector, transport.Listener, options, factory, progress: progress);
        using var _ = outcome.Target;
        PostcopyMigrationTests.AssertCompletedInPostcopy(outcome, inner);
        var pc = outcome.Stats.Postcopy!;
        // Its pages dirtied since the last round went inside the switchover, the always-dirty ones among them ...
        Assert.True(pc.PrecopyOnlyPages >= SecondRegionPrecopyOnly.LastMinute, $"{pc.PrecopyOnlyPages} pre-copy-only pages in the switchover");
        // ... so the destination's guest began with none of that region missing, and only RAM came after it.
        var target = Assert.IsType<RecordingPostcopyTarget>(Assert.Single(factory.Created));
        Assert.NotNull(target.MissingPerRegion);
        Assert.Equal(0UL, target.MissingPerRegion[1]);
        Assert.Equal((ulong)pc.MissingPages, target.MissingPerRegion[0]);
        if (mode == MigrationMode.Postcopy)
        {
            // Pure post-copy: rounds of that region alone, the first all of it (written pages read, the rest as zeros);
            // all of RAM after the guest.
            var rounds = outcome.Stats.Rounds;
            Assert.Equal(options.MaxRounds, rounds.Count);
            Assert.Equal((long)source.Regions[1].Pages, rounds[0].Pages);
            Assert.Equal((long)source.Regions[0].Pages, pc.MissingPages);
            // While that region went, all of RAM was still to move too: progress said so.
            lock (reports)
            {
                var before = reports.Where(r => r.Status == MigrationStatus.Active).ToList();
                Assert.NotEmpty(before);
                Assert.All(before, r => Assert.True(r.RemainingBytes >= (long)source.Regions[0].Size, $"round {r.Round}: {r.RemainingBytes} bytes remaining"));
            }
        }
    }
}
