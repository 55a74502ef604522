using System.Reflection;
using System.Runtime.InteropServices;
using System.Runtime.CompilerServices;
using Ferry.Migration.Guest;
using Ferry.Migration.Memory;
using Ferry.Migration.Protocol;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Precopy;

/// <summary>
/// Runs, before the guest is paused, the code that otherwise first runs inside the downtime: a method's first call
/// costs its JIT compilation (0.1-1 ms each; the switchover path touches a few dozen, and ROUND2 found first-call JIT
/// among the largest parts of a 31.7 ms device_state). The engine's encoders and decoders are dry-run on an in-memory
/// channel pair with scratch data; the guest's own switchover methods cannot be run early (SaveState needs a paused
/// guest), so their implementations are only compiled with <see cref="RuntimeHelpers.PrepareMethod(RuntimeMethodHandle)"/>.
/// </summary>
internal static class SwitchoverWarmup
{
    /// <summary>Source side: state sections, Complete, Commit out; Ready and Resumed in; a data-checksummed batch.</summary>
    public static void Source(IMigrationSource guest)
    {
        var (a, b) = InMemoryTransport.CreatePair("warmup", capacity: 64 << 10);
        using (a)
        using (b)
        {
            var writer = new ProtocolWriter(a);
            writer.WriteStateSection(new StateSection("warmup", 1, new byte[256]));
            writer.WriteComplete(1, CompleteFlags.VerifyRequested);
            writer.WriteCommit();
            var peer = new ProtocolWriter(b);
            peer.WriteReady(1, 2, UInt128.One, 3);
            peer.WriteResumed(4);
            var reader = new ProtocolReader(a);
            reader.Expect<ReadyMessage>();
            reader.Expect<ResumedMessage>();
        }
        DryRunChecksummedBatches();
        Prepare(guest, typeof(IMigrationSource), nameof(IMigrationSource.SaveState));
        Prepare(guest, typeof(IMigrationSource), nameof(IMigrationSource.Pause));
        Prepare(guest, typeof(IMigrationSource), nameof(IMigrationSource.StopDirtyLog));
    }

    /// <summary>Destination side: state sections, Complete and Commit in; Ready and Resumed out.</summary>
    public static void Destination(IMigrationTarget target)
    {
        var (a, b) = InMemoryTransport.CreatePair("warmup", capacity: 64 << 10);
        using (a)
        using (b)
        {
            var peer = new ProtocolWriter(b);
            peer.WriteStateSection(new StateSection("warmup", 1, new byte[256]));
            peer.WriteComplete(1, CompleteFlags.VerifyRequested);
            peer.WriteCommit();
            var reader = new ProtocolReader(a);
            reader.Expect<StateSectionMessage>();
            reader.Expect<CompleteMessage>();
            reader.Expect<CommitMessage>();
            var writer = new ProtocolWriter(a);
            writer.WriteReady(1, 2, UInt128.One, 3);
            writer.WriteResumed(4);
        }
        DryRunChecksummedBatches();
        Prepare(target, typeof(IMigrationTarget), nameof(IMigrationTarget.LoadState));
        Prepare(target, typeof(IMigrationTarget), nameof(IMigrationTarget.Start));
    }

    /// <summary>
    /// The final pass can hash page data on both sides (DataChecksummed: a source may ask for it, MigrationOptions.
    /// ChecksumFinalPass), code no pre-copy round runs. Run once, it
    /// stays tier-0 JIT code, and the final pass then cost ~20 µs per page instead of ~2.5 (measured with
    /// DOTNET_TC_QuickJit=0 as the control). So encode and decode such batches more than the 30 calls after which
    /// the runtime re-compiles a method optimised in the background; this runs at setup, long before the pause.
    /// (The `ferry` command compiles methods with loops optimised on their first call, where one call would do; a VMM
    /// embedding the engine may not.)
    /// </summary>
    internal static void DryRunChecksummedBatches()
    {
        // 64 KiB pipe: one batch of 3 pages is written, then read, so the writer never blocks on a full pipe.
        var (a, b) = InMemoryTransport.CreatePair("warmup-pages", capacity: 64 << 10);
        using (a)
        using (b)
            DryRunBatches(a, b);
    }

    private static void DryRunBatches(IMigrationChannel send, IMigrationChannel receive)
    {
        const int Batches = 40;
        using var scratch = new ScratchPages(4, fill: 0);
        var region = scratch.Region;
        var writer = new PageBatchWriter(send);
        var reader = new PageBatchReader(receive, [region]);
        PageRun[] runs = [new(0, 1, PageEncoding.Normal), new(1, 1, PageEncoding.Zero), new(2, 2, PageEncoding.Normal)];
        for (int i = 0; i < Batches; i++)
        {
            writer.WriteBatch(0, region, runs, PageBatchFlags.FinalPass | PageBatchFlags.DataChecksummed);
            reader.ReadNext();
        }
    }

