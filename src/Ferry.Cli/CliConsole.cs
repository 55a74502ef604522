namespace Ferry.Cli;

/// <summary>
/// Where the command writes, and whether each stream is a terminal. Passed in rather than read from
/// <see cref="Console"/> so the whole command runs in-process under test with captured writers.
/// </summary>
/// <param name="Out">Results: the table, or the JSON document and nothing else with <c>--json</c>.</param>
/// <param name="Error">Progress and error messages.</param>
/// <param name="OutIsTerminal">Stdout is a terminal: colours in the table.</param>
/// <param name="ErrorIsTerminal">Stderr is a terminal: a live progress display instead of one line per round.</param>
public sealed record CliConsole(TextWriter Out, TextWriter Error, bool OutIsTerminal, bool ErrorIsTerminal)
{
    /// <summary>The process's own stdout and stderr.</summary>
    public static CliConsole FromProcess() =>
        new(Console.Out, Console.Error, !Console.IsOutputRedirected, !Console.IsErrorRedirected);

    /// <summary>Captured writers, neither a terminal (tests).</summary>
    public static CliConsole Captured(TextWriter output, TextWriter error) => new(output, error, false, false);
}
