using System.Numerics;
using System.Runtime.InteropServices;
using Ferry.Linux;
using Ferry.Machine.Board;
using Ferry.Machine.Cpu;
using Ferry.Machine.Memory;
using Ferry.Machine.Virtio;

namespace Ferry.Machine;

/// <summary>
/// A RISC-V <c>virt</c> board (QEMU's memory map): RAM at 0x8000_0000, a boot ROM at 0x1000 with QEMU's reset vector,
/// the CLINT, a 16550 UART and the SiFive test device, and N harts each on its own host thread.
/// </summary>
public sealed partial class VirtMachine : IDisposable
{
    public const ulong RamBase = 0x8000_0000;
    public const int MaxHarts = 8;
    public const ulong MinMemory = 2UL << 20;
    public const ulong MaxMemory = 64UL << 30;

    public const ulong TestBase = 0x10_0000;
    public const ulong UartBase = 0x1000_0000;

    private readonly AddressSpace bus = new();
    private readonly GuestRam ram;
    private readonly BootRom rom = new();
    private readonly Clint clint;
    private readonly Uart16550 uart;
    private readonly Plic plic;
    private readonly GoldfishRtc rtc;
    private readonly VirtioMmio[] virtio = new VirtioMmio[VirtDeviceTree.VirtioSlotCount];
    private readonly List<int> virtioSlotsInUse = [];
    // The disk among the virtio devices, or null.
    private readonly VirtioBlk? disk;
    private readonly Hart[] harts;
    private readonly HartControl control = new();
    private readonly ManualResetEventSlim exited = new(false);
    private int exitCode;
    private int poweredOff;
    private volatile bool resetRequested;
    private bool started;
    private bool disposed;
    // DisposeKeepingRam: the RAM outlives the board.
    private bool keepRam;
    // Started parked (StartPaused) and not resumed since: no guest instruction has run on this board.
    private volatile bool neverRan;
    private readonly object stateGate = new();
    // The bitmap the next HarvestDirty(Span) installs: the one it harvested last, so rounds allocate nothing.
    private ulong[] spareDirty;
    // Virtio transports paused by PauseDevices or LoadState, resumed by ResumeDevices or Start.
    private bool devicesPaused;

    public VirtMachine(MachineOptions options) : this(null, options)
    {
    }

    /// <summary>
    /// Build the board around <paramref name="ram"/>, which already holds a guest (a migration's destination received
    /// it before the board's shape was known); the machine owns it from here, and disposes it even when building
    /// fails. Its size must be <see cref="MachineOptions.MemoryBytes"/> at <see cref="RamBase"/>.
    /// </summary>
    public VirtMachine(MachineOptions options, GuestRam ram) : this(ram ?? throw new ArgumentNullException(nameof(ram)), options)
    {
    }

