namespace Ferry.Linux;

/// <summary>
/// Scheduling for the threads whose wake-up latency the guest feels: the switchover on both sides (its every
/// millisecond is downtime), post-copy's fault path (a page the guest waits for crosses the source's return path
/// and the destination's urgent receiver), and a guest thread (a hart) while it waits for a missing page. On a small
/// host the guest's own threads and the bulk push keep every core busy, and a normal thread that wakes waits for a
/// slice (1-5 ms measured) at each hop.
/// </summary>
/// <remarks>
/// Real-time (SCHED_FIFO, the lowest priority, 1) where the process may (root or CAP_SYS_NICE), else a 100 µs scheduler
/// slice (Linux 6.12+, no privilege), else nothing. Every such thread blocks on a socket or an event between short
/// pieces of work; none spins.
/// </remarks>
public static class LatencyPriority
{
    /// <summary>Slice asked for when real-time is refused.</summary>
    public static readonly TimeSpan Slice = TimeSpan.FromMicroseconds(100);

    // Set once the kernel refused real-time: later raises go straight to the slice (a raise may come per page fault).
    private static volatile bool realtimeRefused;

    /// <summary>Raise the calling thread; dispose the result (on the same thread) to undo it.</summary>
    public static Raised Raise() => Raise(rank: 1);

    /// <summary>
    /// Raise the calling thread one real-time rank above those <see cref="Raise"/> raises, for a thread that wakes to
    /// tell one of them to stop: the source's return path, which reads the Ready that ends the switchover thread's
    /// push of the guest's system pages. At the same rank it waited for a CPU behind that very push (and, on one host,
    /// the destination's urgent receiver installing it): with the demo VM dirtying 1M pages/s, whose system pages were
    /// ~5,100 (its hot set is used in every interval), Ready waited 7-9 ms to be read in 5 of 6 runs (traced: sent at
    /// 2.1 ms, read at 11.0 ms, right after the push's last batch). Without privilege the same slice as Raise.
    /// </summary>
    public static Raised RaiseAboveOthers() => Raise(rank: 2);

    private static Raised Raise(int rank)
    {
        if (!realtimeRefused)
        {
            // What a normal thread had (a batch policy, a nice value, a slice of its own: a hart's GuestCpuSlice) comes
            // back with it; leaving real-time through sched_setscheduler would reset all of it.
            var before = Libc.CurrentThreadScheduling();
            if (Libc.SetCurrentThreadRealtime(rank)) return new Raised(realtime: true, slice: false, before: before);
            realtimeRefused = true;
        }
        return new Raised(realtime: false, slice: Libc.SetCurrentThreadSlice(Slice));
    }

    /// <summary>
    /// The slice of a thread that runs a guest CPU (a hart of Ferry's machine), against the kernel's default of ~3 ms
    /// (EEVDF, Linux 6.12+; older kernels ignore it). A thread with a shorter slice than the running one preempts it
    /// when it wakes, where an equal one waits until that slice is used up: on a small host a hart resumed on the
    /// destination, or woken by an install, waited behind the bulk push's batch threads while the guest's timer went
    /// unserved (`perf sched`, post-copy at 1M pages/s: a hart's wake-up delay up to 7-11 ms in its first 50 ms,
    /// 0.8-2.6 ms with this slice). Short enough to preempt, not so short that two harts sharing a CPU switch every
    /// 100 µs.
    /// </summary>
    public static readonly TimeSpan GuestCpuSlice = TimeSpan.FromMicroseconds(300);

    /// <summary>Give the calling thread, which runs a guest CPU, <see cref="GuestCpuSlice"/>; false where the kernel has no slices.</summary>
    public static bool ForGuestCpu() => Libc.SetCurrentThreadSlice(GuestCpuSlice);

    /// <summary>
    /// Raise the calling thread for hand-offs: a thread that one of this process's threads wakes and then blocks for
    /// (the in-process guest's fault thread, woken by the faulting writer's userfaultfd event). A normal thread at the
    /// highest weight (nice -20, where allowed) with <see cref="Slice"/>: it preempts the bulk push and the guest's own
    /// threads as it wakes, as a real-time one does, and the kernel wakes it on its waker's CPU (wake-affine), where a
    /// real-time thread is woken on the CPU it last ran on, or the other one when a real-time thread runs there (its
    /// waker, still running). Dispose the result on the same thread to undo it.
    /// </summary>
    /// <remarks>
    /// A wake-up across CPUs costs an inter-processor interrupt, which a paravirtualised host makes dear. Measured here
    /// (2-core PVM guest, a C ping-pong over loopback TCP, two nice-10 CPU hogs): a round trip 20-23 µs with both
    /// sides normal threads or both real-time on one CPU, 66-80 µs real-time unpinned or split across the CPUs. In the
    /// post-copy engine bench (1 GiB, hot set 20k pages/s, two sets of 10 alternated runs) the fault thread raised this
    /// way instead of real-time: faulted share median 12.0 and 13.5 % against 16.8 and 16.1 %, post-copy 773 against
    /// 902 ms; fault latency unchanged within the noise (p50 121-135 against 130-132 µs, p99 0.6 ms).
    /// Not for threads another process or the network wakes: there is no waker's CPU to share, and real-time keeps
    /// their tail short (the source's return path this way, in the VM demo: p99 0.6-3.1 ms against 0.5-0.8 ms).
    /// </remarks>
    public static Raised RaiseHandoff()
    {
        bool niced = Libc.SetCurrentThreadNice(-20);
        return new Raised(realtime: false, slice: Libc.SetCurrentThreadSlice(Slice), niced);
    }

