using Ferry.Linux;
using Ferry.Migration.Guest;
using Ferry.Migration.Memory;
using Ferry.Migration.Protocol;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Precopy;

/// <summary>Limits the destination applies to what a source may ask for (the stream is hostile input).</summary>
public sealed record IncomingOptions
{
    /// <summary>Largest total guest memory accepted in a handshake.</summary>
    public ulong MaxMemoryBytes { get; init; } = 64UL << 30;

    /// <summary>The capabilities this receiver honours (tests play an older receiver by leaving some out).</summary>
    internal ProtocolCapabilities Capabilities { get; init; } = MigrationProtocol.SupportedCapabilities;

    /// <summary>Token the source must present, or null for none.</summary>
    public string? Token { get; init; }

    /// <summary>
    /// Largest total of state section data (plus names) accepted before Complete. Each section is bounded at 4 MiB
    /// by the protocol, but their number is not: without this a source could grow the destination's heap without
    /// end. 16 MiB: Firecracker caps a whole snapshot's state at 10 MB, and 200 KVM vCPUs at ~11 KB each take 2.2 MB.
    /// </summary>
    public long MaxStateBytes { get; init; } = 16L << 20;

    /// <summary>
    /// Most state sections accepted before Complete: bounds the per-section objects that empty sections would
    /// otherwise pile up for free. 4096 is a section or more per vCPU for any VM a KVM host runs, plus its devices.
    /// </summary>
    public int MaxStateSections { get; init; } = 4096;

    /// <summary>How long without any byte from the source before it counts as hung.</summary>
    public TimeSpan PeerTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>
    /// Fault in fresh pages with one <c>MADV_POPULATE_WRITE</c> per Normal run before receiving into them
    /// (<see cref="PageBatchReader.PopulateFreshRuns"/>): twice as fast for guest memory on 4 KiB pages, twice as slow
    /// on transparent huge pages, as measured here. Off by default, since guest memory should use huge pages.
    /// </summary>
    public bool PopulateFreshRuns { get; init; }

    /// <summary>
    /// How long a post-copy destination whose connection was lost waits for the source to resume (postcopy-paused)
    /// before it gives the VM up as lost. The guest's threads that need a missing page wait meanwhile; the others run.
    /// </summary>
    public TimeSpan PostcopyRecoveryTimeout { get; init; } = DefaultPostcopyRecoveryTimeout;

    /// <summary>The default of <see cref="PostcopyRecoveryTimeout"/>.</summary>
    public static readonly TimeSpan DefaultPostcopyRecoveryTimeout = TimeSpan.FromSeconds(60);

    /// <summary>
    /// Post-copy: while a guest thread waits for a page, poll the urgent channel for the reply for up to this long,
    /// without sleeping, instead of being woken by it (<see cref="Postcopy.UrgentPoll"/>); zero (the default) sleeps.
    /// It takes a wake-up across CPUs off each fault's path and spends a CPU while the fault lasts: worth it where the
    /// destination has a CPU to spare, not where the guest and the incoming push keep every one busy. Measured on this
    /// 2-core host with both ends on it (docs/BENCH-POSTCOPY.md): fault p50 69-93 against 108-138 µs, but the push
    /// slowed and the guest faulted more (its faulted share up 1-7 points).
    /// </summary>
    public TimeSpan FaultPoll { get; init; }

    /// <summary>Longest <see cref="FaultPoll"/> accepted (a fault's p99 here is under 1 ms).</summary>
    public static readonly TimeSpan MaxFaultPoll = TimeSpan.FromMilliseconds(10);

    /// <summary>
    /// Told, in a sentence, what an operator watching the destination should know while <see cref="IncomingMigration.Run"/>
    /// has not returned yet: the guest started in post-copy, post-copy paused (and why), post-copy resumed. Called on an
    /// engine thread; must return quickly.
    /// </summary>
    public Action<string>? Notice { get; init; }

    /// <summary>
    /// Called once, on the engine's thread, when the guest has started here while post-copy still brings its memory
    /// (<see cref="IncomingMigration.Run"/> returns only once every page landed): from then on it runs here, and
    /// <see cref="IncomingMigration.PostcopyStatus"/> says how its memory is coming. Must return quickly.
    /// </summary>
    public Action<IMigrationTarget>? PostcopyStarted { get; init; }

    /// <summary>
    /// During pre-copy, map in the background every 2 MiB chunk of guest memory in which at least this many of the
    /// 512 pages hold received data (collapsing chunks split to 4 KiB pages back into huge pages), so the
    /// stop-and-copy pass lands in mapped memory (see <see cref="ChunkPrefaulter"/>); 0 turns it off. Default 64 (an
    /// eighth of the chunk). Costs memory the guest was using on the source: up to 8x the data in chunks at the
    /// threshold.
    /// </summary>
    public int PrefaultChunkThreshold { get; init; } = ChunkPrefaulter.DefaultMinHeldPages;
}

/// <summary>
/// The destination side: accept one migration, build the guest from the stream, load state, answer <c>ready</c>,
/// and start the guest on <c>commit</c>. On any failure before <c>commit</c> the half-built guest is disposed and
/// <see cref="Run"/> throws <see cref="MigrationException"/> with the reason.
/// </summary>
/// <remarks>
/// <para><b>Threads</b>: the caller's thread reads the control channel and drives the state machine of
/// <see cref="MigrationProtocol"/> (AwaitHello → Receiving → Draining → AwaitCommit → Done); one receive thread per
/// page channel reads batches straight into the target's memory until that channel's Flush; a timer sends keepalives
/// and fails the migration when the source has been silent on every channel for <see cref="IncomingOptions.PeerTimeout"/>.</para>
/// <para>The guest is started only on Commit, and Commit is the only record after which the source never resumes:
/// at most one copy ever runs.</para>
/// </remarks>
public sealed class IncomingMigration
{
    /// <summary>Scheduler slice of the thread that faults a post-copy's memory in before the switchover (see its use).</summary>
    internal static readonly TimeSpan PopulateSlice = TimeSpan.FromMicroseconds(100);

    private readonly IMigrationListener _listener;
    private readonly IMigrationTargetFactory _factory;
    private readonly IncomingOptions _options;
    private readonly TimeProvider _time;
    // Cancelled on the first failure: wakes every wait.
    private readonly CancellationTokenSource _abort = new();
    private readonly Lock _gate = new();

    private int _started;
    private string? _failure;
    private MigrationConnection? _connection;
    private ProtocolWriter? _control;
    private volatile bool _keepalivesOn;
    private volatile bool _done;
    // Timestamp of the last record from the source on any channel.
    private long _lastHeard;
    // Whether page-channel Keepalives are echoed on the control channel (capability LandedSync).
    private volatile bool _landedSync;
    // Whether a marker's pass still being made durable is said every keepalive tick (capability LandedProgress).
    private volatile bool _landedProgress;
    // The page channels' receivers, for the keepalive tick to see which of them is making a pass durable.
    private volatile Receiver[] _landing = [];
    // Faults in used chunks during pre-copy; receivers stop it when the final pass begins.
    private ChunkPrefaulter? _prefaulter;
    // Aborts the control channel if the source does not close after a receiver's Error (see FailFromReceiver).
    private ITimer? _backstop;
    // Post-copy was negotiated: page channels go on after the switchover Flush (the push), and the urgent channel exists.
    private volatile bool _postcopyNegotiated;
    // Cancelled by the first pre-copy page batch on any channel.
    private readonly CancellationTokenSource _pagesArrived = new();
    // Post-copy is over (every page landed, PostcopyDone sent): the source closing its channels is the normal end.
    private volatile bool _postcopyOver;
    // Post-copy recovery: the link is down (set by whichever thread saw it first), and why.
    private readonly ManualResetEventSlim _linkLost = new();
    private volatile bool _linkDown;
    private string? _linkReason;
    private HelloMessage? _hello;
    private ReceivedPageMap? _receivedMap;
    private IMigrationTarget? _target;
    private readonly List<Receiver> _retired = [];
    private volatile bool _paused;

