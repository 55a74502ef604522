using System.Diagnostics;
using Ferry.Migration.Guest;
using Ferry.Migration.InProcess;
using Ferry.Migration.Protocol;
using Ferry.Migration.Postcopy;
using Ferry.Migration.Precopy;
using Ferry.Migration.Tests.Precopy;
using Ferry.Migration.Transport;
using static Ferry.Migration.Tests.Precopy.MigrationHarness;

namespace Ferry.Migration.Tests.Postcopy;

[Collection(MigrationCollection.Name)]
public class PostcopyMigrationTests
{
    private static MigrationOptions PostcopyOptions(MigrationMode mode, PrepagingStrategy prepaging = PrepagingStrategy.Bubble) =>
        Options() with { Mode = mode, Prepaging = prepaging };

    internal static void AssertCompletedInPostcopy(MigrationOutcome outcome, InProcessGuest source)
    {
        Assert.True(outcome.Stats.Status == MigrationStatus.Completed, $"status {outcome.Stats.Status}: {outcome.Stats.Error} / {outcome.DestinationError}");
        Assert.Null(outcome.Stats.Error);
        Assert.Null(outcome.DestinationError);
        Assert.NotNull(outcome.Target);
        Assert.True(outcome.Target.Started);
        Assert.False(source.IsRunning, "the source must stay paused after commit");
        var verify = outcome.Stats.Verify;
        Assert.NotNull(verify);
        Assert.True(verify.Match, $"digests differ: {verify.SourceDigest} vs {verify.DestDigest}");
        var pc = outcome.Stats.Postcopy;
        Assert.NotNull(pc);
        // Every missing page reached the destination once, by the push or on request.
        Assert.True(pc.PushedPages + pc.UrgentPages - pc.DuplicatePages >= pc.MissingPages,
            $"pushed {pc.PushedPages} + urgent {pc.UrgentPages} - duplicates {pc.DuplicatePages} < missing {pc.MissingPages}");
        // The guest ran on at the destination: it kept writing, and its memory agrees with its own bookkeeping.
        var guest = Assert.IsType<InProcessTarget>(outcome.Target.Inner).Guest!;
        long written = guest.PagesWritten;
        Assert.True(SpinWait.SpinUntil(() => guest.PagesWritten > written, TimeSpan.FromSeconds(5)), "destination guest stopped writing");
        DestinationChecks.AssertSelfCheckAfterStart(outcome.Target);
    }

    [Fact]
    public void PostcopyMovesARunningGuestAndEveryPageArrivesIntact()
    {
        using var guest = NewGuest(64, pagesPerSecond: 5000, pattern: DirtyPattern.Hotset);
        using var transport = new InMemoryTransport();
        var outcome = Migrate(guest, transport.Connector, transport.Listener, PostcopyOptions(MigrationMode.Postcopy));
        using var _ = outcome.Target;
        AssertCompletedInPostcopy(outcome, guest);
        var s = outcome.Stats;
        Assert.Equal("postcopy", s.Mode);
        Assert.Empty(s.Rounds); // nothing moved before the switchover
        Assert.Equal(16384, s.Postcopy!.MissingPages);
        Assert.True(s.Postcopy.Faults > 0, "a writing guest must fault on pages not pushed yet");
        Assert.True(s.Postcopy.FaultLatencyUs.P50 > 0);
        Assert.True(s.Postcopy.WorkingSetPages > 0);
    }

