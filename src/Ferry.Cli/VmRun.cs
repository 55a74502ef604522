using Ferry.Api;
using Ferry.Machine;
using Ferry.Machine.Board;
using Ferry.Migration;
using Ferry.Migration.Precopy;
using Ferry.Migration.Transport;
using Ferry.Vm;

namespace Ferry.Cli;

/// <summary>What <c>ferry vm run</c> was asked to do.</summary>
/// <param name="Firmware">
/// Bare metal (no <see cref="Kernel"/>): the RISC-V ELF to boot in M-mode (QEMU's <c>-bios</c>). Linux: the raw
/// firmware image at the base of RAM; null for OpenSBI's <c>fw_dynamic.bin</c>. With neither this nor a kernel, the
/// built-in Linux guest boots.
/// </param>
/// <param name="Serial">File for the UART's output; null: stdout.</param>
/// <param name="MemoryBytes">RAM at 0x8000_0000.</param>
/// <param name="Harts">Harts, each on its own host thread.</param>
/// <param name="Api">Unix socket to serve the VM's API on; null: no API.</param>
internal sealed record VmRunSettings(string? Firmware, string? Serial, ulong MemoryBytes, int Harts, string? Api = null)
{
    /// <summary>Linux mode defaults (the issue's <c>--memory 1G --harts 2</c>): room for the guest's 64 MiB working set.</summary>
    public const ulong LinuxMemoryBytes = 1UL << 30;
    public const int LinuxHarts = 2;
    public const ulong BareMetalMemoryBytes = 128UL << 20;
    public const int BareMetalHarts = 1;

    /// <summary>The kernel command line when none is given: the console on the UART and a heartbeat a second.</summary>
    public const string DefaultCmdline = "console=ttyS0 ferry.heartbeat=1s";

    /// <summary>
    /// The console's input for the guest's UART. Null: the process's stdin when the serial line is the process's own
    /// stdout, none otherwise (a <c>--serial</c> file, or a captured console under test).
    /// </summary>
    public Stream? Input { get; init; }

    /// <summary>A RISC-V Linux <c>Image</c>; null with no <see cref="Firmware"/>: the built-in guest, built if needed.</summary>
    public string? Kernel { get; init; }

    /// <summary>An initial RAM disk, placed in RAM and named in the device tree; null: none.</summary>
    public string? Initrd { get; init; }

    /// <summary>The kernel command line; null: <see cref="DefaultCmdline"/>.</summary>
    public string? Cmdline { get; init; }

    /// <summary>A raw disk image for virtio-blk; null: no disk.</summary>
    public string? Disk { get; init; }

    public bool DiskReadOnly { get; init; }

    /// <summary>A host tap interface for virtio-net; null: no network.</summary>
    public string? Tap { get; init; }

    /// <summary>
    /// <c>ferry vm receive</c>: instead of booting, wait on this address for a VM migrating in, and run it. The boot
    /// files then only serve a reboot of the arrived guest.
    /// </summary>
    public System.Net.IPEndPoint? Listen { get; init; }

    /// <summary>
    /// <c>ferry vm receive</c>: how long a post-copy that lost its connection waits for the source to resume it before
    /// the VM is given up as lost; null: the engine's default.
    /// </summary>
    public TimeSpan? RecoveryTimeout { get; init; }

    /// <summary><c>ferry vm receive</c>: the engine's <see cref="IncomingOptions.FaultPoll"/> (zero: off).</summary>
    public TimeSpan FaultPoll { get; init; }

    /// <summary>A firmware ELF and no kernel: run it bare-metal in M-mode, as before Linux booted.</summary>
    public bool BareMetal => Firmware is not null && Kernel is null;
}

