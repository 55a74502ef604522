namespace Ferry.Bench;

/// <summary>The command lines of the whole-migration benchmarks: <c>--flag value</c> pairs and bare switches.</summary>
internal static class BenchArguments
{
    /// <summary>
    /// Split <paramref name="args"/> into flags in order, each with its value, or "" for one of <paramref name="switches"/>;
    /// false with <paramref name="problem"/> when a flag lacks its value.
    /// </summary>
    public static bool TrySplit(string[] args, IReadOnlySet<string> switches, out List<(string Flag, string Value)> flags, out string problem)
    {
        flags = [];
        problem = "";
        for (var i = 0; i < args.Length; i++)
        {
            var flag = args[i];
            if (switches.Contains(flag))
            {
                flags.Add((flag, ""));
                continue;
            }
            if (i + 1 >= args.Length)
            {
                problem = $"{flag} needs a value";
                return false;
            }
            flags.Add((flag, args[++i]));
        }
        return true;
    }
}
