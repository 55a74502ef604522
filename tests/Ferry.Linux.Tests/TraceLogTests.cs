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
            string[] lines = File.ReadAllLines(file);
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
            Assert.Equal(3, File.ReadAllLines(file).Length);
        }
        finally
        {
            TraceLog.Disable();
            File.Delete(file);
        }
    }
}