    /// <summary>
    /// How long work lowered by <see cref="Lower"/> or <see cref="LowerProcess"/> runs on idle CPU only before it moves
    /// to the background (<see cref="Libc.SetThreadBackground"/>).
    /// </summary>
    public static readonly TimeSpan IdleGrace = TimeSpan.FromSeconds(1);

    /// <summary>
    /// Lower the calling thread for work nobody waits for while the guest runs (a migration's teardown once the guest has
    /// started on the destination, a digest of the source's frozen memory): on idle CPU only (SCHED_IDLE) for
    /// <see cref="IdleGrace"/>, then in the background. Dispose the result, on the same thread, to give it back the
    /// policy, nice value and slice it had, where the kernel allows it (without privilege it stays where it is, which
    /// suits a thread that only waits afterwards); dispose it before the thread ends.
    /// </summary>
    /// <remarks>
    /// Idle first: a CPU that runs only idle threads counts as free when the kernel places a waking thread, so the
    /// guest's harts spread over the CPUs instead of queueing behind each other (the demo's post-copy, 6 alternated
    /// pairs: the guest's largest stall in its first second median 11.5 ms, against 15.7 ms with this work in the
    /// background from the start). Not idle for good: a guest that keeps every CPU busy starved such work for tens of
    /// seconds (the demo VM dirtying 1M pages/s, hybrid: the source's check of its frozen memory held its answer to
    /// <c>PUT /vm/migrate</c> up to 23.6 s, and the source's exit passed the demo's 30 s in 10 of 21 runs; promoted after
    /// the grace, 1.7-4.8 s and none in 8). Leaving SCHED_IDLE needs CAP_SYS_NICE (as real-time threads do); without it
    /// the work stays idle.
    /// Measured on a 2-core host, right after a pre-copy resume: the destination's teardown (closing the channels, which
    /// JIT-compiles the code that closes them) took 5-7 ms of CPU, on a core one of the guest's harts then waited for.
    /// </remarks>
    public static Background Lower()
    {
        var before = Libc.CurrentThreadScheduling();
        if (!Libc.SetThreadIdle(0)) return default;
        return new Background(new Lowered(Libc.CurrentThreadId(), before));
    }

    /// <summary>
    /// Lower every thread of this process as <see cref="Lower"/> does, for good: for a process left with nothing but its
    /// own teardown. Threads started later run as normal threads: a .NET thread does not take an idle creator's policy
    /// (checked here: a thread an idle thread starts runs SCHED_OTHER). Returns how many threads took it.
    /// </summary>
    public static int LowerProcess()
    {
        lock (ProcessGate)
        {
            // Once: the first call's promoter looks at every thread of the process for as long as it lives.
            if (processLowered) return 0;
            processLowered = true;
        }
        AppDomain.CurrentDomain.ProcessExit += (_, _) => PromoteIdle(OwnThreads());
        return LowerThreads(OwnThreads, CancellationToken.None);
    }

    /// <summary>
    /// Move every thread <paramref name="threads"/> names that is in SCHED_IDLE to the background, the caller included:
    /// what a lowered process does as it exits (<see cref="LowerProcess"/>). Returns how many moved.
    /// </summary>
    /// <remarks>
    /// An idle thread must not be the one that ends the process. The last thread to exit tells the parent the process
    /// is done and only then drops its <c>/proc</c> entries; the parent's reap drops the whole process's, and waits,
    /// spinning in the kernel (<c>shrink_dcache_parent</c>), for any the exiting thread is still dropping. An idle
    /// thread on CPUs the destination guest keeps busy gets next to nothing of them: the demo's source was reaped 40-105
    /// s late in ~1 of 50 runs at 1M pages/s, its parent's signal thread spinning on a CPU the guest needed all along
    /// (its kernel stack caught there). A child with 30 idle threads beside two busy loops: reap median 167 ms, max 290;
    /// in the background (SCHED_BATCH, nice 10) 7 ms, max 31.
    /// </remarks>
    internal static int PromoteIdle(IEnumerable<int> threads)
    {
        int n = 0;
        foreach (int tid in threads)
        {
            if (Libc.ThreadPolicy(tid) == Libc.SchedIdle && Libc.SetThreadBackground(tid)) n++;
        }
        return n;
    }