    // Options second only to tell this apart from the public constructor.
    private VirtMachine(GuestRam? adopted, MachineOptions options)
    {
        try
        {
            ArgumentNullException.ThrowIfNull(options);
            if (adopted is not null && (adopted.Base != RamBase || adopted.Size != options.MemoryBytes))
            {
                throw new ArgumentException($"RAM at 0x{adopted.Base:x} of {adopted.Size} bytes; the board wants 0x{RamBase:x} and {options.MemoryBytes}", nameof(adopted));
            }
            CheckShape(options);
        }
        catch
        {
            adopted?.Dispose();
            throw;
        }
        ram = adopted ?? new GuestRam(RamBase, options.MemoryBytes);
        spareDirty = new ulong[ram.DirtyWords];
        bus.AddRegion(rom);
        bus.AddRegion(ram);
        clint = new Clint(options.Harts);
        harts = new Hart[options.Harts];
        plic = new Plic(options.Harts, (h, bit, level) => harts[h].SetIrqLine(bit, level));
        uart = new Uart16550(options.SerialOut) { InterruptChanged = level => plic.SetLevel(VirtDeviceTree.UartIrq, level) };
        rtc = new GoldfishRtc { InterruptChanged = level => plic.SetLevel(VirtDeviceTree.RtcIrq, level) };
        bus.AddDevice(TestBase, 0x1000, new SifiveTest(PowerOff) { Reset = RequestReset });
        bus.AddDevice(GoldfishRtc.RtcBase, GoldfishRtc.RtcSize, rtc);
        bus.AddDevice(Clint.ClintBase, Clint.ClintSize, clint);
        bus.AddDevice(Plic.PlicBase, Plic.PlicSize, plic);
        bus.AddDevice(UartBase, 0x100, uart);
        // Virtio slots as QEMU fills them: devices from the top slot down (so the first disk is the last slot, which
        // Linux probes first and names vda); empty slots answer device id 0.
        var devices = new List<IVirtioDevice>();
        try
        {
            if (options.DiskPath != null)
            {
                disk = OpenDisk(options.DiskPath, options.DiskReadOnly, options.DiskLockDeferred, options.DiskCopy);
                devices.Add(disk);
            }
            if (options.TapName != null) devices.Add(VirtioNet.OpenTap(options.TapName, options.MacAddress ?? [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]));
            if (options.Rng) devices.Add(new VirtioRng());
        }
        catch
        {
            // A device that cannot be opened (a locked disk, a missing tap) fails the build: give back what is made.
            foreach (IVirtioDevice d in devices) d.Dispose();
            rtc.Dispose();
            rom.Dispose();
            ram.Dispose();
            throw;
        }
        for (int slot = 0; slot < virtio.Length; slot++)
        {
            int top = virtio.Length - 1 - slot;
            IVirtioDevice? device = slot < devices.Count ? devices[slot] : null;
            int irq = VirtDeviceTree.VirtioIrqBase + top;
            virtio[top] = new VirtioMmio(ram, device, level => plic.SetLevel(irq, level));
            if (device != null) virtioSlotsInUse.Add(top);
        }
        for (int slot = 0; slot < virtio.Length; slot++)
        {
            bus.AddDevice(VirtDeviceTree.VirtioBase + (ulong)slot * VirtDeviceTree.VirtioStride, VirtDeviceTree.VirtioStride, virtio[slot]);
        }
        for (int h = 0; h < harts.Length; h++)
        {
            harts[h] = new Hart(h, bus, ram, clint, control) { Failed = OnHartFailed };
        }
        clint.Attach(harts);
        ram.CodeWritten = (page, offset, length) =>
        {
            int frame = ram.FirstFrame + page;
            foreach (Hart h in harts) h.InvalidateCode(frame, offset, length);
        };
        ram.CodeDropped = page =>
        {
            int frame = ram.FirstFrame + page;
            foreach (Hart h in harts) h.DropCode(frame);
        };
        ram.PostcopyAborted = OnPostcopyAborted;
        rom.WriteResetVector(RamBase, 0);
    }

    private static void CheckShape(MachineOptions options)
    {
        if (options.Harts < 1 || options.Harts > MaxHarts)
        {
            throw new MachineConfigException($"--harts {options.Harts} is out of range (1 to {MaxHarts})");
        }
        CheckMemorySize(options.MemoryBytes);
    }

    /// <summary>Throws <see cref="MachineConfigException"/> unless <paramref name="bytes"/> is a RAM size this board takes.</summary>
    public static void CheckMemorySize(ulong bytes)
    {
        if (bytes < MinMemory || bytes > MaxMemory || (bytes & 0xfff) != 0)
        {
            throw new MachineConfigException(
                $"memory size {bytes} bytes is not a multiple of 4 KiB between {MinMemory >> 20} MiB and {MaxMemory >> 30} GiB");
        }
    }

    private static VirtioBlk OpenDisk(string path, bool readOnly, bool lockDeferred, DiskImageCopy? copiedBy)
    {
        try
        {
            return new VirtioBlk(path, readOnly, lockDeferred: lockDeferred, copiedBy: copiedBy);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidOperationException)
        {
            throw new MachineConfigException($"--disk {path}: {e.Message}", e);
        }
    }

    public GuestRam Ram => ram;

    /// <summary>The virtio-blk device (<see cref="MachineOptions.DiskPath"/>), or null.</summary>
    public VirtioBlk? Disk => disk;

    /// <summary>The virtio-net device (<see cref="MachineOptions.TapName"/>), or null.</summary>
    public VirtioNet? Net => Array.Find(virtio, v => v.Device is VirtioNet)?.Device as VirtioNet;

