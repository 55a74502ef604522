namespace Ferry.Linux.Tests;

/// <summary>Per-thread scheduling (Libc.Scheduling.cs), read back from /proc/thread-self/stat (policy, nice).</summary>
public class SchedulingTests
{
    // /proc/<tid>/stat: after the ")" that ends the command name, field 19 is nice and field 41 the policy.
    private static (int Nice, int Policy) ReadStat()
    {
        string stat = File.ReadAllText("/proc/thread-self/stat");
        string[] fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        return (int.Parse(fields[19 - 3]), int.Parse(fields[41 - 3]));
    }

    private static void OnOwnThread(Action action)
    {
        Exception? error = null;
        var t = new Thread(() =>
        {
            try
            {
                action();
            }
            catch (Exception e)
            {
                error = e;
            }
        });
        t.Start();
        t.Join();
        if (error is not null) throw new Xunit.Sdk.XunitException($"on the test thread: {error}");
    }

    [Fact]
    public void BatchIsTakenAndGivenBackWithTheNiceValueKept()
    {
        OnOwnThread(() =>
        {
            Assert.True(Libc.SetCurrentThreadNice(3));
            Assert.True(Libc.SetCurrentThreadBatch(true));
            Assert.Equal((3, 3), ReadStat()); // SCHED_BATCH is policy 3
            Assert.True(Libc.SetCurrentThreadBatch(false));
            Assert.Equal((3, 0), ReadStat());
        });
    }

    [Fact]
    public void RealtimeIsTakenAndGivenBackWithTheNiceValueKept()
    {
        OnOwnThread(() =>
        {
            Assert.True(Libc.SetCurrentThreadNice(5));
            if (!Libc.SetCurrentThreadRealtime(1))
            {
                // No CAP_SYS_NICE: nothing may have changed.
                Assert.Equal((5, 0), ReadStat());
                return;
            }
            Assert.Equal(1, ReadStat().Policy); // SCHED_FIFO
            Assert.True(Libc.SetCurrentThreadRealtime(0));
            Assert.Equal((5, 0), ReadStat());
        });
    }

    // /proc/<tid>/sched names the thread's slice (se.slice, ns) on kernels that have one.
    private static ulong? ReadSlice(string procThread)
    {
        foreach (string line in File.ReadLines($"{procThread}/sched"))
        {
            if (line.StartsWith("se.slice ", StringComparison.Ordinal)) return ulong.Parse(line[(line.IndexOf(':') + 1)..].Trim());
        }
        return null;
    }

    private static bool Privileged => Environment.UserName == "root";

    [Fact]
    public void AnIdleThreadRunsUnderSchedIdle()
    {
        OnOwnThread(() =>
        {
            Assert.True(Libc.SetThreadIdle(0));
            Assert.Equal(5, ReadStat().Policy); // SCHED_IDLE
            Assert.Equal(Libc.SchedIdle, Libc.ThreadPolicy(0));
        });
    }

    [Fact]
    public void ABackgroundThreadIsBatchAtNice10WithTheShortSlice()
    {
        OnOwnThread(() =>
        {
            Assert.True(Libc.SetThreadBackground(0));
            Assert.Equal((Libc.BackgroundNice, 3), ReadStat()); // SCHED_BATCH
            // Linux 6.12+ keeps the slice asked for (100 µs); older kernels have none to read.
            if (Environment.OSVersion.Version >= new Version(6, 12)) Assert.Equal(100_000UL, ReadSlice("/proc/thread-self"));
        });
    }

    [Fact]
    public void AnotherThreadOfTheProcessCanBeLoweredAndMovedToTheBackground()
    {
        int tid = 0;
        using var go = new ManualResetEventSlim();
        using var checkedIt = new ManualResetEventSlim();
        var t = new Thread(() =>
        {
            Volatile.Write(ref tid, Libc.CurrentThreadId());
            go.Set();
            checkedIt.Wait();
        });
        t.Start();
        go.Wait(TestContext.Current.CancellationToken);
        try
        {
            Assert.True(Libc.SetThreadIdle(tid));
            Assert.Equal(Libc.SchedIdle, Libc.ThreadPolicy(tid));
            // Out of SCHED_IDLE takes privilege.
            Assert.Equal(Privileged, Libc.SetThreadBackground(tid));
            if (Privileged)
            {
                string stat = File.ReadAllText($"/proc/self/task/{tid}/stat");
                string[] fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                Assert.Equal((Libc.BackgroundNice, 3), (int.Parse(fields[19 - 3]), int.Parse(fields[41 - 3])));
            }
            Assert.False(Libc.SetThreadIdle(int.MaxValue)); // no such thread
            Assert.Null(Libc.ThreadPolicy(int.MaxValue));
        }
        finally
        {
            checkedIt.Set();
            t.Join();
        }
    }

