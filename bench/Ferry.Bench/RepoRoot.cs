namespace Ferry.Bench;

/// <summary>The checkout the benchmark runs from, for the benchmarks that build guests or run <c>./ferry</c>.</summary>
internal static class RepoRoot
{
    /// <summary>The first directory holding <c>Ferry.slnx</c> above the current or the program's directory; null if none.</summary>
    public static string? Find()
    {
        foreach (var start in new[] { Directory.GetCurrentDirectory(), AppContext.BaseDirectory })
        {
            for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
            {
                if (File.Exists(Path.Combine(dir.FullName, "Ferry.slnx"))) return dir.FullName;
            }
        }
        return null;
    }
}
