using System.Diagnostics;
using Ferry.Linux;
using Ferry.Migration.Guest;
using Ferry.Migration.Memory;
using Ferry.Migration.Policy;
using Ferry.Migration.Protocol;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Precopy;

/// <summary>
/// The source side of one pre-copy migration: connect, handshake, copy memory in rounds while the guest runs,
/// stop-and-copy when the convergence policy says the rest fits the downtime limit, then the two-phase switchover.
/// </summary>
/// <remarks>
/// <see cref="Run"/> blocks the calling thread (the migration thread) until the migration ends; it never throws for a
/// migration failure: the outcome is in the returned statistics, and on any failure before <c>commit</c> the guest is
/// running again when it returns. <see cref="Cancel"/>, <see cref="MaxBandwidth"/> and <see cref="Progress"/> may be
/// used from any thread.
/// <para><b>Threads</b>: the caller's (migration) thread drives the phases and is the only one that calls the guest;
/// one sender thread per page channel (<see cref="PageSender"/>); one reader thread on the control channel (the return
/// path: Ready, Resumed, Error, Cancel, keepalives); a timer that sends keepalives and watches for a silent peer.
/// Any of them may fail the migration through <see cref="Fail"/>, which records the first reason and aborts the
/// channels so every blocked thread wakes; only the migration thread then restores the guest.</para>
/// <para><b>Commit rule</b>: <c>_committed</c> is set under <c>_gate</c> together with the check that nothing failed,
/// so a failure or cancel either happens-before commit (source resumes, Commit never sent) or has no effect. The
/// one way back is a Commit whose send throws: its bytes never reached the transport whole, so the destination
/// cannot start, and the source resumes. A Commit send that returned is final even if Resumed never comes.</para>
/// </remarks>
public sealed class OutgoingMigration
{
    /// <summary>
    /// The guest's share of the switchover when no <see cref="StateTimeEstimate"/> is given: SaveState, LoadState and
    /// Start. Measured with the in-process guest after the warm-up (1 GiB hotset bench, load average ~4.6 on 2 cores):
    /// save 1.5-2.2 ms, load 1.6-1.9 ms, start 2.3-2.5 ms, i.e. ~6 ms. Sending its state (2.2 KiB here, ~11 KB per
    /// KVM vCPU) takes well under 0.1 ms at the bandwidths pre-copy needs, so it is not modelled separately.
    /// </summary>
    public static readonly TimeSpan DefaultGuestSwitchoverCost = TimeSpan.FromMilliseconds(6);

    /// <summary>Sequence number of the switchover Flush (one switchover per migration in v1).</summary>
    private const ulong SwitchoverFlushSequence = 1;

    private readonly IMigrationSource _guest;
    private readonly IMigrationConnector _connector;
    private readonly MigrationOptions _options;
    private readonly TimeProvider _time;
    private readonly BandwidthLimiter _limiter;
    // Guards the commit decision against failure and cancel.
    private readonly Lock _gate = new();
    // Cancelled on the first failure: wakes every wait of every engine thread.
    private readonly CancellationTokenSource _abort = new();
    // Set by the reader thread on Ready / Resumed.
    private readonly ManualResetEventSlim _readyArrived = new();
    private readonly ManualResetEventSlim _resumedArrived = new();
    // Set just before Complete is written: a Ready before it cannot answer this migration's Complete.
    private volatile bool _completeSending;

    private int _started;
    private bool _committed;
    // Set with _committed when the switchover was to post-copy: a failure after commit is then the VM's loss, not a no-op.
    private bool _postcopyActive;
    private readonly ManualResetEventSlim _postcopyDoneArrived = new();
    // Set when the destination echoes our latest Keepalive.
    private readonly ManualResetEventSlim _echoArrived = new();
    // Post-copy recovery: the connection's own abort (linked to _abort), set when the link is down, and the resume asked.
    private CancellationTokenSource _link = new();
    private bool _linkDown;
    private string? _linkReason;
    private readonly ManualResetEventSlim _linkLost = new();
    private readonly ManualResetEventSlim _resumeAsked = new();
    private IMigrationConnector? _resumeConnector;
    private int _recoveries;
    // The senders of connections lost in post-copy: their counts still belong to this migration's figures.
    private readonly List<PageSender> _retiredSenders = [];
    private readonly List<Postcopy.UrgentSender> _urgentSenders = [];
    private DirtyBitmap? _populatedForPush;
    // The destination takes the populated map before a pure post-copy (capability PopulatedMap).
    private bool _populatedMap;
    private PostcopyDoneMessage? _postcopyDone;
    private long _postcopyDoneAt;
    private Postcopy.Prepager? _prepager;
    private Postcopy.PageHashDigest? _postcopyHashes;
    private Postcopy.UrgentSender? _urgent;
    private string? _switchReasonText;
    private bool _finished;
    private string? _failure;
    private MigrationStatus _failureStatus;
    // Whether the peer should be told (Cancel or Error record) before the control channel is closed.
    private bool _notifyPeer;
    private ProtocolErrorCode _notifyCode;

    private MigrationConnection? _connection;
    private ProtocolWriter? _control;
    private PageSender[] _senders = [];
    // With VerifyPageHashes: the hash of every page as last sent, kept by the senders (null otherwise).
    private Postcopy.PageHashDigest? _sentHashes;
    // Counts senders still in the current pass. Never disposed: a sender may signal it after the migration thread
    // gave up waiting (failure), and it holds no OS handle unless a wait needed one.
    private readonly CountdownEvent _passDone = new(1);
    // The page channels as the senders use them (rate limited): aborting these also wakes a sender waiting for bandwidth.
    private IMigrationChannel[] _pageChannels = [];
    private Thread? _reader;
    private ITimer? _keepalive;
    // Reports progress every ProgressInterval while a pass runs, when the caller asked for progress.
    private ITimer? _progressTimer;
    // Serialises reports: the migration thread's and the progress timer's reach the sink one at a time, in the order
    // their figures were taken, and none after the final one (a timer's Dispose does not wait for a running callback).
    private readonly Lock _reportGate = new();
    private bool _reportsClosed;
    // The pass in flight (pre-copy round or final pass), for live remaining and rate figures between the rounds' own
    // reports; null between passes. Published whole, so a reader never mixes one pass's figures with another's.
    private volatile PassProgress? _pass;
    private ITimer? _controlAbortTimer;
    private volatile bool _keepalivesOn;
    // Timestamp of the last record from the destination (watchdog).
    private long _lastHeard;
    private ReadyMessage? _ready;
    private ResumedMessage? _resumed;
    private long _resumedAt;
    private long _readyAt;
    // Shortest control round trip measured (ticks): the handshake, then echoed Keepalives. Written by the migration
    // thread once, then by the reader thread only.
    private long _controlRoundTripTicks;
    // Stamp of the latest Keepalive we sent (high bit set), to recognise its echo.
    private ulong _lastKeepaliveStamp;
    // Landed sync (MigrationProtocol.cs): negotiated; the round whose markers are awaited, and which channels echoed.
    private bool _landedSync;
    // The destination says when a pass's flush outlasts a third of the peer timeout (capability LandedProgress).
    private bool _landedProgress;
    private readonly Lock _syncLock = new();
    private long _syncRound = -1;
    private long _syncEchoed;
    // Never disposed, like _passDone: the return-path thread may signal it after the migration thread stopped waiting.
    private readonly CountdownEvent _landed = new(1);
    private const ulong MarkerTag = MigrationProtocol.LandedMarkerTag;
    private const ulong MarkerTagMask = MigrationProtocol.LandedMarkerMask;

    // Progress figures, updated by the migration thread at each round end.
    private long _startTimestamp;
    private volatile MigrationStatus _status = MigrationStatus.Setup;
    private int _round;
    private long _remainingBytes;
    // Bytes no pass sends that are still to move, counted in the remainder during a pass: pure post-copy's RAM while
    // its pre-copy-only regions go in rounds.
    private long _remainingBeyondPass;
    private double _bandwidth;
    private double _dirtyRate;
    private int _throttle;
    private IProgress<MigrationProgress>? _progressSink;

    public OutgoingMigration(IMigrationSource guest, IMigrationConnector connector, MigrationOptions options, TimeProvider? time = null)
    {
        ArgumentNullException.ThrowIfNull(guest);
        ArgumentNullException.ThrowIfNull(connector);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentOutOfRangeException.ThrowIfLessThan(options.PageChannels, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(options.PageChannels, MigrationProtocol.MaxPageChannels);
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxRounds, 1);
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(options.PeerTimeout, TimeSpan.Zero);
        _guest = guest;
        _connector = connector;
        _options = options;
        _time = time ?? TimeProvider.System;
        _limiter = new BandwidthLimiter(options.MaxBandwidth, _time);
        var precopyOnly = new List<(ulong, ulong)>();
        ulong first = 0;
        foreach (var region in guest.Regions)
        {
            // Post-copy's urgent channel serves a fault straight from memory, which such a region has not here.
            if (region.Reader is not null && !region.PrecopyOnly)
                throw new ArgumentException($"the region at 0x{region.GuestPhysicalAddress:x} is read through a reader, so it must be PrecopyOnly", nameof(guest));
            if (region.PrecopyOnly)
            {
                precopyOnly.Add((first, first + region.Pages));
                _precopyOnlyPages += region.Pages;
            }
            first += region.Pages;
        }
        _precopyOnly = [.. precopyOnly];
    }

    // Bit ranges [start, end) of the regions that must be whole before the guest runs (MemoryRegion.PrecopyOnly), and
    // their pages in all.
    private readonly (ulong Start, ulong End)[] _precopyOnly;
    private readonly ulong _precopyOnlyPages;

    /// <summary>Run the migration to its end.</summary>
    public MigrationStatistics Run(IProgress<MigrationProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        if (Interlocked.Exchange(ref _started, 1) != 0)
            throw new InvalidOperationException("an OutgoingMigration runs once; create a new one to migrate again");
        _progressSink = progress;
        _startTimestamp = _time.GetTimestamp();
        using var registration = cancellationToken.Register(static s => ((OutgoingMigration)s!).Cancel("cancelled by the caller's token"), this);
        var stats = new StatsBuilder();
        bool paused = false;
        bool dirtyLogOn = false;
        try
        {
            Setup();
            _guest.StartDirtyLog();
            dirtyLogOn = true;
            stats.SetupMs = Ms(_startTimestamp);
            Precopy(stats, ref paused);
        }
        catch (Exception e)
        {
            // Engine-thread failures (channel errors, protocol errors, timeouts, bugs) land here; others were recorded
            // by Fail and surface as an OperationCanceledException from a wait.
            if (e is not OperationCanceledException || Volatile.Read(ref _failure) is null)
            {
                Fail(MigrationStatus.Failed, Describe(e), notify: e is not (MigrationTransportException or MigrationPeerException),
                    e is MigrationProtocolException ? ProtocolErrorCode.Protocol : ProtocolErrorCode.Internal);
            }
        }
        return Finish(stats, paused, dirtyLogOn);
    }

    /// <summary>
    /// Cancel: idempotent; no effect once <c>commit</c> was sent, except on a post-copy paused by a lost connection,
    /// which it abandons: the source stops keeping the VM's pages, and the VM, running at the destination without them,
    /// is lost.
    /// </summary>
    /// <remarks>Whether the post-copy is paused is decided in <see cref="Fail"/>'s own lock: read before it, a resume
    /// completing in between made the cancel abandon a healthy post-copy.</remarks>
    public void Cancel() => Fail(MigrationStatus.Cancelled, "cancelled by the operator", notify: true, ProtocolErrorCode.None, abandonIfPaused: true);

    /// <summary>Bandwidth cap for page channels (bytes/s, 0 = unlimited); takes effect at once.</summary>
    public long MaxBandwidth
    {
        get => _limiter.BytesPerSecond;
        set
        {
            ArgumentOutOfRangeException.ThrowIfNegative(value);
            _limiter.BytesPerSecond = value;
        }
    }

    /// <summary>Why pre-copy ended in a switch-over (converged, or forced by the timeout or round limit); set before stop-and-copy.</summary>
    public SwitchOverReason SwitchOverReason { get; private set; }

    /// <summary>Where the switchover's downtime went, finer than the statistics' breakdown; null until Ready arrived.</summary>
    public SwitchoverTimings? Switchover { get; private set; }

    /// <summary>The policy's sentence with the figures behind <see cref="SwitchOverReason"/>.</summary>
    public string? SwitchOverExplanation { get; private set; }

    /// <summary>How often progress is reported while a pass runs (besides once at each round's end).</summary>
    public static readonly TimeSpan ProgressInterval = TimeSpan.FromMilliseconds(250);