    /// <summary>
    /// For a migration over shared storage, once the devices are paused (<see cref="PauseDevices"/>): flush the disk
    /// and drop its lock for the destination to take. Not part of <see cref="PauseDevices"/>, which a plain pause
    /// uses too: a VM paused through the API keeps its disk. No effect without a disk. Throws
    /// <see cref="IOException"/> (lock kept) if the flush fails.
    /// </summary>
    public void ReleaseDiskLock() => disk?.ReleaseLock();

    /// <summary>
    /// Take the disk's lock (a destination built with <see cref="MachineOptions.DiskLockDeferred"/>, or a source whose
    /// migration failed); see <see cref="VirtioBlk.AcquireLock"/>. True without a disk.
    /// </summary>
    public bool AcquireDiskLock(TimeSpan wait, bool keepTrying = false) => disk?.AcquireLock(wait, keepTrying) ?? true;

    /// <summary>The options this board was built with; a device tree for it must name the same devices.</summary>
    public VirtDeviceTreeOptions DeviceTreeOptions(string? bootargs, (ulong Start, ulong End)? initrd) => new()
    {
        Harts = harts.Length,
        MemoryBytes = ram.Size,
        Bootargs = bootargs,
        Initrd = initrd,
    };

    public Uart16550 Uart => uart;

    public int HartCount => harts.Length;

    internal Hart GetHart(int index) => harts[index];

    /// <summary>
    /// What stopped the machine when it did not power off by itself: an emulator failure (a bug, not a guest fault),
    /// or a <see cref="VmLostException"/> when post-copy was aborted (<see cref="GuestRam.AbortPostcopy"/>).
    /// </summary>
    public Exception? Failure { get; private set; }

    /// <summary>Load a bare-metal ELF into RAM; the reset vector jumps to its entry in M-mode (QEMU's <c>-bios prog.elf</c>).</summary>
    public ulong LoadFirmware(string path)
    {
        ulong entry = ElfLoader.Load(path, ram);
        rom.WriteResetVector(entry, 0);
        return entry;
    }

    /// <summary>Where the kernel Image goes: OpenSBI's fw_dynamic jumps here in S-mode (as QEMU's virt board).</summary>
    public const ulong KernelBase = RamBase + 0x20_0000;

    /// <summary>
    /// Place a Linux boot as QEMU's <c>virt</c> board does: the firmware (OpenSBI <c>fw_dynamic.bin</c>, raw) at the
    /// base of RAM, the kernel Image at <see cref="KernelBase"/>, the initrd (if any) at 128 MiB past the kernel (half of
    /// RAM on small machines), the device tree at the top of RAM (below 3 GiB) aligned down to 2 MiB, and the reset
    /// vector's <c>fw_dynamic_info</c> naming the kernel as the next stage in S-mode. Returns the device tree's address.
    /// Throws <see cref="MachineConfigException"/> (one line) when something does not fit or is not what it claims.
    /// </summary>
    public ulong LoadLinux(ReadOnlySpan<byte> firmware, ReadOnlySpan<byte> kernel, ReadOnlySpan<byte> initrd, ReadOnlySpan<byte> deviceTree)
    {
        ulong ramEnd = RamBase + ram.Size;
        if ((ulong)firmware.Length > KernelBase - RamBase)
        {
            throw new MachineConfigException($"firmware is {firmware.Length} bytes; it must fit below the kernel at 0x{KernelBase:x}");
        }
        LinuxImage.Check(kernel);
        ulong kernelEnd = KernelBase + LinuxImage.LoadSize(kernel);
        ulong fdtTop = Math.Min(ramEnd, 3UL << 30);
        ulong fdtAddr = (fdtTop - (ulong)deviceTree.Length) & ~(0x20_0000UL - 1);
        if (fdtAddr < kernelEnd || fdtTop < (ulong)deviceTree.Length)
        {
            throw new MachineConfigException($"memory {ram.Size >> 20} MiB is too small for the kernel ({(kernelEnd - KernelBase) >> 20} MiB) and the device tree");
        }
        ulong initrdAddr = 0;
        if (!initrd.IsEmpty)
        {
            initrdAddr = KernelBase + Math.Min(ram.Size / 2, 128UL << 20);
            if (initrdAddr < kernelEnd) initrdAddr = (kernelEnd + 0xfff) & ~0xfffUL;
            if (initrdAddr + (ulong)initrd.Length > fdtAddr)
            {
                throw new MachineConfigException($"memory {ram.Size >> 20} MiB is too small for the kernel, the initrd ({initrd.Length >> 20} MiB) and the device tree");
            }
        }
        ram.Write(RamBase, firmware);
        ram.Write(KernelBase, kernel);
        if (!initrd.IsEmpty) ram.Write(initrdAddr, initrd);
        ram.Write(fdtAddr, deviceTree);
        rom.WriteResetVector(RamBase, fdtAddr, nextAddress: KernelBase, nextMode: 1);
        InitrdStart = initrdAddr;
        InitrdEnd = initrd.IsEmpty ? 0 : initrdAddr + (ulong)initrd.Length;
        return fdtAddr;
    }

