using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Ferry.Linux;
using Ferry.Machine.Board;
using Ferry.Machine.Memory;

namespace Ferry.Machine.Cpu;

/// <summary>
/// One RV64IMAFDC hart (M, S and U modes, Sv39/Sv48, PMP) run by its own host thread.
/// </summary>
/// <remarks>
/// <para>The interpreter runs decoded blocks: the instructions of one guest page, cached per frame
/// (<see cref="CodePage"/>), until a jump leaves the page, an instruction needs the slow path, or a budget ends the block.
/// Between blocks the hart looks at one word, <see cref="signal"/>, which other threads raise (<see cref="Kick"/>) for an
/// interrupt line, a pause, a TLB flush or power-off: nothing else is polled while the guest runs.</para>
/// <para>Unsafe code: registers, TLBs and decoded instructions live in native or pinned memory and are reached by
/// pointer, because bounds checks on every register and slot access cost a large share of an interpreter's time.</para>
/// </remarks>
internal sealed unsafe partial class Hart : IDisposable
{
    /// <summary>Register slot that absorbs writes to x0 (decoders map rd = 0 here), so writes need no test.</summary>
    public const int SinkRegister = 32;

    // Privilege levels.
    public const int PrvU = 0, PrvS = 1, PrvM = 3;

    // Signal bits.
    private const int SigCheck = 1;       // look at interrupts, pause and exit
    private const int SigFlushWrite = 2;  // drop write TLB entries (a dirty-log harvest)
    private const int SigFlushAll = 4;    // drop every TLB entry

    // Hart states seen by other threads.
    private const int StateRunning = 0, StateParked = 1, StateStopped = 2;

    private readonly AddressSpace bus;
    private readonly GuestRam ram;
    private readonly Clint clint;
    private readonly HartControl control;

    private ulong* x;   // x0..x31 and the sink slot
    private ulong* fr;  // f0..f31, NaN-boxed

    private ulong pc;
    private int priv = PrvM;

    // Decoded code pages by global frame; frames this hart decoded (to drop them on fence.i).
    private readonly CodePage?[] codePages;
    private readonly List<int> decodedFrames = [];
    private readonly CodePage scratch = new(-1, null);

    private int signal;
    private int state = StateParked;
    private long flushRequested;
    private long flushDone;
    // No spinning before blocking: a parked hart must cost the host nothing.
    private readonly WakeEvent wake = new();
    private Thread? thread;

    // Set by slow paths that touched a device, so the block ends after the instruction (a device may have stopped the
    // machine or raised an interrupt line).
    private bool stopBlock;

    // Address for the trap a slow path reports.
    private ulong faultTval;

    // Interrupt lines driven by devices (MSIP from the CLINT, MEIP/SEIP from the PLIC), as mip bits.
    private int irqLines;

    public Hart(int id, AddressSpace bus, GuestRam ram, Clint clint, HartControl control)
    {
        Id = id;
        this.bus = bus;
        this.ram = ram;
        this.clint = clint;
        this.control = control;
        x = (ulong*)NativeMemory.AllocZeroed(40 * sizeof(ulong));
        fr = (ulong*)NativeMemory.AllocZeroed(32 * sizeof(ulong));
        tlb = (TlbEntry*)NativeMemory.AllocZeroed((nuint)(TlbSets * TlbSize * sizeof(TlbEntry)));
        codePages = new CodePage?[bus.FrameCount];
        pageWaiter = NewPageWaiter();
        deviceWaiter = NewDeviceWaiter();
        FlushTlb();
        Reset(0x1000);
    }

    public int Id { get; }

    // Instret at which the hart pauses the machine (a bounded run); MaxValue when unbounded.
    private ulong stopAt = ulong.MaxValue;
    // Instret at which the hart next reads its timer (see TimerPollInstructions).
    private ulong pollAt;
    // The smaller of stopAt and pollAt: the run loop's one test per block.
    private ulong checkAt;

    /// <summary>
    /// Instructions between a running hart's reads of its timer (the CLINT has no thread to interrupt it): at the
    /// machine's 24-330 M instructions/s, a due timer interrupt is taken 6-85 µs late at most, for one clock read
    /// (~40 ns) per 2,048 instructions. A hart parked in wfi sleeps until its deadline instead.
    /// </summary>
    public const ulong TimerPollInstructions = 2048;