    /// <summary>
    /// The latest progress snapshot. While a pass runs, remaining is what the pass has still to send (a page being
    /// 4 KiB of data at most) and the rate is the pass's own so far, until the round's measured figures replace them
    /// at its end.
    /// </summary>
    public MigrationProgress Progress
    {
        get
        {
            // The pass before the counters: they only grow, so they are read at or past the figures it started from.
            var pass = _pass;
            long remaining = Interlocked.Read(ref _remainingBytes);
            double bandwidth = Volatile.Read(ref _bandwidth);
            long sent = BytesSentNow();
            if (pass is not null)
            {
                long done = PagesSentNow() - pass.StartPages;
                remaining = Math.Max(0, pass.Pages - done) * MemoryRegion.PageSize + Interlocked.Read(ref _remainingBeyondPass);
                var elapsed = _time.GetElapsedTime(pass.StartTimestamp);
                if (elapsed >= TimeSpan.FromMilliseconds(50))
                    bandwidth = (sent - pass.StartBytes) / elapsed.TotalSeconds;
            }
            // Post-copy: what the push has not handed out yet.
            if (_status == MigrationStatus.PostcopyActive && Volatile.Read(ref _prepager) is { } prepager)
                remaining = prepager.Remaining * MemoryRegion.PageSize;
            return new(_status, Volatile.Read(ref _round), remaining, sent, bandwidth, Volatile.Read(ref _dirtyRate),
                Volatile.Read(ref _throttle), _startTimestamp == 0 ? TimeSpan.Zero : _time.GetElapsedTime(_startTimestamp));
        }
    }

    private void Cancel(string reason) => Fail(MigrationStatus.Cancelled, reason, notify: true, ProtocolErrorCode.None);

    // ---- setup -------------------------------------------------------------------------------------------------

    private void Setup()
    {
        var regions = _guest.Regions;
        bool postcopy = _options.PostcopyPossible;
        _link = CancellationTokenSource.CreateLinkedTokenSource(_abort.Token);
        _connection = _connector.Connect(_options.PageChannels, postcopy, _abort.Token);
        // A cancel that raced with Connect found no connection to abort: honour it now.
        _abort.Token.ThrowIfCancellationRequested();
        if (_connection.Pages.Count != _options.PageChannels)
            throw new MigrationException($"connector opened {_connection.Pages.Count} page channels, {_options.PageChannels} asked");
        _control = new ProtocolWriter(_connection.Control);
        var reader = new ProtocolReader(_connection.Control);

        // The watchdog runs from here: a destination that accepts and then says nothing is detected in PeerTimeout.
        Volatile.Write(ref _lastHeard, _time.GetTimestamp());
        var tick = _options.PeerTimeout / 3;
        _keepalive = _time.CreateTimer(static s => ((OutgoingMigration)s!).OnKeepaliveTick(), this, tick, tick);

        const ProtocolCapabilities PostcopyCaps = ProtocolCapabilities.Postcopy | ProtocolCapabilities.UrgentChannel;
        // Page hashes for pre-copy's verification only: a migration that may end in post-copy digests its own way.
        var verifyCaps = !_options.Verify ? ProtocolCapabilities.None
            : ProtocolCapabilities.Verify | (postcopy ? ProtocolCapabilities.None : ProtocolCapabilities.VerifyPageHashes);
        // The guest's shape, for a destination that builds ahead (see IShapedMigrationSource): offered when there is one.
        StateSection? shape = (_guest as IShapedMigrationSource)?.GetShape();
        var caps = ProtocolCapabilities.LandedSync | ProtocolCapabilities.LandedProgress | verifyCaps | (postcopy ? PostcopyCaps : ProtocolCapabilities.None)
            | (_options.Mode == MigrationMode.Postcopy ? ProtocolCapabilities.PopulatedMap : ProtocolCapabilities.None)
            | (shape is null ? ProtocolCapabilities.None : ProtocolCapabilities.Shape);
        long helloSent = _time.GetTimestamp();
        _control.WriteHello(Hello(caps));
        var welcome = reader.Expect<WelcomeMessage>();
        _controlRoundTripTicks = _time.GetElapsedTime(helloSent).Ticks;
        Volatile.Write(ref _lastHeard, _time.GetTimestamp());
        CheckWelcome(welcome, caps);
        if (_options.Verify && (welcome.Capabilities & ProtocolCapabilities.Verify) == 0)
            throw new MigrationException("destination does not support verification, which was asked for");
        if (postcopy && (welcome.Capabilities & PostcopyCaps) != PostcopyCaps)
            throw new MigrationException($"destination does not support post-copy with an urgent channel (it accepted: {MigrationProtocol.Describe(welcome.Capabilities)})");
        if (postcopy && _connection.Urgent is null)
            throw new MigrationException("the transport opened no urgent channel for post-copy");
        _landedSync = (welcome.Capabilities & ProtocolCapabilities.LandedSync) != 0;
        _landedProgress = _landedSync && (welcome.Capabilities & ProtocolCapabilities.LandedProgress) != 0;
        _populatedMap = (welcome.Capabilities & ProtocolCapabilities.PopulatedMap) != 0;
        if ((welcome.Capabilities & ProtocolCapabilities.VerifyPageHashes) != 0) _sentHashes = new Postcopy.PageHashDigest(_guest.Regions);
        // First after Welcome, before any Keepalive: the destination reads it before anything else.
        if ((welcome.Capabilities & ProtocolCapabilities.Shape) != 0) _control.WriteStateSection(shape!);
        _keepalivesOn = true;

        _reader = new Thread(() => ReadReturnPath(reader)) { IsBackground = true, Name = "ferry-return-path" };
        _reader.Start();

        var (senders, channels) = CreateSenders(_connection, _link.Token);
        foreach (var s in senders) s.SentDigest = _sentHashes;
        lock (_gate)
        {
            _pageChannels = channels;
            _senders = senders;
        }
        // They idle until a pass is given, so starting them before the failure check below costs nothing.
        foreach (var s in senders) s.StartThread();
        // A failure recorded before the channels were published did not abort them.
        _abort.Token.ThrowIfCancellationRequested();
        // Post-copy's digest of this side (8 bytes per page, 2 MiB per GiB: the large-object heap) is needed only after
        // the resume, but allocated then it set off a background collection in the guest's first milliseconds there,
        // whose pauses stop the push and the fault path alike (traced: the push's first batch 10-40 ms late).
        if (postcopy && _options.Verify) _postcopyHashes = new Postcopy.PageHashDigest(_guest.Regions);
        SwitchoverWarmup.Source(_guest);
        if (postcopy) SwitchoverWarmup.Postcopy(_guest);
        // Probe the control round trip now that both sides run warm code: the destination echoes this at once.
        SendKeepalive();
        // Before round 0 all of memory is still to go (the pass's own figures take over once it starts).
        Interlocked.Exchange(ref _remainingBytes, (long)(_guest.TotalPages * MemoryRegion.PageSize));
        _status = MigrationStatus.Active;
        Report();
        if (_progressSink is not null)
            _progressTimer = _time.CreateTimer(static s => ((OutgoingMigration)s!).OnProgressTick(), this, ProgressInterval, ProgressInterval);
    }

    private void OnProgressTick()
    {
        // A tick that finds a report under way is dropped, not queued: a slow sink (stderr a full pipe) must not pile
        // up pool threads here, which would starve the keepalive timer.
        if (!_reportGate.TryEnter()) return;
        try
        {
            // Checked under the gate: a pass that ended (its own report follows) or a migration that finished is
            // not reported from here.
            if (_reportsClosed || _pass is null) return;
            _progressSink?.Report(Progress);
        }
        catch (Exception e)
        {
            // As when a report from the migration thread throws (a progress view writing to a closed pipe): the
            // migration fails and the guest runs on. Left to the timer thread, it would end the process.
            Fail(MigrationStatus.Failed, $"progress report failed: {Describe(e)}", notify: true, ProtocolErrorCode.Internal);
        }
        finally
        {
            _reportGate.Exit();
        }
    }

    /// <summary>VM identity sent in Hello (a guest contract without identity gets a fresh one per migration).</summary>
    public Guid VmId { get; init; } = Guid.NewGuid();

    /// <summary>
    /// Time the convergence policy adds for saving, sending and loading device state and the switchover's round trips
    /// (the guest is paused for all of it, so it is part of the downtime). A VMM that measured its switchover (e.g.
    /// the previous migration's <see cref="SwitchoverTimings.StateTime"/>) should pass that. Null (the default): derived
    /// from measurement, see <see cref="EffectiveStateTimeEstimate"/>.
    /// </summary>
    public TimeSpan? StateTimeEstimate { get; init; }

    /// <summary>
    /// The state time the convergence policy uses: <see cref="StateTimeEstimate"/> when given, else two control
    /// round trips (Complete→Ready and Commit→Resumed are one each) plus <see cref="DefaultGuestSwitchoverCost"/>.
    /// The round trip is the shortest measured: first Hello to Welcome, which errs high (it includes building the
    /// destination guest and first-call JIT: 12-20 ms here against ~0.5 ms for the wire), then each Keepalive the
    /// destination echoes (one is sent right after setup). Known once the handshake is done.
    /// </summary>
    public TimeSpan EffectiveStateTimeEstimate =>
        StateTimeEstimate ?? (2 * TimeSpan.FromTicks(Volatile.Read(ref _controlRoundTripTicks))) + DefaultGuestSwitchoverCost;

    /// <summary>Authorisation token presented in Hello (sent as UTF-8, at most 256 bytes), or null for none.</summary>
    public string? Token { get; init; }

    // ---- pre-copy rounds and stop-and-copy ---------------------------------------------------------------------

    private void Precopy(StatsBuilder stats, ref bool paused)
    {
        var bitmap = new DirtyBitmap(_guest.TotalPages);
        var meter = new BandwidthMeter();
        var autoConverge = _options.AutoConverge ? AutoConverge.FromOptions(_options) : null;
        var done = _passDone;
        long precopyStart = _time.GetTimestamp();
        StartRoundsClock(precopyStart);
        double bulkBandwidth = 0; // round 0's

        // The log reports every page until first harvested (contract): drain that, since round 0 sends all anyway.
        _guest.HarvestDirtyLog(bitmap.Words);
        // Post-copy's hot pages are those used from here to the pause (the drained bitmap is overwritten just below).
        if (_options.PostcopyPossible && _guest is IAccessTrackingSource tracking) tracking.HarvestAccessedPages(bitmap.Words);
        bitmap.SetAll();
        // Round 0 reads only what the guest populated: the rest is sent as Zero unread. An idle 4 GiB guest would
        // otherwise be faulted in whole by the zero check, ~12 s on this host (ROUND2.md: 3.0 s per GiB of read
        // faults). Asked AFTER the drain: a page first written after this call is in the log for round 1, while one
        // written before it is populated by now. Asked before the drain, a page written in between would be drained
        // from the log and sent as Zero unread, i.e. lost (a 1 GiB hotset run failed verification that way).
        var populated = new DirtyBitmap(_guest.TotalPages);
        _guest.GetPopulatedPages(populated.Words);
        if (_options.Mode == MigrationMode.Postcopy)
        {
            // Nothing moves before the switchover: every page is missing on the destination. It reads control records
            // only once its own warm-up is done, so one echoed Keepalive says it is ready: pausing earlier would spend
            // the guest's downtime on the destination's JIT. With PopulatedMap it first learns which pages hold data,
            // and faults in only those (the rest arrive as Zero runs, which take no memory there).
            if (_populatedMap) WritePopulatedPages(_control!, populated, _guest.Regions);
            _echoArrived.Reset();
            SendKeepalive();
            var use = AwaitEchoAgingUse(populated);
            // Its pre-copy-only regions (a copied disk) go first, in rounds of their own; RAM stays all missing. The
            // guest's use goes on being aged meanwhile, so that its steady pages are those of the last intervals.
            if (_precopyOnly.Length > 0) PrecopyOnlyRounds(stats, bitmap, populated, use, done);
            _switchReasonText = "postcopy";
            PostcopySwitchover(stats, bitmap, populated, done, ref paused, use?.Used, use?.Steady(), use?.System, sentBefore: _precopyOnly.Length > 0);
            return;
        }

        long previousDirtyBytes = -1;
        bool fittedEarlier = false; // a rest fitted the limit and the policy went on only for headroom
        for (int round = 0; ; round++)
        {
            Volatile.Write(ref _round, round);
            SampleRoundTrip();
            long roundStart = _time.GetTimestamp();
            var (pages, bytes) = SendPass(bitmap, PageBatchFlags.None, 0, done, round == 0 ? populated : null, round);
            double roundMs = Ms(roundStart);
            // Round 0 streams memory in order, in 1 MiB runs; every later round, like the final pass, sends scattered
            // dirty pages, which cost more per byte (more runs, more faults on the destination). Measured on the
            // 1 GiB random benchmark at 50k pages/s: round 0 landed 3 GB/s, yet the 16k-page final pass it predicted
            // at ~28 ms took ~45. So only dirty rounds feed the estimate, and with none measured yet the policy
            // goes on (or switches only if nothing is dirty): one dirty round is cheap next to a missed limit.
            // Each round's own duration (a round too short to measure, < 5 ms, is folded into the next).
            if (round > 0) meter.AddSample(bytes, TimeSpan.FromMilliseconds(roundMs));

            bitmap.ClearAll();
            _guest.HarvestDirtyLog(bitmap.Words);
            long dirtyPages = (long)bitmap.Count();
            long dirtyBytes = dirtyPages * MemoryRegion.PageSize;
            double dirtyRate = roundMs > 0 ? dirtyPages / (roundMs / 1000) : 0;
            double roundBandwidth = roundMs > 0 ? bytes / (roundMs / 1000) : 0;
            stats.Rounds.Add(new RoundStatistics
            {
                Round = round, Pages = pages, Bytes = bytes, Milliseconds = roundMs,
                DirtyPagesPerSecond = dirtyRate, BandwidthBytesPerSecond = roundBandwidth, ThrottlePercent = _throttle,
            });
            if (round == 0) bulkBandwidth = roundBandwidth;
            // Dirty rounds too short to close a sample (a guest that rewrites only a few pages, its clock and timers,
            // sends them in well under 5 ms) still measured the link, from little and low: with no sample closed yet
            // their rate decides, capped at round 0's so that sends a socket buffer absorbed cannot claim more than
            // the bulk stream did. Deciding on "unmeasured" instead ran round after round, a harvest each, until the
            // round limit forced the decision.
            double bandwidth = meter.BytesPerSecond > 0 || round == 0
                ? meter.BytesPerSecond
                : Math.Min(meter.PendingBytesPerSecond, bulkBandwidth);
            Interlocked.Exchange(ref _remainingBytes, dirtyBytes);
            Volatile.Write(ref _bandwidth, round > 0 ? bandwidth : roundBandwidth);
            Volatile.Write(ref _dirtyRate, dirtyRate);

            var strategy = PolicyStrategy;
            var input = new ConvergenceInput(
                dirtyBytes, bandwidth, EffectiveStateTimeEstimate, _options.DowntimeLimit, round,
                _time.GetElapsedTime(precopyStart), _options.MaxRounds, _options.Timeout, strategy,
                previousDirtyBytes, fittedEarlier);
            long priorDirtyBytes = previousDirtyBytes;
            previousDirtyBytes = dirtyBytes;
            var decision = ConvergencePolicy.Decide(input);
            // Round 0's figure is kept out of the estimate only while another round may follow. When a limit ends
            // pre-copy before any dirty round was measured (MaxRounds 1, or a large guest's round 0 outlasting the
            // timeout), this round's bandwidth is the only measurement there is: deciding on "unmeasured" would
            // cancel (or force blind) a migration whose rest fits the limit.
            if (input.BandwidthBytesPerSecond == 0 && roundBandwidth > 0
                && decision.Action != ConvergenceAction.ContinueRound && decision.SwitchOver != SwitchOverReason.Converged)
            {
                decision = ConvergencePolicy.Decide(input with { BandwidthBytesPerSecond = roundBandwidth });
            }
            Report();
            string? toPostcopy = PostcopyTrigger(decision, round, dirtyBytes, priorDirtyBytes, PrecopyOnlyBytes(bitmap), bandwidth);
            if (toPostcopy is not null)
            {
                _switchReasonText = toPostcopy;
                SwitchOverExplanation = decision.Reason;
                PostcopySwitchover(stats, bitmap, null, done, ref paused);
                return;
            }
            if (decision.Action == ConvergenceAction.Abort)
            {
                Fail(MigrationStatus.Failed, decision.Reason!, notify: true, ProtocolErrorCode.None);
                _abort.Token.ThrowIfCancellationRequested();
            }
            if (decision.Action == ConvergenceAction.SwitchOver)
            {
                SwitchOverReason = decision.SwitchOver;
                SwitchOverExplanation = decision.Reason;
                if (decision.ExpectedDowntime != TimeSpan.MaxValue) stats.ExpectedDowntimeMs = decision.ExpectedDowntime.TotalMilliseconds;
                break;
            }
            bool fits = decision.ExpectedDowntime <= _options.DowntimeLimit;
            fittedEarlier |= fits;
            StepAutoConverge(autoConverge, fits, dirtyBytes, bytes);
            _abort.Token.ThrowIfCancellationRequested();
        }

        StopAndCopy(stats, bitmap, done, ref paused);
    }

