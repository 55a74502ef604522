namespace Ferry.Cli.Tests;

public class VmProcessTests
{
    [Fact]
    public void AProcessThatShouldHaveEndedNamesWhatItsThreadsDo()
    {
        using var sleeper = VmProcess.Start("sleeper", "sleep", ["30"]);
        string states = "";
        // Until exec has replaced the child's name.
        for (int i = 0; i < 200 && !states.StartsWith("sleep ", StringComparison.Ordinal); i++)
        {
            Thread.Sleep(10);
            states = sleeper.ThreadStates();
        }
        Assert.Matches(@"^sleep S policy 0 nice 0 cpu \d+ ms$", states);
        sleeper.Kill();
        Assert.True(sleeper.WaitForExit(TimeSpan.FromSeconds(10)));
        Assert.Equal("", sleeper.ThreadStates());
    }
}
