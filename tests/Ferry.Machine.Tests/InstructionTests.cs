namespace Ferry.Machine.Tests;

/// <summary>
/// The self-checking programs: each exits 0 only if all its checks pass. The QEMU run proves the program itself is
/// right (QEMU is the reference); the Ferry run tests the emulator. A failure prints the check's code, listed at the
/// top of the program's source.
/// </summary>
public class InstructionTests
{
    public static TheoryData<string> SelfChecking => new(Programs.SelfChecking);

    [Theory]
    [MemberData(nameof(SelfChecking))]
    public void Program_passes_every_check_under_Ferry(string program)
    {
        RunResult run = FerryRunner.Run(Programs.Elf(program));
        Assert.True(run.ExitCode == 0, $"{program} failed check {run.ExitCode} under Ferry; it printed:\n{run.Text}");
    }

    [Theory]
    [MemberData(nameof(SelfChecking))]
    public void Program_passes_every_check_under_Qemu(string program)
    {
        RunResult run = QemuRunner.Run(Programs.Elf(program));
        Assert.True(run.ExitCode == 0, $"{program} failed check {run.ExitCode} under QEMU; it printed:\n{run.Text}");
    }
}