    [Fact]
    public void WithFaultPollingOverTcpRepliesAreFoundPollingAndEveryPageArrivesIntact()
    {
        using var guest = NewGuest(64, pagesPerSecond: 20_000, pattern: DirtyPattern.Hotset, writers: 2);
        using var listener = new TcpMigrationListener(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 0));
        var connector = new TcpMigrationConnector(listener.LocalEndPoint);
        var options = PostcopyOptions(MigrationMode.Postcopy);
        IncomingMigration? destination = null;
        var outcome = Migrate(guest, connector, listener, options,
            incoming: new IncomingOptions { PeerTimeout = options.PeerTimeout, MaxMemoryBytes = 1UL << 30, FaultPoll = TimeSpan.FromMilliseconds(1) },
            onIncoming: d => destination = d);
        using var _ = outcome.Target;
        AssertCompletedInPostcopy(outcome, guest);
        Assert.True(outcome.Stats.Postcopy!.Faults > 0, "a writing guest must fault on pages not pushed yet");
        Assert.True(destination!.UrgentNudges > 0, $"no request of {outcome.Stats.Postcopy.Faults} faults woke the receiver to poll");
        Assert.True(destination.UrgentFoundPolling > 0, $"no reply of {outcome.Stats.Postcopy.Faults} faults was found polling");
    }

    [Fact]
    public void AHybridWhosePrecopyOutlastsTheReceiveTimeoutCompletes()
    {
        // The urgent channel carries nothing until post-copy: a pre-copy longer than the transport's receive timeout
        // once failed the migration ("destination closed the control channel", ~10 s into a hybrid over TCP). The
        // keepalives every PeerTimeout/3 keep the control channel inside the timeout; the page channels carry pages.
        var receiveTimeout = TimeSpan.FromSeconds(1.5);
        using var guest = NewGuest(64, pagesPerSecond: 2000, pattern: DirtyPattern.Hotset);
        using var transport = new InMemoryTransport(receiveTimeout: receiveTimeout);
        var options = PostcopyOptions(MigrationMode.Hybrid) with { PeerTimeout = TimeSpan.FromSeconds(2.4), MaxBandwidth = 20 << 20 };
        var outcome = Migrate(guest, transport.Connector, transport.Listener, options,
            incoming: new IncomingOptions { PeerTimeout = options.PeerTimeout, MaxMemoryBytes = 1UL << 30 });
        using var _ = outcome.Target;
        AssertCompletedInPostcopy(outcome, guest);
        Assert.True(outcome.Stats.TotalMs > 2 * receiveTimeout.TotalMilliseconds, $"the migration took {outcome.Stats.TotalMs:F0} ms: too short to test anything");
    }

    [Fact]
    public void HybridCopiesInRoundsThenFinishesInPostcopy()
    {
        using var guest = NewGuest(64, pagesPerSecond: 20000, pattern: DirtyPattern.Hotset);
        using var transport = new InMemoryTransport();
        var outcome = Migrate(guest, transport.Connector, transport.Listener, PostcopyOptions(MigrationMode.Hybrid));
        using var _ = outcome.Target;
        AssertCompletedInPostcopy(outcome, guest);
        var s = outcome.Stats;
        Assert.Equal("hybrid", s.Mode);
        Assert.NotEmpty(s.Rounds);
        Assert.Equal(16384, s.Rounds[0].Pages);
        Assert.True(s.Postcopy!.MissingPages < 16384, $"hybrid left {s.Postcopy.MissingPages} pages to post-copy");
        Assert.Equal(0, s.Postcopy.SwitchoverPages); // this guest cannot say what its CPUs were working on
    }

    [Fact]
    public void HybridSendsTheMissingPagesTheCpusHeldInsideTheSwitchoverAndTheyArriveIntact()
    {
        using var inner = NewGuest(64, pagesPerSecond: 20000, pattern: DirtyPattern.Hotset);
        using var transport = new InMemoryTransport();
        // Every page "resident": the switchover sends as many of the missing pages as it may.
        var outcome = Migrate(new EveryPageResident(inner), transport.Connector, transport.Listener, PostcopyOptions(MigrationMode.Hybrid));
        using var _ = outcome.Target;
        AssertCompletedInPostcopy(outcome, inner);
        var pc = outcome.Stats.Postcopy!;
        // At most the switchover's share; none only if nothing was missing then (seen once on a loaded 2-core host: the
        // writers starved, the last round left no page behind), which the next assertion holds it to.
        Assert.InRange(pc.SwitchoverPages, 0, (long)OutgoingMigration.SwitchoverPages);
        // Whatever did not fit is left to post-copy; what went early is not counted missing (digests matched above).
        Assert.True(pc.MissingPages == 0 || pc.SwitchoverPages == (long)OutgoingMigration.SwitchoverPages,
            $"{pc.SwitchoverPages} pages sent early yet {pc.MissingPages} left missing");
    }

    [Theory]
    [InlineData(MigrationMode.Postcopy, PrepagingStrategy.Bubble)]
    [InlineData(MigrationMode.Hybrid, PrepagingStrategy.Bubble)]
    [InlineData(MigrationMode.Postcopy, PrepagingStrategy.Forward)]
    [InlineData(MigrationMode.Postcopy, PrepagingStrategy.Linear)]
    public void BubblingPushesTheSystemPagesFirstOnTheUrgentChannelAndTheyArriveIntact(MigrationMode mode, PrepagingStrategy prepaging)
    {
        using var inner = NewGuest(64, pagesPerSecond: 20000, pattern: DirtyPattern.Hotset);
        using var transport = new InMemoryTransport();
        var outcome = Migrate(new SystemPagesNamed(inner), transport.Connector, transport.Listener, PostcopyOptions(mode, prepaging));
        using var _ = outcome.Target;
        AssertCompletedInPostcopy(outcome, inner);
        var pc = outcome.Stats.Postcopy!;
        // Pure post-copy: all of the named pages were missing, and every one went first, on the urgent channel.
        // Hybrid: those of them still missing at the switchover did. The other orders ignore them.
        if (prepaging != PrepagingStrategy.Bubble) Assert.Equal(0, pc.SystemPages);
        else if (mode == MigrationMode.Postcopy) Assert.Equal(SystemPagesNamed.Count, pc.SystemPages);
        else Assert.InRange(pc.SystemPages, 0, SystemPagesNamed.Count);
        Assert.True(pc.PushedPages >= pc.SystemPages);
    }

    /// <summary>An in-process guest that names pages [1000, 1000 + Count) as its system's (a stand-in for the machine's kernel pages).</summary>
    private sealed class SystemPagesNamed(InProcessGuest inner) : TrackingGuest(inner)
    {
        public const int First = 1000, Count = 300;

        public override void HarvestAccessedPages(Span<ulong> bitmap, Span<ulong> system)
        {
            for (int p = First; p < First + Count; p++)
            {
                bitmap[p >> 6] |= 1UL << p;
                system[p >> 6] |= 1UL << p;
            }
        }
    }

    [Fact]
    public void PagesTheGuestUsesInEveryIntervalAndPagesOnlyItsCpusHoldGoFirstWithItsSystemPages()
    {
        // Idle: the pages it writes in every interval would be steady too, and the count below exact no more.
        using var inner = NewGuest(64, pagesPerSecond: 0);
        using var transport = new InMemoryTransport();
        var source = new SteadyAndHeldPages(inner);
        // The destination's preparation outlasts the intervals that make a page steady.
        var slow = new ObservedPreparationFactory { Delay = OutgoingMigration.RecentUseInterval * (OutgoingMigration.SteadyIntervals + 4) };
        var outcome = Migrate(source, transport.Connector, transport.Listener, PostcopyOptions(MigrationMode.Postcopy), new RecordingTargetFactory(slow));
        using var _ = outcome.Target;
        Assert.True(outcome.Stats.Status == MigrationStatus.Completed, $"status {outcome.Stats.Status}: {outcome.Stats.Error} / {outcome.DestinationError}");
        Assert.True(outcome.Stats.Verify?.Match, "digests differ");
        Assert.True(source.Harvests >= OutgoingMigration.SteadyIntervals, $"only {source.Harvests} harvests before the pause");
        // Both kinds went on the urgent channel before everything else: the steady user pages, and the pages the
        // CPUs held at the pause, read before the dirty log's harvest dropped them.
        Assert.Equal(2 * SteadyAndHeldPages.Count, outcome.Stats.Postcopy!.SystemPages);
    }

    /// <summary>
    /// An in-process guest whose pages [2000, 2000 + Count) its user side used in every interval (a sampler thread's
    /// stack and data), and whose CPUs hold translations for [3000, 3000 + Count) that only a pause shows, until a
    /// dirty-log harvest drops them (as the machine's write entries: a page written all the time is in its TLB only).
    /// </summary>
    private sealed class SteadyAndHeldPages(InProcessGuest inner) : TrackingGuest(inner)
    {
        public const int Steady = 2000, Held = 3000, Count = 40;
        private volatile bool _paused, _dropped;
        public int Harvests;

        public override void HarvestAccessedPages(Span<ulong> bitmap, Span<ulong> system)
        {
            Harvests++;
            for (int p = Steady; p < Steady + Count; p++) bitmap[p >> 6] |= 1UL << p;
            if (!_paused || _dropped) return;
            for (int p = Held; p < Held + Count; p++)
            {
                bitmap[p >> 6] |= 1UL << p;
                system[p >> 6] |= 1UL << p;
            }
        }

        public override void HarvestDirtyLog(Span<ulong> bitmap)
        {
            base.HarvestDirtyLog(bitmap);
            if (_paused) _dropped = true;
        }

        public override void Pause()
        {
            base.Pause();
            _paused = true;
        }
    }

    [Fact]
    public void WithAPrecopyOnlyRegionTheSteadyPagesAreThoseOfTheIntervalsBeforeThePauseNotBeforeItsRounds()
    {
        // Idle, as above: only the named pages are used in every interval.
        using var inner = NewGuest(64, pagesPerSecond: 0, split: true);
        using var transport = new InMemoryTransport();
        var source = new SteadyUseMoves(inner);
        // Enough intervals pass before the destination is ready for the first set to be steady, and the first round's
        // landing (where the guest's use moves) takes as long again: its rounds outlast what made the first set steady.
        var slow = new ObservedPreparationFactory { Delay = OutgoingMigration.RecentUseInterval * (OutgoingMigration.SteadyIntervals + 4) };
        int synced = 0;
        var factory = new RecordingTargetFactory(slow)
        {
            OnSyncLanded = () =>
            {
                if (Interlocked.Exchange(ref synced, 1) != 0) return;
                source.Moved = true;
                Thread.Sleep(OutgoingMigration.RecentUseInterval * (OutgoingMigration.SteadyIntervals + 4));
            },
        };
        var outcome = Migrate(source, transport.Connector, transport.Listener, PostcopyOptions(MigrationMode.Postcopy), factory);
        using var _ = outcome.Target;
        Assert.True(outcome.Stats.Status == MigrationStatus.Completed, $"status {outcome.Stats.Status}: {outcome.Stats.Error} / {outcome.DestinationError}");
        Assert.True(outcome.Stats.Verify?.Match, "digests differ");
        Assert.True(source.HarvestsBefore >= OutgoingMigration.SteadyIntervals, $"only {source.HarvestsBefore} harvests before the rounds");
        Assert.NotEmpty(outcome.Stats.Rounds);
        // What went first on the urgent channel was what the guest used in the intervals before the pause.
        Assert.Equal(SteadyUseMoves.AfterCount, outcome.Stats.Postcopy!.SystemPages);
    }

    /// <summary>
    /// A two-region guest whose second region is pre-copy only (a copied disk) and whose user side used pages
    /// [2000, 2000 + BeforeCount) in every interval until <see cref="Moved"/>, and [3000, 3000 + AfterCount) since.
    /// </summary>
    private sealed class SteadyUseMoves(InProcessGuest inner) : TrackingGuest(inner)
    {
        public const int BeforeCount = 30, AfterCount = 50;
        private readonly IReadOnlyList<MemoryRegion> _regions = [inner.Regions[0], inner.Regions[1] with { PrecopyOnly = true }];
        public volatile bool Moved;
        public int HarvestsBefore;

        public override IReadOnlyList<MemoryRegion> Regions => _regions;

        public override void HarvestAccessedPages(Span<ulong> bitmap, Span<ulong> system)
        {
            bool moved = Moved;
            if (!moved) HarvestsBefore++;
            int first = moved ? 3000 : 2000, count = moved ? AfterCount : BeforeCount;
            for (int p = first; p < first + count; p++) bitmap[p >> 6] |= 1UL << p;
        }
    }

    /// <summary>An in-process guest that says its CPUs hold every page (a stand-in for the machine's TLBs).</summary>
    private sealed class EveryPageResident(InProcessGuest inner) : TrackingGuest(inner)
    {
        public override void GetResidentPages(Span<ulong> bitmap) => bitmap.Fill(ulong.MaxValue);
    }

    /// <summary>An in-process guest with access tracking that names nothing; subclasses say what they name.</summary>
    private abstract class TrackingGuest(InProcessGuest inner) : DelegatingSource(inner), Guest.IAccessTrackingSource
    {
        public void HarvestAccessedPages(Span<ulong> bitmap) { }
        public virtual void HarvestAccessedPages(Span<ulong> bitmap, Span<ulong> system) { }
        public virtual void GetResidentPages(Span<ulong> bitmap) { }
    }

    /// <summary>A destination that notes where and how its preparation for post-copy ran, and which threads installed pages.</summary>
    private sealed class ObservedPreparationFactory : Guest.IMigrationTargetFactory
    {
        private readonly InProcessTargetFactory _inner = new();
        public string? ThreadName;
        public int? Nice;
        /// <summary>The preparing thread's scheduler slice (/proc/thread-self/sched), ns; null where the kernel shows none.</summary>
        public long? SliceNs;
        public bool Prepared;
        /// <summary>Pages the source's populated map named (null: it sent none).</summary>
        public long? PagesHoldingData;
        /// <summary>Scheduling policy (sched(7)) of the threads that installed post-copy pages at their last install, by thread name.</summary>
        public readonly System.Collections.Concurrent.ConcurrentDictionary<string, int> InstallPolicies = new();

        private static int CurrentPolicy()
        {
            // /proc/thread-self/stat: the 41st field is the policy; fields 3 on follow the command's ")".
            string stat = File.ReadAllText("/proc/thread-self/stat");
            return int.Parse(stat[(stat.LastIndexOf(')') + 2)..].Split(' ')[38], System.Globalization.CultureInfo.InvariantCulture);
        }

        private sealed class Memory(ObservedPreparationFactory owner, Guest.IPostcopyMemory inner) : Guest.IPostcopyMemory
        {
            public void Install(int region, ulong firstPage, int count, nint source)
            {
                owner.InstallPolicies[Thread.CurrentThread.Name ?? "?"] = CurrentPolicy();
                inner.Install(region, firstPage, count, source);
            }

            public void InstallZero(int region, ulong firstPage, ulong count)
            {
                owner.InstallPolicies[Thread.CurrentThread.Name ?? "?"] = CurrentPolicy();
                inner.InstallZero(region, firstPage, count);
            }

            public long BlockedTicks => inner.BlockedTicks;
            public long WorkingSetPages => inner.WorkingSetPages;
            public void Abort(string reason) => inner.Abort(reason);
            public void Dispose() => inner.Dispose();
        }
        /// <summary>How much longer the preparation takes.</summary>
        public TimeSpan Delay { get; init; }

        public Guest.IMigrationTarget Create(Guid vmId, IReadOnlyList<(ulong GuestPhysicalAddress, ulong Size)> regions) =>
            new Target(this, (InProcessTarget)_inner.Create(vmId, regions));

        private sealed class Target(ObservedPreparationFactory owner, InProcessTarget inner) : Guest.IMigrationTarget, Guest.IPostcopyTarget
        {
            public IReadOnlyList<Guest.MemoryRegion> Regions => inner.Regions;
            public void LoadState(IReadOnlyList<Guest.StateSection> sections) => inner.LoadState(sections);
            public void Start() => inner.Start();
            public void Dispose() => inner.Dispose();
            public Guest.IPostcopyMemory BeginPostcopy(IReadOnlyList<Ferry.Migration.Memory.DirtyBitmap> missing, Guest.IPageFaultSink sink) =>
                new Memory(owner, inner.BeginPostcopy(missing, sink));

            public void PreparePostcopy(TimeSpan budget, IReadOnlyList<Ferry.Migration.Memory.DirtyBitmap>? holdsData, CancellationToken stop)
            {
                owner.Prepared = true;
                owner.PagesHoldingData = holdsData?.Sum(b => (long)b.Count());
                owner.ThreadName = Thread.CurrentThread.Name;
                // /proc/thread-self/stat: the 19th field is the nice value; fields 3 on follow the command's ")".
                string stat = File.ReadAllText("/proc/thread-self/stat");
                owner.Nice = int.Parse(stat[(stat.LastIndexOf(')') + 2)..].Split(' ')[16], System.Globalization.CultureInfo.InvariantCulture);
                // "se.slice   :   100000" (EEVDF kernels).
                string? slice = File.ReadLines("/proc/thread-self/sched").FirstOrDefault(l => l.StartsWith("se.slice", StringComparison.Ordinal));
                owner.SliceNs = slice is null ? null : long.Parse(slice[(slice.IndexOf(':') + 1)..].Trim(), System.Globalization.CultureInfo.InvariantCulture);
                ((Guest.IPostcopyTarget)inner).PreparePostcopy(budget, holdsData, stop);
                stop.WaitHandle.WaitOne(owner.Delay);
            }
        }
    }

    [Fact]
    public void TheDestinationPreparesAtNormalWeightWithAShortSliceAndReceivesThePushOnBatchThreads()
    {
        using var guest = NewGuest(16, pagesPerSecond: 1000);
        using var transport = new InMemoryTransport();
        var observed = new ObservedPreparationFactory();
        var outcome = Migrate(guest, transport.Connector, transport.Listener, PostcopyOptions(MigrationMode.Postcopy), new RecordingTargetFactory(observed));
        using var _ = outcome.Target;
        Assert.True(outcome.Stats.Status == MigrationStatus.Completed, $"status {outcome.Stats.Status}: {outcome.Stats.Error} / {outcome.DestinationError}");
        Assert.True(outcome.Stats.Verify?.Match, "digests differ");
        Assert.NotNull(observed.ThreadName);
        Assert.NotEqual("test-destination", observed.ThreadName); // the harness runs the destination's control on that one
        // Its share of a busy host (niced, it did not finish in time beside a busy source on one host), handed back
        // every 100 µs where the kernel takes slices (Linux 6.12+: a scratch thread asks for one).
        Assert.Equal(0, observed.Nice);
        bool slices = false;
        var probe = new Thread(() => slices = Ferry.Linux.Libc.SetCurrentThreadSlice(IncomingMigration.PopulateSlice));
        probe.Start();
        probe.Join();
        if (slices) Assert.Equal((long)IncomingMigration.PopulateSlice.TotalNanoseconds, observed.SliceNs);
        // The push lands through the page channels' receivers, batch threads (SCHED_BATCH = 3) once post-copy runs (a
        // channel's first post-copy batch may be read just before the switch).
        var bulk = observed.InstallPolicies.Where(p => p.Key.StartsWith("ferry-recv-page", StringComparison.Ordinal)).ToList();
        Assert.NotEmpty(bulk);
        Assert.All(bulk, p => Assert.Equal(3, p.Value));
    }

    [Theory]
    [InlineData(MigrationMode.Postcopy, MemoryFill.Random, 4096L)] // every page written: all of them named
    [InlineData(MigrationMode.Postcopy, MemoryFill.Zero, 0L)]      // an idle guest that never wrote: none
    [InlineData(MigrationMode.Hybrid, MemoryFill.Random, null)]    // pre-copy rounds fault memory in: no map
    public void APurePostcopyDestinationLearnsWhichPagesHoldDataBeforeItPrepares(MigrationMode mode, MemoryFill fill, long? named)
    {
        using var guest = NewGuest(16, fill: fill);
        using var transport = new InMemoryTransport();
        var observed = new ObservedPreparationFactory();
        var outcome = Migrate(guest, transport.Connector, transport.Listener, PostcopyOptions(mode), new RecordingTargetFactory(observed));
        using var _ = outcome.Target;
        Assert.True(outcome.Stats.Status == MigrationStatus.Completed, $"status {outcome.Stats.Status}: {outcome.Stats.Error} / {outcome.DestinationError}");
        Assert.True(outcome.Stats.Verify?.Match, "digests differ");
        Assert.True(observed.Prepared);
        Assert.Equal(named, observed.PagesHoldingData);
    }
}