    /// <summary>Where <see cref="LoadLinux"/> would put an initrd of <paramref name="length"/> bytes (the device tree names it).</summary>
    public ulong InitrdAddressFor(ulong kernelLoadSize) => KernelBase + Math.Max(Math.Min(ram.Size / 2, 128UL << 20), (kernelLoadSize + 0xfff) & ~0xfffUL);

    public ulong InitrdStart { get; private set; }

    public ulong InitrdEnd { get; private set; }

    /// <summary>Start every hart's thread from its current state (after reset: the boot ROM at 0x1000).</summary>
    public void Start()
    {
        lock (stateGate)
        {
            ObjectDisposedException.ThrowIf(disposed, this);
            if (started) throw new InvalidOperationException("the machine is already started");
            started = true;
        }
        ResumeDevices();
        foreach (Hart h in harts) h.Start();
    }

    /// <summary>
    /// Start the hart threads parked: none runs an instruction until <see cref="Resume"/>. A migration's destination
    /// does this when it builds the board, during pre-copy, so that creating the threads (1-3 ms each on a busy host)
    /// is not part of the downtime; its state is loaded while they are parked, and the switchover only resumes them.
    /// </summary>
    public void StartPaused()
    {
        lock (stateGate)
        {
            ObjectDisposedException.ThrowIf(disposed, this);
            if (started) throw new InvalidOperationException("the machine is already started");
            started = true;
            neverRan = true;
        }
        // Paused before the threads exist: each one's first act is to see the request and park.
        control.RequestPause();
        foreach (Hart h in harts) h.Start();
        var spin = new SpinWait();
        while (!AllQuiescent()) spin.SpinOnce();
    }

    /// <summary>Block until the guest powers off (the test device) or <see cref="PowerOff"/>; returns the exit code.</summary>
    public int WaitForExit()
    {
        exited.Wait();
        return Finish();
    }

    /// <summary>As <see cref="WaitForExit()"/> with a timeout; false if the guest is still running.</summary>
    public bool WaitForExit(TimeSpan timeout, out int code)
    {
        code = 0;
        if (!exited.Wait(timeout)) return false;
        code = Finish();
        return true;
    }

    private int Finish()
    {
        foreach (Hart h in harts) h.Join();
        uart.Flush(); // the last line may lack its newline
        if (Failure is VmLostException lost) throw new VmLostException(lost.Message, lost);
        if (Failure != null) throw new InvalidOperationException($"the emulator failed: {Failure.Message}", Failure);
        return Volatile.Read(ref exitCode);
    }

    /// <summary>Stop the machine with <paramref name="code"/>; harts leave at their next block boundary. First call wins.</summary>
    public void PowerOff(int code) => Stop(code, reset: false);

    /// <summary>
    /// The guest asked for a reset (SBI SRST reboot: OpenSBI writes 0x7777 to the test device), and that stopped the
    /// machine, with code 0. A board is not reset in place: a VMM that honours the reboot builds a new machine.
    /// </summary>
    public bool ResetRequested => resetRequested;

    private void RequestReset() => Stop(0, reset: true);