    /// <summary>True while post-copy waits for the source to resume over a new connection (postcopy-paused).</summary>
    public bool PostcopyPaused => _paused;

    /// <summary>Connections lost and recovered during post-copy; valid after <see cref="Run"/>.</summary>
    public int PostcopyRecoveries { get; private set; }

    public IncomingMigration(IMigrationListener listener, IMigrationTargetFactory factory, IncomingOptions options, TimeProvider? time = null)
    {
        ArgumentNullException.ThrowIfNull(listener);
        ArgumentNullException.ThrowIfNull(factory);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(options.PeerTimeout, TimeSpan.Zero);
        ArgumentOutOfRangeException.ThrowIfNegative(options.MaxStateBytes);
        ArgumentOutOfRangeException.ThrowIfNegative(options.MaxStateSections);
        ArgumentOutOfRangeException.ThrowIfNegative(options.PrefaultChunkThreshold);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(options.PrefaultChunkThreshold, ChunkPrefaulter.ChunkPages);
        ArgumentOutOfRangeException.ThrowIfLessThan(options.FaultPoll, TimeSpan.Zero);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(options.FaultPoll, IncomingOptions.MaxFaultPoll);
        _listener = listener;
        _factory = factory;
        _options = options;
        _time = time ?? TimeProvider.System;
    }

    /// <summary>Pages received with data (all rounds); valid after <see cref="Run"/>.</summary>
    public long NormalPages { get; private set; }

    /// <summary>Pages received as zero runs (all rounds); valid after <see cref="Run"/>.</summary>
    public long ZeroPages { get; private set; }

    /// <summary>Chunks of guest memory faulted in ahead of the final pass (<see cref="IncomingOptions.PrefaultChunkThreshold"/>); valid after <see cref="Run"/>.</summary>
    public int ChunksPrefaulted { get; private set; }

    /// <summary>Which destination pages hold received data (how Zero runs were applied); set once the handshake succeeded.</summary>
    public ReceivedPageMap? ReceivedPages { get; private set; }