[Collection(MigrationCollection.Name)]
public class PostcopyFailureTests
{
    /// <summary>A destination whose guest cannot run before its memory arrived (no <see cref="Guest.IPostcopyTarget"/>).</summary>
    private sealed class PrecopyOnlyFactory : Guest.IMigrationTargetFactory
    {
        private readonly InProcessTargetFactory _inner = new();
        public Guest.IMigrationTarget Create(Guid vmId, IReadOnlyList<(ulong GuestPhysicalAddress, ulong Size)> regions) =>
            new PrecopyOnlyTarget(_inner.Create(vmId, regions));
    }

    private sealed class PrecopyOnlyTarget(Guest.IMigrationTarget inner) : Guest.IMigrationTarget
    {
        public IReadOnlyList<Guest.MemoryRegion> Regions => inner.Regions;
        public void LoadState(IReadOnlyList<Guest.StateSection> sections) => inner.LoadState(sections);
        public void Start() => inner.Start();
        public void Dispose() => inner.Dispose();
    }

    [Fact]
    public void ADestinationThatCannotRunPostcopyRefusesAtTheHandshakeAndTheSourceRunsOn()
    {
        using var guest = NewGuest(16, pagesPerSecond: 1000);
        using var transport = new InMemoryTransport();
        var factory = new RecordingTargetFactory(new PrecopyOnlyFactory());
        var outcome = Migrate(guest, transport.Connector, transport.Listener, Options() with { Mode = MigrationMode.Postcopy }, factory);
        Assert.Equal(MigrationStatus.Failed, outcome.Stats.Status);
        Assert.Contains("no post-copy", outcome.Stats.Error, StringComparison.Ordinal);
        Assert.True(guest.IsRunning);
        Assert.All(factory.Created, t => Assert.False(t.Started));
    }

