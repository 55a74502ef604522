using Ferry.Migration.Guest;
using Ferry.Migration.InProcess;
using Ferry.Migration.Transport;
using static Ferry.Migration.Tests.Precopy.MigrationHarness;

namespace Ferry.Migration.Tests.Precopy;

/// <summary>
/// Capability Shape: a source guest with a shape (<see cref="IShapedMigrationSource"/>) sends it right after the
/// handshake, and the destination hands it to its target before any page or state, so the target can build itself in
/// the source's shape ahead of the switchover instead of inside the downtime.
/// </summary>
[Collection(MigrationCollection.Name)]
public class ShapeTests
{
    private static readonly StateSection TheShape = new("test-shape", 3, new byte[] { 7, 1, 2 });

    private sealed class ShapedSource(InProcessGuest inner, StateSection shape) : DelegatingSource(inner), IShapedMigrationSource
    {
        public int Calls;

        public StateSection GetShape()
        {
            Calls++;
            return shape;
        }
    }

    /// <summary>In-process targets that take a shape, and say in what order the engine called them.</summary>
    private sealed class ShapedFactory(string? reject = null) : IMigrationTargetFactory
    {
        private readonly InProcessTargetFactory inner = new();
        public readonly List<ShapedTarget> Created = [];

        public IMigrationTarget Create(Guid vmId, IReadOnlyList<(ulong GuestPhysicalAddress, ulong Size)> regions)
        {
            var t = new ShapedTarget(inner.Create(vmId, regions), reject);
            lock (Created) Created.Add(t);
            return t;
        }
    }

    private sealed class ShapedTarget(IMigrationTarget inner, string? reject) : IMigrationTarget, IShapedMigrationTarget
    {
        public readonly List<string> Calls = [];
        public StateSection? Shape;

        public IReadOnlyList<MemoryRegion> Regions => inner.Regions;
        public bool TransparentHugePages => inner.TransparentHugePages;

        public void Reshape(StateSection shape)
        {
            lock (Calls) Calls.Add("reshape");
            if (reject is not null) throw new InvalidDataException(reject);
            Shape = shape;
        }

        public void LoadState(IReadOnlyList<StateSection> sections)
        {
            lock (Calls) Calls.Add("load");
            inner.LoadState(sections);
        }

        public void Start() => inner.Start();

        public void Dispose() => inner.Dispose();
    }

    private static MigrationOutcome Run(IMigrationSource source, ShapedFactory factory, out RecordingTargetFactory recording)
    {
        using var transport = new InMemoryTransport();
        recording = new RecordingTargetFactory(factory);
        return Migrate(source, transport.Connector, transport.Listener, Options(), recording);
    }

    [Fact]
    public void TheSourcesShapeReachesTheTargetBeforeItsStateAndEveryPageArrives()
    {
        using var guest = NewGuest(mib: 16, pagesPerSecond: 2000);
        var source = new ShapedSource(guest, TheShape);
        var factory = new ShapedFactory();
        var outcome = Run(source, factory, out _);
        using var target = outcome.Target;

        Assert.True(outcome.Stats.Status == MigrationStatus.Completed, $"{outcome.Stats.Status}: {outcome.Stats.Error} / {outcome.DestinationError}");
        Assert.True(outcome.Stats.Verify!.Match, "the guest's memory arrived intact");
        Assert.Equal(1, source.Calls);
        var t = Assert.Single(factory.Created);
        Assert.Equal(["reshape", "load"], t.Calls);
        Assert.Equal(TheShape.Name, t.Shape!.Name);
        Assert.Equal(TheShape.Version, t.Shape.Version);
        Assert.Equal(TheShape.Data.ToArray(), t.Shape.Data.ToArray());
    }

    [Fact]
    public void ASourceWithNoShapeSendsNoneAndTheTargetBuildsOnItsOwn()
    {
        using var guest = NewGuest(mib: 16);
        var factory = new ShapedFactory();
        var outcome = Run(new DelegatingSource(guest), factory, out _);
        using var target = outcome.Target;

        Assert.True(outcome.Stats.Status == MigrationStatus.Completed, $"{outcome.Stats.Status}: {outcome.Stats.Error} / {outcome.DestinationError}");
        Assert.Equal(["load"], Assert.Single(factory.Created).Calls);
    }

    [Fact]
    public void AShapeTheTargetCannotTakeFailsTheMigrationBeforeAnythingMovesAndTheGuestRunsOnAtTheSource()
    {
        using var guest = NewGuest(mib: 16, pagesPerSecond: 2000);
        var factory = new ShapedFactory(reject: "test: 9 harts, this build runs 1 to 8");
        var outcome = Run(new ShapedSource(guest, TheShape), factory, out var recording);

        Assert.Equal(MigrationStatus.Failed, outcome.Stats.Status);
        Assert.Contains("the source's shape: test: 9 harts, this build runs 1 to 8", outcome.Stats.Error, StringComparison.Ordinal);
        Assert.Equal(0, outcome.Stats.Pages.Normal);
        Assert.True(guest.IsRunning, "the source's guest runs on");
        Assert.Equal(["reshape"], Assert.Single(factory.Created).Calls);
        var t = Assert.Single(recording.Created);
        Assert.False(t.Started);
        Assert.True(t.Disposed, "the half-built guest is discarded");
    }
}