    /// <summary>Run at most about <paramref name="count"/> more instructions (to the next block boundary), then pause.
    /// Only while the machine is paused.</summary>
    public void SetInstructionBudget(ulong count)
    {
        stopAt = count >= ulong.MaxValue - instret ? ulong.MaxValue : instret + count;
        checkAt = Math.Min(stopAt, pollAt);
    }

    /// <summary>Instructions retired (minstret).</summary>
    public ulong Instret => instret;

    public ulong Pc => pc;

    public int Privilege => priv;

    /// <summary>True when the hart runs no guest code and will look at its signal before it does (parked or stopped).</summary>
    public bool Quiescent => Volatile.Read(ref state) != StateRunning;

    /// <summary>Architectural reset: M-mode at <paramref name="resetPc"/>, registers and CSRs cleared.</summary>
    public void Reset(ulong resetPc)
    {
        new Span<ulong>(x, 40).Clear();
        new Span<ulong>(fr, 32).Clear();
        ResetCsrs();
        pc = resetPc;
        priv = PrvM;
        reservation = null;
        UpdateMode();
        FlushTlb();
        DropAllCode();
    }

    /// <summary>Raise the hart's attention: an interrupt line or a request changed. Callable from any thread.</summary>
    public void Kick()
    {
        Interlocked.Or(ref signal, SigCheck);
        wake.Set();
    }

    /// <summary>Drive device interrupt line bits (mip positions) high or low. Callable from any thread.</summary>
    public void SetIrqLine(int mipBit, bool level)
    {
        if (level) Interlocked.Or(ref irqLines, mipBit);
        else Interlocked.And(ref irqLines, ~mipBit);
        Kick();
    }

    /// <summary>For tests: called on the hart's thread right after it took its signal, before it reads the flush ticket.</summary>
    internal Action? SignalTaken { get; set; }

    /// <summary>Ask the hart to drop its write TLB entries; returns the ticket <see cref="WriteFlushDone"/> compares to.</summary>
    public long RequestWriteFlush()
    {
        long ticket = Interlocked.Increment(ref flushRequested);
        Interlocked.Or(ref signal, SigFlushWrite);
        wake.Set();
        return ticket;
    }

    /// <summary>
    /// True once the hart has dropped its write entries for <paramref name="ticket"/>, or holds none that it could use
    /// before it looks at its signal (it is parked or stopped).
    /// </summary>
    public bool WriteFlushDone(long ticket) => Volatile.Read(ref flushDone) >= ticket || Quiescent;

    /// <summary>Ask the hart to drop its whole TLB at its next block boundary (page tables or PMP changed under it).</summary>
    public void RequestFullFlush()
    {
        Interlocked.Or(ref signal, SigFlushAll);
        wake.Set();
    }

    public void Start()
    {
        if (thread != null) throw new InvalidOperationException("hart already started");
        thread = new Thread(ThreadMain) { IsBackground = true, Name = $"hart{Id}" };
        Kick();
        thread.Start();
    }

    public void Join() => thread?.Join();

    /// <summary>An unexpected failure inside the emulator (a bug, not a guest fault), for the machine to report.</summary>
    public Exception? Failure { get; private set; }

    internal Action<Hart, Exception>? Failed { get; set; }

