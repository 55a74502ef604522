using System.Buffers.Binary;
using System.ComponentModel;
using System.Diagnostics;
using System.Text;
using static Ferry.Cli.Tests.CommandLineTests;

namespace Ferry.Cli.Tests;

/// <summary><c>ferry vm run</c>: bad firmware and flags are one line and exit 2; a real program's output and exit code come through.</summary>
public sealed class VmRunTests : IDisposable
{
    private const string CrossCompiler = "riscv64-linux-gnu-gcc";

    // Prints "hello\n" through the UART's THR, then asks the SiFive test device to power off with code 7.
    private const string HelloSource = """
            .section .text
            .globl _start
        _start:
            csrr t0, mhartid         # every hart starts here: only hart 0 prints, the others wait
            bnez t0, 3f
            li   t0, 0x10000000
            la   t1, msg
        1:  lbu  t2, 0(t1)
            beqz t2, 2f
            sb   t2, 0(t0)
            addi t1, t1, 1
            j    1b
        2:  li   t0, 0x100000
            li   t1, (7 << 16) | 0x3333
            sw   t1, 0(t0)
        3:  j    3b
            .section .rodata
        msg: .string "hello\n"
        """;

    // One PT_LOAD at the start of RAM; without a script the linker also loads the ELF headers below RAM.
    private const string LinkerScript = """
        ENTRY(_start)
        SECTIONS
        {
          . = 0x80000000;
          .text : { *(.text*) }
          .rodata : { *(.rodata*) }
        }
        """;

    private readonly string dir = Directory.CreateTempSubdirectory("ferry-vm-run-").FullName;

    public void Dispose() => Directory.Delete(dir, recursive: true);

    [Fact]
    public void AFileThatIsNotAnElfIsAUsageError()
    {
        string path = Path.Combine(dir, "notes.txt");
        File.WriteAllText(path, "just some text\n");
        AssertUsageError(RunCaptured("vm", "run", "--firmware", path), $"ferry: {path}: not an ELF file");
    }

    [Fact]
    public void AnX86ElfIsAUsageErrorThatNamesItsMachine()
    {
        const string hostBinary = "/bin/true";
        Assert.True(File.Exists(hostBinary), $"{hostBinary} is missing");
        AssertUsageError(RunCaptured("vm", "run", "--firmware", hostBinary),
            $"ferry: {hostBinary}: not RISC-V: the ELF is for x86-64 (e_machine 62, RISC-V is 243)");
    }

    [Fact]
    public void ASegmentOutsideRamIsAUsageErrorThatNamesBothRanges()
    {
        string path = Path.Combine(dir, "low.elf");
        File.WriteAllBytes(path, RiscvElfWithOneSegment(address: 0x1000, [0x13, 0, 0, 0]));
        AssertUsageError(RunCaptured("vm", "run", "--firmware", path, "--memory", "128M"),
            $"ferry: {path}: segment 0x1000-0x1004 is outside RAM 0x80000000-0x88000000");
    }

    [Fact]
    public void ASegmentBeyondASmallMemoryIsAUsageError()
    {
        string path = Path.Combine(dir, "high.elf");
        File.WriteAllBytes(path, RiscvElfWithOneSegment(address: 0x8040_0000, [0x13, 0, 0, 0]));
        AssertUsageError(RunCaptured("vm", "run", "--firmware", path, "--memory", "4M"),
            $"ferry: {path}: segment 0x80400000-0x80400004 is outside RAM 0x80000000-0x80400000");
    }

    [Fact]
    public void AMissingFirmwareFileIsAUsageError()
    {
        string path = Path.Combine(dir, "missing.elf");
        AssertUsageError(RunCaptured("vm", "run", "--firmware", path), $"ferry: {path}: no such file");
    }

    [Theory]
    [InlineData("--memory", "1M", "is out of range (2 MiB to 64 GiB)")]
    [InlineData("--memory", "128G", "is out of range (2 MiB to 64 GiB)")]
    [InlineData("--memory", "2049K", "must be a multiple of the 4 KiB page size")]
    [InlineData("--memory", "lots", "is not a size")]
    [InlineData("--harts", "0", "is out of range (1 to 8)")]
    [InlineData("--harts", "9", "is out of range (1 to 8)")]
    public void ABadMemorySizeOrHartCountIsAUsageErrorNamingTheFlag(string flag, string value, string reason)
    {
        // The flags are checked before the firmware is opened: no file needed.
        AssertUsageError(RunCaptured("vm", "run", "--firmware", "/nonexistent.elf", flag, value),
            $"ferry: {flag}: '{value}' {reason}");
    }