/// <summary>
/// <c>ferry vm run</c>: build a <c>virt</c> board, boot it, run it until the guest powers off through the SiFive test
/// device, and exit with the guest's code. Two modes: Linux (OpenSBI, a kernel Image, by default the built-in guest,
/// and a device tree, as QEMU's <c>-bios fw_dynamic.bin -kernel Image</c>), and bare metal (<c>--firmware ELF</c>
/// alone). With <c>--api</c>, serve the VM's API (<see cref="VmApiServer"/>) on a unix socket while it runs; when the
/// serial line is stdout, what is typed on stdin goes to the guest's UART.
/// </summary>
/// <remarks>
/// <para>A guest reboot (0x7777 to the test device: SBI SRST's reboot through OpenSBI) restarts the VM in this process:
/// the board is built again and the same files boot again, onto the same serial line; the API socket is served
/// again by the new machine (it is absent for the moment between the two).</para>
/// <para>Exit codes: the guest's (0 for <c>0x5555</c>, <c>code</c> for <c>(code &lt;&lt; 16) | 0x3333</c>, of which
/// the OS keeps the low 8 bits; 0 after <c>PUT /vm/shutdown</c>); 2 a bad command line, firmware, kernel, initrd, disk,
/// tap or API socket (one line on stderr); 130 interrupted (Ctrl+C powers the machine off); 1 the emulator itself
/// failed, or the built-in guest could not be built.</para>
/// </remarks>
internal static class VmRun
{
    public const int ExitInterrupted = 130;
    public const int ExitEmulatorFailed = 1;

    /// <summary>The device tree's blob is padded to this, as the machine tests do, so OpenSBI can add its nodes in place.</summary>
    private const int DeviceTreeMinimumSize = 16 * 1024;

    /// <summary>What a Linux boot loads, read and checked once, before the first board is built.</summary>
    private sealed record LinuxFiles(byte[] Firmware, byte[] Kernel, byte[] Initrd, string Cmdline);

