using System.Globalization;

namespace Ferry.Cli;

/// <summary>
/// Parses and formats the quantities the command line takes: sizes, durations, bandwidths and rates.
/// </summary>
/// <remarks>
/// Size suffixes are binary, as QEMU's <c>-m 1G</c> and <c>max-bandwidth</c>: K, M, G, T (and KiB, MiB, GiB, TiB)
/// are powers of 1024, so "1G" is exactly the 262,144 pages a 1 GiB guest has. "GB" is refused rather than guessed:
/// it would be 7% off one way or the other. Counts per second (dirty rates) are decimal: "20k" is 20,000 pages/s.
/// Every parser returns false with a reason instead of throwing, so the command line can name the flag.
/// </remarks>
public static class Units
{
    private static readonly (string Suffix, ulong Factor)[] SizeSuffixes =
    [
        ("KiB", 1UL << 10), ("MiB", 1UL << 20), ("GiB", 1UL << 30), ("TiB", 1UL << 40),
        ("K", 1UL << 10), ("M", 1UL << 20), ("G", 1UL << 30), ("T", 1UL << 40),
        ("B", 1),
    ];

    private static readonly (string Suffix, double Seconds)[] DurationSuffixes =
    [
        ("us", 1e-6), ("ms", 1e-3), ("s", 1), ("m", 60), ("h", 3600),
    ];

    /// <summary>Parse "512M", "1G", "2GiB", "64KiB", "4096" (bytes). The result must be a whole number of bytes.</summary>
    public static bool TryParseSize(string? text, out ulong bytes, out string reason)
    {
        bytes = 0;
        reason = "is not a size (use e.g. 4096, 64K, 512M, 1G or 2GiB)";
        if (string.IsNullOrWhiteSpace(text)) return false;
        var s = text.Trim();
        ulong factor = 1;
        foreach (var (suffix, f) in SizeSuffixes)
        {
            // Single-letter suffixes are case-insensitive ("1g"); the IEC ones only in their proper spelling.
            var comparison = suffix.Length == 1 ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal;
            if (s.EndsWith(suffix, comparison))
            {
                factor = f;
                s = s[..^suffix.Length];
                break;
            }
        }
        if (s.Length == 0 || !char.IsAsciiDigit(s[0]) && s[0] != '.') return false;
        if (!decimal.TryParse(s, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var number)) return false;
        if (number > ulong.MaxValue / factor)
        {
            reason = "is too large";
            return false;
        }
        var value = number * factor;
        if (value != decimal.Truncate(value))
        {
            reason = "is not a whole number of bytes";
            return false;
        }
        bytes = (ulong)value;
        return true;
    }

    /// <summary>Parse "50ms", "2s", "1.5s", "1m", "250us", "1h". A unit is required (a bare "50" is ambiguous).</summary>
    public static bool TryParseDuration(string? text, out TimeSpan duration, out string reason)
    {
        duration = default;
        reason = "is not a duration (use e.g. 50ms, 2s, 1m)";
        if (string.IsNullOrWhiteSpace(text)) return false;
        var s = text.Trim();
        double? unit = null;
        // Longest suffixes first so "ms" is not read as "s" after an "m".
        foreach (var (suffix, seconds) in DurationSuffixes.OrderByDescending(d => d.Suffix.Length))
        {
            if (s.EndsWith(suffix, StringComparison.OrdinalIgnoreCase))
            {
                unit = seconds;
                s = s[..^suffix.Length];
                break;
            }
        }
        if (unit is null)
        {
            reason = "needs a unit (use e.g. 50ms, 2s, 1m)";
            return false;
        }
        if (s.Length == 0 || !char.IsAsciiDigit(s[0]) && s[0] != '.') return false;
        if (!double.TryParse(s, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var number)) return false;
        var totalSeconds = number * unit.Value;
        if (double.IsInfinity(totalSeconds) || totalSeconds > TimeSpan.MaxValue.TotalSeconds)
        {
            reason = "is too long";
            return false;
        }
        duration = TimeSpan.FromTicks((long)Math.Round(totalSeconds * TimeSpan.TicksPerSecond));
        return true;
    }

    /// <summary>Parse a bandwidth in bytes per second: "500M" (MiB/s), "1G/s", "0" (unlimited).</summary>
    public static bool TryParseBandwidth(string? text, out long bytesPerSecond, out string reason)
    {
        bytesPerSecond = 0;
        var s = text?.Trim() ?? "";
        if (s.EndsWith("/s", StringComparison.OrdinalIgnoreCase)) s = s[..^2];
        if (!TryParseSize(s, out var bytes, out reason))
        {
            reason = reason.StartsWith("is not a size", StringComparison.Ordinal)
                ? "is not a bandwidth (bytes per second: use e.g. 500M, 1G, or 0 for unlimited)"
                : reason;
            return false;
        }
        if (bytes > long.MaxValue)
        {
            reason = "is too large";
            return false;
        }
        bytesPerSecond = (long)bytes;
        return true;
    }

    /// <summary>Parse a count per second: "20000", "20k", "1.5M" (decimal: k = 1000, M = 1,000,000).</summary>
    public static bool TryParseCount(string? text, out long count, out string reason)
    {
        count = 0;
        reason = "is not a count (use e.g. 20000, 20k or 1M)";
        if (string.IsNullOrWhiteSpace(text)) return false;
        var s = text.Trim();
        decimal factor = 1;
        if (s.EndsWith('k') || s.EndsWith('K'))
        {
            factor = 1_000;
            s = s[..^1];
        }
        else if (s.EndsWith('M'))
        {
            factor = 1_000_000;
            s = s[..^1];
        }
        if (s.Length == 0 || !char.IsAsciiDigit(s[0]) && s[0] != '.') return false;
        if (!decimal.TryParse(s, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var number)) return false;
        if (number > long.MaxValue / factor)
        {
            reason = "is too large";
            return false;
        }
        var value = number * factor;
        if (value != decimal.Truncate(value))
        {
            reason = "is not a whole number";
            return false;
        }
        count = (long)value;
        return true;
    }

    /// <summary>"1 GiB", "512 MiB", "12.5 MiB", "4 KiB", "100 B": the largest binary unit that keeps the number >= 1.</summary>
    public static string FormatBytes(double bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB"];
        var i = 0;
        var v = bytes;
        while (Math.Abs(v) >= 1024 && i < units.Length - 1)
        {
            v /= 1024;
            i++;
        }
        return i == 0
            ? string.Create(CultureInfo.InvariantCulture, $"{v:0} {units[i]}")
            : string.Create(CultureInfo.InvariantCulture, $"{v:0.#} {units[i]}");
    }

    /// <summary>"850.3 MiB/s".</summary>
    public static string FormatRate(double bytesPerSecond) => FormatBytes(bytesPerSecond) + "/s";

    /// <summary>Milliseconds with precision that suits the magnitude: "0.42 ms", "12.3 ms", "1530 ms".</summary>
    public static string FormatMs(double ms) => ms switch
    {
        < 1 => string.Create(CultureInfo.InvariantCulture, $"{ms:0.00} ms"),
        < 100 => string.Create(CultureInfo.InvariantCulture, $"{ms:0.0} ms"),
        _ => string.Create(CultureInfo.InvariantCulture, $"{ms:0} ms"),
    };
}