    [Fact]
    public void MemoryTakesBinarySizes()
    {
        string path = Path.Combine(dir, "top.elf");
        // Code in the last 20 bytes of 512 MiB of RAM: it loads and runs only if "512MiB" meant 512 * 2^20 bytes.
        byte[] powerOffPass = Words(
            0x001002b7, // lui  t0, 0x100        t0 = 0x10_0000, the test device
            0x00005337, // lui  t1, 0x5
            0x55530313, // addi t1, t1, 0x555    t1 = 0x5555, pass
            0x0062a023, // sw   t1, 0(t0)
            0x0000006f); // j   .
        File.WriteAllBytes(path, RiscvElfWithOneSegment(address: 0x8000_0000 + (512UL << 20) - 20, powerOffPass));

        var (code, _, stderr) = RunWithDeadline("vm", "run", "--firmware", path, "--memory", "512MiB");

        Assert.True(code == 0, $"exit {code}; stderr: {stderr}");
    }

    [Fact]
    public void AProgramPrintsThroughTheUartAndExitsWithTheTestDeviceCode()
    {
        string elf = BuildHello();

        var (code, stdout, stderr) = RunWithDeadline("vm", "run", "--firmware", elf);

        Assert.True(code == 7, $"exit {code}; stdout: {stdout}; stderr: {stderr}");
        Assert.Equal("hello\n", stdout);
        Assert.Equal("", stderr);
    }

    [Fact]
    public void SerialOutputCanGoToAFile()
    {
        string elf = BuildHello();
        string serial = Path.Combine(dir, "serial.txt");

        var (code, stdout, stderr) = RunWithDeadline("vm", "run", "--firmware", elf, "--serial", serial, "--memory", "64M", "--harts", "2");

        Assert.True(code == 7, $"exit {code}; stderr: {stderr}");
        Assert.Equal("", stdout);
        Assert.Equal("hello\n", File.ReadAllText(serial));
    }

    [Fact]
    public async Task TheBuiltBinaryPassesTheGuestsBytesAndExitCodeThrough()
    {
        string elf = BuildHello();
        var ferry = Path.Combine(AppContext.BaseDirectory, "ferry.dll");
        var start = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (var a in new[] { ferry, "vm", "run", "--firmware", elf }) start.ArgumentList.Add(a);
        using var process = Process.Start(start)!;
        var ct = TestContext.Current.CancellationToken;
        var stdout = process.StandardOutput.ReadToEndAsync(ct);
        var stderr = await process.StandardError.ReadToEndAsync(ct);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(TimeSpan.FromSeconds(60));
        try
        {
            await process.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill();
            Assert.Fail($"ferry vm run did not finish in 60 s; stderr: {stderr}");
        }

        Assert.True(process.ExitCode == 7, $"exit {process.ExitCode}; stderr: {stderr}");
        Assert.Equal("hello\n", await stdout);
    }

    internal static void AssertUsageError((int Code, string Stdout, string Stderr) result, string expectedLine)
    {
        Assert.Equal(FerryCommand.ExitUsage, result.Code);
        Assert.Equal("", result.Stdout);
        var line = Assert.Single(result.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith(expectedLine, line, StringComparison.Ordinal);
        Assert.DoesNotContain("Exception", result.Stderr, StringComparison.Ordinal);
    }

    /// <summary>
    /// Runs the command in-process; if the guest has not powered off after 60 s the run is interrupted as Ctrl+C
    /// would (exit 130), so a hung emulator fails the test instead of hanging it.
    /// </summary>
    internal static (int Code, string Stdout, string Stderr) RunWithDeadline(params string[] args)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        deadline.CancelAfter(TimeSpan.FromSeconds(60));
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        var code = FerryCommand.Run(args, CliConsole.Captured(stdout, stderr), deadline.Token);
        if (code == 130) Assert.Fail($"the guest did not power off within 60 s; output so far: {stdout}");
        return (code, stdout.ToString(), stderr.ToString());
    }

