using System.Diagnostics;

namespace Ferry.Machine.Tests;

/// <summary>
/// Runs a test program on the reference, <c>qemu-system-riscv64 -M virt</c>, with the CPU features trimmed to what
/// Ferry implements, and returns its serial output and exit code. A run that outlives its timeout is killed (by its
/// own process, never by name).
/// </summary>
internal static class QemuRunner
{
    public const string QemuPath = "/usr/bin/qemu-system-riscv64";

    /// <summary>QEMU 7.2's default rv64 CPU also has H, V, Zba/Zbb/Zbc/Zbs, Sstc, Sscofpmf and Zihintpause; Ferry
    /// implements RV64IMAFDC + Zicsr + Zifencei with M/S/U, so those are turned off and misa reads 0x800000000014112d.</summary>
    public const string Cpu = "rv64,h=false,v=false,zba=false,zbb=false,zbc=false,zbs=false,sstc=false,sscofpmf=false,Zihintpause=false";

    public static RunResult Run(string elf, int harts = 1, TimeSpan? timeout = null)
    {
        Assert.SkipUnless(File.Exists(QemuPath), $"{QemuPath} is absent: apt-get install qemu-system-misc to run the reference");
        var psi = new ProcessStartInfo(QemuPath)
        {
            RedirectStandardInput = true,   // the serial console must not read the test host's stdin
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (string arg in (string[])["-M", "virt", "-bios", elf, "-nographic", "-cpu", Cpu,
                     "-smp", harts.ToString(System.Globalization.CultureInfo.InvariantCulture), "-m", "128M"])
        {
            psi.ArgumentList.Add(arg);
        }
        using var qemu = Process.Start(psi) ?? throw new InvalidOperationException("cannot start " + QemuPath);
        using var serial = new MemoryStream();
        Task copy = qemu.StandardOutput.BaseStream.CopyToAsync(serial);
        Task<string> stderr = qemu.StandardError.ReadToEndAsync();
        // TCG runs these programs in well under a second; the default leaves room for a loaded 2-core machine.
        if (!qemu.WaitForExit(timeout ?? TimeSpan.FromSeconds(60)))
        {
            qemu.Kill();
            qemu.WaitForExit();
            copy.Wait();
            throw new TimeoutException($"{Path.GetFileName(elf)} did not exit under QEMU; it printed:\n{new RunResult(serial.ToArray(), -1).Text}");
        }
        copy.Wait();
        string err = stderr.Result;
        if (qemu.ExitCode != 0 && err.Length > 0 && serial.Length == 0)
        {
            throw new InvalidOperationException($"QEMU failed to run {elf} (exit {qemu.ExitCode}): {err}");
        }
        return new RunResult(serial.ToArray(), qemu.ExitCode & 0xff);
    }
}