    public static int Run(VmRunSettings settings, CliConsole console, CancellationToken cancellationToken)
    {
        LinuxFiles? linux = null;
        try
        {
            if (settings.Disk is not null && !File.Exists(settings.Disk))
            {
                throw new MachineConfigException($"--disk {settings.Disk}: no such file");
            }
            // A receiving process reads its boot files only if the arrived guest reboots.
            if (!settings.BareMetal && settings.Listen is null) linux = ReadLinuxFiles(settings, console, cancellationToken);
        }
        catch (MachineConfigException e)
        {
            console.Error.WriteLine($"ferry: {e.Message}");
            return FerryCommand.ExitUsage;
        }
        catch (GuestBuildException e)
        {
            console.Error.WriteLine($"ferry: {e.Message}");
            return ExitEmulatorFailed;
        }
        catch (OperationCanceledException)
        {
            return ExitInterrupted;
        }

        TcpMigrationListener? listener = null;
        if (settings.Listen is { } listen)
        {
            try
            {
                // A stray connection (a port scanner, a wrong client) is dropped and the wait goes on; the operator sees why.
                listener = new TcpMigrationListener(listen, new TcpTransportOptions
                {
                    ConnectionRejected = line => console.Error.WriteLine($"ferry: --listen: {line}"),
                });
            }
            catch (Exception e) when (e is System.Net.Sockets.SocketException or IOException)
            {
                console.Error.WriteLine($"ferry: --listen {listen}: cannot listen: {e.Message}");
                return FerryCommand.ExitUsage;
            }
        }
        using var stopReceiving = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        try
        {
            Stream serial;
            try
            {
                serial = OpenSerial(settings.Serial, console);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
            {
                console.Error.WriteLine($"ferry: --serial: cannot open '{settings.Serial}': {e.Message}");
                return FerryCommand.ExitUsage;
            }
            using (serial)
            {
                // One API socket for the whole process (reboots and an incoming migration included); a shutdown before an
                // incoming VM arrived stops waiting and ends the process with 0.
                var slot = listener is null
                    ? new VmControlSlot(VmState.Running)
                    : new VmControlSlot(VmState.Incoming, stopReceiving.Cancel);
                VmApiServer? api = null;
                if (settings.Api is not null)
                {
                    // Before the harts start: a socket in use is a usage error, and the guest has not run yet.
                    try
                    {
                        api = VmApiServer.StartAsync(settings.Api, slot, cancellationToken).GetAwaiter().GetResult();
                    }
                    catch (ApiSocketException e)
                    {
                        console.Error.WriteLine($"ferry: --api: {e.Message}");
                        return FerryCommand.ExitUsage;
                    }
                }
                // One reader of the console for the whole run, reboots included: it types into whichever machine is current.
                var current = new CurrentMachine();
                var input = settings.Input ?? (settings.Serial is null && ReferenceEquals(console.Out, Console.Out) ? ConsoleInput.OpenStdin() : null);
                var typing = input is null ? null : ConsoleInput.Start(input, current.Type);
                try
                {
                    bool reboot;
                    int code = listener is null
                        ? Boot(settings, linux, serial, current, slot, console, cancellationToken, out reboot)
                        : Receive(settings, listener, serial, current, slot, console, stopReceiving, cancellationToken, out reboot);
                    while (reboot)
                    {
                        console.Error.WriteLine("ferry: the guest asked for a reboot: restarting the VM");
                        if (linux is null && !settings.BareMetal)
                        {
                            try
                            {
                                linux = ReadLinuxFiles(settings, console, cancellationToken);
                            }
                            catch (Exception e) when (e is MachineConfigException or GuestBuildException)
                            {
                                console.Error.WriteLine($"ferry: cannot boot again: {e.Message}");
                                return ExitEmulatorFailed;
                            }
                        }
                        code = Boot(settings, linux, serial, current, slot, console, cancellationToken, out reboot);
                    }
                    return code;
                }
                finally
                {
                    typing?.Stop();
                    if (slot.State != VmState.Migrated) slot.SetIdle(VmState.Shutdown);
                    // Requests in flight finish (a shutdown's 204, a migration's statistics are sent), then the socket file goes.
                    api?.DisposeAsync().AsTask().GetAwaiter().GetResult();
                }
            }
        }
        finally
        {
            listener?.Dispose();
        }
    }

    /// <summary>
    /// Wait for one incoming migration, then run the VM that arrived until it stops. Exit code 1 when the migration
    /// failed on the way (a clear line on stderr: nothing ran here, or a post-copy that lost its source lost the VM),
    /// 0 when a shutdown came before any VM did.
    /// </summary>
    private static int Receive(VmRunSettings settings, TcpMigrationListener listener, Stream serial, CurrentMachine current, VmControlSlot slot,
        CliConsole console, CancellationTokenSource stopReceiving, CancellationToken cancellationToken, out bool reboot)
    {
        reboot = false;
        var factory = new VirtMachineTargetFactory
        {
            Options = new MachineOptions
            {
                // The board is built before the state names the source's harts: the usual Linux guest's is the guess.
                Harts = VmRunSettings.LinuxHarts,
                SerialOut = serial, DiskPath = settings.Disk, DiskReadOnly = settings.DiskReadOnly, TapName = settings.Tap,
            },
        };
        // RAM sizes are bounded by the board itself (the factory refuses any other), a copied disk by the source's
        // largest; the engine's own bound is their sum, and only with a --disk to copy into.
        ulong maxBytes = VirtMachine.MaxMemory + (settings.Disk is null ? 0 : VirtMachineSource.MaxCopiedDiskBytes);
        IncomingMigration? incoming = null;
        PostcopyVmControl? postcopy = null;
        incoming = new IncomingMigration(listener, factory, new IncomingOptions
        {
            MaxMemoryBytes = maxBytes,
            Notice = line => console.Error.WriteLine($"ferry: {line}"),
            // Post-copy: the guest runs here before its memory is all here; the API and the console serve it from now.
            PostcopyStarted = t =>
            {
                VirtMachine arrived = ((VirtMachineTarget)t).Machine!;
                postcopy = new PostcopyVmControl(arrived, incoming!, TimeProvider.System);
                slot.Set(postcopy);
                current.Set(arrived);
            },
            PostcopyRecoveryTimeout = settings.RecoveryTimeout ?? IncomingOptions.DefaultPostcopyRecoveryTimeout,
            FaultPoll = settings.FaultPoll,
        });
        // While nobody has connected yet: compile what would otherwise be compiled inside the downtime.
        var warmUp = new Thread(() =>
        {
            VirtMachine.WarmUp();
            VirtMachine.ReserveDecodedCode(VmRunSettings.LinuxHarts);
        }) { IsBackground = true, Name = "ferry warm-up" };
        warmUp.Start();
        console.Error.WriteLine($"ferry: waiting for an incoming migration on {listener.LocalEndPoint}");
        VirtMachineTarget target;
        try
        {
            target = (VirtMachineTarget)incoming.Run(stopReceiving.Token);
        }
        catch (Exception e) when (e is MigrationException or OperationCanceledException or IOException)
        {
            current.Set(null);
            if (postcopy is not null) slot.SetIdle(VmState.Shutdown);
            if (cancellationToken.IsCancellationRequested) return ExitInterrupted;
            if (stopReceiving.IsCancellationRequested) return 0; // shut down through the API before anything arrived
            console.Error.WriteLine($"ferry: incoming migration failed: {e.Message}");
            return ExitEmulatorFailed;
        }
        finally
        {
            // One migration per process, as QEMU's -incoming: nothing else may connect.
            listener.Dispose();
        }
        using (target)
        {
            VirtMachine machine = target.Machine!;
            console.Error.WriteLine($"ferry: the VM arrived ({machine.HartCount} harts, {Units.FormatBytes(machine.Ram.Size)}): running");
            return Serve(machine, started: true, slot, current, console, cancellationToken, out reboot, postcopy?.StartedAt);
        }
    }
    /// <summary>Build a board, load it, run it until it stops; <paramref name="reboot"/>: the guest asked for a reset.</summary>
    private static int Boot(VmRunSettings settings, LinuxFiles? linux, Stream serial, CurrentMachine current, VmControlSlot slot, CliConsole console,
        CancellationToken cancellationToken, out bool reboot)
    {
        reboot = false;
        VirtMachine machine;
        try
        {
            machine = new VirtMachine(new MachineOptions
            {
                MemoryBytes = settings.MemoryBytes,
                Harts = settings.Harts,
                SerialOut = serial,
                DiskPath = settings.Disk,
                DiskReadOnly = settings.DiskReadOnly,
                TapName = settings.Tap,
            });
        }
        catch (MachineConfigException e)
        {
            console.Error.WriteLine($"ferry: {e.Message}");
            return FerryCommand.ExitUsage;
        }
        using (machine)
        {
            try
            {
                if (linux is null) machine.LoadFirmware(settings.Firmware!);
                else LoadLinux(machine, linux);
            }
            catch (MachineConfigException e)
            {
                console.Error.WriteLine($"ferry: {e.Message}");
                return FerryCommand.ExitUsage;
            }
            return Serve(machine, started: false, slot, current, console, cancellationToken, out reboot);
        }
    }

    /// <summary>Run <paramref name="machine"/> (started here unless <paramref name="started"/>) until it stops, with the API and the console on it.</summary>
    private static int Serve(VirtMachine machine, bool started, VmControlSlot slot, CurrentMachine current, CliConsole console,
        CancellationToken cancellationToken, out bool reboot, long? startedAt = null)
    {
        reboot = false;
        var control = new MachineVmControl(machine, TimeProvider.System, startedAt);
        slot.Set(control);
        current.Set(machine);
        try
        {
            int code = RunMachine(machine, started, console, cancellationToken);
            // Ctrl+C wins over whatever the guest was doing when it came, a reboot included.
            if (cancellationToken.IsCancellationRequested) return ExitInterrupted;
            if (control.MigratedTo is { } to)
            {
                console.Error.WriteLine($"ferry: the VM migrated to {to} and runs there now");
                return 0;
            }
            reboot = machine.ResetRequested;
            return code;
        }
        finally
        {
            current.Set(null);
            control.MarkShutdown();
            // The machine is disposed after this: the API no longer reads it.
            slot.SetIdle(control.State == VmState.Migrated ? VmState.Migrated : reboot ? VmState.Running : VmState.Shutdown);
        }
    }

    /// <summary>
    /// The firmware, kernel and initrd, each read whole (at most the guest's memory, so <c>/dev/zero</c> is refused
    /// rather than read forever) and checked: a kernel that is not a RISC-V Image, or a firmware ELF, is one line.
    /// </summary>
    private static LinuxFiles ReadLinuxFiles(VmRunSettings settings, CliConsole console, CancellationToken cancellationToken)
    {
        long limit = (long)Math.Min(settings.MemoryBytes, (ulong)Array.MaxLength);
        string firmwarePath = settings.Firmware ?? BuiltInGuest.Firmware;
        if (settings.Firmware is null && !File.Exists(firmwarePath))
        {
            throw new MachineConfigException($"--firmware {firmwarePath}: no such file (apt-get install opensbi, or give --firmware)");
        }
        byte[] firmware = ReadBootFile("--firmware", firmwarePath, limit);
        if (firmware.AsSpan().StartsWith("\u007fELF"u8))
        {
            // fw_dynamic.elf's one segment is fw_dynamic.bin at 0x8000_0000; the raw image is what QEMU's virt loads too.
            throw new MachineConfigException(
                $"--firmware {firmwarePath}: an ELF file; with a kernel the firmware is a raw image such as OpenSBI's fw_dynamic.bin (an ELF alone, without --kernel, runs bare-metal)");
        }
        string kernelPath = settings.Kernel ?? BuiltInGuest.Build(console, cancellationToken);
        byte[] kernel = ReadBootFile("--kernel", kernelPath, limit);
        try
        {
            LinuxImage.Check(kernel);
        }
        catch (MachineConfigException e)
        {
            throw new MachineConfigException($"--kernel {kernelPath}: {e.Message}", e);
        }
        byte[] initrd = settings.Initrd is null ? [] : ReadBootFile("--initrd", settings.Initrd, limit);
        return new LinuxFiles(firmware, kernel, initrd, settings.Cmdline ?? VmRunSettings.DefaultCmdline);
    }

    private static byte[] ReadBootFile(string flag, string path, long limit)
    {
        if (Directory.Exists(path)) throw new MachineConfigException($"{flag} {path}: is a directory");
        if (!File.Exists(path)) throw new MachineConfigException($"{flag} {path}: no such file");
        try
        {
            using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, bufferSize: 0);
            using var bytes = new MemoryStream();
            var chunk = new byte[1 << 20];
            int n;
            while ((n = file.Read(chunk)) > 0)
            {
                if (bytes.Length + n > limit)
                {
                    throw new MachineConfigException($"memory {Units.FormatBytes((ulong)limit)} is too small for {flag} {path} (more than that)");
                }
                bytes.Write(chunk, 0, n);
            }
            return bytes.ToArray();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new MachineConfigException($"{flag} {path}: {e.Message}", e);
        }
    }