    /// <summary>Assemble and link the hello program.</summary>
    private string BuildHello() => BuildGuest(dir, "hello", HelloSource);

    /// <summary>
    /// Assemble and link a bare-metal program (<paramref name="source"/>, GNU assembler) into <c>dir/name.elf</c>, loaded
    /// at the start of RAM. CI installs the cross compiler, so its absence fails the test.
    /// </summary>
    internal static string BuildGuest(string dir, string name, string source)
    {
        string sourcePath = Path.Combine(dir, name + ".S");
        string script = Path.Combine(dir, name + ".ld");
        string elf = Path.Combine(dir, name + ".elf");
        File.WriteAllText(sourcePath, source);
        File.WriteAllText(script, LinkerScript);
        var start = new ProcessStartInfo(CrossCompiler) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[]
                 {
                     "-nostdlib", "-nostartfiles", "-static", "-no-pie", "-march=rv64gc", "-mabi=lp64d",
                     "-T", script, "-Wl,--build-id=none", "-Wl,--no-warn-rwx-segments", "-o", elf, sourcePath,
                 })
            start.ArgumentList.Add(a);
        Process process;
        try
        {
            process = Process.Start(start)!;
        }
        catch (Win32Exception e)
        {
            Assert.Fail($"{CrossCompiler} is needed to build the guest program (apt-get install gcc-riscv64-linux-gnu): {e.Message}");
            throw;
        }
        using (process)
        {
            var output = process.StandardOutput.ReadToEndAsync();
            string errors = process.StandardError.ReadToEnd();
            process.WaitForExit();
            Assert.True(process.ExitCode == 0, $"{CrossCompiler} failed: {errors}{output.Result}");
        }
        return elf;
    }

    private static byte[] Words(params uint[] words)
    {
        var bytes = new byte[words.Length * 4];
        for (int i = 0; i < words.Length; i++) BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(i * 4), words[i]);
        return bytes;
    }

    /// <summary>A minimal RISC-V ELF64 executable: the header, one PT_LOAD program header, then the segment's bytes.</summary>
    private static byte[] RiscvElfWithOneSegment(ulong address, byte[] data)
    {
        const int phoff = 64, phentsize = 56, dataOffset = phoff + phentsize;
        var bytes = new byte[dataOffset + data.Length];
        Span<byte> h = bytes;
        Encoding.ASCII.GetBytes("\u007fELF").CopyTo(h);
        h[4] = 2; // ELFCLASS64
        h[5] = 1; // little-endian
        h[6] = 1; // EV_CURRENT
        BinaryPrimitives.WriteUInt16LittleEndian(h[16..], 2); // ET_EXEC
        BinaryPrimitives.WriteUInt16LittleEndian(h[18..], 243); // EM_RISCV
        BinaryPrimitives.WriteUInt32LittleEndian(h[20..], 1);
        BinaryPrimitives.WriteUInt64LittleEndian(h[24..], address); // e_entry
        BinaryPrimitives.WriteUInt64LittleEndian(h[32..], phoff);
        BinaryPrimitives.WriteUInt16LittleEndian(h[52..], 64);
        BinaryPrimitives.WriteUInt16LittleEndian(h[54..], phentsize);
        BinaryPrimitives.WriteUInt16LittleEndian(h[56..], 1);
        Span<byte> ph = h.Slice(phoff, phentsize);
        BinaryPrimitives.WriteUInt32LittleEndian(ph, 1); // PT_LOAD
        BinaryPrimitives.WriteUInt32LittleEndian(ph[4..], 5); // R+X
        BinaryPrimitives.WriteUInt64LittleEndian(ph[8..], dataOffset);
        BinaryPrimitives.WriteUInt64LittleEndian(ph[16..], address); // p_vaddr
        BinaryPrimitives.WriteUInt64LittleEndian(ph[24..], address); // p_paddr
        BinaryPrimitives.WriteUInt64LittleEndian(ph[32..], (ulong)data.Length);
        BinaryPrimitives.WriteUInt64LittleEndian(ph[40..], (ulong)data.Length);
        BinaryPrimitives.WriteUInt64LittleEndian(ph[48..], 4);
        data.CopyTo(h[dataOffset..]);
        return bytes;
    }
}