    private void Stop(int code, bool reset)
    {
        if (Interlocked.CompareExchange(ref poweredOff, 1, 0) != 0) return;
        Volatile.Write(ref exitCode, code);
        resetRequested = reset; // before exited is set: whoever WaitForExit releases sees it
        control.RequestExit();
        foreach (Hart h in harts) h.Kick();
        exited.Set();
    }

    private void OnHartFailed(Hart hart, Exception e)
    {
        // A hart that waited for a post-copy page that will never come: not the emulator's fault, and said as such.
        Failure ??= e is VmLostException ? e : new InvalidOperationException($"hart {hart.Id} at pc 0x{hart.Pc:x}: {e.Message}", e);
        PowerOff(-1);
    }

    /// <summary>Post-copy was aborted: pages the guest needs will never come, so it stops now, with that as the failure.</summary>
    private void OnPostcopyAborted(VmLostException e)
    {
        Failure ??= e;
        PowerOff(-1);
    }

    /// <summary>Stop every hart at an instruction boundary and return once all are stopped.</summary>
    public void Pause()
    {
        control.RequestPause();
        foreach (Hart h in harts) h.Kick();
        // A running hart stops at its next block boundary, within microseconds when it has a CPU: a short spin
        // catches that without a wake-up; otherwise wait for the last one to park (HartControl.WaitQuiescent).
        var spin = new SpinWait();
        for (int i = 0; i < 10 && !AllQuiescent(); i++) spin.SpinOnce(sleep1Threshold: -1);
        if (!AllQuiescent()) control.WaitQuiescent(AllQuiescent);
    }

    private bool AllQuiescent()
    {
        foreach (Hart h in harts)
        {
            if (!h.Quiescent) return false;
        }
        return true;
    }

    /// <summary>Let paused harts run again.</summary>
    public void Resume()
    {
        neverRan = false;
        control.Release();
    }

    /// <summary>
    /// Run a paused machine until some hart has retired <paramref name="count"/> more instructions (it stops at its next
    /// block boundary, so possibly a few more), then pause again. Returns when paused, or when the guest powered off.
    /// For tests and debugging: pauses land at points chosen by instruction count, whatever the host's load.
    /// </summary>
    public void RunInstructions(ulong count)
    {
        CheckStopped("a bounded run");
        foreach (Hart h in harts) h.SetInstructionBudget(count);
        neverRan = false;
        control.Release();
        var spin = new SpinWait();
        while (!control.PauseRequested && !control.ExitRequested) spin.SpinOnce();
        foreach (Hart h in harts) h.Kick(); // the others park too
        while (!AllQuiescent() && !control.ExitRequested) spin.SpinOnce();
        foreach (Hart h in harts) h.SetInstructionBudget(ulong.MaxValue);
    }

    /// <summary>Start recording the pages written (by harts and devices); every page starts clean.</summary>
    public void StartDirtyLog()
    {
        ram.StartDirtyLog();
        FlushWriteEntries();
    }

    public void StopDirtyLog() => ram.StopDirtyLog();

    /// <summary>The pages written since the last harvest (or <see cref="StartDirtyLog"/>), one bit per RAM page; tracking restarts clean.</summary>
    public ulong[] HarvestDirty()
    {
        ulong[] old = ram.SwapDirtyLog(new ulong[ram.DirtyWords]);
        // A hart may still hold write entries for pages that were dirty in the old bitmap; once every hart has dropped
        // them, every later write reaches the new bitmap, and the old one is complete.
        FlushWriteEntries();
        return old;
    }

    /// <summary>
    /// As <see cref="HarvestDirty()"/>, but ORs the pages written since the last harvest into <paramref name="bitmap"/>
    /// (at least <see cref="GuestRam.DirtyWords"/> words) and allocates nothing: the bitmap harvested last time is
    /// cleared and installed as the live one. One caller at a time (the migration thread).
    /// </summary>
    public void HarvestDirty(Span<ulong> bitmap)
    {
        if (bitmap.Length < ram.DirtyWords)
        {
            throw new ArgumentException($"bitmap of {bitmap.Length} words, {ram.DirtyWords} needed", nameof(bitmap));
        }
        ulong[] old = ram.SwapDirtyLog(spareDirty);
        FlushWriteEntries();
        OrInto(bitmap, old);
        spareDirty = old;
    }

