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

    /// <summary>Block the calling hart while a pause is requested (returns at once on exit).</summary>
    public void WaitWhilePaused()
    {
        while (pauseRequested && !exitRequested) resumed.Wait();
    }

    public void Dispose() => resumed.Dispose();
}
