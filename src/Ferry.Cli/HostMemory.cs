using System.Globalization;
using Ferry.Migration.InProcess;

namespace Ferry.Cli;

/// <summary>Refuses a loopback run that cannot fit in this host's memory, before it mmaps anything.</summary>
internal static class HostMemory
{
    /// <summary>
    /// Source and destination live in one process, so a loopback run can touch twice the guest's memory: the source's
    /// pages (all of them with <c>--fill random</c>) and the destination's copy. Better to refuse with the numbers than
    /// to be killed by the OOM killer half-way.
    /// </summary>
    public static bool CheckFits(ulong guestBytes, MemoryFill fill, TextWriter error)
    {
        var available = AvailableBytes();
        if (available is null) return true;
        // An idle zero-filled source touches almost nothing; the destination still receives every page.
        var needed = fill == MemoryFill.Random ? 2 * guestBytes : guestBytes;
        if (needed <= available.Value) return true;
        error.WriteLine($"ferry: --memory: {Units.FormatBytes(guestBytes)} needs about {Units.FormatBytes(needed)} here " +
                        $"(source and destination share this process) but only {Units.FormatBytes(available.Value)} is available");
        return false;
    }

    /// <summary>MemAvailable from /proc/meminfo, or null if it cannot be read.</summary>
    private static ulong? AvailableBytes()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/meminfo"))
            {
                if (!line.StartsWith("MemAvailable:", StringComparison.Ordinal)) continue;
                var parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                // "MemAvailable:   23456789 kB"
                if (parts.Length >= 2 && ulong.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out var kb))
                    return kb * 1024;
            }
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
        return null;
    }
}
