using System.ComponentModel;
using System.Diagnostics;

namespace Ferry.Machine.Tests;

/// <summary>The host's own tools, as tests that set up their environment (namespaces, file systems) run them.</summary>
internal static class HostCommand
{
    /// <summary>
    /// Run <paramref name="tool"/> and return its standard output. Throws <see cref="InvalidOperationException"/> with
    /// its standard error if it exits non-zero, and with <paramref name="missing"/> if it cannot be started.
    /// </summary>
    public static string Run(string tool, string arguments, string missing)
    {
        var psi = new ProcessStartInfo(tool, arguments) { RedirectStandardOutput = true, RedirectStandardError = true };
        Process p;
        try
        {
            p = Process.Start(psi)!;
        }
        catch (Win32Exception e)
        {
            throw new InvalidOperationException($"'{tool}' cannot be started ({e.Message}): {missing}", e);
        }
        using (p)
        {
            Task<string> error = p.StandardError.ReadToEndAsync();
            string output = p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            if (p.ExitCode != 0) throw new InvalidOperationException($"{tool} {arguments}: exit code {p.ExitCode}: {error.Result.Trim()}");
            return output;
        }
    }
}
