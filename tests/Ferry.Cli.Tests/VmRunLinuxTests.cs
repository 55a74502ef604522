using System.IO.Pipes;
using System.Text.RegularExpressions;
using Ferry.Api;
using static Ferry.Cli.Tests.VmRunTests;

namespace Ferry.Cli.Tests;

/// <summary>
/// <c>ferry vm run</c> in Linux mode: with no flags it boots the built-in guest (guest-linux/, built by its script, a
/// cache hit after the first time) to its heartbeat; the guest's poweroff and an API shutdown end it with 0; bad
/// kernels, memory and disks are one line and exit 2; a disk reaches the guest and is locked against a second VM.
/// </summary>
public sealed partial class VmRunLinuxTests : IDisposable
{
    // The guest's first heartbeat comes ~10 s after the start on a quiet 2-core host; the test classes run in parallel.
    private static readonly TimeSpan Boot = TimeSpan.FromSeconds(60);

    // A first build of the guest's kernel takes ~7 min (CI builds it before the tests): until the serial file appears.
    private static readonly TimeSpan GuestBuild = TimeSpan.FromMinutes(15);

    private readonly string dir = Directory.CreateTempSubdirectory("ferry-linux-").FullName;

    public void Dispose() => Directory.Delete(dir, recursive: true);

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [GeneratedRegex(@"machine: [^\r\n]*")]
    private static partial Regex MachineLine();

    [Fact]
    public async Task VmRunAloneBootsTheBuiltInGuestToItsHeartbeatAndAnApiShutdownExitsZero()
    {
        string socket = Path.Combine(dir, "vm.sock");
        await using var vm = LinuxVm.Start(dir, ["--api", socket]);

        await vm.WaitForSerialAsync("heartbeat 2 ");
        string machine = MachineLine().Match(vm.Serial).Value;
        Assert.StartsWith("machine: harts=2 ", machine, StringComparison.Ordinal); // Linux mode's defaults: 2 harts, 1 GiB
        Assert.Contains(" mem=1024M ", machine, StringComparison.Ordinal);
        using (var client = new VmApiClient(socket)) await client.ShutdownAsync(Ct);

        var (code, stderr) = await vm.ExitAsync();
        Assert.True(code == 0, $"exit {code}; stderr: {stderr}");
        Assert.Equal("", stderr);
    }

    [Fact]
    public async Task TheGuestSeesARawDiskThatASecondVmCannotOpenAndPoweroffTypedAtTheConsoleExitsZero()
    {
        string disk = Path.Combine(dir, "disk.img");
        using (var image = File.Create(disk)) image.SetLength(64L << 20);
        // Closed writer first, then reader: the console's reader sees the end of input and stops (disposing the
        // reader while a read is blocked on it does not return).
        var keyboard = new AnonymousPipeServerStream(PipeDirection.Out);
        var stdin = new AnonymousPipeClientStream(PipeDirection.In, keyboard.ClientSafePipeHandle);
        try
        {
            // The command line cannot name an input stream: the settings can. 256 MiB: a lighter guest than the default.
            string serial = Path.Combine(dir, "serial.txt");
            var settings = new VmRunSettings(null, serial, 256UL << 20, 2) { Disk = disk, Input = stdin };
            await using var vm = LinuxVm.Start(serial, settings);

            await vm.WaitForSerialAsync("heartbeat 1 ");
            Assert.Contains(" virtio=2,4 ", MachineLine().Match(vm.Serial).Value, StringComparison.Ordinal); // blk and rng

            var second = RunWithDeadline("vm", "run", "--disk", disk, "--serial", Path.Combine(dir, "second.txt"));
            AssertUsageError(second, $"ferry: {disk}: disk image is in use by another VM");

            keyboard.Write("poweroff\n"u8);
            keyboard.Flush();
            var (code, stderr) = await vm.ExitAsync();
            Assert.True(code == 0, $"exit {code}; stderr: {stderr}; serial: {vm.Serial}");
        }
        finally
        {
            keyboard.Dispose();
            stdin.Dispose();
        }
    }

    [Fact]
    public void AKernelThatIsNotARiscvImageIsAUsageError()
    {
        AssertUsageError(RunWithDeadline("vm", "run", "--kernel", "/bin/true"),
            "ferry: --kernel /bin/true: the kernel is not a RISC-V Linux Image");
    }

    [Fact]
    public void MemoryTooSmallForTheBuiltInGuestIsAUsageError()
    {
        AssertUsageError(RunWithDeadline("vm", "run", "--memory", "2M"), "ferry: memory 2 MiB is too small for ");
    }

    [Theory]
    [InlineData("--kernel")]
    [InlineData("--initrd")]
    [InlineData("--disk")]
    public void AMissingFileIsAUsageErrorNamingTheFlag(string flag)
    {
        string path = Path.Combine(dir, "missing");
        AssertUsageError(RunWithDeadline("vm", "run", flag, path), $"ferry: {flag} {path}: no such file");
    }

    [Fact]
    public void AnElfFirmwareWithAKernelIsAUsageErrorThatAsksForTheRawImage()
    {
        // The ELF is never booted: only its magic is read.
        string elf = Path.Combine(dir, "fw.elf");
        File.WriteAllBytes(elf, [0x7f, (byte)'E', (byte)'L', (byte)'F', 2, 1, 1, 0]);
        AssertUsageError(RunWithDeadline("vm", "run", "--firmware", elf, "--kernel", "/bin/true"),
            $"ferry: --firmware {elf}: an ELF file; with a kernel the firmware is a raw image");
    }

