using System.Diagnostics;

namespace Ferry.Machine.Tests;

/// <summary>
/// The bare-metal RISC-V programs in <c>programs/</c>, built once per test run with <c>make</c> into
/// <c>&lt;repo&gt;/.out/machine-programs</c>. Every test that runs one asks for its path here.
/// </summary>
internal static class Programs
{
    /// <summary>Debian's cross compiler (apt-get install gcc-riscv64-linux-gnu).</summary>
    public const string CrossCompiler = "riscv64-linux-gnu-gcc";

    /// <summary>Programs that check themselves: exit code 0 means every check passed, anything else names the failing
    /// check (the codes are listed at the top of each source file).</summary>
    public static readonly string[] SelfChecking =
        ["rv64i", "rv64m", "rv64a", "rv64c", "rv64fd", "priv", "sv39", "sv48", "pmp"];

    /// <summary>Programs whose serial output (and exit code) must be byte-for-byte the same as under QEMU.</summary>
    public static readonly string[] Differential = ["diff_regdump", "diff_fp", "diff_sv39", "diff_irq"];

    // Lazy caches a build failure too, so every test reports the same make output instead of rebuilding.
    private static readonly Lazy<string> s_outDir = new(Build, LazyThreadSafetyMode.ExecutionAndPublication);

    public static string RepoRoot { get; } = FindRepoRoot();

    public static string SourceDir => Path.Combine(RepoRoot, "tests", "Ferry.Machine.Tests", "programs");

    /// <summary>The ELF for <paramref name="name"/>, building every program first if this run has not yet.</summary>
    public static string Elf(string name)
    {
        string path = Path.Combine(s_outDir.Value, name + ".elf");
        if (!File.Exists(path)) throw new FileNotFoundException($"make did not produce {path}: is there a programs/{name}.S or .c?");
        return path;
    }

    private static string FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Ferry.slnx"))) return dir.FullName;
        }
        throw new InvalidOperationException($"no Ferry.slnx above {AppContext.BaseDirectory}: cannot find the repository root");
    }

    private static bool OnPath(string tool) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator)
            .Any(dir => dir.Length > 0 && File.Exists(Path.Combine(dir, tool)));

    private static string Build()
    {
        if (!OnPath(CrossCompiler))
        {
            throw new InvalidOperationException(
                $"{CrossCompiler} is not on PATH: apt-get install gcc-riscv64-linux-gnu to build the machine test programs");
        }
        string outDir = Path.Combine(RepoRoot, ".out", "machine-programs");
        var psi = new ProcessStartInfo("make")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (string arg in (string[])["-C", SourceDir, "OUT=" + outDir, "-j2"]) psi.ArgumentList.Add(arg);
        using var make = Process.Start(psi) ?? throw new InvalidOperationException("cannot start make");
        Task<string> stdout = make.StandardOutput.ReadToEndAsync();
        string stderr = make.StandardError.ReadToEnd();
        make.WaitForExit();
        if (make.ExitCode != 0)
        {
            throw new InvalidOperationException($"building the machine test programs failed (make exit {make.ExitCode}):\n{stdout.Result}\n{stderr}");
        }
        return outDir;
    }
}