    /// <summary>
    /// OR into <paramref name="bitmap"/> (bit i: RAM page i, as the dirty log; bits past its length are dropped) every
    /// RAM page the harts used, read, written, executed or walked as a page table, since the last call (or since the
    /// machine was built), then start a new interval. Recorded where a hart takes its slow path: a TLB fill, a
    /// page-table walk, an atomic that missed. A page hot all interval long is never filled again, so while every
    /// hart is paused (<see cref="Pause"/>) the pages their TLBs hold are added too; while they run, their TLBs are
    /// theirs alone and are not read (a first call that only opens the interval needs nothing from them). A hint for
    /// post-copy's push order: a page missed costs a fault later, never correctness. Any thread.
    /// </summary>
    public void HarvestAccessed(Span<ulong> bitmap) => HarvestAccessed(bitmap, default);

    /// <summary>
    /// As <see cref="HarvestAccessed(Span{ulong})"/>, and OR into <paramref name="system"/> (same layout; may be empty)
    /// the part of those pages the guest's system side used: page tables walked, code fetched in any mode, and data
    /// loaded or stored in supervisor or machine mode (the kernel's and firmware's text, stacks, per-CPU data and
    /// tables, not what user programs read and write). A resuming guest runs its kernel first.
    /// </summary>
    public void HarvestAccessed(Span<ulong> bitmap, Span<ulong> system)
    {
        ram.TakeAccessed(bitmap, system);
        // A paused hart only parks or drops entries until it is released, so its TLB holds still while we read it.
        if (!control.PauseRequested || !AllQuiescent()) return;
        foreach (Hart h in harts) h.OrTlbPages(bitmap, system);
    }

    /// <summary>
    /// OR into <paramref name="bitmap"/> (the dirty log's layout) the RAM pages the harts' software TLBs map now; nothing
    /// unless the machine is paused (a running hart changes its TLB under the reader). Unlike <see cref="HarvestAccessed"/>
    /// it starts no new interval: it names what the harts were working on at the pause.
    /// </summary>
    public void GetTlbResidentPages(Span<ulong> bitmap)
    {
        if (bitmap.Length < ram.DirtyWords) throw new ArgumentException($"bitmap of {bitmap.Length} words, {ram.DirtyWords} needed", nameof(bitmap));
        if (!control.PauseRequested || !AllQuiescent()) return;
        foreach (Hart h in harts) h.OrTlbPages(bitmap);
    }