    /// <summary>
    /// Account a round that did not end the rounds with auto-converge (null: off), and throttle the guest if a step is
    /// due: <paramref name="dirtiedBytes"/> must be re-sent because of the round, which sent <paramref name="sentBytes"/>.
    /// A rest that already fits the limit (another round only buys headroom) is no reason to slow the guest down.
    /// </summary>
    private void StepAutoConverge(AutoConverge? autoConverge, bool fits, long dirtiedBytes, long sentBytes)
    {
        if (autoConverge is null) return;
        if (fits)
        {
            autoConverge.OnRoundThatFits();
            return;
        }
        int throttle = autoConverge.OnRoundEnd(dirtiedBytes, sentBytes);
        if (throttle == _throttle) return;
        _guest.SetThrottle(throttle);
        Volatile.Write(ref _throttle, throttle);
    }

    /// <summary>
    /// Whether pre-copy hands over to post-copy after this round, and why: hybrid switches when the rest fits the limit
    /// (post-copy then has little left to fetch), when pre-copy stops converging (the dirty set shrank by less than
    /// a quarter), or after <see cref="MigrationOptions.HybridMaxRounds"/> rounds; the post-copy timeout strategy
    /// switches where force would have. Null: pre-copy goes on (or ends its own way).
    /// </summary>
    /// <remarks>The switchover sends what is dirty of the pre-copy-only regions inside the downtime
    /// (<paramref name="precopyOnlyBytes"/>): while that does not fit the limit at <paramref name="bandwidth"/>, a
    /// pre-copy that stops converging goes on instead (the round limit and the convergence policy's limits still end
    /// it).</remarks>
    private string? PostcopyTrigger(ConvergenceDecision decision, int round, long dirtyBytes, long priorDirtyBytes,
        long precopyOnlyBytes = 0, double bandwidth = 0)
    {
        bool forced = decision.Action == ConvergenceAction.SwitchOver && decision.SwitchOver != SwitchOverReason.Converged;
        if (_options.TimeoutStrategy == TimeoutStrategy.Postcopy && forced)
            return decision.SwitchOver == SwitchOverReason.ForcedByTimeout ? "postcopy_on_timeout" : "postcopy_on_max_rounds";
        if (_options.Mode != MigrationMode.Hybrid) return null;
        if (decision.Action == ConvergenceAction.SwitchOver) return decision.SwitchOver == SwitchOverReason.Converged ? "converged" : "postcopy_on_limit";
        if (decision.Action == ConvergenceAction.Abort) return "postcopy_on_limit";
        if (round + 1 >= _options.HybridMaxRounds) return "hybrid_max_rounds";
        bool precopyOnlyFits = precopyOnlyBytes == 0
            || (bandwidth > 0 && TimeSpan.FromSeconds(precopyOnlyBytes / bandwidth) <= _options.DowntimeLimit);
        if (round >= 1 && priorDirtyBytes >= 0 && dirtyBytes > priorDirtyBytes * (1 - ConvergencePolicy.ConvergingShrink) && precopyOnlyFits)
            return "not_converging";
        return null;
    }

    /// <summary>
    /// Pure post-copy of a guest with pre-copy-only regions (a copied disk, <see cref="MemoryRegion.PrecopyOnly"/>):
    /// those regions alone go in pre-copy rounds, after the destination is ready, decided by the convergence policy on
    /// what the guest dirtied of them: until that fits the downtime limit, or until the round or time limit, where the
    /// timeout strategy applies (cancel: the migration fails and the guest runs on at the source; force or post-copy:
    /// the rest goes anyway). Their rest then goes inside the switchover. On return <paramref name="bitmap"/> (all set
    /// on entry) holds all of RAM and that rest. What the guest wrote to RAM meanwhile is added to
    /// <paramref name="populated"/> (it holds data now, so the push must read it); with bubbling, <paramref name="use"/>
    /// goes on aging what the guest used, every interval through the passes too, so that its steady pages at the pause
    /// are those of the intervals just before it.
    /// </summary>
    private void PrecopyOnlyRounds(StatsBuilder stats, DirtyBitmap bitmap, DirtyBitmap populated, Postcopy.RecentUse? use, CountdownEvent done)
    {
        var send = new DirtyBitmap(_guest.TotalPages);
        foreach (var (start, end) in _precopyOnly) send.SetRange(start, end);
        ulong ramPages = _guest.TotalPages - _precopyOnlyPages;
        var log = new DirtyBitmap(_guest.TotalPages);
        // With bubbling, the guest's use is harvested every interval while a pass goes too: the pre-copy-only pages
        // such a harvest finds dirty wait here for the next round (the pass in flight reads `send`).
        var tickLog = use is null ? null : new DirtyBitmap(_guest.TotalPages);
        var pending = use is null ? null : new DirtyBitmap(_guest.TotalPages);
        Action? tick = use is null ? null : () =>
        {
            if (use.UntilDue > TimeSpan.Zero) return;
            use.Harvest(tickLog!, populated);
            TakePrecopyOnly(tickLog!, pending!);
        };
        var meter = new BandwidthMeter();
        var autoConverge = _options.AutoConverge ? AutoConverge.FromOptions(_options) : null;
        long roundsStart = _time.GetTimestamp(), previousRest = -1;
        StartRoundsClock(roundsStart);
        bool fittedEarlier = false;
        Interlocked.Exchange(ref _remainingBeyondPass, (long)ramPages * MemoryRegion.PageSize);
        for (int round = 0; ; round++)
        {
            Volatile.Write(ref _round, round);
            SampleRoundTrip();
            long roundStart = _time.GetTimestamp();
            var (pages, bytes) = SendPass(send, PageBatchFlags.None, 0, done, round == 0 ? populated : null, round, tick);
            double roundMs = Ms(roundStart);
            if (round > 0) meter.AddSample(bytes, TimeSpan.FromMilliseconds(roundMs));
            if (use is not null) use.Harvest(log, populated);
            else
            {
                log.ClearAll();
                _guest.HarvestDirtyLog(log.Words);
                populated.OrFrom(log);
            }
            send.ClearAll();
            TakePrecopyOnly(log, send);
            if (pending is not null)
            {
                send.OrFrom(pending);
                pending.ClearAll();
            }
            long rest = (long)PrecopyOnlyPagesIn(send);
            double roundBandwidth = roundMs > 0 ? bytes / (roundMs / 1000) : 0;
            double bandwidth = meter.BytesPerSecond > 0 ? meter.BytesPerSecond : roundBandwidth;
            stats.Rounds.Add(new RoundStatistics
            {
                Round = round, Pages = pages, Bytes = bytes, Milliseconds = roundMs,
                DirtyPagesPerSecond = roundMs > 0 ? rest / (roundMs / 1000) : 0, BandwidthBytesPerSecond = roundBandwidth, ThrottlePercent = _throttle,
            });
            // Still to move: that rest, and all of RAM (post-copy's).
            Interlocked.Exchange(ref _remainingBytes, ((long)ramPages + rest) * MemoryRegion.PageSize);
            Volatile.Write(ref _bandwidth, bandwidth);
            Report();
            var strategy = PolicyStrategy;
            long restBytes = rest * MemoryRegion.PageSize;
            var decision = ConvergencePolicy.Decide(new ConvergenceInput(
                restBytes, bandwidth, EffectiveStateTimeEstimate, _options.DowntimeLimit, round, _time.GetElapsedTime(roundsStart),
                _options.MaxRounds, _options.Timeout, strategy, previousRest, fittedEarlier));
            previousRest = restBytes;
            bool fits = decision.ExpectedDowntime <= _options.DowntimeLimit;
            fittedEarlier |= fits;
            if (decision.Action == ConvergenceAction.Abort)
            {
                Fail(MigrationStatus.Failed, decision.Reason!, notify: true, ProtocolErrorCode.None);
                _abort.Token.ThrowIfCancellationRequested();
            }
            if (decision.Action == ConvergenceAction.SwitchOver) break;
            // A guest writing its disk faster than it copies is slowed down as in pre-copy.
            StepAutoConverge(autoConverge, fits, restBytes, bytes);
            _abort.Token.ThrowIfCancellationRequested();
        }
        Interlocked.Exchange(ref _remainingBeyondPass, 0);
        foreach (var (start, end) in _precopyOnly) bitmap.ClearRange(start, end);
        bitmap.OrFrom(send);
    }

    /// <summary>The timeout strategy as the convergence policy knows it: cancel or force; post-copy at a limit is a
    /// forced switchover done another way.</summary>
    private TimeoutStrategy PolicyStrategy =>
        _options.TimeoutStrategy == TimeoutStrategy.Postcopy ? TimeoutStrategy.Force : _options.TimeoutStrategy;

    /// <summary>Set in <paramref name="into"/> the pages of the pre-copy-only regions set in <paramref name="from"/>; returns how many.</summary>
    private long TakePrecopyOnly(DirtyBitmap from, DirtyBitmap into)
    {
        long pages = 0;
        foreach (var (start, end) in _precopyOnly)
        {
            foreach (var run in from.Runs(start, end))
            {
                into.SetRange(run.Start, run.End);
                pages += (long)run.Length;
            }
        }
        return pages;
    }

    /// <summary>Bytes set in <paramref name="bitmap"/> within the pre-copy-only regions.</summary>
    private long PrecopyOnlyBytes(DirtyBitmap bitmap) => (long)PrecopyOnlyPagesIn(bitmap) * MemoryRegion.PageSize;

    /// <summary>Pages set in <paramref name="bitmap"/> within the pre-copy-only regions.</summary>
    private ulong PrecopyOnlyPagesIn(DirtyBitmap bitmap)
    {
        ulong pages = 0;
        foreach (var (start, end) in _precopyOnly) pages += bitmap.Count(start, end);
        return pages;
    }

    /// <summary>The system pages still to send, on the urgent channel, until <paramref name="stop"/> says so; the pages sent.</summary>
    private static long PushSystemPages(Postcopy.UrgentSender urgent, Func<bool>? stop, bool steady = true)
    {
        try
        {
            return urgent.PushSystem(stop, steady);
        }
        catch (Exception e) when (e is MigrationTransportException or ObjectDisposedException)
        {
            return 0;
        }
    }

