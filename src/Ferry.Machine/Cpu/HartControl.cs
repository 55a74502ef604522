namespace Ferry.Machine.Cpu;

/// <summary>
/// What the machine asks of all its harts at once: stop for a pause, or stop for good. Harts look at it only when their
/// <see cref="Hart.Kick"/> signal is raised, so it costs nothing while they run.
/// </summary>
internal sealed class HartControl : IDisposable
{
    private volatile bool pauseRequested;
    private volatile bool exitRequested;
    private readonly ManualResetEventSlim resumed = new(true, spinCount: 0);

    public bool PauseRequested => pauseRequested;

    public bool ExitRequested => exitRequested;

    // Share of each 10 ms slice the harts sleep (auto-converge), 0..99; 0 costs a running hart one read per block.
    private volatile int throttlePercent;

    /// <summary>Percent of each <see cref="Hart.ThrottleSliceMs"/> slice every hart sleeps; 0 disables throttling.</summary>
    public int ThrottlePercent
    {
        get => throttlePercent;
        set
        {
            ArgumentOutOfRangeException.ThrowIfNegative(value);
            ArgumentOutOfRangeException.ThrowIfGreaterThan(value, 99);
            throttlePercent = value;
        }
    }

    public void RequestPause()
    {
        resumed.Reset();
        pauseRequested = true;
    }

    public void Release()
    {
        pauseRequested = false;
        resumed.Set();
    }

    public void RequestExit()
    {
        exitRequested = true;
        resumed.Set();
    }

    // Threads in WaitQuiescent; harts pulse the gate when they park only while there is one.
    private int quiescenceWaiters;
    private readonly object quiescenceGate = new();

    /// <summary>A hart has just parked or stopped: wake whoever waits in <see cref="WaitQuiescent"/>.</summary>
    public void Parked()
    {
        // The hart's store of its state, then this load; the waiter's increment, then its load of the states. A full
        // fence on each side, so one of them sees the other (without it the waiter only finds out a millisecond later).
        Interlocked.MemoryBarrier();
        if (Volatile.Read(ref quiescenceWaiters) == 0) return;
        lock (quiescenceGate) Monitor.PulseAll(quiescenceGate);
    }

    /// <summary>
    /// Wait until <paramref name="quiescent"/> holds (every hart parked), which <see cref="Parked"/> re-checks. Blocking,
    /// not spinning: the caller may be a real-time thread (the migration's switchover), whose spinning would keep a
    /// hart that still has to reach its block boundary off that CPU (SpinWait's 1 ms sleeps were its only way in:
    /// 0.2-1.4 ms pauses measured). Re-checked every <paramref name="recheckMilliseconds"/> as well, whatever parked
    /// the harts (-1: only when pulsed).
    /// </summary>
    public void WaitQuiescent(Func<bool> quiescent, int recheckMilliseconds = 1)
    {
        Interlocked.Increment(ref quiescenceWaiters);
        try
        {
            lock (quiescenceGate)
            {
                while (!quiescent()) Monitor.Wait(quiescenceGate, recheckMilliseconds);
            }
        }
        finally
        {
            Interlocked.Decrement(ref quiescenceWaiters);
        }
    }

    /// <summary>Block the calling hart while a pause is requested (returns at once on exit).</summary>
    public void WaitWhilePaused()
    {
        while (pauseRequested && !exitRequested) resumed.Wait();
    }

    public void Dispose() => resumed.Dispose();
}