    [Fact]
    public void APageRequestOutsideGuestMemoryIsRefusedWithAnError()
    {
        using var guest = NewGuest(16, pagesPerSecond: 1000);
        var (stats, answer) = MigrateToScriptedDestination(guest, (reader, writer) =>
        {
            // A hostile destination: plays the protocol up to Resumed, then asks for a page past the end of memory.
            writer.WriteReady(0, 0, null);
            reader.Expect<CommitMessage>();
            writer.WriteResumed(1);
            writer.WritePageRequest(0, 1UL << 40, 1);
        });
        Assert.Equal(MigrationStatus.Failed, stats.Status);
        Assert.Contains("outside guest memory", stats.Error, StringComparison.Ordinal);
        Assert.NotNull(answer);
        Assert.Equal(ProtocolErrorCode.Protocol, answer.Code);
        Assert.Contains("outside", answer.Message, StringComparison.Ordinal);
        // Committed: the source never runs the VM again, whatever the destination does.
        Assert.False(guest.IsRunning);
    }

    [Fact]
    public void APageRequestForARegionThatWentWholeBeforeTheGuestRanIsRefusedWithAnError()
    {
        // The region is read through a reader, with no mapping here to serve a request from.
        using var guest = NewGuest(16, pagesPerSecond: 1000, split: true);
        var region = guest.Regions[1];
        var source = new SecondRegionPrecopyOnly(guest, new CopyingRegionReader(region));
        var (stats, answer) = MigrateToScriptedDestination(source, (reader, writer) =>
        {
            writer.WriteReady(0, 0, null);
            reader.Expect<CommitMessage>();
            writer.WriteResumed(1);
            writer.WritePageRequest(1, 0, 1);
        });
        Assert.Equal(MigrationStatus.Failed, stats.Status);
        Assert.Contains("pages of region 1, which it had whole before its guest ran", stats.Error, StringComparison.Ordinal);
        Assert.NotNull(answer);
        Assert.Equal(ProtocolErrorCode.Protocol, answer.Code);
        Assert.False(guest.IsRunning);
    }