    /// <summary>
    /// Post-copy's switchover and first faults run code no pre-copy round runs: the missing-page map, the prepager, the
    /// urgent sender, the post-copy batch path and its installs, the per-page digest. Measured on the first post-copy
    /// of a process (1 GiB in-process guest, 2 cores): downtime 40-100 ms against 15-25 ms once warm. So dry-run them
    /// here, on scratch memory, before the guest pauses.
    /// </summary>
    public static void Postcopy(object guestSide)
    {
        var (a, b) = InMemoryTransport.CreatePair("warmup-postcopy", capacity: 256 << 10);
        using (a)
        using (b)
        {
            var writer = new ProtocolWriter(a);
            var reader = new ProtocolReader(b);
            var map = new DirtyBitmap(16);
            map.SetRange(0, 1);
            map.SetRange(5, 7);
            OutgoingMigration.WriteMissingPages(writer, map, [new MemoryRegion(0, 16 * MemoryRegion.PageSize, 4096)], new (ulong, uint)[MigrationProtocol.MaxMissingRuns]);
            writer.Write(new PostcopyDoneMessage(1, 2, 3, 4, 5, 6, 7, 8, UInt128.One));
            writer.WritePageRequestNoAlloc(0, 1, 1);
            reader.Expect<MissingPagesMessage>().Validate([new MemoryRegion(0, 1 << 20, 4096)]);
            reader.Expect<PostcopyDoneMessage>();
            reader.Expect<PageRequestMessage>();
            DryRunPostcopyBatches(a, b);
        }
        foreach (var strategy in Enum.GetValues<Postcopy.PrepagingStrategy>())
        {
            var toSend = new DirtyBitmap(4096);
            toSend.SetAll();
            // An array, as the switchover passes (a collection expression would make another type, unused there).
            var prepager = new Postcopy.Prepager(toSend, new ulong[] { 4096 }, strategy, new DirtyBitmap(4096));
            var runs = new DirtyRun[MigrationProtocol.MaxRunsPerBatch];
            prepager.Claim(100);
            prepager.OnFault(100);
            while (prepager.Take(runs, MigrationProtocol.MaxNormalPagesPerBatch, out _) > 0) { }
        }
        // The fault-latency percentiles, on more samples than an insertion sort takes, in an order that partitions.
        var samples = new long[100];
        for (int i = 0; i < samples.Length; i++) samples[i] = (i * 37) % samples.Length;
        Ferry.Migration.Postcopy.PostcopyIncoming.Percentiles(samples);
        if (guestSide is IPostcopyTarget target) Prepare(target, typeof(IPostcopyTarget), nameof(IPostcopyTarget.BeginPostcopy));
        if (guestSide is IMigrationSource)
        {
            // The source's switchover itself, run once per migration, and the push, which a pure post-copy runs for the
            // first time right after the resume (no pre-copy pass came first): compiled on first call, the runtime's JIT
            // events had the switchover compiled as the pause began and the push's page collection 10 ms after the
            // resume, ahead of its first batch.
            PrepareDeclared(typeof(OutgoingMigration), "PostcopySwitchover", "PushSystemPages", "StartSourceDigest");
            PrepareDeclared(typeof(PageSender), "Push", "AddPages", "AddPagesPopulatedOnly", "FlushBatch");
            // A socket's gathered send, whose first use in a pure post-copy was the urgent channel's first batch,
            // inside the downtime (three generic instantiations over iovec compiled there).
            var iovecs = new Ferry.Linux.iovec[1];
            TcpMigrationChannel.Describe([new IoSegment(0, 0)], ref iovecs, out _);
            // The source digest's task type (a thread of its own, as StartSourceDigest makes it).
            Task.Factory.StartNew(static () => UInt128.One, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default).Wait();
        }
    }

    /// <summary>JIT-compile <paramref name="type"/>'s own methods named <paramref name="names"/> (every overload).</summary>
    private static void PrepareDeclared(Type type, params string[] names)
    {
        const BindingFlags All = BindingFlags.Instance | BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly;
        foreach (MethodInfo method in type.GetMethods(All))
        {
            if (Array.IndexOf(names, method.Name) >= 0 && !method.ContainsGenericParameters) RuntimeHelpers.PrepareMethod(method.MethodHandle);
        }
    }