    [Fact]
    public void LoweredForATeardownAThreadRunsIdleThenInTheBackgroundThenAsBefore()
    {
        OnOwnThread(() =>
        {
            Assert.True(Libc.SetCurrentThreadNice(2));
            long lowered = System.Diagnostics.Stopwatch.GetTimestamp();
            using (LatencyPriority.Lower())
            {
                // SCHED_IDLE for the grace. An idle thread on a busy host may first run again after it (CI: 3 s), by
                // when it may be in the background already.
                int policy = ReadStat().Policy;
                if (System.Diagnostics.Stopwatch.GetElapsedTime(lowered) < LatencyPriority.IdleGrace) Assert.Equal(5, policy);
                else Assert.Contains(policy, new[] { 5, 3 });
                if (Privileged)
                {
                    // Then in the background, where a guest that keeps every CPU busy cannot starve it.
                    var until = DateTime.UtcNow + LatencyPriority.IdleGrace + TimeSpan.FromSeconds(10);
                    while (ReadStat().Policy == 5 && DateTime.UtcNow < until) Thread.Sleep(20);
                    Assert.Equal((Libc.BackgroundNice, 3), ReadStat());
                }
            }
            // Back to nice 2 and SCHED_OTHER needs privilege (RLIMIT_NICE); as root they are given back.
            if (Privileged) Assert.Equal((2, 0), ReadStat());
        });
    }

    [Fact]
    public void LoweredThreadsRunIdleThenInTheBackground()
    {
        // LowerProcess's path on threads of the test's own (the whole test process would be lowered otherwise).
        const int Count = 3;
        using var parked = new ParkedThreads(Count);
        int[] tids = parked.Tids;
        using var watching = new CancellationTokenSource();
        try
        {
            // The list names the thread that reads it, too: for the whole process it would, and the thread that
            // promotes must not lower itself (else it waits behind what it lowered, as a timer's callback did).
            int reader = 0;
            Assert.Equal(Count, LatencyPriority.LowerThreads(() =>
            {
                reader = Libc.CurrentThreadId();
                return tids.Append(reader);
            }, watching.Token));
            Assert.All(tids, tid => Assert.Equal(Libc.SchedIdle, Libc.ThreadPolicy(tid)));
            Assert.NotEqual(Libc.CurrentThreadId(), reader);
            if (!Privileged) return; // leaving SCHED_IDLE takes privilege: they stay idle
            var until = DateTime.UtcNow + LatencyPriority.IdleGrace + TimeSpan.FromSeconds(10);
            while (tids.Any(tid => Libc.ThreadPolicy(tid) == Libc.SchedIdle) && DateTime.UtcNow < until) Thread.Sleep(20);
            Assert.All(tids, tid => Assert.Equal(3, Libc.ThreadPolicy(tid))); // SCHED_BATCH
        }
        finally
        {
            watching.Cancel();
        }
    }

    [Fact]
    public void AThreadIdleAgainAfterThePromotionIsPromotedAtTheNextLook()
    {
        if (!Privileged) Assert.Skip("leaving SCHED_IDLE takes privilege");
        using var started = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        using var watching = new CancellationTokenSource();
        int tid = 0;
        var thread = new Thread(() =>
        {
            tid = Libc.CurrentThreadId();
            started.Set();
            release.Wait();
        });
        thread.Start();
        started.Wait(TestContext.Current.CancellationToken);
        try
        {
            Assert.Equal(1, LatencyPriority.LowerThreads(() => [tid], watching.Token));
            Assert.True(WaitForPolicy(tid, 3), "promoted to SCHED_BATCH after the grace");
            // What a Raise begun while the thread was idle and ended after the promotion gives back.
            Assert.True(Libc.SetThreadIdle(tid));
            Assert.True(WaitForPolicy(tid, 3), "promoted again: the promoter keeps looking");
        }
        finally
        {
            watching.Cancel();
            release.Set();
            thread.Join();
        }
    }

    [Fact]
    public void AtExitEveryIdleThreadMovesToTheBackgroundAndNoOtherIsTouched()
    {
        // What a lowered process does as it exits: an idle thread must not be the one that ends it (its parent's reap
        // waits for it in the kernel).
        if (!Privileged) Assert.Skip("leaving SCHED_IDLE takes privilege");
        using var parked = new ParkedThreads(3);
        int[] tids = parked.Tids;
        Assert.True(Libc.SetThreadIdle(tids[0]));
        Assert.True(Libc.SetThreadIdle(tids[1]));
        Assert.Equal(2, LatencyPriority.PromoteIdle(tids));
        Assert.Equal(3, Libc.ThreadPolicy(tids[0])); // SCHED_BATCH
        Assert.Equal(3, Libc.ThreadPolicy(tids[1]));
        Assert.Equal(0, Libc.ThreadPolicy(tids[2])); // SCHED_OTHER, as it was
        Assert.Equal(0, LatencyPriority.PromoteIdle(tids));
    }

    /// <summary>Threads of the test's own, each waiting until disposed: their ids, for policies to be set on.</summary>
    private sealed class ParkedThreads : IDisposable
    {
        private readonly ManualResetEventSlim release = new();
        private readonly Thread[] threads;