    /// <summary>
    /// While pure post-copy waits for the destination to be ready (its populate: 1.6-2.5 s per GiB here), what the
    /// guest used is harvested every interval, to find the pages it used in every one (<see cref="SteadyIntervals"/>).
    /// </summary>
    internal static readonly TimeSpan RecentUseInterval = TimeSpan.FromMilliseconds(100);

    /// <summary>
    /// A page the guest used in each of this many intervals in a row, up to the pause, goes with its system pages,
    /// first, on the urgent channel: the steady core of what it runs, user pages included (the demo guest's heartbeat
    /// and sampler threads, their stacks and data), which the system side's set does not name. Traced on the demo,
    /// those were used in every interval and were the guest's first faults on the destination. A page written at
    /// random at the demo's rate (two in three hot pages per interval) is in all six by chance only (~9 %).
    /// </summary>
    internal const int SteadyIntervals = 6;

    /// <summary>
    /// Pure post-copy, before the pause: wait for the destination's echo (at most the peer timeout, as before), and
    /// with bubbling, every <see cref="RecentUseInterval"/> harvest what the guest wrote (and used, where the source
    /// tracks it) into the returned <see cref="Postcopy.RecentUse"/> (null without bubbling), which later harvests up
    /// to the pause go on feeding. Written pages go into <paramref name="populated"/> too.
    /// </summary>
    private Postcopy.RecentUse? AwaitEchoAgingUse(DirtyBitmap populated)
    {
        long start = _time.GetTimestamp();
        if (_options.Prepaging != Postcopy.PrepagingStrategy.Bubble)
        {
            _echoArrived.Wait(_options.PeerTimeout, _abort.Token);
            return null;
        }
        var use = new Postcopy.RecentUse(_guest, SteadyIntervals, RecentUseInterval, _time);
        var log = new DirtyBitmap(_guest.TotalPages);
        while (!_echoArrived.Wait(use.UntilDue, _abort.Token) && _time.GetElapsedTime(start) < _options.PeerTimeout)
            use.Harvest(log, populated);
        return use;
    }

    /// <summary>
    /// The post-copy switchover: pause, tell the destination which pages it lacks (<paramref name="bitmap"/>: never sent,
    /// or dirtied since), send the device state, and the same two-phase Complete/Ready/Commit as pre-copy; on Commit the
    /// guest runs at the destination and the push begins, the urgent channel serving its faults; the migration ends when
    /// the destination has every page (PostcopyDone). <paramref name="populated"/> (null: read every page) lets pages the
    /// guest never populated go out as Zero unread. Bubbling pushes <paramref name="used"/> (what the guest used before
    /// the last harvest) with the hot pages, <paramref name="system"/> (the system side's pages before the pause) with
    /// the system ones, and <paramref name="steady"/> right after them. <paramref name="sentBefore"/>: a pure post-copy
    /// that sent its pre-copy-only regions in rounds first (<see cref="PrecopyOnlyRounds"/>).
    /// </summary>
    private void PostcopySwitchover(StatsBuilder stats, DirtyBitmap bitmap, DirtyBitmap? populated, CountdownEvent done, ref bool paused,
        DirtyBitmap? used = null, DirtyBitmap? steady = null, DirtyBitmap? systemBefore = null, bool sentBefore = false)
    {
        // Allocated before the pause: the Flush-only pass needs an empty bitmap, the final harvest one of its own, the
        // missing map's records a buffer of runs.
        var nothing = new DirtyBitmap(_guest.TotalPages);
        var late = new DirtyBitmap(_guest.TotalPages);
        var missingRuns = new (ulong, uint)[MigrationProtocol.MaxMissingRuns];
        // Bubbling pushes the pages the guest used last first (see PrepagingStrategy.Bubble).
        var hot = _options.Prepaging == Postcopy.PrepagingStrategy.Bubble ? new DirtyBitmap(_guest.TotalPages) : null;
        var system = hot is not null && _guest is IAccessTrackingSource ? new DirtyBitmap(_guest.TotalPages) : null;
        // Hybrid: the missing pages the guest's CPUs were working on at the pause go in the switchover's own pass.
        var resident = populated is null && _guest is IAccessTrackingSource ? new DirtyBitmap(_guest.TotalPages) : null;
        // And what is dirty of the regions that must be whole before the guest runs (a copied disk): all of it.
        var wholeBefore = _precopyOnly.Length > 0 ? new DirtyBitmap(_guest.TotalPages) : null;
        var regionPages = new ulong[_guest.Regions.Count];
        for (int r = 0; r < regionPages.Length; r++) regionPages[r] = _guest.Regions[r].Pages;
        try
        {
            var (pauseStart, harvestStart) = PauseForSwitchover(stats, ref paused);
            // The CPUs' translations first: the dirty log's harvest below drops their write entries, and a page the
            // kernel writes all the time (a stack, a run queue) is in the TLB and nowhere else.
            if (resident is not null) ((IAccessTrackingSource)_guest).GetResidentPages(resident.Words);
            if (hot is not null)
            {
                if (_guest is IAccessTrackingSource tracking) tracking.HarvestAccessedPages(hot.Words, system!.Words);
                if (used is not null) hot.OrFrom(used);
                if (systemBefore is not null) system!.OrFrom(systemBefore);
            }
            // What was written since the last harvest is missing too; and a page first written after the populated map
            // was taken holds data, so it must be read, not sent as Zero unread.
            _guest.HarvestDirtyLog(late.Words);
            bitmap.OrFrom(late);
            populated?.OrFrom(late);
            hot?.OrFrom(late);
            // Every pre-copy page before the switchover lands before the missing map applies: Flush on every channel.
            // Pure post-copy sent none (unless its pre-copy-only regions went in rounds), and says so with sequence 0
            // instead (waking every page channel's sender and receiver for an empty pass cost ~2 ms of the downtime).
            long missingStart = _time.GetTimestamp();
            bool nothingSent = populated is not null && !sentBefore;
            ulong flushSequence = nothingSent ? NoPagesSentSequence : SwitchoverFlushSequence;
            long earlyPages = 0, precopyOnlyPages = 0;
            if (!nothingSent)
            {
                // The pass that flushes every channel carries, besides, the missing pages the CPUs hold translations
                // for (their stacks, the firmware's and the kernel's per-CPU data, what the workload was writing):
                // the guest touches those the moment it runs, and each would be a fault, one round trip after
                // another, with the guest stalled. At most SwitchoverPages of them (2 MiB, ~1 ms on loopback).
                var early = nothing;
                if (resident is not null)
                {
                    resident.AndFrom(bitmap);
                    earlyPages = (long)resident.KeepFirst(SwitchoverPages);
                    if (earlyPages > 0)
                    {
                        bitmap.ClearFrom(resident);
                        early = resident;
                    }
                }
                if (wholeBefore is not null)
                {
                    precopyOnlyPages = TakePrecopyOnly(bitmap, wholeBefore);
                    if (precopyOnlyPages > 0)
                    {
                        bitmap.ClearFrom(wholeBefore);
                        if (early != nothing) wholeBefore.OrFrom(early);
                        early = wholeBefore;
                    }
                }
                SendPass(early, PageBatchFlags.FinalPass | (_options.ChecksumFinalPass ? PageBatchFlags.DataChecksummed : PageBatchFlags.None),
                    SwitchoverFlushSequence, done);
            }
            long missing = WriteMissingPages(_control!, bitmap, _guest.Regions, missingRuns);
            TraceLog.Mark("source: missing map sent");
            long stateStart = _time.GetTimestamp();
            stats.FinalPagesMs = _time.GetElapsedTime(harvestStart, stateStart).TotalMilliseconds;
            var sections = _guest.SaveState();
            long sendStart = _time.GetTimestamp();
            long stateBytes = 0;
            foreach (var section in sections)
            {
                _control!.WriteStateSection(section);
                stateBytes += section.Data.Length;
            }
            _completeSending = true;
            _control!.WriteComplete(flushSequence,
                CompleteFlags.Postcopy | (_options.Verify ? CompleteFlags.VerifyRequested : CompleteFlags.None));
            long completeSent = _time.GetTimestamp();
            TraceLog.Mark("source: complete sent");
            // The push and the urgent channel exist before Commit, so the first fault finds them; built while the
            // destination loads the state (0.3-0.5 ms), not after its Ready. Nothing asks for pages before it runs the
            // guest, and if it never does they are dropped with the rest of post-copy.
            _prepager = new Postcopy.Prepager(bitmap, regionPages, _options.Prepaging, hot, system, steady);
            SetUrgent(new Postcopy.UrgentSender(_connection!.Urgent!, _guest.Regions, _prepager));
            // The guest's system pages, now: they land while the destination loads the state. Between batches until
            // Ready arrives, no longer: Commit must not wait for them (2 MiB is 16 ms of a 1 Gb/s link); the rest go
            // once the guest runs. On a thread of its own the push made Commit wait for a core instead (2 cores, the
            // demo: ready-to-commit 5-40 ms). A link that fails meanwhile is the return path's to report.
            var urgent = Volatile.Read(ref _urgent)!;
            long systemPages = PushSystemPages(urgent, () => _readyArrived.IsSet);
            if (!_readyArrived.Wait(_options.PeerTimeout, _abort.Token))
                Fail(MigrationStatus.Failed, $"destination did not answer Ready within {_options.PeerTimeout.TotalSeconds:F1} s of Complete", notify: true, ProtocolErrorCode.Timeout);
            _abort.Token.ThrowIfCancellationRequested();
            var ready = _ready!;
            stats.DestDigestMs = ready.DigestMicroseconds / 1000.0;

            // The point of no return: from here the VM runs only on the destination, and its memory only here.
            lock (_gate)
            {
                if (_failure is not null) _abort.Token.ThrowIfCancellationRequested();
                _committed = true;
                _postcopyActive = true;
            }
            long commitAt = _time.GetTimestamp();
            stats.DeviceStateMs = _time.GetElapsedTime(stateStart, commitAt).TotalMilliseconds - stats.DestDigestMs;
            SendCommit();
            TraceLog.Mark("source: commit sent");
            // Unless the link went down meanwhile: its postcopy-paused must stand (OnLinkFailure sets it after the flag).
            lock (_gate)
            {
                if (!_linkDown) _status = MigrationStatus.PostcopyActive;
            }
            Interlocked.Exchange(ref _remainingBytes, missing * MemoryRegion.PageSize);
            // The push starts once the guest runs there (Resumed): until then nothing can fault, and on a small host its
            // threads would compete with the destination's switchover for the cores, inside the downtime (measured on 2
            // cores, 1 GiB: commit to Resumed 40 ms with the push already running).
            bool resumed = _resumedArrived.Wait(_options.PeerTimeout, _abort.Token) && _resumed is not null;
            long pushStart = _time.GetTimestamp();
            done.Reset(_senders.Length);
            _populatedForPush = populated;
            foreach (var sender in _senders) sender.StartPostcopy(_prepager, PostcopyFlushSequence, done, populated);
            // What Ready cut short of the system pages, from this (still real-time) thread, ahead of the push threads
            // just woken. Not the steady ones: at 1M pages/s those are the guest's whole hot set (~4,500 pages), and
            // pushed and installed at real-time they held both CPUs of a shared host for ~8 ms after the resume while
            // the harts waited (`perf sched`); the push threads send them first instead, as batch threads the harts
            // preempt.
            if (resumed) systemPages += PushSystemPages(urgent, null, steady: false);
            EndSwitchoverPriority();
            // Committed: this memory holds still for good, and its digest is needed only when the last page has
            // landed. Begun inside the downtime it competed with it (hybrid with verify: 25-46 ms of final harvest).
            // Lowered (LatencyPriority.Lower): hashing 1 GiB here took 100-200 ms of CPU right when the guest had just
            // started over there; on a host shared with the destination (the demo) that doubled the guest's stall.
            if (_options.Verify)
            {
                var hashes = _postcopyHashes ?? new Postcopy.PageHashDigest(_guest.Regions);
                StartSourceDigest(stats, _ => { hashes.HashMemory(); return hashes.Compute(); }, lower: true);
            }
            if (resumed)
            {
                stats.ResumeMs = _time.GetElapsedTime(commitAt, Volatile.Read(ref _resumedAt)).TotalMilliseconds;
                stats.Downtime = _time.GetElapsedTime(pauseStart, Volatile.Read(ref _resumedAt)).TotalMilliseconds - stats.DestDigestMs;
            }
            else
            {
                _abort.Token.ThrowIfCancellationRequested();
                stats.ResumeMs = Ms(commitAt);
                stats.Downtime = Ms(pauseStart) - stats.DestDigestMs;
                // The wait ends early when the link goes (OnControlLost): post-copy then pauses for a resume, and the
                // reason is that, not a destination that kept silent.
                stats.PostCommitProblem = _linkLost.IsSet
                    ? "the link went down between Commit and the destination's Resumed: the downtime given is this side's, to the loss"
                    : $"no Resumed from the destination within {_options.PeerTimeout.TotalSeconds:F1} s of Commit";
            }
            Switchover = new SwitchoverTimings
            {
                Pause = stats.PauseMs, FinalHarvest = _time.GetElapsedTime(harvestStart, missingStart).TotalMilliseconds,
                FinalPagesSend = _time.GetElapsedTime(missingStart, stateStart).TotalMilliseconds,
                Save = _time.GetElapsedTime(stateStart, sendStart).TotalMilliseconds,
                SendState = _time.GetElapsedTime(sendStart, completeSent).TotalMilliseconds,
                // The return path stamps Ready as it reads it, possibly before this thread stamped Complete as sent.
                ReadyWait = Math.Max(0, _time.GetElapsedTime(completeSent, Volatile.Read(ref _readyAt)).TotalMilliseconds),
                ReadyToCommit = Math.Max(0, _time.GetElapsedTime(Volatile.Read(ref _readyAt), commitAt).TotalMilliseconds),
                DestLoad = ready.LoadMicroseconds / 1000.0, DestDigest = stats.DestDigestMs, StateBytes = stateBytes,
                CommitToResumed = stats.ResumeMs,
            };
            Report();

            // Post-copy: until the destination has every page. Bounded only by liveness (the watchdog): a large guest
            // over a slow link takes as long as it takes, and giving up would lose the VM anyway.
            while (WaitHandle.WaitAny([_postcopyDoneArrived.WaitHandle, _linkLost.WaitHandle, _abort.Token.WaitHandle]) != 0
                   && !_postcopyDoneArrived.IsSet)
            {
                _abort.Token.ThrowIfCancellationRequested();
                // postcopy-paused: the destination's guest waits for its missing pages; this side keeps them all and
                // waits for the operator's resume (ResumePostcopy), then carries on over the new connection.
                Report();
                WaitHandle.WaitAny([_resumeAsked.WaitHandle, _abort.Token.WaitHandle]);
                _abort.Token.ThrowIfCancellationRequested();
                _resumeAsked.Reset();
                Reconnect(done);
            }
            var doneMessage = _postcopyDone!;
            UInt128 sourceDigest = default;
            string? digestProblem = null;
            if (_sourceDigest is { } pending)
            {
                try
                {
                    sourceDigest = pending.GetAwaiter().GetResult();
                }
                catch (RegionReadException e)
                {
                    // Every page is at the destination: an unreadable source (its disk's image) fails the check, not the VM.
                    digestProblem = $"the source's digest could not be computed: {e.Message}";
                }
            }
            long pushed = systemPages, urgentPages = 0;
            foreach (var sender in AllSenders()) pushed += sender.PushedPages;
            lock (_gate) foreach (var u in _urgentSenders) urgentPages += u.Pages;
            long working = doneMessage.WorkingSetPages == ulong.MaxValue ? -1 : (long)doneMessage.WorkingSetPages;
            stats.Postcopy = new PostcopyStatistics
            {
                MissingPages = missing,
                SwitchoverPages = earlyPages,
                PrecopyOnlyPages = precopyOnlyPages,
                SystemPages = systemPages,
                Faults = doneMessage.Faults,
                FaultLatencyUs = new LatencyPercentiles { P50 = doneMessage.LatencyP50Us, P99 = doneMessage.LatencyP99Us, Max = doneMessage.LatencyMaxUs },
                PushedPages = pushed,
                UrgentPages = urgentPages,
                DuplicatePages = (long)doneMessage.DuplicatePages,
                BlocktimeMs = doneMessage.BlockedMicroseconds / 1000.0,
                WorkingSetPages = working >= 0 ? working : null,
                FaultedShare = working > 0 ? Math.Min(1.0, doneMessage.Faults / (double)working) : null,
                Prepaging = _options.Prepaging.ToString().ToLowerInvariant(),
                Milliseconds = _time.GetElapsedTime(pushStart, Volatile.Read(ref _postcopyDoneAt)).TotalMilliseconds,
                Recoveries = _recoveries,
            };
            if (_options.Verify)
            {
                stats.Verify = new VerifyResult
                {
                    SourceDigest = digestProblem is null ? MemoryDigest.ToHex(sourceDigest) : "",
                    DestDigest = doneMessage.Digest is { } d ? MemoryDigest.ToHex(d) : "",
                    Match = digestProblem is null && doneMessage.Digest == sourceDigest,
                };
                if (!stats.Verify.Match)
                    stats.PostCommitProblem = digestProblem ?? $"memory digests differ after post-copy: source {stats.Verify.SourceDigest}, destination {stats.Verify.DestDigest}";
            }
        }
        finally
        {
            EndSwitchoverPriority();
            JoinSourceDigest();
        }
    }