    private static readonly Lock ProcessGate = new();
    private static bool processLowered;

    /// <summary>
    /// Put the threads <paramref name="threads"/> names in SCHED_IDLE, and after <see cref="IdleGrace"/> move those it
    /// names then that are still idle to the background; then look again every <see cref="IdleGrace"/> until
    /// <paramref name="stop"/>. Returns how many took it.
    /// </summary>
    /// <remarks>
    /// Both are done by a thread of its own, which <paramref name="threads"/> is called on and which never lowers itself:
    /// the promotion must not wait for a thread it would lower. A timer's callback did (the runtime's timer thread and
    /// its pool's workers are the process's threads too): with the destination guest busy on both CPUs of the demo's
    /// host, nothing of the lowered source ran, its promotion included, and it had not exited 30 s after its answer
    /// (`./ferry demo --mode postcopy --dirty-rate 1000000`, 1 run in 8; its <c>.NET Timer</c> thread seen idle).
    /// Not once but for good: a thread that saved its policy while idle (a <see cref="Raise"/> or <see cref="Lower"/>
    /// begun before the first promotion) gives SCHED_IDLE back to itself when it ends after it, and would stay there.
    /// </remarks>
    internal static int LowerThreads(Func<IEnumerable<int>> threads, CancellationToken stop)
    {
        int lowered = -1;
        using var done = new ManualResetEventSlim();
        var promoter = new Thread(() =>
        {
            int self = Libc.CurrentThreadId();
            int n = 0;
            try
            {
                foreach (int tid in threads())
                {
                    if (tid != self && Libc.SetThreadIdle(tid)) n++;
                }
            }
            finally
            {
                lowered = n;
                done.Set();
            }
            if (n == 0) return;
            while (!stop.WaitHandle.WaitOne(IdleGrace)) PromoteIdle(threads().Where(tid => tid != self));
        })
        { IsBackground = true, Name = "ferry-promote" };
        promoter.Start();
        done.Wait(CancellationToken.None);
        return lowered;
    }

    private static IEnumerable<int> OwnThreads()
    {
        if (!OperatingSystem.IsLinux()) yield break;
        foreach (string dir in Directory.EnumerateDirectories("/proc/self/task"))
        {
            if (int.TryParse(Path.GetFileName(dir), out int tid)) yield return tid;
        }
    }

    // One lowered thread: promoted to the background after the grace unless given back first.
    internal sealed class Lowered
    {
        private readonly int _tid;
        private readonly (int Policy, int Nice, ulong SliceNs)? _before;
        private readonly Timer _promotion;
        private readonly Lock _gate = new();
        private bool _over;

        public Lowered(int tid, (int Policy, int Nice, ulong SliceNs)? before)
        {
            _tid = tid;
            _before = before;
            _promotion = new Timer(static s => ((Lowered)s!).Promote(), this, IdleGrace, Timeout.InfiniteTimeSpan);
        }

        private void Promote()
        {
            // Under the lock: the thread, given back and gone on to other work, must not be lowered again. Only a thread
            // of this process: one that ended without giving back may have left its id to another process's thread.
            lock (_gate)
            {
                if (!_over && Directory.Exists($"/proc/self/task/{_tid}")) Libc.SetThreadBackground(_tid);
            }
        }

        public void GiveBack()
        {
            lock (_gate)
            {
                _over = true;
                _promotion.Dispose();
            }
            if (_before is { } b) Libc.SetCurrentThreadScheduling(b.Policy, b.Nice, b.SliceNs);
        }
    }

    /// <summary>What <see cref="Lower"/> changed.</summary>
    public readonly struct Background : IDisposable
    {
        private readonly Lowered? _lowered;

        internal Background(Lowered lowered) => _lowered = lowered;

        /// <summary>Back to what the thread had before, if the kernel lets us.</summary>
        public void Dispose() => _lowered?.GiveBack();
    }

    /// <summary>What <see cref="Raise"/> changed.</summary>
    public readonly struct Raised(bool realtime, bool slice, bool niced = false, (int Policy, int Nice, ulong SliceNs)? before = null) : IDisposable
    {
        /// <summary>True if the thread runs real-time.</summary>
        public bool Realtime => realtime;

        /// <summary>
        /// Back to what a thread raised to real-time had before (its normal or batch policy, nice value and slice),
        /// else to a normal thread with the default slice and nice 0.
        /// </summary>
        public void Dispose()
        {
            if (realtime && !(before is { } b && Libc.SetCurrentThreadScheduling(b.Policy, b.Nice, b.SliceNs))) Libc.SetCurrentThreadRealtime(0);
            if (slice) Libc.SetCurrentThreadSlice(null);
            if (niced) Libc.SetCurrentThreadNice(0);
        }
    }
}
