using System.ComponentModel;
using System.Diagnostics;

namespace Ferry.Cli;

/// <summary>
/// The built-in Linux guest (<c>guest-linux/</c>): found in the repository this command was built from (or the one the
/// current directory is in), and built by <c>guest-linux/build.sh</c>, which caches the kernel tree outside the repo
/// (the first build takes ~7 minutes, later ones well under a second) and prints the Image's path on stdout.
/// </summary>
internal static class BuiltInGuest
{
    /// <summary>OpenSBI as Debian's <c>opensbi</c> package installs it: the raw fw_dynamic image QEMU's virt board also loads.</summary>
    public const string Firmware = "/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_dynamic.bin";

    private const string Script = "guest-linux/build.sh";

    /// <summary>
    /// Build (or find cached) the guest's kernel Image and return its path. <c>build.sh</c>'s progress goes to
    /// <paramref name="console"/>'s stderr as it comes. Throws <see cref="GuestBuildException"/> with one line when there
    /// is no repository here or the build fails, <see cref="OperationCanceledException"/> when cancelled (the build
    /// is killed; its cache survives, and the next build resumes).
    /// </summary>
    public static string Build(CliConsole console, CancellationToken cancellationToken)
    {
        string root = FindRepoRoot()
            ?? throw new GuestBuildException($"no built-in guest here (no {Script} above {AppContext.BaseDirectory} or {Environment.CurrentDirectory}): give --kernel");
        string script = Path.Combine(root, Script);
        // The process's own stderr is inherited, so the build's lines reach a terminal unbuffered; a captured console
        // (tests) gets them copied line by line.
        bool passStderr = !ReferenceEquals(console.Error, Console.Error);
        var start = new ProcessStartInfo(script) { RedirectStandardOutput = true, RedirectStandardError = passStderr, WorkingDirectory = root };
        Process process;
        try
        {
            process = Process.Start(start)!;
        }
        catch (Win32Exception e)
        {
            throw new GuestBuildException($"cannot run {script}: {e.Message}");
        }
        using (process)
        {
            if (passStderr)
            {
                process.ErrorDataReceived += (_, e) =>
                {
                    if (e.Data is null) return;
                    lock (console.Error) console.Error.WriteLine(e.Data);
                };
                process.BeginErrorReadLine();
            }
            Task<string> output = process.StandardOutput.ReadToEndAsync(CancellationToken.None);
            using (cancellationToken.Register(() => Kill(process)))
            {
                process.WaitForExit();
            }
            cancellationToken.ThrowIfCancellationRequested();
            if (process.ExitCode != 0) throw new GuestBuildException($"{Script} failed (exit {process.ExitCode}); its messages are above");
            string[] lines = output.Result.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            string image = lines.Length > 0 ? lines[^1] : "";
            if (!Path.IsPathRooted(image)) image = Path.Combine(root, image);
            if (!File.Exists(image)) throw new GuestBuildException($"{Script} printed '{image}', which does not exist");
            return image;
        }
    }

    /// <summary>
    /// The repository root (the directory holding <c>Ferry.slnx</c> and <c>guest-linux/build.sh</c>) above the
    /// executable (<c>.out/ferry/</c>, a test's <c>bin/</c>), else above the current directory; null if neither is in one.
    /// </summary>
    public static string? FindRepoRoot()
    {
        foreach (string from in new[] { AppContext.BaseDirectory, Environment.CurrentDirectory })
        {
            for (var dir = new DirectoryInfo(from); dir is not null; dir = dir.Parent)
            {
                if (File.Exists(Path.Combine(dir.FullName, "Ferry.slnx")) && File.Exists(Path.Combine(dir.FullName, Script))) return dir.FullName;
            }
        }
        return null;
    }

    private static void Kill(Process process)
    {
        try
        {
            process.Kill(entireProcessTree: true);
        }
        catch (InvalidOperationException)
        {
            // Already exited.
        }
    }
}