    /// <summary>
    /// A pure post-copy of <paramref name="guest"/> to a destination played by the test: it accepts the handshake, drains
    /// every page channel, echoes keepalives until Complete, then runs <paramref name="afterComplete"/>; the source's
    /// statistics and the Error it sent back, if any.
    /// </summary>
    private static (MigrationStatistics Stats, ErrorMessage? Answer) MigrateToScriptedDestination(IMigrationSource guest, Action<ProtocolReader, ProtocolWriter> afterComplete)
    {
        using var transport = new InMemoryTransport();
        ErrorMessage? answer = null;
        var destination = new Thread(() =>
        {
            var c = transport.Listener.Accept(TestContext.Current.CancellationToken);
            var drains = c.Pages.Append(c.Urgent!).Select(ch => new Thread(() =>
            {
                var buffer = new byte[65536];
                try { while (ch.ReceiveExactly(buffer.AsSpan(0, 1))) { } } catch (IOException) { }
            }) { IsBackground = true }).ToList();
            drains.ForEach(t => t.Start());
            var reader = new ProtocolReader(c.Control);
            var writer = new ProtocolWriter(c.Control);
            var hello = reader.Expect<HelloMessage>();
            // Without LandedSync: rounds (of a pre-copy-only region) end without waiting for their pages to land here.
            writer.WriteWelcome(hello.Capabilities & MigrationProtocol.SupportedCapabilities & ~ProtocolCapabilities.LandedSync);
            // Echo keepalives as a destination does: a pure post-copy source waits for one before it pauses.
            for (var m = reader.Read(); m is not CompleteMessage; m = reader.Read())
            {
                if (m is null or ErrorMessage)
                {
                    // The source ended it before Complete: its statistics say why.
                    c.Abort();
                    return;
                }
                if (m is KeepaliveMessage k) writer.WriteKeepalive(k.Timestamp);
            }
            afterComplete(reader, writer);
            try
            {
                while (reader.Read() is { } m)
                {
                    if (m is ErrorMessage e)
                    {
                        answer = e;
                        break;
                    }
                }
            }
            catch (IOException)
            {
            }
            c.Abort();
        }) { IsBackground = true };
        destination.Start();
        var stats = new OutgoingMigration(guest, transport.Connector, Options() with { Mode = MigrationMode.Postcopy, Verify = false }).Run(cancellationToken: TestContext.Current.CancellationToken);
        Assert.True(destination.Join(TimeSpan.FromSeconds(10)));
        return (stats, answer);
    }