    /// <summary>
    /// Times post-copy paused for a lost connection so far. A pause can end (a resume) between two looks at
    /// <see cref="Progress"/>; this says it happened.
    /// </summary>
    public int PostcopyPauses => Volatile.Read(ref _postcopyPauses);
    private int _postcopyPauses;

    /// <summary>Why the post-copy link went down, while <see cref="MigrationStatus.PostcopyPaused"/>; else null.</summary>
    public string? PausedReason
    {
        get
        {
            lock (_gate) return _linkDown ? _linkReason : null;
        }
    }

    /// <summary>
    /// Resume a post-copy paused by a lost connection: connect again (through <paramref name="connector"/>, or the
    /// original one when null, e.g. to reach the destination at a new address) and carry on from what the destination
    /// still lacks. Any thread. Throws <see cref="InvalidOperationException"/> unless the migration is postcopy-paused.
    /// A reconnection that fails leaves it paused, with the reason in <see cref="PausedReason"/>.
    /// </summary>
    public void ResumePostcopy(IMigrationConnector? connector = null)
    {
        lock (_gate)
        {
            if (!_linkDown || _finished || _failure is not null)
                throw new InvalidOperationException("the migration is not paused in post-copy");
            _resumeConnector = connector ?? _connector;
        }
        _resumeAsked.Set();
    }

    /// <summary>
    /// A connection failure (reset, closed, silent): before the post-copy commit the migration fails and the source
    /// runs on; after it, the link is down and both sides wait for a new one (postcopy-paused). Any thread.
    /// </summary>
    private void OnLinkFailure(string reason)
    {
        MigrationConnection? connection;
        lock (_gate)
        {
            if (!(_committed && _postcopyActive))
            {
                connection = null;
            }
            else
            {
                if (_finished || _failure is not null || _linkDown) return;
                _linkDown = true;
                _linkReason = reason;
                connection = _connection;
            }
        }
        if (connection is null)
        {
            Fail(MigrationStatus.Failed, reason, notify: false, ProtocolErrorCode.None);
            return;
        }
        Interlocked.Increment(ref _postcopyPauses);
        _status = MigrationStatus.PostcopyPaused;
        _link.Cancel();
        connection.Abort();
        _linkLost.Set();
    }

