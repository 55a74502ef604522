namespace Ferry.Machine.Tests;

/// <summary>
/// QEMU as the oracle: a differential program prints what it computed (registers, CSRs, FP results and flags, page
/// table entries, interrupt order), and Ferry must print exactly the same bytes and exit the same way.
/// </summary>
public class DifferentialTests
{
    public static TheoryData<string> Differential => new(Programs.Differential);

    [Theory]
    [MemberData(nameof(Differential))]
    public void Ferry_prints_exactly_what_the_reference_prints(string program)
    {
        string elf = Programs.Elf(program);
        RunResult reference = QemuRunner.Run(elf);
        RunResult ferry = FerryRunner.Run(elf);
        Assert.Equal(reference.Text, ferry.Text);
        Assert.Equal(reference.ExitCode, ferry.ExitCode);
    }

    /// <summary>The comparison above is only fair if the reference's output does not depend on timing: two QEMU runs
    /// must agree, and the program must have reached its end (exit 0) having printed something.</summary>
    [Theory]
    [MemberData(nameof(Differential))]
    public void Reference_output_is_deterministic_under_Qemu(string program)
    {
        string elf = Programs.Elf(program);
        RunResult first = QemuRunner.Run(elf);
        RunResult second = QemuRunner.Run(elf);
        Assert.True(first.ExitCode == 0, $"{program} exited {first.ExitCode} under QEMU; it printed:\n{first.Text}");
        Assert.NotEmpty(first.Serial);
        Assert.Equal(first.Text, second.Text);
    }
}