    [Fact]
    public void APushWaitingForBandwidthWhenTheLinkWentIsRetiredWithItAndTheResumedPostcopyFinishes()
    {
        using var guest = NewGuest(16, pagesPerSecond: 2000, pattern: DirtyPattern.Hotset);
        using var transport = new InMemoryTransport();
        bool cut = false;
        var plan = Partition(() => Volatile.Read(ref cut));
        // 64 KiB/s: after its first 1 MiB batch each push thread waits ~16 s for bandwidth.
        var options = Options() with { Mode = MigrationMode.Postcopy, MaxBandwidth = 64 << 10 };
        IncomingMigration? destination = null;
        var resumedIn = TimeSpan.Zero;
        int pausesAfterResume = 0;
        var outcome = Migrate(guest, new FaultInjectingConnector(transport.Connector, plan), transport.Listener, options,
            incoming: new IncomingOptions { PeerTimeout = options.PeerTimeout, MaxMemoryBytes = 1UL << 30, PostcopyRecoveryTimeout = TimeSpan.FromSeconds(30) },
            onIncoming: d => destination = d,
            duringRun: source =>
            {
                SpinWait.SpinUntil(() => source.Progress.Status == MigrationStatus.PostcopyActive, TimeSpan.FromSeconds(10));
                Thread.Sleep(300); // the push threads are waiting for bandwidth now
                Volatile.Write(ref cut, true);
                Assert.True(SpinWait.SpinUntil(() => source.Progress.Status == MigrationStatus.PostcopyPaused, TimeSpan.FromSeconds(10)), "source never paused");
                Assert.True(SpinWait.SpinUntil(() => destination?.PostcopyPaused == true, TimeSpan.FromSeconds(10)), "destination never paused");
                Volatile.Write(ref cut, false);
                var resuming = Stopwatch.StartNew();
                source.ResumePostcopy();
                Assert.True(SpinWait.SpinUntil(() => source.Progress.Status == MigrationStatus.PostcopyActive, TimeSpan.FromSeconds(20)), "the resume did not happen");
                resumedIn = resuming.Elapsed;
                // The cap lifted: the rest goes at once, and a sender of the old link, had it still waited for
                // bandwidth, would wake now and fail on its old channel.
                source.MaxBandwidth = 0;
                var watch = Stopwatch.StartNew();
                while (watch.Elapsed < TimeSpan.FromSeconds(2) && source.Progress.Status != MigrationStatus.Completed)
                {
                    if (source.Progress.Status == MigrationStatus.PostcopyPaused) pausesAfterResume++;
                    Thread.Sleep(10);
                }
            });
        using var _ = outcome.Target;
        Assert.True(outcome.Stats.Status == MigrationStatus.Completed, $"status {outcome.Stats.Status}: {outcome.Stats.Error} / {outcome.DestinationError}");
        Assert.True(outcome.Stats.Verify!.Match, "digests differ after the recovery");
        Assert.Equal(0, pausesAfterResume);
        Assert.Equal(1, outcome.Stats.Postcopy!.Recoveries);
        // Not held by the old senders' waits (5 s each before, then the resume).
        Assert.True(resumedIn < TimeSpan.FromSeconds(4), $"resumed after {resumedIn.TotalSeconds:F1} s");
    }

    [Fact]
    public void AResumedBeforeCommitFailsTheMigrationAndTheGuestRunsOnAtTheSource()
    {
        using var guest = NewGuest(16, pagesPerSecond: 1000);
        // A hostile destination: says it runs the guest before it was handed over (before Ready, even).
        var (stats, answer) = MigrateToScriptedDestination(guest, (_, writer) => writer.WriteResumed(1));
        Assert.Equal(MigrationStatus.Failed, stats.Status);
        Assert.Contains("Resumed before Commit", stats.Error, StringComparison.Ordinal);
        Assert.NotNull(answer);
        Assert.Equal(ProtocolErrorCode.Protocol, answer.Code);
        // Never committed: the guest runs here still.
        Assert.True(guest.IsRunning);
    }