    [Theory]
    [InlineData("--net", "eth0", "ferry: --net: 'eth0' is not tap=NAME")]
    [InlineData("--net", "tap=", "ferry: --net: 'tap=' is not tap=NAME")]
    [InlineData("--disk", ",readonly", "ferry: --disk: ',readonly' names no file")]
    public void AMalformedDeviceFlagIsAUsageError(string flag, string value, string line)
    {
        AssertUsageError(RunWithDeadline("vm", "run", flag, value), line);
    }

    [Fact]
    public async Task AGuestRebootRestartsTheVmInTheSameProcess()
    {
        // Prints "boot\n", then asks the test device for a reset, as OpenSBI does for SBI SRST's reboot.
        const string rebootSource = """
                .section .text
                .globl _start
            _start:
                li   t0, 0x10000000
                li   t1, 'b'
                sb   t1, 0(t0)
                li   t1, 'o'
                sb   t1, 0(t0)
                sb   t1, 0(t0)
                li   t1, 't'
                sb   t1, 0(t0)
                li   t1, '\n'
                sb   t1, 0(t0)
                li   t0, 0x100000
                li   t1, 0x7777
                sw   t1, 0(t0)
            1:  j    1b
            """;
        string elf = BuildGuest(dir, "reboot", rebootSource);
        string serial = Path.Combine(dir, "reboot.txt");
        await using var vm = LinuxVm.Start(serial, new VmRunSettings(elf, serial, 64UL << 20, 1));

        await vm.WaitForAsync(() => Regex.Count(vm.Serial, "boot\n") >= 3, "three boots");
        vm.Interrupt();

        var (code, stderr) = await vm.ExitAsync();
        Assert.Equal(VmRun.ExitInterrupted, code);
        Assert.Contains("ferry: the guest asked for a reboot: restarting the VM\n", stderr, StringComparison.Ordinal);
    }

    /// <summary>
    /// <c>ferry vm run</c> on a background thread with its serial line in a file. Disposing it interrupts the run as
    /// Ctrl+C would if it still goes, and waits for it, so no test leaves a VM behind.
    /// </summary>
    private sealed class LinuxVm : IAsyncDisposable
    {
        private readonly CancellationTokenSource stop = new();
        private readonly StringWriter stderr = new();
        private readonly string serialPath;
        private Task<int> run = Task.FromResult(0);

        private LinuxVm(string serialPath) => this.serialPath = serialPath;

        public string Serial
        {
            get
            {
                if (!File.Exists(serialPath)) return "";
                using var reader = new StreamReader(new FileStream(serialPath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite));
                return reader.ReadToEnd();
            }
        }

        /// <summary><c>ferry vm run --serial DIR/serial.txt</c> and <paramref name="options"/>.</summary>
        public static LinuxVm Start(string dir, string[] options)
        {
            string serial = Path.Combine(dir, "serial.txt");
            var vm = new LinuxVm(serial);
            var console = CliConsole.Captured(TextWriter.Null, vm.stderr);
            var token = vm.stop.Token;
            string[] args = ["vm", "run", "--serial", serial, .. options];
            vm.run = Task.Factory.StartNew(() => FerryCommand.Run(args, console, token), TaskCreationOptions.LongRunning);
            return vm;
        }

        /// <summary>The same from settings; their serial line must be <paramref name="serial"/>.</summary>
        public static LinuxVm Start(string serial, VmRunSettings settings)
        {
            var vm = new LinuxVm(serial);
            var console = CliConsole.Captured(TextWriter.Null, vm.stderr);
            var token = vm.stop.Token;
            vm.run = Task.Factory.StartNew(() => VmRun.Run(settings, console, token), TaskCreationOptions.LongRunning);
            return vm;
        }

        /// <summary>Wait for the guest's build (the serial file appears once it is done), then for <paramref name="text"/>.</summary>
        public async Task WaitForSerialAsync(string text)
        {
            await WaitForAsync(() => File.Exists(serialPath), "the guest to be built", GuestBuild);
            await WaitForAsync(() => Serial.Contains(text, StringComparison.Ordinal), $"'{text}' on the console", Boot);
        }

        public async Task WaitForAsync(Func<bool> condition, string what, TimeSpan? patience = null)
        {
            var deadline = DateTime.UtcNow + (patience ?? Boot);
            while (!condition())
            {
                if (run.IsCompleted) Assert.Fail($"ferry vm run exited {await run} before {what}; stderr: {stderr}; serial: {Serial}");
                if (DateTime.UtcNow > deadline) Assert.Fail($"waited {(patience ?? Boot).TotalSeconds} s for {what}; serial: {Serial}");
                await Task.Delay(50, Ct);
            }
        }

        /// <summary>Power the machine off as Ctrl+C would.</summary>
        public void Interrupt() => stop.Cancel();

        /// <summary>Wait for the run to return; its exit code and what it wrote on stderr.</summary>
        public async Task<(int Code, string Stderr)> ExitAsync()
        {
            int code = await run.WaitAsync(Boot, Ct);
            return (code, stderr.ToString());
        }

        public async ValueTask DisposeAsync()
        {
            stop.Cancel();
            try
            {
                await run.WaitAsync(Boot, CancellationToken.None);
            }
            finally
            {
                stop.Dispose();
                stderr.Dispose();
            }
        }
    }
}
