namespace Ferry.Linux.Tests;

public class TraceLogTests
{
    [Fact]
    public void MarksAreAppendedOldestFirstWithMonotonicMicrosecondsPidAndThread()
    {
        string file = Path.Combine(Path.GetTempPath(), $"ferry-trace-{Guid.NewGuid():N}.txt");
        try
        {
            TraceLog.Enable(file);
            TraceLog.Flush(); // whatever other tests of this process marked
            File.Delete(file);
            TraceLog.Mark("first");
            Thread.Sleep(2);
            TraceLog.Mark("second");
            TraceLog.Flush();
            string[] lines = Marks(file);
            Assert.Equal(2, lines.Length);
            string[][] fields = lines.Select(l => l.Split(' ', 4)).ToArray();
            Assert.Equal(["first", "second"], fields.Select(f => f[3]));
            Assert.All(fields, f => Assert.Equal(Environment.ProcessId.ToString(System.Globalization.CultureInfo.InvariantCulture), f[1]));
            Assert.All(fields, f => Assert.Equal(Environment.CurrentManagedThreadId.ToString(System.Globalization.CultureInfo.InvariantCulture), f[2]));
            long t1 = long.Parse(fields[0][0], System.Globalization.CultureInfo.InvariantCulture);
            long t2 = long.Parse(fields[1][0], System.Globalization.CultureInfo.InvariantCulture);
            Assert.InRange(t2 - t1, 1_000, 10_000_000); // microseconds: the 2 ms sleep, at least 1 ms of it

            // Flushed marks are gone: the next flush appends only what came since.
            TraceLog.Mark("third");
            TraceLog.Flush();
            Assert.Equal(3, Marks(file).Length);
        }
        finally
        {
            TraceLog.Disable();
            File.Delete(file);
        }
    }

    [Fact]
    public void ACollectionIsMarkedWithItsGenerationsAndPause()
    {
        WithTrace(file =>
        {
            Thread.Sleep(20); // the watcher has read the counts before this collection
            GC.Collect(2, GCCollectionMode.Forced, blocking: true);
            // The runtime may collect on its own meanwhile (tests run in parallel): the forced one is the mark that
            // counts a gen2 collection; every mark has the same form.
            static bool Forced(string mark) => System.Text.RegularExpressions.Regex.IsMatch(mark, @" [1-9]\d* gen2, ");
            string[] marks = AwaitMarks(file, "gc: ", m => m.Any(Forced));
            Assert.NotEmpty(marks);
            Assert.All(marks, m => Assert.Matches(@"^gc: \d+ gen0, \d+ gen1, \d+ gen2, paused \d+\.\d\d ms$", m));
            Assert.Contains(marks, Forced);
        });
    }

    [Fact]
    public void CompilationsAreMarkedWithTheirMethodsAndTime()
    {
        WithTrace(file =>
        {
            Thread.Sleep(20); // the watcher has read the counts before this compilation
            Assert.Equal(42, FirstCalledHere(new Probe(41)));
            string[] marks = AwaitMarks(file, "jit: ", m => m.Length > 0);
            Assert.NotEmpty(marks);
            Assert.All(marks, m => Assert.Matches(@"^jit: [1-9]\d* methods, \d+\.\d\d ms$", m));
        });
    }

    /// <summary>Run <paramref name="body"/> with marks recorded to a file of its own, then stop recording and delete it.</summary>
    private static void WithTrace(Action<string> body)
    {
        string file = Path.Combine(Path.GetTempPath(), $"ferry-trace-{Guid.NewGuid():N}.txt");
        try
        {
            TraceLog.Enable(file);
            body(file);
        }
        finally
        {
            TraceLog.Disable();
            File.Delete(file);
        }
    }

    /// <summary>The watcher's marks starting with <paramref name="prefix"/>, flushed until <paramref name="enough"/> (at most ~1 s).</summary>
    private static string[] AwaitMarks(string file, string prefix, Func<string[], bool> enough)
    {
        string[] marks = [];
        for (int i = 0; i < 200 && !enough(marks); i++)
        {
            Thread.Sleep(5);
            TraceLog.Flush();
            marks = File.Exists(file) ? File.ReadAllLines(file).Select(l => l.Split(' ', 4)[3]).Where(l => l.StartsWith(prefix, StringComparison.Ordinal)).ToArray() : [];
        }
        return marks;
    }

    // A generic method over a value type of this test's own: compiled on its first call, which is here.
    private readonly record struct Probe(int Value);

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    private static int FirstCalledHere<T>(T probe) where T : struct => probe is Probe p ? p.Value + 1 : 0;

    // The marks of the test's own thread (the watcher may add "gc:" and "jit:" marks of its own, for what the runtime
    // did meanwhile).
    private static string[] Marks(string file) =>
        File.ReadAllLines(file).Where(l => l.Split(' ', 4)[3] is var m && !m.StartsWith("gc: ", StringComparison.Ordinal) && !m.StartsWith("jit: ", StringComparison.Ordinal)).ToArray();
}
