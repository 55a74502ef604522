namespace Ferry.Machine.Tests;

/// <summary>Runs a test program in-process on Ferry's <see cref="VirtMachine"/>, as QEMU runs it with <c>-bios</c>.</summary>
internal static class FerryRunner
{
    public static RunResult Run(string elf, int harts = 1, TimeSpan? timeout = null)
    {
        // The machine serialises the harts' UART writes, so a plain MemoryStream is enough.
        using var serial = new MemoryStream();
        using (var vm = new VirtMachine(new MachineOptions { MemoryBytes = 128UL << 20, Harts = harts, SerialOut = serial }))
        {
            vm.LoadFirmware(elf);
            vm.Start();
            // An interpreter is slower than QEMU's JIT; the longest program (diff_fp) is a few million instructions.
            if (!vm.WaitForExit(timeout ?? TimeSpan.FromSeconds(120), out int code))
            {
                vm.PowerOff(-1);
                vm.WaitForExit();
                throw new TimeoutException($"{Path.GetFileName(elf)} did not exit under Ferry; it printed:\n{new RunResult(serial.ToArray(), -1).Text}");
            }
            return new RunResult(serial.ToArray(), code & 0xff);
        }
    }
}
