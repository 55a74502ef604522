using Ferry.Api;
using Ferry.Machine;
using Ferry.Machine.Board;

namespace Ferry.Cli;

/// <summary>What <c>ferry vm run</c> was asked to do.</summary>
/// <param name="Firmware">The bare-metal RISC-V ELF to boot (QEMU's <c>-bios</c>).</param>
/// <param name="Serial">File for the UART's output; null: stdout.</param>
/// <param name="MemoryBytes">RAM at 0x8000_0000.</param>
/// <param name="Harts">Harts, each on its own host thread.</param>
/// <param name="Api">Unix socket to serve the VM's API on; null: no API.</param>
internal sealed record VmRunSettings(string Firmware, string? Serial, ulong MemoryBytes, int Harts, string? Api = null)
{
    /// <summary>
    /// The console's input for the guest's UART. Null: the process's stdin when the serial line is the process's own
    /// stdout, none otherwise (a <c>--serial</c> file, or a captured console under test).
    /// </summary>
    public Stream? Input { get; init; }
}

/// <summary>
/// <c>ferry vm run</c>: build a <c>virt</c> board, load the firmware, run it until the guest powers off through the
/// SiFive test device, and exit with the guest's code. With <c>--api</c>, serve the VM's API (<see cref="VmApiServer"/>)
/// on a unix socket while it runs; when the serial line is stdout, what is typed on stdin goes to the guest's UART.
/// </summary>
/// <remarks>
/// Exit codes: the guest's (0 for <c>0x5555</c>, <c>code</c> for <c>(code &lt;&lt; 16) | 0x3333</c>, of which the OS
/// keeps the low 8 bits; 0 after <c>PUT /vm/shutdown</c>); 2 a bad command line, firmware or API socket (one line on
/// stderr); 130 interrupted (Ctrl+C powers the machine off); 1 the emulator itself failed.
/// </remarks>
internal static class VmRun
{
    public const int ExitInterrupted = 130;
    public const int ExitEmulatorFailed = 1;

    public static int Run(VmRunSettings settings, CliConsole console, CancellationToken cancellationToken)
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
            VirtMachine machine;
            try
            {
                machine = new VirtMachine(new MachineOptions { MemoryBytes = settings.MemoryBytes, Harts = settings.Harts, SerialOut = serial });
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
                    machine.LoadFirmware(settings.Firmware);
                }
                catch (MachineConfigException e)
                {
                    console.Error.WriteLine($"ferry: {e.Message}");
                    return FerryCommand.ExitUsage;
                }
                var control = new MachineVmControl(machine, TimeProvider.System);
                VmApiServer? api = null;
                if (settings.Api is not null)
                {
                    // Before the harts start: a socket in use is a usage error, and the guest has not run yet.
                    try
                    {
                        api = VmApiServer.StartAsync(settings.Api, control, cancellationToken).GetAwaiter().GetResult();
                    }
                    catch (ApiSocketException e)
                    {
                        console.Error.WriteLine($"ferry: --api: {e.Message}");
                        return FerryCommand.ExitUsage;
                    }
                }
                var input = settings.Input ?? (settings.Serial is null && ReferenceEquals(console.Out, Console.Out) ? ConsoleInput.OpenStdin() : null);
                var typing = input is null ? null : ConsoleInput.Start(input, bytes => machine.Uart.Input(bytes));
                try
                {
                    return RunMachine(machine, console, cancellationToken);
                }
                finally
                {
                    typing?.Stop();
                    control.MarkShutdown();
                    // Requests in flight finish (a shutdown's 204 is sent), then the socket file goes.
                    api?.DisposeAsync().AsTask().GetAwaiter().GetResult();
                }
            }
        }
    }

    private static int RunMachine(VirtMachine machine, CliConsole console, CancellationToken cancellationToken)
    {
        int code;
        // Registered before Start: a Ctrl+C that came first still stops the machine at once.
        using (cancellationToken.Register(() => machine.PowerOff(ExitInterrupted)))
        {
            machine.Start();
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
}