    /// <summary>Receive one migration; returns the started guest after <c>commit</c>.</summary>
    public IMigrationTarget Run(CancellationToken cancellationToken = default)
    {
        if (Interlocked.Exchange(ref _started, 1) != 0)
            throw new InvalidOperationException("an IncomingMigration runs once; create a new one to receive again");
        _connection = _listener.Accept(cancellationToken);
        using var registration = cancellationToken.Register(static s => ((IncomingMigration)s!).Fail("cancelled on the destination", null), this);
        IMigrationTarget? target = null;
        Receiver[] receivers = [];
        ChunkPrefaulter? prefaulter = null;
        ITimer? keepalive = null;
        ProtocolReader? reader = null;
        bool started = false;
        LatencyPriority.Raised switchoverPriority = default;
        try
        {
            _control = new ProtocolWriter(_connection.Control);
            reader = new ProtocolReader(_connection.Control);
            Heard();
            // At most a second apart: a pass being made durable is said to be on its way every tick (LandedProgress),
            // and the source's own peer timeout, which bounds its wait for that, may be shorter than ours.
            var tick = TimeSpan.FromTicks(Math.Min(_options.PeerTimeout.Ticks / 3, TimeSpan.TicksPerSecond));
            keepalive = _time.CreateTimer(static s => ((IncomingMigration)s!).OnKeepaliveTick(), this, tick, tick);

            // AwaitHello: nothing is allocated for the guest before the handshake is fully validated.
            var hello = ReadHello(reader);
            _hello = hello;
            var decision = MigrationProtocol.Evaluate(hello, _options.MaxMemoryBytes, _options.Token, _connection.Pages.Count, _options.Capabilities);
            if (!decision.Accepted) Refuse(decision.Reason!);

            try
            {
                target = _factory.Create(hello.VmId, hello.Regions);
            }
            catch (Exception e) when (e is InvalidDataException or IOException)
            {
                // This host cannot provide that guest (its memory, its devices, its disk, as the factory said why): a
                // refusal, which the source reports as such and runs on, not a fault of this side's.
                Refuse(e.Message);
                throw; // not reached: Refuse throws
            }
            CheckLayout(target.Regions, hello.Regions);
            if ((decision.Capabilities & ProtocolCapabilities.Postcopy) != 0)
            {
                if (target is not IPostcopyTarget)
                    Refuse("this destination's guest cannot run before its memory has arrived (no post-copy)");
                if ((decision.Capabilities & ProtocolCapabilities.UrgentChannel) == 0 || _connection.Urgent is null)
                    Refuse("post-copy needs the urgent channel, and the connection has none");
                _postcopyNegotiated = true;
            }
            _landedSync = (decision.Capabilities & ProtocolCapabilities.LandedSync) != 0;
            _landedProgress = _landedSync && (decision.Capabilities & ProtocolCapabilities.LandedProgress) != 0;
            _control.WriteWelcome(decision.Capabilities);
            _keepalivesOn = true;
            if ((decision.Capabilities & ProtocolCapabilities.Shape) != 0) ReadShape(reader, target);

            // Receiving: page channels on their own threads, control here.
            receivers = new Receiver[_connection.Pages.Count];
            var received = new ReceivedPageMap(target.Regions, target.TransparentHugePages);
            ReceivedPages = received;
            _receivedMap = received;
            _target = target;
            if (_options.PrefaultChunkThreshold > 0)
            {
                prefaulter = new ChunkPrefaulter(target.Regions, received, _options.PrefaultChunkThreshold);
                _prefaulter = prefaulter;
            }
            // A verified migration that may end in post-copy digests the destination page by page: pre-copy pages as
            // they land (by the one receiver each page's channel has), the missing ones as post-copy installs them.
            // Nothing is left to read at the switchover, while the guest waits to start.
            // So does a verified pre-copy that negotiated VerifyPageHashes: its digest is then ready at Complete.
            bool pageHashVerify = (decision.Capabilities & ProtocolCapabilities.VerifyPageHashes) != 0;
            var pageHashes = (_postcopyNegotiated || pageHashVerify) && (decision.Capabilities & ProtocolCapabilities.Verify) != 0
                ? new Postcopy.PageHashDigest(target.Regions) : null;
            for (int i = 0; i < receivers.Length; i++)
            {
                receivers[i] = new Receiver(this, _connection.Pages[i], (i, _connection.Pages.Count), target.Regions, received);
                receivers[i].Reader.LandedDigest = pageHashes;
                receivers[i].Start();
            }
            _landing = receivers;
            prefaulter?.Start();
            Postcopy.PostcopyIncoming? prepared = null;
            // Post-copy's missing pages, per region, as the MissingPages records say; and the target's own copy, which
            // it clears as pages land. Allocated (and backed) now: built from the records inside the downtime, the
            // first generic instantiations alone cost 3 ms of JIT there.
            DirtyBitmap[]? missingMap = null, targetMissing = null;
            if (_postcopyNegotiated)
            {
                missingMap = NewPageMaps(target.Regions);
                targetMissing = NewPageMaps(target.Regions);
                // Everything post-copy needs on this side is built now, not at Complete inside the downtime: the
                // missing-page bookkeeping and the urgent channel's receive thread (which installs nothing before
                // the switchover attaches the guest's memory: a page the source sends right after Complete waits
                // for that, and one with no switchover after it fails the migration).
                prepared = new Postcopy.PostcopyIncoming(target.Regions, RequestPage, pageHashes, received);
                _prepared = prepared;
                foreach (var r in receivers) r.Reader.PreparePostcopy();
                var urgent = new Receiver(this, _connection.Urgent!, null, target.Regions, received);
                urgent.Reader.PreparePostcopy();
                urgent.Reader.Postcopy = prepared;
                _urgentReceiver = urgent;
                urgent.Start();
            }
            SwitchoverWarmup.Destination(target);
            if (_postcopyNegotiated)
            {
                SwitchoverWarmup.Postcopy(target);
                // Before this thread reads the control channel: a pure post-copy source pauses only once its Keepalive
                // is echoed, i.e. after this. Bounded well inside the peer timeout, which silence here would trip, and
                // cut short by the first pre-copy page (a hybrid source's Complete must not wait for it).
                // At normal weight with a short slice (a thread of its own, so that the slice is not the switchover's):
                // it takes its share of a busy host and gives the CPU back every 100 µs. Niced 10, the demo's populate
                // (the source's harts busy on the same two cores) reached its budget with 21-65 % of the pages named
                // still untouched, and the bulk receivers then paid their first touch (~14 µs per 4 KiB on this host,
                // docs/BENCH-POSTCOPY.md) beside the running guest. `./ferry demo --mode postcopy --dirty-rate 1000000`,
                // two sets of alternated pairs (10 with a 300 µs slice, 8 with this one): post-copy median 403 / 388 ms
                // against 245 / 266, harts blocked 394 / 390 ms against 237 / 251, while the source guest's largest
                // stall from the migration's start to the pause stayed 11.0 / 12.1 ms against 13.5 / 12.1 (every
                // populate finished, in 1.1-2.0 s).
                // A pure post-copy source names the pages it holds data in first (PopulatedMap): only those need faulting in.
                var holdsData = (decision.Capabilities & ProtocolCapabilities.PopulatedMap) != 0 ? ReadPopulatedMap(reader, target.Regions) : null;
                if (TraceLog.Enabled) TraceLog.Mark("destination: populating memory");
                var postcopyTarget = (IPostcopyTarget)target;
                var token = _pagesArrived.Token;
                Exception? failure = null;
                var populate = new Thread(() =>
                {
                    Ferry.Linux.Libc.SetCurrentThreadSlice(PopulateSlice);
                    try
                    {
                        postcopyTarget.PreparePostcopy(_options.PeerTimeout / 4, holdsData, token);
                    }
                    catch (Exception e)
                    {
                        failure = e;
                    }
                }) { IsBackground = true, Name = "ferry-populate" };
                populate.Start();
                populate.Join();
                if (failure is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failure);
                if (TraceLog.Enabled) TraceLog.Mark("destination: memory populated");
            }
            // From here to Resumed this thread's wake-ups are the guest's downtime (see LatencyPriority): it reads
            // Complete the moment the source sends it, and is not held by the harts it starts before it says Resumed.
            switchoverPriority = LatencyPriority.Raise();
            var sections = new List<StateSection>();
            // Set by the first MissingPages record.
            DirtyBitmap[]? missing = null;
            long stateBytes = 0;
            CompleteMessage complete;
            while (true)
            {
                var m = Next(reader, "Complete");
                if (m is StateSectionMessage s)
                {
                    stateBytes += s.Section.Name.Length + s.Section.Data.Length;
                    if (sections.Count == _options.MaxStateSections || stateBytes > _options.MaxStateBytes)
                        throw new MigrationProtocolException($"state sections exceed this receiver's limit of {_options.MaxStateSections} sections and {_options.MaxStateBytes} bytes (at '{s.Section.Name}')");
                    sections.Add(s.Section);
                }
                else if (m is CompleteMessage c)
                {
                    complete = c;
                    break;
                }
                else if (m is MissingPagesMessage mp && _postcopyNegotiated)
                {
                    mp.Validate(target.Regions);
                    missing = missingMap!;
                    foreach (var (first, count) in mp.Runs) missing[mp.Region].SetRange(first, first + count);
                }
                else throw ProtocolReader.Unexpected(m, "StateSection or Complete");
            }

            // Draining: every page channel must have delivered everything up to the switchover Flush. When the last
            // Flush arrived relative to Complete is reported in Ready, so the source can count the time until the
            // destination had every final page as final-page time, not device-state time.
            long completeRead = _time.GetTimestamp();
            TraceLog.Mark("destination: complete read");
            // The source is paused: nothing may compete with the final pages from here (a receiver usually said so
            // already, on the first batch of the final pass).
            prefaulter?.RequestStop();
            // Bounded: the source sends Complete only after every Flush was handed to its page channels, so what is
            // left is what sits in socket buffers (a few MiB). A source that keeps the page channels alive with
            // Keepalives but never flushes must not hold the destination forever.
            using (var drainDeadline = _time.CreateTimer(static s => ((IncomingMigration)s!).Fail(
                       $"page channels did not deliver their Flush within {((IncomingMigration)s!)._options.PeerTimeout.TotalSeconds:F1} s of Complete", null), this, _options.PeerTimeout, Timeout.InfiniteTimeSpan))
            {
                foreach (var r in receivers)
                {
                    if (complete.FlushSequence == 0)
                    {
                        // Pure post-copy: nothing was sent before the switchover, so no Flush comes either.
                        if ((complete.Flags & CompleteFlags.Postcopy) == 0)
                            throw new MigrationProtocolException("Complete with Flush sequence 0 (no page sent) is for post-copy only");
                        if (!r.NoSwitchoverFlush())
                            throw new MigrationProtocolException($"{r.Name}: pages arrived before a Complete that says none were sent");
                        continue;
                    }
                    r.Flushed.Wait(_abort.Token);
                    if (r.FlushSequence != complete.FlushSequence)
                        throw new MigrationProtocolException($"{r.Name}: Flush {r.FlushSequence} does not match Complete's {complete.FlushSequence}");
                }
            }
            // The prefaulter is not joined here: a collapse it began before the stop may still run, and its end is not
            // worth waiting for inside the downtime (the memory stays mapped either way: on success the guest owns
            // it). It is joined before this method returns or unmaps anything.
            long lastFlush = long.MinValue;
            foreach (var r in receivers) lastFlush = Math.Max(lastFlush, r.FlushedAt);
            int flushLagUs = SignedMicros(completeRead, lastFlush);
            foreach (var r in receivers)
            {
                NormalPages += r.NormalPages;
                ZeroPages += r.ZeroPages;
            }

            bool postcopy = (complete.Flags & CompleteFlags.Postcopy) != 0;
            if (postcopy && !_postcopyNegotiated)
                throw new MigrationProtocolException("Complete asks for post-copy, which the handshake did not negotiate");
            if (!postcopy && missing is not null)
                throw new MigrationProtocolException("MissingPages records before a Complete that is not post-copy");
            Postcopy.PostcopyIncoming? incoming = null;
            DirtyBitmap[]? stillMissing = null;
            if (postcopy)
            {
                missing = missingMap!;
                // The target gets its own copy: the engine's is cleared as pages land.
                stillMissing = targetMissing!;
                for (int r = 0; r < missing.Length; r++) stillMissing[r].OrFrom(missing[r]);
                incoming = prepared!;
                incoming.Begin(missing, (complete.Flags & CompleteFlags.VerifyRequested) != 0);
                var memory = ((IPostcopyTarget)target).BeginPostcopy(stillMissing, incoming);
                _postcopyMemory = memory;
                incoming.Attach(memory);
                foreach (var r in receivers) r.Reader.Postcopy = incoming;
                _currentReceivers = receivers;
                PostcopyMissingPages = incoming.Missing;
            }

            long loadStart = _time.GetTimestamp();
            try
            {
                target.LoadState(sections);
            }
            catch (InvalidDataException e)
            {
                throw new MigrationException($"device state rejected: {e.Message}", e);
            }
            uint loadUs = Micros(loadStart);
            TraceLog.Mark("destination: state loaded");
            UInt128? digest = null;
            uint digestUs = 0;
            if ((complete.Flags & CompleteFlags.VerifyRequested) != 0)
            {
                if ((decision.Capabilities & ProtocolCapabilities.Verify) == 0)
                    throw new MigrationProtocolException("Complete asks for verification, which the handshake did not negotiate");
                long d0 = _time.GetTimestamp();
                // Post-copy: the pages held now were hashed as they landed (any that were not are hashed now, before
                // the guest runs); the rest are as post-copy installs them.
                if (incoming is not null) incoming.Digest!.HashMemory(stillMissing, onlyUnrecorded: true);
                else if (pageHashVerify && pageHashes is not null)
                {
                    pageHashes.HashMemory(onlyUnrecorded: true);
                    digest = pageHashes.Compute();
                }
                else digest = VerifyDigest.Compute(target.Regions);
                digestUs = Micros(d0);
            }
            _control.WriteReady(digestUs, loadUs, digest, flushLagUs);
            TraceLog.Mark("destination: ready sent");

            // AwaitCommit, bounded: a source that keeps the link alive but never decides must not hold us forever.
            using (var commitDeadline = _time.CreateTimer(static s => ((IncomingMigration)s!).Fail(
                       $"no Commit within {((IncomingMigration)s!)._options.PeerTimeout.TotalSeconds:F1} s of Ready", null), this, _options.PeerTimeout, Timeout.InfiniteTimeSpan))
            {
                var m = Next(reader, "Commit");
                if (m is not CommitMessage) throw ProtocolReader.Unexpected(m, "Commit");
            }
            TraceLog.Mark("destination: commit read");
            // Commit was read: the source is committed and will never resume, so the guest must start here even if
            // the deadline or a cancel raced with its arrival (refusing now would lose the VM on both sides).
            lock (_gate)
            {
                // In post-copy a failure still matters after Commit (pages are still moving): _done comes at its end.
                if (incoming is null) _done = true;
                else _postcopyCommitted = true;
            }

            long startAt = _time.GetTimestamp();
            target.Start();
            started = true;
            try
            {
                _control.WriteResumed(Micros(startAt));
                TraceLog.Mark("destination: guest started, resumed sent");
            }
            catch (Exception e) when (e is MigrationTransportException or ObjectDisposedException)
            {
                // The guest runs here now; the source is committed and needs no answer to stay stopped.
            }
            switchoverPriority.Dispose();
            switchoverPriority = default;
            if (incoming is not null)
            {
                _postcopyIncoming = incoming;
                _options.Notice?.Invoke($"the guest runs here; {incoming.Missing} of its pages follow (post-copy)");
                _options.PostcopyStarted?.Invoke(target);
                RunPostcopy(incoming, reader);
            }
            return target;
        }
        catch (Exception e) when (started && _postcopyCommitted && !_done)
        {
            // Post-copy failed with the guest running here and part of its memory still at the source: it cannot go on.
            string reason = FailureReason(e);
            Fail(reason, e);
            _postcopyMemory?.Abort($"VM lost: {reason}");
            _connection.Abort();
            // The guest cannot run without the pages it lacks: discard it (its threads waiting for pages are released
            // first by the abort above). Unless a receive thread is still inside its memory (only a transport that
            // ignores Abort leaves one): unmapped under it, it would take the process down; the mapping is leaked.
            bool receiversOut = true;
            foreach (var r in receivers) receiversOut &= r.Join();
            foreach (var r in _retired) receiversOut &= r.Join();
            foreach (var r in _currentReceivers) receiversOut &= r.Join();
            receiversOut &= _urgentReceiver?.Join() ?? true;
            if (receiversOut) target?.Dispose();
            throw new MigrationException($"post-copy failed after the guest started here: {reason}; the VM is lost", e);
        }
        catch (Exception e) when (!started)
        {
            string reason = FailureReason(e);
            // After a Refuse or an Error, wait for the source to read it and close before tearing down.
            if (Fail(reason, e) && (e is RefusedException || TellSource(reason, e)) && reader is not null) AwaitSourceClose(reader);
            _connection.Abort();
            bool receiversOut = _urgentReceiver?.Join() ?? true;
            foreach (var r in receivers) receiversOut &= r.Join();
            prefaulter?.Dispose(); // out of guest memory before it is unmapped
            // A receive thread still inside guest memory would fault on an unmapped page and take the process down:
            // leak the mapping instead (only a transport that ignores Abort can get here).
            if (receiversOut) target?.Dispose();
            if (e is MigrationException && e.Message == reason) throw;
            throw new MigrationException(reason, e);
        }
        finally
        {
            switchoverPriority.Dispose();
            // Once the guest runs here, nothing below is urgent, and none of it may take a core from a hart (see Lower).
            var teardown = started ? LatencyPriority.Lower() : default;
            _done = true;
            keepalive?.Dispose();
            foreach (var r in receivers) r.Join();
            foreach (var r in _retired) r.Join();
            foreach (var r in _currentReceivers) r.Join();
            _urgentReceiver?.Join();
            if (prefaulter is not null)
            {
                prefaulter.Dispose();
                ChunksPrefaulted = prefaulter.ChunksPrefaulted;
            }
            // After the joins: a failing receive thread arms the backstop, so disposing it earlier could miss one.
            _backstop?.Dispose();
            _connection.Dispose();
            teardown.Dispose();
        }
    }