    [Fact]
    public void TheSourceDyingMidPostcopyLosesTheVmOnTheDestinationClearlyAndWithoutHanging()
    {
        using var guest = NewGuest(64, pagesPerSecond: 5000, pattern: DirtyPattern.Hotset);
        using var transport = new InMemoryTransport();
        bool die = false;
        var plan = new FaultPlan();
        plan.Close(FaultTarget.Any, FaultTrigger.When(() => Volatile.Read(ref die)));
        // Slow enough that post-copy is still pushing when the source dies (64 MiB at 16 MB/s: ~4 s).
        var options = Options() with { Mode = MigrationMode.Postcopy, MaxBandwidth = 16 << 20 };
        var incoming = new IncomingOptions { PeerTimeout = options.PeerTimeout, MaxMemoryBytes = 1UL << 30, PostcopyRecoveryTimeout = TimeSpan.FromSeconds(1) };
        var outcome = Migrate(guest, new FaultInjectingConnector(transport.Connector, plan), transport.Listener, options, incoming: incoming,
            duringRun: source =>
            {
                SpinWait.SpinUntil(() => source.Progress.Status == MigrationStatus.PostcopyActive, TimeSpan.FromSeconds(10));
                Thread.Sleep(300);
                Volatile.Write(ref die, true);
                // The source's side of the death: its connection is gone and it never comes back; the operator (or the
                // process's end) gives it up once the destination has.
                SpinWait.SpinUntil(() => source.Progress.Status == MigrationStatus.PostcopyPaused, TimeSpan.FromSeconds(10));
                Thread.Sleep(3000);
                source.Cancel();
            });
        Assert.Equal(MigrationStatus.Failed, outcome.Stats.Status);
        Assert.Contains("the VM ran only on the destination", outcome.Stats.Error, StringComparison.Ordinal);
        Assert.False(guest.IsRunning, "a source that committed to post-copy must never resume");
        var error = Assert.IsType<MigrationException>(outcome.DestinationError);
        Assert.Contains("the VM is lost", error.Message, StringComparison.Ordinal);
        Assert.Contains("did not resume within 1 s", error.Message, StringComparison.Ordinal);
        Assert.Null(outcome.Target);
    }

    [Fact]
    public void ANetworkCutPausesBothSidesAndAResumeOverANewConnectionFinishesWithEveryPageIntact()
    {
        using var guest = NewGuest(64, pagesPerSecond: 5000, pattern: DirtyPattern.Hotset);
        using var transport = new InMemoryTransport();
        bool cut = false;
        var plan = Partition(() => Volatile.Read(ref cut));
        var options = Options() with { Mode = MigrationMode.Postcopy, MaxBandwidth = 16 << 20 };
        IncomingMigration? destination = null;
        bool destinationPaused = false;
        MigrationStatus? destinationBefore = null, destinationPausedStatus = null;
        long toCome = 0;
        int startedCalls = 0;
        var outcome = Migrate(guest, new FaultInjectingConnector(transport.Connector, plan), transport.Listener, options,
            incoming: new IncomingOptions
            {
                PeerTimeout = options.PeerTimeout, MaxMemoryBytes = 1UL << 30,
                PostcopyStarted = _ => Interlocked.Increment(ref startedCalls),
            },
            onIncoming: d => destination = d,
            duringRun: source =>
            {
                SpinWait.SpinUntil(() => source.Progress.Status == MigrationStatus.PostcopyActive, TimeSpan.FromSeconds(10));
                Thread.Sleep(300);
                destinationBefore = destination?.PostcopyStatus;
                Volatile.Write(ref cut, true);
                // Both sides notice the silence within the peer timeout and wait.
                Assert.True(SpinWait.SpinUntil(() => source.Progress.Status == MigrationStatus.PostcopyPaused, TimeSpan.FromSeconds(10)), "source never paused");
                destinationPaused = SpinWait.SpinUntil(() => destination?.PostcopyPaused == true, TimeSpan.FromSeconds(10));
                destinationPausedStatus = destination?.PostcopyStatus;
                toCome = destination?.PostcopyPagesToCome ?? 0;
                Assert.NotNull(source.PausedReason);
                // A resume to a destination that cannot be reached leaves it paused, with the reason.
                source.ResumePostcopy(new RefusingConnector());
                Assert.True(SpinWait.SpinUntil(() => source.PausedReason?.StartsWith("resume failed", StringComparison.Ordinal) == true, TimeSpan.FromSeconds(10)),
                    $"a failed resume must leave the migration paused with its reason, not {source.Progress.Status} / {source.PausedReason}");
                Assert.Equal(MigrationStatus.PostcopyPaused, source.Progress.Status);
                // So does one whose answer accepts what the source did not offer.
                using (var impostor = new OverreachingDestination())
                {
                    source.ResumePostcopy(impostor.Connector);
                    Assert.True(SpinWait.SpinUntil(() => source.PausedReason?.Contains("not offered", StringComparison.Ordinal) == true, TimeSpan.FromSeconds(10)),
                        $"a resume answered out of turn must leave the migration paused with its reason, not {source.Progress.Status} / {source.PausedReason}");
                }
                Assert.Equal(MigrationStatus.PostcopyPaused, source.Progress.Status);
                // The network is back: resume over a new connection.
                Volatile.Write(ref cut, false);
                source.ResumePostcopy();
            });
        using var _ = outcome.Target;
        Assert.True(destinationPaused, "the destination never reported postcopy-paused");
        Assert.True(outcome.Stats.Status == MigrationStatus.Completed, $"status {outcome.Stats.Status}: {outcome.Stats.Error} / {outcome.DestinationError}");
        Assert.True(outcome.Stats.Verify!.Match, "digests differ after the recovery");
        Assert.Equal(1, outcome.Stats.Postcopy!.Recoveries);
        // The figures span both connections: every page left the source at least once, on one or the other.
        var pc = outcome.Stats.Postcopy;
        Assert.True(pc.PushedPages + pc.UrgentPages >= pc.MissingPages, $"pushed {pc.PushedPages} + urgent {pc.UrgentPages} < missing {pc.MissingPages}");
        Assert.True(outcome.Stats.BytesSent >= 64L << 20, $"bytes_sent {outcome.Stats.BytesSent} below the memory that crossed");
        Assert.Equal(1, destination!.PostcopyRecoveries);
        // What the destination's API shows: the guest started here once, memory coming, then paused, then over.
        Assert.Equal(1, startedCalls);
        Assert.Equal(MigrationStatus.PostcopyActive, destinationBefore);
        Assert.Equal(MigrationStatus.PostcopyPaused, destinationPausedStatus);
        Assert.InRange(toCome, 1, pc.MissingPages);
        Assert.Null(destination.PostcopyStatus);
        Assert.Equal(0, destination.PostcopyPagesToCome);
        DestinationChecks.AssertSelfCheckAfterStart(outcome.Target!);
    }

