namespace Ferry.Machine.Tests;

/// <summary>
/// amo_counter: two harts each add 1 to a shared word 200,000 times, half with amoadd.w and half with LR/SC loops;
/// hart 0 waits for hart 1 and exits 0 only if the total is exactly 400,000. A lost update, an SC that succeeds
/// after another hart's store, or a torn AMO shows up as a wrong total.
/// </summary>
public class MultiHartTests
{
    [Fact]
    public void Shared_counter_is_exact_with_two_harts_under_Ferry()
    {
        RunResult run = FerryRunner.Run(Programs.Elf("amo_counter"), harts: 2);
        Assert.True(run.ExitCode == 0, $"amo_counter failed check {run.ExitCode} under Ferry; it printed:\n{run.Text}");
    }

    [Fact]
    public void Shared_counter_is_exact_with_two_harts_under_Qemu()
    {
        RunResult run = QemuRunner.Run(Programs.Elf("amo_counter"), harts: 2);
        Assert.True(run.ExitCode == 0, $"amo_counter failed check {run.ExitCode} under QEMU; it printed:\n{run.Text}");
    }
}