    /// <summary>
    /// While the guest runs here and post-copy still brings its memory: <see cref="MigrationStatus.PostcopyActive"/>,
    /// or <see cref="MigrationStatus.PostcopyPaused"/> while the connection is lost; null before the guest started here
    /// and once every page landed (or the VM was lost). Any thread.
    /// </summary>
    public MigrationStatus? PostcopyStatus =>
        _postcopyIncoming is null || _postcopyOver || _abort.IsCancellationRequested ? null
        : _linkDown || _paused ? MigrationStatus.PostcopyPaused : MigrationStatus.PostcopyActive;

    /// <summary>Pages the guest here still lacks, while <see cref="PostcopyStatus"/> is set; 0 otherwise.</summary>
    public long PostcopyPagesToCome => PostcopyStatus is null ? 0 : _postcopyIncoming!.Missing;

    private volatile Postcopy.PostcopyIncoming? _postcopyIncoming;
    // Post-copy's receiving side, built at the handshake (installs wait for the switchover to attach memory).
    private volatile Postcopy.PostcopyIncoming? _prepared;

    /// <summary>Pages missing when the guest started here (post-copy); valid after <see cref="Run"/>.</summary>
    public long PostcopyMissingPages { get; private set; }

    /// <summary>The post-copy phase's figures from this side; null unless the migration ended in post-copy.</summary>
    public PostcopyDoneMessage? PostcopyResult { get; private set; }