    /// <summary>
    /// Place OpenSBI, the kernel, the initrd and a device tree naming them as QEMU's virt board does. The tree names the
    /// initrd where <see cref="VirtMachine.LoadLinux"/> puts it, so it is built first with that address.
    /// </summary>
    private static void LoadLinux(VirtMachine machine, LinuxFiles files)
    {
        (ulong Start, ulong End)? initrd = null;
        if (files.Initrd.Length > 0)
        {
            ulong start = machine.InitrdAddressFor(LinuxImage.LoadSize(files.Kernel));
            initrd = (start, start + (ulong)files.Initrd.Length);
        }
        byte[] dtb = VirtDeviceTree.CreateBlob(machine.DeviceTreeOptions(files.Cmdline, initrd), DeviceTreeMinimumSize);
        machine.LoadLinux(files.Firmware, files.Kernel, files.Initrd, dtb);
    }

    private static int RunMachine(VirtMachine machine, bool started, CliConsole console, CancellationToken cancellationToken)
    {
        int code;
        // Registered before Start: a Ctrl+C that came first still stops the machine at once.
        using (cancellationToken.Register(() => machine.PowerOff(ExitInterrupted)))
        {
            if (!started) machine.Start();
            try
            {
                code = machine.WaitForExit();
            }
            catch (InvalidOperationException e)
            {
                machine.Uart.Flush();
                console.Error.WriteLine($"ferry: {e.Message}");
                return ExitEmulatorFailed;
            }
        }
        // The guest's last line may lack a newline: write it before the stream closes.
        machine.Uart.Flush();
        return code;
    }

    /// <summary>
    /// The UART's stream: the file, or stdout. For the process's own stdout, the raw byte stream, so the guest's bytes
    /// pass unchanged; for a captured writer (tests), a decoding adapter.
    /// </summary>
    private static Stream OpenSerial(string? path, CliConsole console)
    {
        if (path is not null) return new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.Read, bufferSize: 4096);
        return ReferenceEquals(console.Out, Console.Out) ? Console.OpenStandardOutput() : new TextWriterStream(console.Out);
    }

    /// <summary>
    /// The machine typed input goes to. Swapped under the same lock as each delivery, so no bytes reach a machine being
    /// disposed (its interrupt lines are gone); bytes typed between two boots of a reboot are dropped, as a real
    /// serial line would drop them.
    /// </summary>
    private sealed class CurrentMachine
    {
        private readonly Lock gate = new();
        private VirtMachine? machine;

        public void Set(VirtMachine? value)
        {
            lock (gate) machine = value;
        }

        public void Type(ReadOnlySpan<byte> bytes)
        {
            lock (gate) machine?.Uart.Input(bytes);
        }
    }
}