    /// <summary>
    /// Post-copy recovery on the migration thread: retire the lost connection's threads, connect again with a resuming
    /// Hello, take the destination's missing map, and restart the push and the urgent channel from it. A failure to
    /// reconnect leaves the migration paused (the next resume tries again).
    /// </summary>
    private void Reconnect(CountdownEvent done)
    {
        // The old page channels first, their rate-limited wrappers included: a sender waiting for bandwidth (seconds
        // under a low cap) is released only by its channel's abort, and one still waiting after the new connection is
        // up would act on it (its failure counted against the new link, its pass's end against the new push).
        IMigrationChannel[] oldChannels;
        lock (_gate)
        {
            oldChannels = _pageChannels;
            _retiredSenders.AddRange(_senders);
        }
        foreach (var p in oldChannels) p.Abort();
        foreach (var sender in _senders) sender.Stop(TimeSpan.FromSeconds(5));
        _reader?.Join(TimeSpan.FromSeconds(5));
        foreach (var p in oldChannels) p.Dispose();
        _connection?.Dispose();
        _senders = [];
        lock (_gate) _pageChannels = [];

        IMigrationConnector connector;
        lock (_gate) connector = _resumeConnector ?? _connector;
        var link = CancellationTokenSource.CreateLinkedTokenSource(_abort.Token);
        MigrationConnection? connection = null;
        try
        {
            connection = connector.Connect(_options.PageChannels, true, link.Token);
            if (connection.Urgent is null || connection.Pages.Count != _options.PageChannels)
                throw new MigrationException("the transport did not open the channels post-copy needs");
            var control = new ProtocolWriter(connection.Control);
            var reader = new ProtocolReader(connection.Control);
            var regions = _guest.Regions;
            var caps = ProtocolCapabilities.Postcopy | ProtocolCapabilities.UrgentChannel | ProtocolCapabilities.PostcopyResume
                | (_options.Verify ? ProtocolCapabilities.Verify : ProtocolCapabilities.None);
            // Bounded like the first handshake: a destination that accepts and says nothing must not hold us.
            using var deadline = _time.CreateTimer(static c => ((IMigrationChannel)c!).Abort(), connection.Control, _options.PeerTimeout, Timeout.InfiniteTimeSpan);
            control.WriteHello(Hello(caps));
            var welcome = reader.Expect<WelcomeMessage>();
            CheckWelcome(welcome, caps);
            if ((welcome.Capabilities & ProtocolCapabilities.PostcopyResume) == 0)
                throw new MigrationException("the destination did not accept resuming post-copy");
            var toSend = new DirtyBitmap(_guest.TotalPages);
            ulong[] first = new ulong[regions.Count];
            for (int r = 1; r < regions.Count; r++) first[r] = first[r - 1] + regions[r - 1].Pages;
            while (true)
            {
                var m = reader.Read() ?? throw new MigrationTransportException("destination closed the control channel while resuming");
                if (m is KeepaliveMessage) continue;
                if (m is ResumeReadyMessage) break;
                if (m is not MissingPagesMessage mp) throw ProtocolReader.Unexpected(m, "MissingPages or ResumeReady");
                mp.Validate(regions);
                foreach (var (start, count) in mp.Runs) toSend.SetRange(first[mp.Region] + start, first[mp.Region] + start + count);
            }
            deadline.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);

            var regionPages = new ulong[regions.Count];
            for (int r = 0; r < regionPages.Length; r++) regionPages[r] = regions[r].Pages;
            var prepager = new Postcopy.Prepager(toSend, regionPages, _options.Prepaging);
            var (senders, channels) = CreateSenders(connection, link.Token);
            lock (_gate)
            {
                _connection = connection;
                _control = control;
                _pageChannels = channels;
                _senders = senders;
                _link = link;
                _prepager = prepager;
                // Heard now, before the link counts as up: the watchdog would otherwise judge the new link by the
                // silence of the old one and drop it at its next tick.
                Volatile.Write(ref _lastHeard, _time.GetTimestamp());
                _linkLost.Reset();
                _linkDown = false;
                _linkReason = null;
                // Here, so that a loss of the new link right after (OnLinkFailure: the flag, then postcopy-paused)
                // cannot be overwritten by it.
                _status = MigrationStatus.PostcopyActive;
            }
            SetUrgent(new Postcopy.UrgentSender(connection.Urgent, regions, prepager));
            _recoveries++;
            _reader = new Thread(() => ReadReturnPath(reader)) { IsBackground = true, Name = "ferry-return-path" };
            _reader.Start();
            done.Reset(senders.Length);
            foreach (var sender in senders)
            {
                sender.StartThread();
                sender.StartPostcopy(prepager, PostcopyFlushSequence, done, _populatedForPush);
            }
            Report();
        }
        catch (Exception e) when (e is not OperationCanceledException || !_abort.IsCancellationRequested)
        {
            // Still paused; say why, and wait for the next resume.
            connection?.Abort();
            connection?.Dispose();
            link.Dispose();
            lock (_gate) _linkReason = $"resume failed: {Describe(e)}";
            _linkLost.Set();
        }
    }

    /// <summary>A destination's Welcome must speak this source's version and accept only what was offered.</summary>
    private static void CheckWelcome(WelcomeMessage welcome, ProtocolCapabilities offered)
    {
        if (welcome.Version != MigrationProtocol.CurrentVersion)
            throw new MigrationProtocolException($"destination answered version {welcome.Version}; this source speaks {MigrationProtocol.CurrentVersion}");
        if ((welcome.Capabilities & ~offered) != 0)
            throw new MigrationProtocolException($"destination accepted capabilities that were not offered: {welcome.Capabilities}");
    }

    /// <summary>This migration's Hello: identity, layout, channels, token, and <paramref name="capabilities"/>.</summary>
    private HelloMessage Hello(ProtocolCapabilities capabilities)
    {
        var regions = _guest.Regions;
        var layout = new (ulong, ulong)[regions.Count];
        for (int i = 0; i < regions.Count; i++) layout[i] = (regions[i].GuestPhysicalAddress, regions[i].Size);
        var token = Token is null ? ReadOnlyMemory<byte>.Empty : System.Text.Encoding.UTF8.GetBytes(Token);
        return new HelloMessage(MigrationProtocol.CurrentVersion, VmId, MigrationProtocol.PageSize,
            (ushort)_options.PageChannels, capabilities, layout, token);
    }

    /// <summary>One sender per page channel of <paramref name="connection"/>, each behind the shared rate limit.</summary>
    private (PageSender[] Senders, IMigrationChannel[] Channels) CreateSenders(MigrationConnection connection, CancellationToken token)
    {
        var senders = new PageSender[_options.PageChannels];
        var channels = new IMigrationChannel[senders.Length];
        for (int i = 0; i < senders.Length; i++)
        {
            channels[i] = new RateLimitedChannel(connection.Pages[i], _limiter);
            senders[i] = new PageSender(i, senders.Length, channels[i], _guest.Regions, OnSenderFailure, token);
        }
        return (senders, channels);
    }

    /// <summary>Sequence of the Flush that ends each page channel's post-copy push.</summary>
    private const ulong PostcopyFlushSequence = 2;

    /// <summary>Complete's sequence when no page went out before a post-copy switchover (and no Flush either).</summary>
    private const ulong NoPagesSentSequence = 0;

    /// <summary>Send the missing-page map as MissingPages records of runs; returns how many pages it names.</summary>
    /// <summary>
    /// Write <paramref name="bitmap"/> (bits numbered across <paramref name="regions"/>) as MissingPages records, using
    /// <paramref name="runs"/> (<see cref="MigrationProtocol.MaxMissingRuns"/> long) as scratch; returns the pages.
    /// Plain arrays only: it runs inside the downtime, where a collection type's first use costs its JIT compilation
    /// (~1 ms for a List of tuples); <see cref="SwitchoverWarmup.Postcopy"/> runs it once before the pause.
    /// </summary>
    internal static long WriteMissingPages(ProtocolWriter writer, DirtyBitmap bitmap, IReadOnlyList<MemoryRegion> regions, (ulong First, uint Count)[] runs)
        => WriteRuns(writer, bitmap, regions, runs, static (region, slice) => new MissingPagesMessage(region, slice));

    /// <summary>
    /// Pure post-copy with PopulatedMap: the pages <paramref name="populated"/> names (those holding data), as
    /// PopulatedPages records, then an empty one flagged Last. Returns how many pages.
    /// </summary>
    internal static long WritePopulatedPages(ProtocolWriter writer, DirtyBitmap populated, IReadOnlyList<MemoryRegion> regions)
    {
        long total = WriteRuns(writer, populated, regions, new (ulong, uint)[MigrationProtocol.MaxMissingRuns],
            static (region, slice) => new PopulatedPagesMessage(region, slice, Last: false));
        writer.Write(new PopulatedPagesMessage(0, [], Last: true));
        return total;
    }

    private static long WriteRuns(ProtocolWriter writer, DirtyBitmap bitmap, IReadOnlyList<MemoryRegion> regions, (ulong First, uint Count)[] runs,
        Func<ushort, (ulong First, uint Count)[], ControlMessage> record)
    {
        long total = 0;
        ulong bitBase = 0;
        int n = 0;
        for (int r = 0; r < regions.Count; r++)
        {
            ulong pages = regions[r].Pages;
            foreach (var run in bitmap.Runs(bitBase, bitBase + pages, uint.MaxValue))
            {
                runs[n++] = (run.Start - bitBase, (uint)run.Length);
                total += (long)run.Length;
                if (n == runs.Length) Flush(r);
            }
            Flush(r);
            bitBase += pages;
        }
        return total;

        void Flush(int region)
        {
            if (n == 0) return;
            writer.Write(record((ushort)region, runs.AsSpan(0, n).ToArray()));
            n = 0;
        }
    }

    /// <summary>
    /// One pass over <paramref name="bitmap"/> on every sender; returns (pages, wire bytes) of the pass. With
    /// <paramref name="round"/> given and landed sync negotiated, it returns only once the destination confirmed it
    /// landed everything sent (MigrationProtocol.cs, "Landed sync").
    /// </summary>
    private (long Pages, long Bytes) SendPass(DirtyBitmap bitmap, PageBatchFlags flags, ulong flush, CountdownEvent done, DirtyBitmap? populated = null, int round = -1,
        Action? tick = null)
    {
        long pagesBefore = PagesSentNow(), bytesBefore = BytesSentNow();
        _pass = new PassProgress((long)bitmap.Count(), pagesBefore, bytesBefore, _time.GetTimestamp());
        bool sync = _landedSync && round >= 0;
        if (sync)
        {
            // Armed before any marker of this round can be echoed; under the lock so that a late echo of an earlier
            // round cannot count against this one.
            lock (_syncLock)
            {
                _landed.Reset(_senders.Length);
                _syncEchoed = 0;
                _syncRound = round;
            }
        }
        done.Reset(_senders.Length);
        for (int i = 0; i < _senders.Length; i++)
            _senders[i].Start(bitmap, flags, flush, done, populated, sync ? Marker(round, i) : 0);
        WaitTicking(done, Timeout.InfiniteTimeSpan, tick);
        _abort.Token.ThrowIfCancellationRequested(); // a sender failed: its reason is recorded
        if (sync && !WaitLanded(tick, out bool flushing))
        {
            bool atLimit = flushing && _time.GetTimestamp() >= _roundsDeadline;
            Fail(MigrationStatus.Failed, atLimit
                ? $"destination was still making round {round} durable at the pre-copy time limit ({_options.Timeout.TotalSeconds:F0} s): its storage is slower than the copy"
                : $"destination did not confirm landing round {round} within {_options.PeerTimeout.TotalSeconds:F1} s{(flushing ? " of saying it was making it durable" : "")}",
                notify: true, ProtocolErrorCode.Timeout);
            _abort.Token.ThrowIfCancellationRequested();
        }
        _pass = null;
        return (PagesSentNow() - pagesBefore, BytesSentNow() - bytesBefore);
    }

    /// <summary>How often a pass's wait calls its tick (which decides itself whether it is due).</summary>
    private static readonly TimeSpan TickPeriod = TimeSpan.FromMilliseconds(10);

    /// <summary><paramref name="wait"/>'s Wait (infinite: <see cref="Timeout.InfiniteTimeSpan"/>), calling
    /// <paramref name="tick"/> every <see cref="TickPeriod"/> meanwhile; whether it was set.</summary>
    private bool WaitTicking(CountdownEvent wait, TimeSpan timeout, Action? tick)
    {
        if (tick is null) return wait.Wait(timeout, _abort.Token);
        long start = _time.GetTimestamp();
        while (true)
        {
            var slice = TickPeriod;
            if (timeout != Timeout.InfiniteTimeSpan)
            {
                var left = timeout - _time.GetElapsedTime(start);
                if (left <= TimeSpan.Zero) return wait.IsSet;
                if (left < slice) slice = left;
            }
            if (wait.Wait(slice, _abort.Token)) return true;
            tick();
        }
    }

    /// <summary>
    /// Wait for every channel's echo of the pass's marker, for at most the peer timeout since the wait began or since
    /// the destination last said it was still making the pass durable (capability LandedProgress); whether they came.
    /// </summary>
    /// <remarks>Said progress extends the wait only up to the rounds' time limit (<see cref="MigrationOptions.Timeout"/>):
    /// a flush that never ends (storage gone, a hard-mounted NFS that no longer answers) or a destination that says so
    /// forever must not hold the migration, whose limits are otherwise looked at between rounds only.</remarks>
    private bool WaitLanded(Action? tick, out bool flushing)
    {
        long start = _time.GetTimestamp();
        Volatile.Write(ref _landedProgressAt, start);
        while (true)
        {
            long heard = Volatile.Read(ref _landedProgressAt);
            flushing = heard != start;
            // Progress counts until the rounds' time limit; before any, the peer timeout from the start.
            var cap = _roundsDeadline == long.MaxValue ? TimeSpan.MaxValue
                : TimeSpan.FromTicks(Math.Max((_options.PeerTimeout - _time.GetElapsedTime(start)).Ticks,
                    _time.GetElapsedTime(_time.GetTimestamp(), _roundsDeadline).Ticks));
            var left = _options.PeerTimeout - _time.GetElapsedTime(heard);
            if (cap < left) left = cap;
            if (left <= TimeSpan.Zero) return _landed.IsSet;
            if (WaitTicking(_landed, left, tick)) return true;
        }
    }

    // When the pre-copy rounds reach their time limit (MigrationOptions.Timeout), as a timestamp; long.MaxValue if never.
    private long _roundsDeadline = long.MaxValue;

    private void StartRoundsClock(long start)
    {
        double ticks = _options.Timeout.TotalSeconds * _time.TimestampFrequency;
        _roundsDeadline = ticks >= long.MaxValue - (double)start ? long.MaxValue : start + (long)ticks;
    }

    // When the wait for the pass's echoes began, or the destination last said it was still making the pass durable.
    private long _landedProgressAt;

    /// <summary>The landed-sync marker of <paramref name="round"/> on channel <paramref name="channel"/>.</summary>
    private static ulong Marker(int round, int channel) => MarkerTag | ((ulong)(uint)round << 8) | (uint)channel;

    /// <summary>A destination Keepalive with the marker tag: count it if it is an awaited round's, once per channel.</summary>
    private void OnMarkerEcho(ulong value)
    {
        ulong round = (value >> 8) & ((1UL << 40) - 1);
        int channel = (int)(value & 0xFF);
        lock (_syncLock)
        {
            if ((long)round != _syncRound || channel >= _senders.Length) return;
            if ((value & MigrationProtocol.LandedProgressFlag) != 0)
            {
                if (!_landedProgress) return; // not agreed: neither an echo nor a reason to wait longer
                // Not landed yet, but on its way to storage: the wait goes on (WaitLanded).
                Volatile.Write(ref _landedProgressAt, _time.GetTimestamp());
                return;
            }
            long bit = 1L << channel;
            if ((_syncEchoed & bit) != 0) return;
            _syncEchoed |= bit;
            _landed.Signal();
        }
    }

    // The source's memory digest (verify), computed while the switchover goes on; joined before StopAndCopy returns.
    private Task<UInt128>? _sourceDigest;

    private void JoinSourceDigest()
    {
        var pending = Interlocked.Exchange(ref _sourceDigest, null);
        if (pending is null) return;
        try
        {
            pending.Wait();
        }
        catch (AggregateException)
        {
            // The migration already failed or ends with the comparison above; the digest's own fault adds nothing.
        }
    }

    /// <summary>Most missing pages a hybrid switchover sends before the guest starts (see PostcopySwitchover).</summary>
    internal const ulong SwitchoverPages = 512;

    // Raised by PauseForSwitchover, lowered (on the same thread) once the switchover is over.
    private LatencyPriority.Raised _switchoverPriority;

    private void EndSwitchoverPriority()
    {
        _switchoverPriority.Dispose();
        _switchoverPriority = default;
    }

    /// <summary>Pause the guest for the switchover; returns when the pause began and when it was done (stats.PauseMs between).</summary>
    private (long PauseStart, long Paused) PauseForSwitchover(StatsBuilder stats, ref bool paused)
    {
        _status = MigrationStatus.Device;
        Report();
        // From the pause until the destination runs the guest, this thread's every wake-up delay is downtime.
        _switchoverPriority = LatencyPriority.Raise();
        long pauseStart = _time.GetTimestamp();
        _guest.Pause();
        paused = true;
        long pausedAt = _time.GetTimestamp();
        TraceLog.Mark("source: guest paused");
        stats.PauseMs = _time.GetElapsedTime(pauseStart, pausedAt).TotalMilliseconds;
        return (pauseStart, pausedAt);
    }

    /// <summary>Digest the paused source's memory on a thread of its own, beside the switchover (joined by <see cref="JoinSourceDigest"/>).</summary>
    private void StartSourceDigest(StatsBuilder stats, Func<IReadOnlyList<MemoryRegion>, UInt128> digest, bool lower = false)
    {
        long d0 = _time.GetTimestamp();
        _sourceDigest = Task.Factory.StartNew(() =>
        {
            // A thread of its own (LongRunning), which ends with the digest: its policy dies with it.
            using var lowered = lower ? LatencyPriority.Lower() : default;
            UInt128 value = digest(_guest.Regions);
            stats.SourceDigestMs = Ms(d0);
            return value;
        }, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
    }

    /// <summary>
    /// Send Commit (already decided under the gate). If the send fails, the record was not handed whole to the transport:
    /// the destination cannot have read a Commit and will never start the guest, so the decision is undone and the
    /// migration fails with the source resuming, which is better than losing the VM on both sides. A send that returned
    /// is a sent Commit: from then on the source never resumes.
    /// </summary>
    private void SendCommit()
    {
        try
        {
            _control!.WriteCommit();
        }
        catch (Exception e) when (e is MigrationTransportException or ObjectDisposedException)
        {
            lock (_gate)
            {
                _committed = false;
                _postcopyActive = false;
            }
            Fail(MigrationStatus.Failed, $"Commit could not be sent: {e.Message}", notify: false, ProtocolErrorCode.None);
            _abort.Token.ThrowIfCancellationRequested();
        }
    }

    private void StopAndCopy(StatsBuilder stats, DirtyBitmap bitmap, CountdownEvent done, ref bool paused)
    {
        // How long the switchover waited for the source's digest after Ready: verification's share of it, left out of
        // the downtime like the destination's digest.
        double sourceDigestWaitMs = 0;
        try
        {
            // The breakdown's parts are measured between consecutive timestamps, so they add up to the downtime exactly:
            // pause | final harvest + final pages until landed | device state until we commit | commit to Resumed.
            var (pauseStart, harvestStart) = PauseForSwitchover(stats, ref paused);

            // Final harvest: bitmap holds what the last round's harvest found; OR in what was written since. Counted as
            // final-page time (as QEMU counts its last bitmap sync in the downtime).
            _guest.HarvestDirtyLog(bitmap.Words);
            double harvestMs = Ms(harvestStart);

            if (_options.Verify && _sentHashes is null)
            {
                // The source stays paused until Commit, so its memory holds still while the final pages, the state and
                // the destination's load and digest go on: digest it meanwhile, on its own thread, and wait for it only
                // when Ready needs the comparison. What of it still holds up the switchover is left out of the downtime
                // (1 GiB takes ~40 ms here; in series with the destination's it doubled what the guest stood still).
                StartSourceDigest(stats, VerifyDigest.Compute);
            }

            long finalStart = _time.GetTimestamp();
            harvestMs = _time.GetElapsedTime(harvestStart, finalStart).TotalMilliseconds;
            var finalFlags = PageBatchFlags.FinalPass | (_options.ChecksumFinalPass ? PageBatchFlags.DataChecksummed : PageBatchFlags.None);
            var (pages, bytes) = SendPass(bitmap, finalFlags, SwitchoverFlushSequence, done);
            // Every page's hash as it went out (VerifyPageHashes): the final pass has recorded the last copies, and the
            // digest is one read of the hashes (2 MiB per GiB), not of memory.
            if (_sentHashes is { } sent) StartSourceDigest(stats, _ => { sent.HashMemory(onlyUnrecorded: true); return sent.Compute(); });
            long finalSent = _time.GetTimestamp();
            double finalSendMs = _time.GetElapsedTime(finalStart, finalSent).TotalMilliseconds;
            stats.Rounds.Add(new RoundStatistics
            {
                Round = stats.Rounds.Count, Pages = pages, Bytes = bytes, Milliseconds = finalSendMs,
                BandwidthBytesPerSecond = finalSendMs > 0 ? bytes / (finalSendMs / 1000) : 0,
                ThrottlePercent = _throttle,
            });
            Interlocked.Exchange(ref _remainingBytes, 0);

            long stateStart = finalSent; // contiguous with the final pass, so the timings add up exactly
            var sections = _guest.SaveState();
            long sendStart = _time.GetTimestamp();
            double saveMs = _time.GetElapsedTime(stateStart, sendStart).TotalMilliseconds;
            long stateBytes = 0;
            foreach (var section in sections)
            {
                _control!.WriteStateSection(section);
                stateBytes += section.Data.Length;
            }
            _completeSending = true;
            _control!.WriteComplete(SwitchoverFlushSequence, _options.Verify ? CompleteFlags.VerifyRequested : CompleteFlags.None);
            long completeSent = _time.GetTimestamp();
            TraceLog.Mark("source: complete sent");

            // Ready: the destination has every page and the state loaded. Bounded: a destination that keeps sending
            // keepalives but never answers must not hold the guest paused forever.
            if (!_readyArrived.Wait(_options.PeerTimeout, _abort.Token))
                Fail(MigrationStatus.Failed, $"destination did not answer Ready within {_options.PeerTimeout.TotalSeconds:F1} s of Complete", notify: true, ProtocolErrorCode.Timeout);
            _abort.Token.ThrowIfCancellationRequested();
            var ready = _ready!;
            // The return-path thread stamps Ready the moment it reads it, which on a fast peer can come before this
            // thread, back from the write, stamped Complete as sent. Ready answers a Complete the destination read and
            // then spent its load and digest time on, so Complete was sent that long before Ready at the latest (and not
            // before its own send began).
            long readyAt = Volatile.Read(ref _readyAt);
            long destWork = (long)((ready.LoadMicroseconds + (double)ready.DigestMicroseconds) / 1e6 * _time.TimestampFrequency);
            completeSent = Math.Max(sendStart, Math.Min(completeSent, readyAt - destWork));
            double sendStateMs = _time.GetElapsedTime(sendStart, completeSent).TotalMilliseconds;
            double readyWaitMs = _time.GetElapsedTime(completeSent, Volatile.Read(ref _readyAt)).TotalMilliseconds;
            stats.DestDigestMs = ready.DigestMicroseconds / 1000.0;
            // Final pages count until the destination had them all, not until our sends returned (they may sit in socket
            // buffers, and a destination faulting in fresh memory drains them slowly). On our clock the last Flush landed
            // at: Complete sent + one way (half the measured round trip) + the destination's Flush lag behind Complete
            // (negative when the pages were first). Bounded by what we know for sure: not before our sends returned, not
            // after Ready minus the destination's load and digest.
            double untilReady = _time.GetElapsedTime(finalStart, Volatile.Read(ref _readyAt)).TotalMilliseconds;
            double oneWayMs = TimeSpan.FromTicks(Volatile.Read(ref _controlRoundTripTicks)).TotalMilliseconds / 2;
            double landedMs = _time.GetElapsedTime(finalStart, completeSent).TotalMilliseconds + oneWayMs + (ready.FlushLagMicroseconds / 1000.0);
            landedMs = Math.Clamp(landedMs, finalSendMs, Math.Max(finalSendMs, untilReady - stats.DestDigestMs - (ready.LoadMicroseconds / 1000.0)));
            stats.FinalPagesMs = harvestMs + landedMs;
            UInt128 sourceDigest = default;
            if (_sourceDigest is { } pending)
            {
                long w0 = _time.GetTimestamp();
                sourceDigest = pending.GetAwaiter().GetResult();
                sourceDigestWaitMs = Ms(w0);
            }
            // Device state runs until we commit (set below), so our own wake-up after Ready is counted too.
            var timings = new SwitchoverTimings
            {
                Pause = stats.PauseMs, FinalHarvest = harvestMs, FinalPagesSend = finalSendMs, FinalPagesLanded = landedMs,
                DestFlushLag = ready.FlushLagMicroseconds / 1000.0, Save = saveMs,
                SendState = sendStateMs, ReadyWait = readyWaitMs, DestLoad = ready.LoadMicroseconds / 1000.0,
                SourceDigest = stats.SourceDigestMs, DestDigest = stats.DestDigestMs, StateBytes = stateBytes,
            };
            Switchover = timings;

            if (_options.Verify)
            {
                stats.Verify = new VerifyResult
                {
                    SourceDigest = MemoryDigest.ToHex(sourceDigest),
                    DestDigest = ready.Digest is { } d ? MemoryDigest.ToHex(d) : "",
                    Match = ready.Digest == sourceDigest,
                };
                if (!stats.Verify.Match)
                {
                    Fail(MigrationStatus.Failed, $"memory digests differ: source {stats.Verify.SourceDigest}, destination {stats.Verify.DestDigest}",
                        notify: true, ProtocolErrorCode.VerifyFailed);
                    _abort.Token.ThrowIfCancellationRequested();
                }
            }

            // The point of no return. From here the source never runs the guest again.
            lock (_gate)
            {
                if (_failure is not null) _abort.Token.ThrowIfCancellationRequested();
                _committed = true;
            }
            long commitAt = _time.GetTimestamp();
            stats.DeviceStateMs = _time.GetElapsedTime(finalStart, commitAt).TotalMilliseconds - landedMs - stats.DestDigestMs - sourceDigestWaitMs;
            timings = timings with { ReadyToCommit = _time.GetElapsedTime(Volatile.Read(ref _readyAt), commitAt).TotalMilliseconds - sourceDigestWaitMs };
            Switchover = timings;
            SendCommit();
            TraceLog.Mark("source: commit sent");
            if (_resumedArrived.Wait(_options.PeerTimeout) && _resumed is not null)
            {
                stats.ResumeMs = _time.GetElapsedTime(commitAt, Volatile.Read(ref _resumedAt)).TotalMilliseconds;
                Switchover = timings with { CommitToResumed = stats.ResumeMs };
                stats.Downtime = _time.GetElapsedTime(pauseStart, Volatile.Read(ref _resumedAt)).TotalMilliseconds
                    - sourceDigestWaitMs - stats.DestDigestMs;
            }
            else
            {
                // Still committed: the destination owns the VM. Downtime is unknown beyond our side's figure.
                stats.ResumeMs = Ms(commitAt);
                stats.Downtime = Ms(pauseStart) - sourceDigestWaitMs - stats.DestDigestMs;
                stats.PostCommitProblem = $"no Resumed from the destination within {_options.PeerTimeout.TotalSeconds:F1} s of Commit";
            }
            // The guest runs at the destination: nothing here is urgent any more, and a real-time thread that waits (the
            // check below) or finishes the statistics would hold a CPU the guest's harts want (traced on one host: this
            // thread ran 23 ms on end right after the resume while a destination hart waited for its CPU).
            EndSwitchoverPriority();
            if (_sentHashes is not null && stats.Verify is { Match: true } verified) CheckFrozenMemory(stats, verified);
        }
        finally
        {
            EndSwitchoverPriority();
            // Never leave a digest reading guest memory that its owner may unmap after a failure.
            JoinSourceDigest();
        }
    }

    /// <summary>
    /// VerifyPageHashes, after the commit: the digests compared before it were of what went out and what landed, which
    /// agree even when a page changed on the source after it was last sent without its write reaching the dirty log (a
    /// dirty-tracking bug: the destination runs on a stale page). The source's memory has held still since the pause,
    /// so its digest now, read at lowered priority (LatencyPriority.Lower) while the guest runs on at the destination,
    /// is what should have arrived.
    /// A difference cannot undo the commit; it is reported as post-copy's is, and the statistics say no match.
    /// </summary>
    private void CheckFrozenMemory(StatsBuilder stats, VerifyResult verified)
    {
        UInt128 frozen;
        try
        {
            frozen = Task.Factory.StartNew(() =>
            {
                using var lowered = LatencyPriority.Lower();
                return Postcopy.PageHashDigest.Of(_guest.Regions);
            }, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default).GetAwaiter().GetResult();
        }
        catch (RegionReadException e)
        {
            stats.PostCommitProblem = $"the source's memory could not be read again after the commit: {e.Message}";
            return;
        }
        string hex = MemoryDigest.ToHex(frozen);
        if (hex == verified.DestDigest) return;
        stats.Verify = verified with { SourceDigest = hex, Match = false };
        stats.PostCommitProblem = $"memory digests differ after the commit: the source's memory {hex}, what the destination received {verified.DestDigest} (a page changed on the source after it was last sent, without its write in the dirty log)";
    }

    // ---- the return path and liveness --------------------------------------------------------------------------

    private void ReadReturnPath(ProtocolReader reader)
    {
        // This thread serves post-copy's page requests and wakes the switchover on Ready and Resumed: it must not queue
        // behind the guest's or the push's threads each time a record arrives (see LatencyPriority), nor behind the
        // switchover thread's own push of system pages, which only the Ready read here stops.
        using var raised = LatencyPriority.RaiseAboveOthers();
        try
        {
            while (true)
            {
                var message = reader.Read();
                Volatile.Write(ref _lastHeard, _time.GetTimestamp());
                switch (message)
                {
                    case null:
                        OnControlLost("destination closed the control channel");
                        return;
                    case KeepaliveMessage k when (k.Timestamp & MarkerTagMask) == MarkerTag:
                        OnMarkerEcho(k.Timestamp);
                        break;
                    case KeepaliveMessage k:
                        OnKeepaliveEcho(k.Timestamp);
                        break;
                    // Violations told to the destination (notify) keep this loop reading until it closes: Finish waits
                    // for that end before aborting, which could otherwise discard the unread Error.
                    case ReadyMessage when !_completeSending || _readyArrived.IsSet:
                        // Acting on it would commit to a destination that has not loaded this guest's state.
                        Fail(MigrationStatus.Failed, "destination sent Ready before Complete, or twice", notify: true, ProtocolErrorCode.Protocol);
                        break;
                    case ReadyMessage r:
                        Volatile.Write(ref _readyAt, _time.GetTimestamp());
                        TraceLog.Mark("source: ready read");
                        _ready = r;
                        _readyArrived.Set();
                        break;
                    case ResumedMessage when !Volatile.Read(ref _committed):
                        // Commit is decided before it is sent, so a destination cannot have read it yet: a guest it
                        // says it runs was never handed over. This side keeps its own.
                        Fail(MigrationStatus.Failed, "destination sent Resumed before Commit", notify: true, ProtocolErrorCode.Protocol);
                        break;
                    case ResumedMessage m:
                        Volatile.Write(ref _resumedAt, _time.GetTimestamp());
                        TraceLog.Mark("source: resumed read");
                        _resumed = m;
                        _resumedArrived.Set();
                        // Post-copy goes on: requests, then PostcopyDone.
                        if (!Volatile.Read(ref _postcopyActive)) return;
                        break;
                    case PageRequestMessage request when Volatile.Read(ref _urgent) is not null:
                        OnPageRequest(request);
                        break;
                    case PostcopyDoneMessage d when Volatile.Read(ref _postcopyActive) && _postcopyDone is null:
                        Volatile.Write(ref _postcopyDoneAt, _time.GetTimestamp());
                        _postcopyDone = d;
                        _postcopyDoneArrived.Set();
                        return;
                    case ErrorMessage e:
                        Fail(MigrationStatus.Failed, $"destination reported {e.Code}: {e.Message}", notify: false, ProtocolErrorCode.None);
                        return;
                    case CancelMessage c:
                        Fail(MigrationStatus.Cancelled, $"destination cancelled: {c.Reason}", notify: false, ProtocolErrorCode.None);
                        return;
                    case PageRequestMessage:
                        Fail(MigrationStatus.Failed, "destination sent PageRequest, which pre-copy does not serve", notify: true, ProtocolErrorCode.Unsupported);
                        break;
                    default:
                        Fail(MigrationStatus.Failed, $"destination sent {message.Kind} on the return path", notify: true, ProtocolErrorCode.Protocol);
                        break;
                }
            }
        }
        catch (Exception e)
        {
            OnControlLost(Describe(e));
        }
    }

    /// <summary>A page the destination's guest waits for: validated, then queued for the urgent channel.</summary>
    private void OnPageRequest(PageRequestMessage request)
    {
        try
        {
            request.Validate(_guest.Regions);
        }
        catch (MigrationProtocolException e)
        {
            Fail(MigrationStatus.Failed, $"destination asked for pages outside guest memory: {e.Message}", notify: true, ProtocolErrorCode.Protocol);
            return;
        }
        if (_guest.Regions[request.Region].PrecopyOnly)
        {
            // Never missing there (the switchover sent all of it before the guest ran), and the urgent channel sends
            // from memory, which a region read through a reader has not here.
            Fail(MigrationStatus.Failed, $"destination asked for pages of region {request.Region}, which it had whole before its guest ran",
                notify: true, ProtocolErrorCode.Protocol);
            return;
        }
        try
        {
            _urgent!.Send(request.Region, request.FirstPage, request.Count);
        }
        catch (Exception e)
        {
            if (e is MigrationTransportException) OnLinkFailure($"urgent channel: {Describe(e)}");
            else Fail(MigrationStatus.Failed, $"urgent channel: {Describe(e)}", notify: true, ProtocolErrorCode.Internal);
        }
    }

    private void OnControlLost(string reason)
    {
        // After commit a closing destination is normal (it may close right after Resumed); just stop waiting, once the
        // loss is recorded (a wait for Resumed that ends here says why by it).
        OnLinkFailure($"control channel: {reason}");
        _resumedArrived.Set();
    }

    private void OnKeepaliveTick()
    {
        if (Volatile.Read(ref _finished)) return;
        var silent = _time.GetElapsedTime(Volatile.Read(ref _lastHeard));
        if (silent > _options.PeerTimeout)
        {
            OnLinkFailure($"destination silent for {silent.TotalSeconds:F1} s (peer timeout {_options.PeerTimeout.TotalSeconds:F1} s)");
            return;
        }
        if (!_keepalivesOn) return;
        SendKeepalive();
    }

    /// <summary>
    /// A round-trip sample for each round, its echo back before the round ends: the estimate of the state's time in the
    /// downtime is twice the shortest round trip, which starts as Hello to Welcome (the destination's build of its guest
    /// included: a copied disk's image reserved, ~45 ms on a loaded host), and the periodic keepalives (every third of
    /// the peer timeout) were too few to correct it in a short migration: a VM with a copied disk failed to converge
    /// for 30 rounds, its 25-page rest plus "95 ms of state" over a 50 ms limit.
    /// </summary>
    private void SampleRoundTrip() => SendKeepalive();

    /// <summary>Send a Keepalive stamped with our clock; its echo (same stamp) measures the control round trip.</summary>
    private void SendKeepalive()
    {
        // Stamps are kept non-zero so that 0 never matches (a fake clock may start at 0).
        ulong stamp = (ulong)_time.GetTimestamp() | 1UL << 63;
        Volatile.Write(ref _lastKeepaliveStamp, stamp);
        try
        {
            _control?.WriteKeepalive(stamp);
        }
        catch (Exception e) when (e is MigrationTransportException or ObjectDisposedException)
        {
            // The reader or a sender sees the same broken channel and records the reason.
        }
    }

    /// <summary>A destination Keepalive: the echo of our latest one gives a round-trip sample; others are its own.</summary>
    private void OnKeepaliveEcho(ulong stamp)
    {
        if (stamp != Volatile.Read(ref _lastKeepaliveStamp)) return;
        _echoArrived.Set();
        long rtt = _time.GetElapsedTime((long)(stamp & ~(1UL << 63))).Ticks;
        if (rtt >= 0 && rtt < Volatile.Read(ref _controlRoundTripTicks)) Volatile.Write(ref _controlRoundTripTicks, rtt);
    }

    private void OnSenderFailure(Exception e, PageSender sender)
    {
        // A sender of a connection post-copy has left behind: its link is known lost; the current one is not its.
        lock (_gate)
        {
            if (_retiredSenders.Contains(sender)) return;
        }
        if (e is MigrationTransportException)
        {
            // A page channel broke. If the destination failed on purpose, its Error (with the real reason: a bad
            // batch, a rejected state) is on the control channel right behind the break; give the return path
            // 250 ms to deliver it before settling for "channel lost".
            _abort.Token.WaitHandle.WaitOne(TimeSpan.FromMilliseconds(250));
        }
        if (e is MigrationTransportException) OnLinkFailure($"{sender.Name}: {Describe(e)}");
        // This side's own memory could not be read (a copied disk's image): nothing to do with the channel.
        else if (e is RegionReadException) Fail(MigrationStatus.Failed, e.Message, notify: true, ProtocolErrorCode.Internal);
        else Fail(MigrationStatus.Failed, $"{sender.Name}: {Describe(e)}", notify: true, ProtocolErrorCode.Internal);
    }

    /// <summary>
    /// Record the first failure (any thread) and wake every engine thread. Page channels are aborted at once (a
    /// sender may be blocked on a full pipe to a hung peer). The control channel is left to the migration thread to
    /// tell the destination why (Cancel/Error) when <paramref name="notify"/>, with a 1 s grace after which it is
    /// aborted anyway in case the migration thread itself is blocked on it. No effect after commit.
    /// </summary>
    /// <param name="abandonIfPaused">An operator's cancel: a post-copy paused by a lost link (decided under the lock) is
    /// abandoned instead (failed, nobody told).</param>
    private void Fail(MigrationStatus status, string reason, bool notify, ProtocolErrorCode code, bool abandonIfPaused = false)
    {
        lock (_gate)
        {
            if (_finished || _failure is not null) return;
            if (abandonIfPaused && _linkDown)
            {
                (status, reason, notify) = (MigrationStatus.Failed, "post-copy abandoned by the operator while paused", false);
            }
            // After Commit a failure changes nothing, except in post-copy, where the guest's memory is still moving:
            // then it ends the migration (the VM is lost), though a cancel is refused.
            if (_committed && (!_postcopyActive || status == MigrationStatus.Cancelled)) return;
            _failure = reason;
            _failureStatus = status;
            _notifyPeer = notify;
            _notifyCode = code;
        }
        _abort.Cancel();
        var connection = _connection;
        if (connection is null) return;
        foreach (var p in connection.Pages) p.Abort();
        connection.Urgent?.Abort();
        IMigrationChannel[] limited;
        lock (_gate) limited = _pageChannels;
        foreach (var p in limited) p.Abort();
        if (!notify) connection.Control.Abort();
        else _controlAbortTimer = _time.CreateTimer(static c => ((IMigrationChannel)c!).Abort(), connection.Control, TimeSpan.FromSeconds(1), Timeout.InfiniteTimeSpan);
    }

    // ---- the end -----------------------------------------------------------------------------------------------

    private MigrationStatistics Finish(StatsBuilder stats, bool paused, bool dirtyLogOn)
    {
        string? failure;
        bool lostInPostcopy;
        lock (_gate)
        {
            _finished = true;
            failure = _failure;
            lostInPostcopy = _committed && _failure is not null;
        }
        _keepalive?.Dispose();
        _progressTimer?.Dispose();
        _pass = null;
        var connection = _connection;
        if (failure is not null)
        {
            // Restore the guest first (every millisecond paused is downtime): unthrottled, not logging, running. Never
            // after a post-copy Commit: the destination ran the VM, and two copies must never run.
            _guest.SetThrottle(0);
            if (dirtyLogOn) _guest.StopDirtyLog();
            if (paused && !lostInPostcopy) _guest.Resume();
            if (connection is not null && _notifyPeer && _control is not null)
            {
                try
                {
                    if (_notifyCode == ProtocolErrorCode.None) _control.WriteCancel(failure);
                    else _control.WriteError(_notifyCode, failure);
                    // Let the destination read it and close (the reader then sees the end) before we abort, which
                    // may discard unread bytes; bounded by the 1 s abort timer armed in Fail.
                    _reader?.Join(TimeSpan.FromSeconds(1));
                }
                catch (Exception e) when (e is MigrationTransportException or ObjectDisposedException or MigrationException)
                {
                    // Best effort: the destination also fails on the closed connection.
                }
            }
            connection?.Abort();
        }
        else
        {
            _guest.StopDirtyLog();
        }
        // Senders must be out of guest memory before Run returns (the caller may unmap it next); they exit at once
        // on the abort, the timeout only guards against a transport that ignores Abort. Their rate-limited channels
        // too: a sender waiting for bandwidth is released only by its own channel's abort.
        IMigrationChannel[] limitedNow;
        lock (_gate) limitedNow = _pageChannels;
        foreach (var p in limitedNow) p.Abort();
        foreach (var s in _senders) s.Stop(TimeSpan.FromSeconds(5));
        connection?.Abort();
        _reader?.Join(TimeSpan.FromSeconds(5));
        // After the threads that may call Fail (which arms this timer) have ended.
        _controlAbortTimer?.Dispose();
        // The rate-limited wrappers own a cancellation source each (and dispose the page channel they wrap, as the
        // connection does next: both are idempotent).
        IMigrationChannel[] limited;
        lock (_gate) limited = _pageChannels;
        foreach (var p in limited) p.Dispose();
        connection?.Dispose();

        _status = failure is null ? MigrationStatus.Completed : _failureStatus;
        long normal = 0, zero = 0;
        foreach (var s in AllSenders())
        {
            normal += s.NormalPages;
            zero += s.ZeroPages;
        }
        var result = new MigrationStatistics
        {
            Status = _status,
            Error = lostInPostcopy
                ? $"post-copy failed after the switchover: {failure}; the VM ran only on the destination without all of its memory and is lost"
                : failure ?? stats.PostCommitProblem,
            Mode = _options.Mode switch { MigrationMode.Postcopy => "postcopy", MigrationMode.Hybrid => "hybrid", _ => "precopy" },
            Postcopy = stats.Postcopy,
            MemoryBytes = (long)(_guest.TotalPages * MemoryRegion.PageSize),
            TotalMs = Ms(_startTimestamp),
            SetupMs = stats.SetupMs,
            DowntimeMs = failure is null ? Math.Max(0, stats.Downtime) : 0,
            DowntimeBreakdownMs = failure is null
                ? new DowntimeBreakdown { Pause = stats.PauseMs, FinalPages = stats.FinalPagesMs, DeviceState = stats.DeviceStateMs, Resume = stats.ResumeMs }
                : new DowntimeBreakdown(),
            BytesSent = BytesSentNow(),
            Pages = new PageCounts { Normal = normal, Zero = zero },
            Rounds = stats.Rounds,
            ThrottlePercent = _throttle,
            Verify = stats.Verify,
            Switchover = failure is null ? Switchover : null,
            SwitchoverReason = _switchReasonText ?? SwitchOverReason switch
            {
                Policy.SwitchOverReason.Converged => "converged",
                Policy.SwitchOverReason.ForcedByTimeout => "forced_by_timeout",
                Policy.SwitchOverReason.ForcedByMaxRounds => "forced_by_max_rounds",
                _ => null,
            },
            ExpectedDowntimeMs = stats.ExpectedDowntimeMs,
        };
        Report(final: true);
        return result;
    }

    // ---- helpers -----------------------------------------------------------------------------------------------

    /// <summary>Every page sender of this migration: the current connection's and those of connections lost in post-copy.</summary>
    private PageSender[] AllSenders()
    {
        lock (_gate) return _retiredSenders.Count == 0 ? _senders : [.. _retiredSenders, .. _senders];
    }

    /// <summary>Make <paramref name="urgent"/> the urgent channel's sender (its pages and bytes count with the others').</summary>
    private void SetUrgent(Postcopy.UrgentSender urgent)
    {
        lock (_gate) _urgentSenders.Add(urgent);
        Volatile.Write(ref _urgent, urgent);
    }

    private long BytesSentNow()
    {
        long n = 0;
        foreach (var s in AllSenders()) n += s.BytesSent;
        lock (_gate) foreach (var u in _urgentSenders) n += u.BytesSent;
        return n;
    }

    private long PagesSentNow()
    {
        long n = 0;
        foreach (var s in AllSenders()) n += s.NormalPages + s.ZeroPages;
        return n;
    }

    private void Report(bool final = false)
    {
        if (_progressSink is null) return;
        lock (_reportGate)
        {
            if (_reportsClosed) return;
            _reportsClosed = final;
            _progressSink.Report(Progress);
        }
    }

    /// <summary>A pass in flight: the pages it sends, and the send counters and time when it began.</summary>
    private sealed record PassProgress(long Pages, long StartPages, long StartBytes, long StartTimestamp);

    private double Ms(long since) => _time.GetElapsedTime(since).TotalMilliseconds;

    private static string Describe(Exception e) => e switch
    {
        MigrationException or IOException => e.Message,
        _ => $"{e.GetType().Name}: {e.Message}",
    };

    /// <summary>Figures gathered along the way, turned into <see cref="MigrationStatistics"/> at the end.</summary>
    private sealed class StatsBuilder
    {
        public List<RoundStatistics> Rounds { get; } = [];
        public double SetupMs;
        public double PauseMs;
        public double FinalPagesMs;
        public double DeviceStateMs;
        public double ResumeMs;
        public double Downtime;
        public double SourceDigestMs;
        public double DestDigestMs;
        public VerifyResult? Verify;
        public string? PostCommitProblem;
        public PostcopyStatistics? Postcopy;
        public double? ExpectedDowntimeMs;
    }
}