    private IPostcopyMemory? _postcopyMemory;
    private Receiver? _urgentReceiver;
    private Receiver[] _currentReceivers = [];
    private bool _postcopyCommitted;

    /// <summary>Urgent records (fault replies) the current urgent receiver found while polling (<see cref="IncomingOptions.FaultPoll"/>).</summary>
    internal long UrgentFoundPolling => _urgentReceiver?.FoundPolling ?? 0;

    /// <summary>Times a page request woke the current urgent receiver to poll for its reply.</summary>
    internal long UrgentNudges => _urgentReceiver?.Nudges ?? 0;

    /// <summary>A guest thread waits for a page: ask the source (any thread; the control writer serialises records).</summary>
    private void RequestPage(int region, ulong page, uint count)
    {
        try
        {
            _control!.WritePageRequestNoAlloc((ushort)region, page, count);
            _urgentReceiver?.RequestSent();
        }
        catch (Exception e) when (e is MigrationTransportException or ObjectDisposedException)
        {
            // The connection broke: the failure is seen (and reported) by the thread reading it.
        }
    }

    /// <summary>
    /// The post-copy phase, the guest running: the control channel is read on a thread of its own (keepalives, or the
    /// source's Error), while this thread waits for the last missing page, then reports PostcopyDone and ends post-copy.
    /// A lost connection pauses post-copy until the source resumes over a new one (or the recovery timeout gives the VM
    /// up). Throws if the VM is lost.
    /// </summary>
    private void RunPostcopy(Postcopy.PostcopyIncoming incoming, ProtocolReader reader)
    {
        var control = StartPostcopyControl(reader);
        while (WaitHandle.WaitAny([incoming.AllLanded.WaitHandle, _linkLost.WaitHandle, _abort.Token.WaitHandle]) != 0
               && !incoming.AllLanded.IsSet)
        {
            if (_abort.IsCancellationRequested) throw new MigrationException(_failure ?? "post-copy failed");
            control.Join(TimeSpan.FromSeconds(5));
            control = Recover(incoming);
        }
        if (_abort.IsCancellationRequested) throw new MigrationException(_failure ?? "post-copy failed");
        _postcopyOver = true;
        var memory = incoming.Memory!;
        var (p50, p99, max) = incoming.Latency();
        long working = memory.WorkingSetPages;
        var done = new PostcopyDoneMessage(
            (uint)Math.Min(uint.MaxValue, incoming.Faults), p50, p99, max,
            (ulong)(memory.BlockedTicks * 1_000_000 / System.Diagnostics.Stopwatch.Frequency),
            working < 0 ? ulong.MaxValue : (ulong)working,
            (ulong)incoming.Installed, (ulong)incoming.Duplicates,
            incoming.Digest?.Compute());
        PostcopyResult = done;
        TraceLog.Mark("destination: every page landed");
        try
        {
            _control!.Write(done);
        }
        catch (Exception e) when (e is MigrationTransportException or ObjectDisposedException)
        {
            // Every page is here: the guest is whole whatever the source hears. It learns from the closed link.
        }
        lock (_gate) _done = true;
        // The source closes once it has read PostcopyDone; wait for that (bounded), then end post-copy here.
        control.Join(TimeSpan.FromSeconds(2));
        memory.Dispose();
    }

    private Thread StartPostcopyControl(ProtocolReader reader)
    {
        var control = new Thread(() =>
        {
            try
            {
                while (true)
                {
                    var m = reader.Read();
                    Heard();
                    switch (m)
                    {
                        case null:
                            if (!_postcopyOver && !OnLinkLost("source closed the control channel during post-copy"))
                                Fail("source closed the control channel during post-copy", null);
                            return;
                        case KeepaliveMessage k:
                            Echo(k.Timestamp);
                            break;
                        case ErrorMessage error:
                            Fail($"source reported {error.Code}: {error.Message}", null);
                            return;
                        default:
                            Fail($"source sent {m.Kind} during post-copy", null);
                            return;
                    }
                }
            }
            catch (Exception e)
            {
                if (_postcopyOver) return;
                string why = e is MigrationException or IOException ? $"control channel: {e.Message}" : e.ToString();
                if (e is not MigrationTransportException || !OnLinkLost(why)) Fail(why, null);
            }
        }) { IsBackground = true, Name = "ferry-postcopy-control" };
        control.Start();
        return control;
    }

    /// <summary>
    /// The connection was lost during post-copy (any thread): abort what is left of it and let the post-copy loop wait
    /// for a new one. False when not in post-copy (the caller fails the migration as before).
    /// </summary>
    private bool OnLinkLost(string reason)
    {
        MigrationConnection? connection;
        lock (_gate)
        {
            if (!_postcopyCommitted || _done || _postcopyOver || _failure is not null) return false;
            if (_linkDown) return true;
            _linkDown = true;
            _linkReason = reason;
            connection = _connection;
        }
        connection?.Abort();
        _linkLost.Set();
        return true;
    }