    [Fact]
    public void GuestFaultsWhileAResumeIsHandShakenWaitForItAndAreAskedForAfterIt()
    {
        using var guest = NewGuest(64, pagesPerSecond: 5000, pattern: DirtyPattern.Hotset);
        using var transport = new InMemoryTransport();
        bool cut = false;
        var plan = Partition(() => Volatile.Read(ref cut));
        // A slow push, so that most pages are still missing when the link comes back.
        var options = Options() with { Mode = MigrationMode.Postcopy, MaxBandwidth = 4 << 20 };
        var factory = new RecordingTargetFactory(new InProcessTargetFactory());
        IncomingMigration? destination = null;
        string? resumeFailed = null;
        var outcome = Migrate(guest, new FaultInjectingConnector(transport.Connector, plan), transport.Listener, options, factory,
            incoming: new IncomingOptions { PeerTimeout = options.PeerTimeout, MaxMemoryBytes = 1UL << 30, PostcopyRecoveryTimeout = TimeSpan.FromSeconds(5) },
            onIncoming: d => destination = d,
            duringRun: source =>
            {
                SpinWait.SpinUntil(() => source.Progress.Status == MigrationStatus.PostcopyActive, TimeSpan.FromSeconds(10));
                Volatile.Write(ref cut, true);
                Assert.True(SpinWait.SpinUntil(() => source.Progress.Status == MigrationStatus.PostcopyPaused, TimeSpan.FromSeconds(10)), "source never paused");
                Assert.True(SpinWait.SpinUntil(() => destination?.PostcopyPaused == true, TimeSpan.FromSeconds(10)), "destination never paused");
                var sink = ((RecordingPostcopyTarget)factory.Created.Single()).Sink!;
                ulong pages = guest.Regions[0].Pages;
                // Guest threads fault all along the resume: a new page every 50 µs, from the top of memory down (where
                // the push comes last), until the migration ends.
                bool done = false;
                var faulting = new Thread(() =>
                {
                    var pace = Stopwatch.StartNew();
                    for (ulong p = pages - 1, n = 0; p > 0 && !Volatile.Read(ref done); p--, n++)
                    {
                        sink.PageNeeded(0, p);
                        while (pace.Elapsed.TotalMicroseconds < n * 50) Thread.SpinWait(20);
                    }
                }) { IsBackground = true, Name = "test faults" };
                Volatile.Write(ref cut, false);
                faulting.Start();
                source.ResumePostcopy();
                SpinWait.SpinUntil(() => source.Progress.Status != MigrationStatus.PostcopyPaused
                    || source.PausedReason?.StartsWith("resume failed", StringComparison.Ordinal) == true, TimeSpan.FromSeconds(10));
                resumeFailed = source.Progress.Status == MigrationStatus.PostcopyPaused ? source.PausedReason : null;
                if (resumeFailed is not null) source.Cancel();
                Volatile.Write(ref done, true);
                faulting.Join();
            });
        using var _ = outcome.Target;
        Assert.Null(resumeFailed);
        Assert.True(outcome.Stats.Status == MigrationStatus.Completed, $"status {outcome.Stats.Status}: {outcome.Stats.Error} / {outcome.DestinationError}");
        Assert.True(outcome.Stats.Verify!.Match, "digests differ after the recovery");
        Assert.Equal(1, destination!.PostcopyRecoveries);
    }

    /// <summary>A partition while <paramref name="cut"/> says so: nothing gets through either way, and nobody closes anything.</summary>
    private static FaultPlan Partition(Func<bool> cut)
    {
        var plan = new FaultPlan();
        plan.Add(new Fault(FaultKind.Drop, FaultTarget.Any, FaultTrigger.When(cut), FaultDirection.Send));
        plan.Add(new Fault(FaultKind.Drop, FaultTarget.Any, FaultTrigger.When(cut), FaultDirection.Receive));
        return plan;
    }

    /// <summary>A destination that answers a resuming Hello with a Welcome accepting a capability it was not offered.</summary>
    private sealed class OverreachingDestination : IDisposable
    {
        private readonly InMemoryTransport _transport = new();
        private readonly Thread _thread;

        public OverreachingDestination()
        {
            _thread = new Thread(() =>
            {
                try
                {
                    using var c = _transport.Listener.Accept(CancellationToken.None);
                    var hello = new ProtocolReader(c.Control).Expect<HelloMessage>();
                    new ProtocolWriter(c.Control).WriteWelcome(hello.Capabilities | ProtocolCapabilities.PopulatedMap);
                    new ProtocolReader(c.Control).Read();
                }
                catch (Exception e) when (e is IOException or MigrationException or OperationCanceledException)
                {
                }
            }) { IsBackground = true, Name = "test overreaching destination" };
            _thread.Start();
        }

        public IMigrationConnector Connector => _transport.Connector;

        public void Dispose()
        {
            _transport.Dispose();
            _thread.Join(TimeSpan.FromSeconds(5));
        }
    }

    private sealed class RefusingConnector : IMigrationConnector
    {
        public MigrationConnection Connect(int pageChannels, CancellationToken cancellationToken) =>
            throw new MigrationTransportException("control: cannot connect: connection refused (test)");

        public MigrationConnection Connect(int pageChannels, bool urgentChannel, CancellationToken cancellationToken) =>
            Connect(pageChannels, cancellationToken);
    }
}
