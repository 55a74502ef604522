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
    /// A two-region guest whose second region is pre-copy only, and whose harvest at the pause reports the first
    /// <see cref="LastMinute"/> pages of that region dirty (they are unchanged, so they still verify): the switchover
    /// has pages of it to carry however the writers were scheduled.
    /// </summary>
    private sealed class SecondRegionPrecopyOnly(InProcessGuest inner) : DelegatingSource(inner)
    {
        public const int LastMinute = 50;
        private readonly IReadOnlyList<MemoryRegion> _regions = [inner.Regions[0], inner.Regions[1] with { PrecopyOnly = true }];
        private volatile bool _paused;

        public override IReadOnlyList<MemoryRegion> Regions => _regions;

        public override void HarvestDirtyLog(Span<ulong> bitmap)
        {
            base.HarvestDirtyLog(bitmap);
            if (!_paused) return;
            ulong first = _regions[0].Pages;
            for (ulong p = first; p < first + LastMinute; p++) bitmap[(int)(p >> 6)] |= 1UL << (int)p;
        }

        public override void Pause()
        {
            base.Pause();
            _paused = true;
        }
    }

    [Theory]
    [InlineData(MigrationMode.Hybrid, TimeoutStrategy.Cancel)]
    [InlineData(MigrationMode.Precopy, TimeoutStrategy.Postcopy)]
    public void AMigrationEndingInPostcopyBringsThePrecopyOnlyRegionWholeBeforeTheGuestRuns(MigrationMode mode, TimeoutStrategy strategy)
    {
        // Uniform writes over both regions, and a limit no rest fits: pre-copy ends at its round limit, in post-copy.
        using var inner = NewGuest(64, pagesPerSecond: 20_000, split: true);
        using var transport = new InMemoryTransport();
        var source = new SecondRegionPrecopyOnly(inner);
        var factory = new RecordingTargetFactory(new InProcessTargetFactory());
        var options = Options() with { Mode = mode, TimeoutStrategy = strategy, MaxRounds = 3, DowntimeLimit = TimeSpan.FromMicroseconds(1) };
        var outcome = Migrate(source, transport.Connector, transport.Listener, options, factory);
        using var _ = outcome.Target;
        PostcopyMigrationTests.AssertCompletedInPostcopy(outcome, inner);
        var pc = outcome.Stats.Postcopy!;
        // Its pages dirtied since the last round went inside the switchover, the pause's last-minute ones among them ...
        Assert.True(pc.PrecopyOnlyPages >= SecondRegionPrecopyOnly.LastMinute, $"{pc.PrecopyOnlyPages} pre-copy-only pages in the switchover");
        // ... so the destination's guest began with none of that region missing, and only RAM came after it.
        var target = Assert.IsType<RecordingPostcopyTarget>(Assert.Single(factory.Created));
        Assert.NotNull(target.MissingPerRegion);
        Assert.Equal(0UL, target.MissingPerRegion[1]);
        Assert.Equal((ulong)pc.MissingPages, target.MissingPerRegion[0]);
    }

    [Fact]
    public void PurePostcopyRefusesAGuestWithAPrecopyOnlyRegionBeforeAnythingMoves()
    {
        using var inner = NewGuest(64, pagesPerSecond: 1000, split: true);
        using var transport = new InMemoryTransport();
        var e = Assert.Throws<ArgumentException>(() =>
            new OutgoingMigration(new SecondRegionPrecopyOnly(inner), transport.Connector, Options() with { Mode = MigrationMode.Postcopy }));
        Assert.StartsWith("pure post-copy cannot move this guest", e.Message, StringComparison.Ordinal);
        Assert.True(inner.IsRunning);
        Assert.False(inner.IsDirtyLogging);
    }
}