    /// <summary>
    /// postcopy-paused: wait (at most the recovery timeout) for the source to connect again with a resuming Hello for
    /// this VM, then tell it what is still missing, ask again for what the guest waits for, and go on. Throws (the VM
    /// is lost) when no source comes back in time.
    /// </summary>
    private Thread Recover(Postcopy.PostcopyIncoming incoming)
    {
        _paused = true;
        string lostBecause = _linkReason ?? "connection lost";
        _options.Notice?.Invoke($"post-copy paused: {lostBecause}; {incoming.Missing} pages missing; waiting up to {_options.PostcopyRecoveryTimeout.TotalSeconds:F0} s for the source to resume");
        foreach (var r in _currentReceivers) _retired.Add(r);
        if (_urgentReceiver is { } u) _retired.Add(u);
        foreach (var r in _retired) r.Join();
        _connection?.Dispose();
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(_abort.Token);
        deadline.CancelAfter(_options.PostcopyRecoveryTimeout);
        while (true)
        {
            MigrationConnection connection;
            try
            {
                connection = _listener.Accept(deadline.Token);
            }
            catch (OperationCanceledException)
            {
                string why = $"post-copy paused ({lostBecause}) and the source did not resume within {_options.PostcopyRecoveryTimeout.TotalSeconds:F0} s";
                Fail(why, null);
                throw new MigrationException(why);
            }
            catch (MigrationTransportException)
            {
                continue; // a stray or broken group; keep waiting
            }
            var writer = new ProtocolWriter(connection.Control);
            var reader = new ProtocolReader(connection.Control);
            try
            {
                using var handshake = _time.CreateTimer(static c => ((IMigrationChannel)c!).Abort(), connection.Control, _options.PeerTimeout, Timeout.InfiniteTimeSpan);
                var m = reader.Read() ?? throw new MigrationTransportException("closed before Hello");
                if (m is not HelloMessage hello) throw new MigrationProtocolException($"first record was {m.Kind}, expected Hello");
                string? refusal = null;
                if ((hello.Capabilities & ProtocolCapabilities.PostcopyResume) == 0) refusal = "a post-copy is paused here; only its source may resume it";
                else if (hello.VmId != _hello!.VmId) refusal = $"VM {hello.VmId} is not the one paused here ({_hello.VmId})";
                else if (!hello.Regions.SequenceEqual(_hello.Regions)) refusal = "the memory layout differs from the paused VM's";
                var decision = MigrationProtocol.Evaluate(hello, _options.MaxMemoryBytes, _options.Token, connection.Pages.Count, _options.Capabilities);
                refusal ??= decision.Accepted ? null : decision.Reason;
                if (refusal is null && connection.Urgent is null) refusal = "post-copy needs the urgent channel, and the connection has none";
                if (refusal is not null)
                {
                    writer.WriteRefuse(refusal);
                    connection.Abort();
                    connection.Dispose();
                    continue;
                }
                handshake.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
                // The new control writer is published for page requests only once ResumeReady is out (below): the
                // source reads Welcome, MissingPages and ResumeReady, and a guest thread's fault meanwhile would have
                // put a PageRequest among them, which fails the resume. A fault until then is written to the old,
                // dead writer and asked for again after ResumeReady (RequestPendingAgain).
                lock (_gate)
                {
                    _connection = connection;
                    _linkLost.Reset();
                    _linkDown = false;
                    _linkReason = null;
                }
                Heard();
                writer.WriteWelcome(decision.Capabilities);
                var receivers = new Receiver[connection.Pages.Count];
                for (int i = 0; i < receivers.Length; i++)
                {
                    receivers[i] = new Receiver(this, connection.Pages[i], null, _target!.Regions, _receivedMap!, resumed: true);
                    receivers[i].Reader.Postcopy = incoming;
                    receivers[i].Start();
                }
                _currentReceivers = receivers;
                var urgent = new Receiver(this, connection.Urgent!, null, _target!.Regions, _receivedMap!);
                urgent.Reader.Postcopy = incoming;
                _urgentReceiver = urgent;
                urgent.Start();
                var runs = new List<(ulong, uint)>();
                var map = incoming.MissingMap;
                for (int r = 0; r < map.Count; r++)
                {
                    foreach (var run in map[r].Runs(0, map[r].BitCount, uint.MaxValue))
                    {
                        runs.Add((run.Start, (uint)run.Length));
                        if (runs.Count == MigrationProtocol.MaxMissingRuns)
                        {
                            writer.Write(new MissingPagesMessage((ushort)r, [.. runs]));
                            runs.Clear();
                        }
                    }
                    if (runs.Count > 0) writer.Write(new MissingPagesMessage((ushort)r, [.. runs]));
                    runs.Clear();
                }
                writer.Write(new ResumeReadyMessage((ulong)incoming.Missing));
                lock (_gate) _control = writer;
                incoming.RequestPendingAgain();
                PostcopyRecoveries++;
                _paused = false;
                _options.Notice?.Invoke($"post-copy resumed; {incoming.Missing} pages to come");
                return StartPostcopyControl(reader);
            }
            catch (Exception e) when (e is MigrationException or IOException)
            {
                // A resume that broke half-way: the link is down again; wait for the next one. The receivers it started
                // end on the abort, and are waited for: one failing late would count against the next link.
                connection.Abort();
                lock (_gate)
                {
                    _linkDown = true;
                    _linkReason = e.Message;
                }
                foreach (var r in _currentReceivers) r.Join();
                _urgentReceiver?.Join();
                continue;
            }
        }
    }

    private HelloMessage ReadHello(ProtocolReader reader)
    {
        try
        {
            var m = reader.Read() ?? throw new MigrationTransportException("source closed the control channel before Hello");
            Heard();
            if (m is HelloMessage hello) return hello;
            throw new MigrationProtocolException($"first record was {m.Kind}, expected Hello");
        }
        catch (MigrationProtocolException e)
        {
            // Wrong magic, unsupported version, malformed layout: say why before any memory moves.
            Refuse(e.Message);
            throw; // not reached
        }
    }

    private void Refuse(string reason)
    {
        try
        {
            _control!.WriteRefuse(reason);
        }
        catch (Exception e) when (e is MigrationTransportException or ObjectDisposedException)
        {
            // The source is gone; it needs no reason.
        }
        throw new RefusedException($"handshake refused: {reason}");
    }

    /// <summary>The next control record that is not a Keepalive (null = clean close is an error here).</summary>
    private ControlMessage Next(ProtocolReader reader, string expected)
    {
        while (true)
        {
            var m = reader.Read() ?? throw new MigrationTransportException($"source closed the control channel while {expected} was expected");
            Heard();
            if (m is KeepaliveMessage k)
            {
                Echo(k.Timestamp);
                continue;
            }
            if (m is CancelMessage or ErrorMessage) throw ProtocolReader.Unexpected(m, expected);
            return m;
        }
    }

    /// <summary>
    /// The source's shape (capability Shape): the first record after Welcome, one StateSection within this receiver's
    /// bounds, handed to a target that builds ahead in it (<see cref="IShapedMigrationTarget"/>), before any page is read.
    /// </summary>
    private void ReadShape(ProtocolReader reader, IMigrationTarget target)
    {
        if (Next(reader, "the source's shape") is not StateSectionMessage { Section: var shape })
            throw new MigrationProtocolException("the source's shape (a StateSection) was due first after Welcome");
        if (shape.Name.Length + shape.Data.Length > _options.MaxStateBytes)
            throw new MigrationProtocolException($"the source's shape '{shape.Name}' exceeds this receiver's limit of {_options.MaxStateBytes} state bytes");
        if (target is not IShapedMigrationTarget shaped) return;
        try
        {
            shaped.Reshape(shape);
        }
        catch (InvalidDataException e)
        {
            throw new MigrationProtocolException($"the source's shape: {e.Message}", e);
        }
    }

    /// <summary>
    /// The source's populated map (PopulatedPages records up to the one flagged Last), as one bitmap per region.
    /// Keepalives read meanwhile are not echoed: an echo tells a pure post-copy source this side is ready, which it is
    /// only once the populate is done (the source's next Keepalive is echoed then). Hostile input: every run is checked
    /// against the layout, and any other record fails the migration.
    /// </summary>
    private DirtyBitmap[] ReadPopulatedMap(ProtocolReader reader, IReadOnlyList<MemoryRegion> regions)
    {
        var maps = NewPageMaps(regions);
        // No map has more runs than pages: a source that goes on past that is not sending one.
        ulong pages = 0, runs = 0;
        foreach (var r in regions) pages += r.Pages;
        while (true)
        {
            var m = reader.Read() ?? throw new MigrationTransportException("source closed the control channel while its populated map was expected");
            Heard();
            switch (m)
            {
                case KeepaliveMessage:
                    continue;
                case PopulatedPagesMessage p:
                    p.Validate(regions);
                    runs += (ulong)p.Runs.Length;
                    if (runs > pages) throw new MigrationProtocolException($"PopulatedPages: more runs than the guest's {pages} pages");
                    foreach (var (first, count) in p.Runs) maps[p.Region].SetRange(first, first + count);
                    if (p.Last) return maps;
                    continue;
                default:
                    throw ProtocolReader.Unexpected(m, "PopulatedPages");
            }
        }
    }

    /// <summary>One empty page bitmap per region, its memory already backed.</summary>
    private static DirtyBitmap[] NewPageMaps(IReadOnlyList<MemoryRegion> regions)
    {
        var maps = new DirtyBitmap[regions.Count];
        for (int r = 0; r < maps.Length; r++)
        {
            maps[r] = new DirtyBitmap(regions[r].Pages);
            Prefault.Array<ulong>(maps[r].Words);
        }
        return maps;
    }