    private void ThreadMain()
    {
        try
        {
            PageWaiter.Current = deviceWaiter;
            Ferry.Linux.LatencyPriority.ForGuestCpu();
            Run();
        }
        catch (Exception e)
        {
            Failure = e;
            Failed?.Invoke(this, e);
        }
        finally
        {
            Volatile.Write(ref state, StateStopped);
            control.Parked();
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Run()
    {
        while (true)
        {
            if (Volatile.Read(ref signal) != 0 && !ServiceSignals()) return;
            if (instret >= checkAt)
            {
                if (instret >= stopAt)
                {
                    // A bounded run (VirtMachine.RunInstructions) is over: pause the machine and park here.
                    stopAt = ulong.MaxValue;
                    checkAt = pollAt;
                    control.RequestPause();
                    Interlocked.Or(ref signal, SigCheck);
                    continue;
                }
                // Time to read the timer: a due and enabled interrupt is taken here, at a block boundary.
                pollAt = instret + TimerPollInstructions;
                checkAt = Math.Min(stopAt, pollAt);
                CheckInterrupts();
            }
            if (control.ThrottlePercent != 0 && Throttle()) continue;
            ulong p = pc;
            TlbEntry* e = tlbFetch + ((p >> 12) & TlbMask);
            CodePage? page;
            if (e->Tag != (p & ~0xfffUL) || (page = codePages[(int)e->Addend]) == null)
            {
                page = FetchSlow(p);
                if (page == null) continue; // a fetch fault was raised
            }
            ExecuteBlock(page, p);
        }
    }

    /// <summary>
    /// Run one block from the current pc on the calling thread, as the hart's own loop does, without looking at the
    /// signal first: for tests, on a hart whose thread is not running.
    /// </summary>
    internal void StepBlock()
    {
        CodePage? page = FetchSlow(pc);
        if (page != null) ExecuteBlock(page, pc);
    }

    /// <summary>Handle what other threads asked for. False when the hart must stop.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private bool ServiceSignals()
    {
        while (true)
        {
            // Running first, then take the signal: a requester that saw us parked relies on us reading its bit now.
            Volatile.Write(ref state, StateRunning);
            int s = Interlocked.Exchange(ref signal, 0);
            // The ticket after the signal, not before: a requester counts its request, then sets the bit. Read before,
            // a request counted in between, whose bit this exchange took, was flushed for but never marked done, and
            // its harvest waited for good (a post-copy demo's source spun 12 minutes in FlushWriteEntries). Read after,
            // it counts every request whose bit was taken (and perhaps one whose bit is still to come: the flush below
            // is after its count too, which is all a harvest needs).
            SignalTaken?.Invoke();
            long flushTicket = Volatile.Read(ref flushRequested);
            if ((s & SigFlushAll) != 0) FlushTlb();
            else if ((s & SigFlushWrite) != 0) FlushWriteTlb();
            if ((s & SigFlushWrite) != 0) Volatile.Write(ref flushDone, flushTicket);
            if (control.ExitRequested) return false;
            if (control.PauseRequested)
            {
                Volatile.Write(ref state, StateParked);
                control.Parked();
                control.WaitWhilePaused();
                Interlocked.Or(ref signal, SigCheck);
                continue;
            }
            CheckInterrupts();
            return true;
        }
    }

    /// <summary>Length of a throttle slice: a throttled hart runs (100 - p)% of it, then sleeps p%.</summary>
    public const int ThrottleSliceMs = 10;

    // Stopwatch timestamp at which the current throttle slice began; 0 when no slice is open.
    private long throttleSliceStart;

    /// <summary>
    /// Auto-converge: once this slice's running share is used up, park for the rest of it. True when the hart slept
    /// (it must then look at its signal before it runs guest code again). Only called while throttling is on, so an
    /// unthrottled hart never reads the clock.
    /// </summary>
    private bool Throttle()
    {
        int percent = control.ThrottlePercent;
        long now = Stopwatch.GetTimestamp();
        long slice = Stopwatch.Frequency * ThrottleSliceMs / 1000;
        if (throttleSliceStart == 0 || now - throttleSliceStart > 2 * slice)
        {
            // First throttled block, or the hart was parked (wfi, pause) meanwhile: begin a fresh slice.
            throttleSliceStart = now;
            return false;
        }
        if (now - throttleSliceStart < slice * (100 - percent) / 100) return false;
        // Parked while asleep: a pause or a dirty-log harvest need not wait for us, as we look at the signal before
        // running again (ServiceSignals marks us running before it reads the signal).
        Volatile.Write(ref state, StateParked);
        control.Parked();
        Thread.Sleep(TimeSpan.FromTicks(TimeSpan.TicksPerMillisecond * ThrottleSliceMs * percent / 100));
        throttleSliceStart = Stopwatch.GetTimestamp();
        Interlocked.Or(ref signal, SigCheck);
        return true;
    }

    /// <summary>wfi: park the thread until an enabled interrupt is pending or someone kicks the hart.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void WaitForInterrupt()
    {
        if ((ReadMip() & mie) != 0) return;
        wake.Reset();
        Volatile.Write(ref state, StateParked);
        control.Parked();
        // With the timer interrupt enabled we wake ourselves at the deadline; otherwise only a kick can wake us.
        long deadline = clint.WakeDeadline(Id, (mie & (ulong)IrqMti) != 0);
        if (Volatile.Read(ref signal) == 0 && (ReadMip() & mie) == 0)
        {
            wake.Wait(deadline);
        }
        // Back to running through ServiceSignals, which marks us running before it reads the signal.
        Interlocked.Or(ref signal, SigCheck);
    }

    public void Dispose()
    {
        if (x != null)
        {
            NativeMemory.Free(x);
            NativeMemory.Free(fr);
            NativeMemory.Free(tlb);
            x = null;
            fr = null;
            tlb = null;
        }
    }
}
