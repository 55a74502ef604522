using System.Diagnostics;

namespace Ferry.Guest.Tests;

/// <summary>Builds guest/build/guest.elf once per test run with the machine's make and gcc.</summary>
internal static class GuestImage
{
    private static readonly Lazy<string> Built = new(Build, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>The guest ELF, built (or brought up to date) on first use.</summary>
    public static string Path => Built.Value;

    /// <summary>The repository root: the first parent of the test binary that holds guest/Makefile.</summary>
    public static string RepoRoot { get; } = FindRepoRoot();

    private static string FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(System.IO.Path.Combine(dir.FullName, "guest", "Makefile")))
                return dir.FullName;
        }
        throw new InvalidOperationException($"no guest/Makefile above {AppContext.BaseDirectory}");
    }

    private static string Build()
    {
        var guestDir = System.IO.Path.Combine(RepoRoot, "guest");
        var psi = new ProcessStartInfo("make", ["-C", guestDir, "--no-print-directory"])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        using var make = Process.Start(psi) ?? throw new InvalidOperationException("cannot start make");
        var stdout = make.StandardOutput.ReadToEndAsync();
        var stderr = make.StandardError.ReadToEndAsync();
        make.WaitForExit();
        if (make.ExitCode != 0)
            throw new InvalidOperationException($"make -C guest failed ({make.ExitCode}):\n{stdout.Result}\n{stderr.Result}");
        return System.IO.Path.Combine(guestDir, "build", "guest.elf");
    }
}