    private static void CheckLayout(IReadOnlyList<MemoryRegion> actual, IReadOnlyList<(ulong GuestPhysicalAddress, ulong Size)> asked)
    {
        if (actual.Count != asked.Count)
            throw new MigrationException($"target factory built {actual.Count} regions, the source has {asked.Count}");
        for (int i = 0; i < actual.Count; i++)
        {
            if (actual[i].GuestPhysicalAddress != asked[i].GuestPhysicalAddress || actual[i].Size != asked[i].Size)
                throw new MigrationException($"target factory built region {i} as 0x{actual[i].GuestPhysicalAddress:x}+0x{actual[i].Size:x}, the source has 0x{asked[i].GuestPhysicalAddress:x}+0x{asked[i].Size:x}");
        }
    }

    /// <summary>
    /// Record the first failure (any thread) and wake the threads: page channels are aborted at once (a receive thread
    /// may be blocked in a read); the control channel too when there is nothing to tell the source
    /// (<paramref name="e"/> null: silence, deadline, cancel). Returns true for the first failure.
    /// </summary>
    private bool Fail(string reason, Exception? e)
    {
        lock (_gate)
        {
            if (_done || _failure is not null) return false;
            _failure = reason;
        }
        _abort.Cancel();
        _prepared?.Abandon();
        if (_connection is { } c)
        {
            foreach (var p in c.Pages) p.Abort();
            c.Urgent?.Abort();
            if (e is null) c.Control.Abort();
        }
        return true;
    }

    /// <summary>
    /// A page receive thread failed (bad batch, lost channel): tell the source why on the control channel (it then
    /// closes, which wakes the control thread here), with a 2 s backstop abort in case it does not.
    /// </summary>
    private void FailFromReceiver(string reason, Exception e)
    {
        // A page channel that broke because the source gave up (Cancel, Error) has the reason right behind it on
        // the control channel: give the control thread 250 ms to record it first.
        // Post-copy: a lost connection is not the VM's end; both sides wait for a new one.
        if (e is MigrationTransportException && OnLinkLost(reason)) return;
        if (e is MigrationTransportException) _abort.Token.WaitHandle.WaitOne(TimeSpan.FromMilliseconds(250));
        if (!Fail(reason, e)) return;
        if (TellSource(reason, e) && _connection is { } c)
            _backstop = _time.CreateTimer(static ch => ((IMigrationChannel)ch!).Abort(), c.Control, TimeSpan.FromSeconds(2), Timeout.InfiniteTimeSpan);
        else
            _connection?.Control.Abort();
    }

    /// <summary>
    /// After an Error was sent: read (and drop) control records until the source closes, at most 1 s, so the Error is
    /// read before our side goes away (an abort may discard unread bytes, as the in-memory pipe does).
    /// </summary>
    private void AwaitSourceClose(ProtocolReader reader)
    {
        using var deadline = _time.CreateTimer(static ch => ((IMigrationChannel)ch!).Abort(), _connection!.Control, TimeSpan.FromSeconds(1), Timeout.InfiniteTimeSpan);
        try
        {
            while (reader.Read() is not null) { }
        }
        catch (Exception e) when (e is MigrationException or IOException or ObjectDisposedException)
        {
            // Closed, reset or aborted: either way the source is done with us.
        }
    }

    private string FailureReason(Exception e)
    {
        lock (_gate)
        {
            if (_failure is not null) return _failure;
        }
        return e is MigrationException or IOException ? e.Message : $"{e.GetType().Name}: {e.Message}";
    }

    /// <summary>Best-effort Error to the source so it resumes at once rather than on its own timeout; true if sent.</summary>
    private bool TellSource(string reason, Exception e)
    {
        if (_control is null || e is RefusedException || e is MigrationPeerException || e is MigrationTransportException || e is OperationCanceledException) return false;
        var code = e switch
        {
            MigrationProtocolException => ProtocolErrorCode.Protocol,
            MigrationException { InnerException: InvalidDataException } => ProtocolErrorCode.StateLoadFailed,
            _ => ProtocolErrorCode.Internal,
        };
        // Bounded: the control channel is aborted after 1 s if the source stopped reading.
        using var guard = _time.CreateTimer(static c => ((IMigrationChannel)c!).Abort(), _connection!.Control, TimeSpan.FromSeconds(1), Timeout.InfiniteTimeSpan);
        try
        {
            _control.WriteError(code, reason);
            return true;
        }
        catch (Exception ex) when (ex is MigrationTransportException or ObjectDisposedException)
        {
            // The source learns from the closed connection instead.
            return false;
        }
    }

    /// <summary>
    /// Echo a source Keepalive at once (the source measures the control round trip from those of the control channel,
    /// and learns from those of a page channel that it has landed everything before them). Any thread: the control
    /// writer serialises records.
    /// </summary>
    private void Echo(ulong stamp)
    {
        try
        {
            _control?.WriteKeepalive(stamp);
        }
        catch (Exception e) when (e is MigrationTransportException or ObjectDisposedException)
        {
            // The control thread sees the same broken channel on its next read.
        }
    }

    private void OnKeepaliveTick()
    {
        if (_done) return;
        var silent = _time.GetElapsedTime(Volatile.Read(ref _lastHeard));
        if (silent > _options.PeerTimeout && !_linkDown)
        {
            string why = $"source silent for {silent.TotalSeconds:F1} s (peer timeout {_options.PeerTimeout.TotalSeconds:F1} s)";
            if (!OnLinkLost(why)) Fail(why, null);
            return;
        }
        if (!_keepalivesOn) return;
        try
        {
            _control?.WriteKeepalive((ulong)_time.GetTimestamp());
            if (_landedProgress)
            {
                foreach (var r in _landing)
                {
                    ulong marker = r.Syncing;
                    if (marker != 0) _control?.WriteKeepalive(marker | MigrationProtocol.LandedProgressFlag);
                }
            }
        }
        catch (Exception e) when (e is MigrationTransportException or ObjectDisposedException)
        {
            // The control thread sees the same broken channel.
        }
    }

    private void Heard() => Volatile.Write(ref _lastHeard, _time.GetTimestamp());

    private int SignedMicros(long from, long to)
    {
        var span = to >= from ? _time.GetElapsedTime(from, to) : -_time.GetElapsedTime(to, from);
        return (int)Math.Clamp(span.Ticks / 10, int.MinValue, int.MaxValue);
    }

    private uint Micros(long since) => (uint)Math.Min(uint.MaxValue, _time.GetElapsedTime(since).Ticks / 10);

    /// <summary>The handshake was refused (Refuse already sent).</summary>
    private sealed class RefusedException(string message) : MigrationException(message);

    /// <summary>One page channel's receive thread: batches straight into guest memory until the channel's Flush.</summary>
    private sealed class Receiver
    {
        private readonly IncomingMigration _owner;
        private readonly IMigrationChannel _channel;
        private readonly PageBatchReader _reader;
        private readonly Thread _thread;