        public ParkedThreads(int count)
        {
            Tids = new int[count];
            using var started = new CountdownEvent(count);
            threads = Enumerable.Range(0, count).Select(i => new Thread(() =>
            {
                Tids[i] = Libc.CurrentThreadId();
                started.Signal();
                release.Wait();
            })).ToArray();
            foreach (var t in threads) t.Start();
            started.Wait(TestContext.Current.CancellationToken);
        }

        public int[] Tids { get; }

        public void Dispose()
        {
            release.Set();
            foreach (var t in threads) t.Join();
            release.Dispose();
        }
    }

    private static bool WaitForPolicy(int tid, int policy)
    {
        var until = DateTime.UtcNow + LatencyPriority.IdleGrace + TimeSpan.FromSeconds(10);
        while (Libc.ThreadPolicy(tid) != policy && DateTime.UtcNow < until) Thread.Sleep(20);
        return Libc.ThreadPolicy(tid) == policy;
    }

    [Fact]
    public void AThreadGivenBackBeforeTheGraceIsNotMovedAfterIt()
    {
        if (!Privileged) Assert.Skip("giving SCHED_IDLE back takes privilege");
        OnOwnThread(() =>
        {
            LatencyPriority.Lower().Dispose();
            Assert.Equal(0, ReadStat().Policy);
            Thread.Sleep(LatencyPriority.IdleGrace + TimeSpan.FromMilliseconds(300));
            Assert.Equal(0, ReadStat().Policy); // the promotion was called off with the give-back
        });
    }

    [Fact]
    public void ARaisedThreadGetsItsPolicyNiceAndSliceBack()
    {
        if (!Privileged) Assert.Skip("real-time takes privilege");
        OnOwnThread(() =>
        {
            // A batch thread at nice 5 with a slice of its own, as a hart has one (LatencyPriority.ForGuestCpu).
            Assert.True(Libc.SetCurrentThreadScheduling(3, 5, 300_000));
            ulong? slice = ReadSlice("/proc/thread-self");
            using (var raised = LatencyPriority.Raise())
            {
                Assert.True(raised.Realtime);
                Assert.Equal(1, ReadStat().Policy); // SCHED_FIFO
            }
            Assert.Equal((5, 3), ReadStat());
            if (slice is not null) Assert.Equal(300_000UL, ReadSlice("/proc/thread-self"));
        });
    }

    [Fact]
    public void AGuestCpuThreadHasTheShortSlice()
    {
        if (ReadSlice("/proc/thread-self") is null) Assert.Skip("this kernel names no slice");
        OnOwnThread(() =>
        {
            ulong before = ReadSlice("/proc/thread-self")!.Value;
            Assert.True(LatencyPriority.ForGuestCpu());
            ulong slice = ReadSlice("/proc/thread-self")!.Value;
            Assert.Equal((ulong)LatencyPriority.GuestCpuSlice.Ticks * 100, slice);
            Assert.True(slice < before, $"the default slice {before} ns is not longer");
        });
    }

    [Fact]
    public void RaisedAboveOthersAThreadRunsOneRealTimeRankHigherUntilDisposed()
    {
        OnOwnThread(() =>
        {
            // /proc/<tid>/stat field 40 is the real-time priority.
            static int RtPriority()
            {
                string stat = File.ReadAllText("/proc/thread-self/stat");
                return int.Parse(stat[(stat.LastIndexOf(')') + 2)..].Split(' ')[40 - 3]);
            }
            using (var other = LatencyPriority.Raise())
            {
                if (!other.Realtime) return; // no CAP_SYS_NICE: both are the same slice
                Assert.Equal((1, 1), (ReadStat().Policy, RtPriority()));
            }
            using (var above = LatencyPriority.RaiseAboveOthers())
            {
                Assert.True(above.Realtime);
                Assert.Equal((1, 2), (ReadStat().Policy, RtPriority()));
            }
            Assert.Equal((0, 0), (ReadStat().Policy, RtPriority()));
        });
    }

    [Fact]
    public void ASliceKeepsPolicyAndNiceAndCanBeReset()
    {
        OnOwnThread(() =>
        {
            Assert.True(Libc.SetCurrentThreadNice(3));
            bool taken = Libc.SetCurrentThreadSlice(TimeSpan.FromMicroseconds(100));
            // Linux 6.12+ takes it (read back by the call itself); older kernels ignore slices.
            if (Environment.OSVersion.Version >= new Version(6, 12)) Assert.True(taken);
            Assert.Equal((3, 0), ReadStat());
            Assert.True(Libc.SetCurrentThreadSlice(null));
            Assert.Equal((3, 0), ReadStat());
        });
    }

    [Fact]
    public void AHandoffRaiseIsANormalThreadAtTheTopWeightUntilDisposed()
    {
        OnOwnThread(() =>
        {
            using (var raised = LatencyPriority.RaiseHandoff())
            {
                Assert.False(raised.Realtime);
                // Never real-time: the kernel would then wake it away from its waker's CPU. Nice -20 needs CAP_SYS_NICE.
                var (nice, policy) = ReadStat();
                Assert.Equal(0, policy);
                if (Environment.UserName == "root") Assert.Equal(-20, nice);
            }
            Assert.Equal((0, 0), ReadStat());
        });
    }
}