    private static void OrInto(Span<ulong> target, ReadOnlySpan<ulong> source)
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            Span<Vector<ulong>> t = MemoryMarshal.Cast<ulong, Vector<ulong>>(target[..source.Length]);
            ReadOnlySpan<Vector<ulong>> v = MemoryMarshal.Cast<ulong, Vector<ulong>>(source);
            for (int k = 0; k < v.Length; k++) t[k] |= v[k];
            i = v.Length * Vector<ulong>.Count;
        }
        for (; i < source.Length; i++) target[i] |= source[i];
    }

    /// <summary>
    /// OR into <paramref name="bitmap"/> (the dirty log's layout) every RAM page that may hold non-zero bytes: those
    /// the host has a page behind (<c>/proc/self/pagemap</c>). RAM is private anonymous memory, so any other page
    /// reads as zeros, and the caller need not touch it.
    /// </summary>
    public void GetPopulatedPages(Span<ulong> bitmap)
    {
        if (bitmap.Length < ram.DirtyWords)
        {
            throw new ArgumentException($"bitmap of {bitmap.Length} words, {ram.DirtyWords} needed", nameof(bitmap));
        }
        using Pagemap pagemap = Pagemap.OpenSelf();
        unsafe
        {
            pagemap.OrPopulated((nint)ram.Host, ram.Size, bitmap, 0);
        }
    }

    /// <summary>
    /// Auto-converge: every hart sleeps <paramref name="percent"/>% (0..99) of each 10 ms slice, checked at block
    /// boundaries. 0 turns it off; an unthrottled hart pays one memory read per block for this.
    /// </summary>
    public void SetThrottle(int percent) => control.ThrottlePercent = percent;

    /// <summary>The throttle <see cref="SetThrottle"/> set last.</summary>
    public int Throttle => control.ThrottlePercent;

    /// <summary>
    /// Stop every virtio device at a request boundary: afterwards none writes guest RAM until
    /// <see cref="ResumeDevices"/>. A migration calls it after <see cref="Pause"/> and before the final dirty-log
    /// harvest, so the last pages and the device state agree.
    /// </summary>
    public void PauseDevices()
    {
        foreach (VirtioMmio v in virtio) v.Pause();
        // What the guest sent before the pause has left the UART as far as it knows (transmission is instant): write
        // out a line it had half sent, so a migrated guest's console reads in order, this side's bytes before the
        // destination's.
        uart.Flush();
        devicesPaused = true;
    }

    /// <summary>
    /// Undo <see cref="PauseDevices"/> (no effect if the devices run). Each device then looks at its queues for what the
    /// guest queued meanwhile: on this thread, or, with <paramref name="kickOnPool"/>, on thread-pool threads, so that
    /// a caller starting a post-copy guest is not held by a queue whose page has not arrived.
    /// </summary>
    public void ResumeDevices(bool kickOnPool = false)
    {
        if (!devicesPaused) return;
        devicesPaused = false;
        foreach (VirtioMmio v in virtio) v.Resume(kickOnPool);
    }

    private void FlushWriteEntries()
    {
        Span<long> tickets = stackalloc long[harts.Length];
        for (int h = 0; h < harts.Length; h++) tickets[h] = harts[h].RequestWriteFlush();
        var spin = new SpinWait();
        for (int h = 0; h < harts.Length; h++)
        {
            while (!harts[h].WriteFlushDone(tickets[h])) spin.SpinOnce();
        }
    }

    private void CheckStopped(string what)
    {
        if (!started || control.ExitRequested) return;
        if (!control.PauseRequested) throw new InvalidOperationException($"{what} needs the machine paused or not started");
        // Paused harts park before they run another instruction; wait for any still on their way there.
        var spin = new SpinWait();
        while (!AllQuiescent()) spin.SpinOnce();
    }

    /// <summary>The whole state of hart <paramref name="hart"/> as a versioned section. The machine must be paused or not started.</summary>
    public byte[] SaveHartState(int hart)
    {
        CheckStopped("saving hart state");
        return harts[hart].SaveState();
    }

    /// <summary>Replace hart <paramref name="hart"/>'s state from a section <see cref="SaveHartState"/> produced. Paused or not started.</summary>
    public void LoadHartState(int hart, ReadOnlySpan<byte> section)
    {
        CheckStopped("loading hart state");
        harts[hart].LoadState(section);
    }

    /// <summary>Instructions retired by all harts so far (exact while paused or stopped).</summary>
    public ulong InstructionsRetired
    {
        get
        {
            ulong n = 0;
            foreach (Hart h in harts) n += h.Instret;
            return n;
        }
    }

    /// <summary>
    /// Take the board apart but keep its RAM, and hand that over: for a migration's destination that built this board
    /// ahead of the state and guessed the source's shape wrong (another hart count), so the pages already received
    /// go to a board of the right shape. Only before <see cref="Start"/>.
    /// </summary>
    public GuestRam DisposeKeepingRam()
    {
        if (started && !neverRan) throw new InvalidOperationException("the machine has run: its RAM belongs to it");
        keepRam = true;
        Dispose();
        ram.CodeWritten = null;
        ram.CodeDropped = null;
        ram.PostcopyAborted = null;
        return ram;
    }

    public void Dispose()
    {
        lock (stateGate)
        {
            if (disposed) return;
            disposed = true;
        }
        PowerOff(Volatile.Read(ref exitCode));
        // Threads blocked on a post-copy page that no kick reaches (a device's worker, a hart inside device emulation)
        // must not hold up the joins below: the RAM goes with the machine, so those pages will never come.
        if (!keepRam) ram.AbortPostcopy(new ObjectDisposedException(null, "the machine was disposed during post-copy"));
        foreach (Hart h in harts) h.Join();
        uart.Flush();
        foreach (VirtioMmio v in virtio) v.Dispose();
        rtc.Dispose();
        foreach (Hart h in harts) h.Dispose();
        if (!keepRam) ram.Dispose();
        rom.Dispose();
        control.Dispose();
        exited.Dispose();
    }
}