    private static void DryRunPostcopyBatches(IMigrationChannel send, IMigrationChannel receive)
    {
        const int Pages = 4;
        using var scratch = new ScratchPages(Pages, fill: 1);
        var region = scratch.Region;
        MemoryRegion[] regions = [region];
        var missing = new DirtyBitmap(Pages);
        var writer = new PageBatchWriter(send);
        var reader = new PageBatchReader(receive, regions);
        // Both ways of landing a page: by copy (userfaultfd's) and in place (Ferry's machine's), every other batch.
        var sink = new ScratchMemory(region);
        var inPlaceSink = new ScratchMemory(region, inPlace: true);
        PageRun[] runs = [new(0, 1, PageEncoding.Normal), new(1, 1, PageEncoding.Zero), new(2, 2, PageEncoding.Normal)];
        // The source's urgent sender, which its return path runs for the first fault (measured: 2.5 ms of JIT there
        // before the first page went out, the zero-page test among it).
        var toPush = new DirtyBitmap(Pages);
        var urgent = new Postcopy.UrgentSender(send, regions, new Postcopy.Prepager(toPush, new ulong[] { Pages }, Ferry.Migration.Postcopy.PrepagingStrategy.Bubble, new DirtyBitmap(Pages)));
        for (int i = 0; i < 40; i++)
        {
            missing.SetAll();
            toPush.SetAll();
            var incoming = new Postcopy.PostcopyIncoming(regions, (_, _, _) => { }, new Postcopy.PageHashDigest(regions));
            incoming.Begin([missing], verify: true);
            incoming.Attach(i % 2 == 0 ? sink : inPlaceSink);
            incoming.PageNeeded(0, 3);
            reader.Postcopy = incoming;
            urgent.Send(0, (ulong)(i % Pages), 1);
            reader.ReadNext();
            writer.WriteBatch(0, region, runs, PageBatchFlags.Postcopy | PageBatchFlags.DataChecksummed);
            reader.ReadNext();
            incoming.Latency();
            incoming.Digest!.Compute();
        }
    }

    /// <summary>
    /// Page-aligned native scratch "guest memory" for the dry runs (installs copy whole pages), freed on dispose. Not a
    /// pinned array: a region holds only an address, and optimised code let the collector free an array its method no
    /// longer referenced while batches still went through it, other pinned allocations taking its place ("checksum
    /// mismatch" on the warm-up's channel, in a long benchmark process).
    /// </summary>
    private sealed unsafe class ScratchPages : IDisposable
    {
        private nint _memory;

        public ScratchPages(int pages, byte fill)
        {
            _memory = (nint)NativeMemory.AlignedAlloc((nuint)pages * MemoryRegion.PageSize, MemoryRegion.PageSize);
            new Span<byte>((void*)_memory, pages * (int)MemoryRegion.PageSize).Fill(fill);
            Region = new MemoryRegion(0, (ulong)pages * MemoryRegion.PageSize, _memory);
        }

        public MemoryRegion Region { get; }

        public void Dispose()
        {
            NativeMemory.AlignedFree((void*)_memory);
            _memory = 0;
        }
    }

    /// <summary>Installs into plain memory (the warm-up's stand-in for a guest), or takes its pages in place.</summary>
    private sealed unsafe class ScratchMemory(MemoryRegion region, bool inPlace = false) : IPostcopyMemory
    {
        public nint ReceiveInPlaceAddress(int r) => inPlace ? region.HostAddress : 0;
        public void PublishReceived(int r, ulong firstPage, int count) { }
        public void Install(int r, ulong firstPage, int count, nint source) =>
            Buffer.MemoryCopy((void*)source, (void*)region.PageAddress(firstPage), count * MemoryRegion.PageSize, count * MemoryRegion.PageSize);
        public void InstallZero(int r, ulong firstPage, ulong count) =>
            new Span<byte>((void*)region.PageAddress(firstPage), (int)count * MemoryRegion.PageSize).Clear();
        public long BlockedTicks => 0;
        public long WorkingSetPages => 0;
        public void Abort(string reason) { }
        public void Dispose() { }
    }

    /// <summary>JIT-compile <paramref name="instance"/>'s implementation of interface method <paramref name="name"/>.</summary>
    private static void Prepare(object instance, Type contract, string name)
    {
        var map = instance.GetType().GetInterfaceMap(contract);
        for (int i = 0; i < map.InterfaceMethods.Length; i++)
        {
            if (map.InterfaceMethods[i].Name != name) continue;
            MethodInfo target = map.TargetMethods[i];
            try
            {
                RuntimeHelpers.PrepareMethod(target.MethodHandle);
            }
            catch (ArgumentException)
            {
                // A generic or otherwise unpreparable implementation: it is simply compiled on first call.
            }
        }
    }
}