        public Receiver(IncomingMigration owner, IMigrationChannel channel, (int Index, int Count)? shard, IReadOnlyList<MemoryRegion> regions, ReceivedPageMap received, bool resumed = false)
        {
            _owner = owner;
            _channel = channel;
            // A resumed post-copy's page channels carry post-copy batches only, like the urgent one but ended by Flush.
            _urgent = shard is null && !resumed;
            if (resumed) Flushed.Set();
            _reader = new PageBatchReader(channel, regions, received)
            {
                PopulateFreshRuns = owner._options.PopulateFreshRuns, Shard = shard, PostcopyOnly = _urgent || resumed,
            };
            _thread = new Thread(Loop) { IsBackground = true, Name = $"ferry-recv-{channel.Name}" };
            // Quiet by nature (no record through a whole pre-copy phase, nor while the guest faults on nothing): only the
            // watchdog, which hears the source's keepalives, decides that the source is gone.
            if (_urgent) channel.ReceiveWithoutTimeout();
            if (_urgent && owner._options.FaultPoll > TimeSpan.Zero && channel is IPollableChannel pollable)
                _poll = new Postcopy.UrgentPoll(pollable, () => owner._postcopyIncoming?.Awaited ?? 0, owner._options.FaultPoll);
        }

        // The urgent channel's wait for its next record (TCP): see UrgentPoll.
        private readonly Postcopy.UrgentPoll? _poll;

        /// <summary>A page request went out: the urgent receiver polls for the reply (see <see cref="Postcopy.UrgentPoll"/>).</summary>
        public void RequestSent() => _poll?.RequestSent();

        /// <summary>Records found while polling for them (<see cref="IncomingOptions.FaultPoll"/>).</summary>
        public long FoundPolling => _poll?.FoundPolling ?? 0;

        /// <summary>Times a page request woke this (sleeping) receiver to poll.</summary>
        public long Nudges => _poll?.Nudges ?? 0;

        public string Name => _channel.Name;

        /// <summary>The channel's batch reader (post-copy installs through it).</summary>
        public PageBatchReader Reader => _reader;

        // The marker whose pass this channel is making durable (IMigrationTarget.SyncLanded), or 0.
        private ulong _syncing;

        /// <summary>The landed-sync marker whose pass this channel is making durable now, or 0.</summary>
        public ulong Syncing => Volatile.Read(ref _syncing);

        // The urgent channel: post-copy batches only, until the source closes it.
        private readonly bool _urgent;
        private bool _batched;

        /// <summary>Set when this channel's Flush arrived.</summary>
        public ManualResetEventSlim Flushed { get; } = new();

        public ulong FlushSequence { get; private set; }

        /// <summary>Timestamp at which the Flush arrived (read after <see cref="Flushed"/>).</summary>
        public long FlushedAt { get; private set; }
        public long NormalPages { get; private set; }
        public long ZeroPages { get; private set; }

        public void Start() => _thread.Start();

        /// <summary>
        /// Complete said no page was sent before a post-copy switchover: this channel's pre-copy part is over without a
        /// Flush (the push's Flush will end it). False if a batch or a Flush came already, which contradicts it.
        /// </summary>
        public bool NoSwitchoverFlush()
        {
            lock (_flushGate)
            {
                if (Flushed.IsSet || _batches != 0) return false;
                FlushSequence = 0;
                FlushedAt = _owner._time.GetTimestamp();
                _reader.PostcopyOnly = true;
                Flushed.Set();
                return true;
            }
        }

        // Orders NoSwitchoverFlush against this thread's first batch and Flush.
        private readonly Lock _flushGate = new();
        private long _batches;

        /// <summary>Wait up to 5 s for the thread to end; false if it is still running.</summary>
        public bool Join() => !_thread.IsAlive || _thread.Join(TimeSpan.FromSeconds(5));

        private void Loop()
        {
            // The urgent channel carries the pages a guest thread waits for (see LatencyPriority).
            using var raised = _urgent ? LatencyPriority.Raise() : default;
            try
            {
                while (true)
                {
                    _poll?.BeforeRead();
                    var record = _reader.ReadNext();
                    _owner.Heard();
                    if (_urgent && record.Kind != PageRecordKind.PageBatch)
                    {
                        if (record.Kind == PageRecordKind.EndOfStream && (_owner._postcopyOver || _owner._done)) return;
                        bool closed = record.Kind == PageRecordKind.EndOfStream;
                        string what = closed
                            ? (_owner._postcopyCommitted ? "source closed the urgent channel during post-copy" : "source closed the urgent channel")
                            : $"{record.Kind} on the urgent channel";
                        _owner.FailFromReceiver(what, closed ? new MigrationTransportException(what) : new MigrationProtocolException(what));
                        return;
                    }
                    if (!_batched && _reader.Postcopy is not null && !_urgent)
                    {
                        // Post-copy's bulk receive yields to any thread that wakes (see PageSender.SendPostcopy).
                        _batched = true;
                        Ferry.Linux.Libc.SetCurrentThreadBatch(true);
                    }
                    switch (record.Kind)
                    {
                        case PageRecordKind.PageBatch:
                            if (_owner._postcopyNegotiated && !Flushed.IsSet)
                            {
                                // A pre-copy batch: counted under the gate, for a Complete that says none came.
                                lock (_flushGate) _batches++;
                                if (_batches == 1) _owner._pagesArrived.Cancel();
                            }
                            if (_reader.LastBatchFinalPass) _owner._prefaulter?.RequestStop();
                            NormalPages += record.NormalPages;
                            ZeroPages += record.ZeroPages;
                            break;
                        case PageRecordKind.Keepalive:
                            // Landed sync: every record before this one was applied (and, for a pass's marker, made
                            // durable where the target needs it to be); tell the source.
                            if (!_owner._landedSync) break;
                            if ((record.Value & MigrationProtocol.LandedMarkerMask) == MigrationProtocol.LandedMarkerTag)
                            {
                                // Said to be on its way while it takes (the keepalive tick): storage may be slower
                                // than the peer timeout allows for one pass.
                                Volatile.Write(ref _syncing, record.Value);
                                try
                                {
                                    _owner._target?.SyncLanded();
                                }
                                finally
                                {
                                    Volatile.Write(ref _syncing, 0);
                                }
                            }
                            _owner.Echo(record.Value);
                            break;
                        case PageRecordKind.Flush when Flushed.IsSet:
                            // Post-copy: the push on this channel is over.
                            return;
                        case PageRecordKind.Flush:
                            // The switchover Flush is the channel's last record, except when post-copy was negotiated:
                            // the push follows it.
                            lock (_flushGate)
                            {
                                if (Flushed.IsSet) return; // NoSwitchoverFlush came first: this is the push's end
                                FlushSequence = record.Value;
                                FlushedAt = _owner._time.GetTimestamp();
                                Flushed.Set();
                            }
                            if (!_owner._postcopyNegotiated) return;
                            _reader.PostcopyOnly = true;
                            break;
                        case PageRecordKind.EndOfStream when Flushed.IsSet && (_owner._postcopyOver || _owner._done):
                            return;
                        default:
                            string why = $"{_channel.Name}: source closed the channel before its Flush";
                            _owner.FailFromReceiver(why, new MigrationTransportException(why));
                            return;
                    }
                }
            }
            catch (Exception e)
            {
                // After post-copy (or a pre-copy that negotiated it and ended) the source closing is the normal end.
                if (e is MigrationTransportException && (_owner._postcopyOver || _owner._done)) return;
                _owner.FailFromReceiver(e is MigrationException or IOException ? e.Message : $"{_channel.Name}: {e}", e);
            }
            finally
            {
                if (_poll is not null && TraceLog.Enabled) TraceLog.Mark($"destination: urgent receiver found {_poll.FoundPolling} records polling, nudged {_poll.Nudges} times");
                _poll?.Dispose();
            }
        }
    }
}
