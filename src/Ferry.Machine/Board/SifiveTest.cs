namespace Ferry.Machine.Board;

/// <summary>
/// The SiFive test ("finisher") device at 0x10_0000, as QEMU <c>hw/misc/sifive_test.c</c>: a guest ends the run by
/// storing one 32-bit word at offset 0. The low 16 bits say what to do, the high 16 bits carry the exit code:
/// <list type="bullet">
/// <item><c>0x5555</c> (pass): power off with exit code 0.</item>
/// <item><c>(code &lt;&lt; 16) | 0x3333</c> (fail): power off with exit code <c>code</c> (0 to 65535; a process exit
/// status keeps only its low 8 bits).</item>
/// <item><c>0x7777</c> (reset): call <see cref="Reset"/>; without one, power off with code 0, since a guest that asked
/// for a reset spins or waits forever if nothing happens.</item>
/// </list>
/// Other values, other offsets and accesses other than 16 or 32 bits are ignored; reads return 0. No state to save.
/// </summary>
public sealed class SifiveTest : IMmioDevice
{
    public const uint Fail = 0x3333;
    public const uint Pass = 0x5555;
    public const uint ResetRequest = 0x7777;

    private readonly Action<int> powerOff;

    /// <summary><paramref name="powerOff"/> is called with the exit code the guest asked for.</summary>
    public SifiveTest(Action<int> powerOff)
    {
        ArgumentNullException.ThrowIfNull(powerOff);
        this.powerOff = powerOff;
    }

    /// <summary>Called when the guest asks for a reset (0x7777); null: power off with code 0.</summary>
    public Action? Reset { get; set; }

    public ulong Read(ulong offset, int size) => 0;

    public void Write(ulong offset, int size, ulong value)
    {
        // 16- and 32-bit writes, as QEMU accepts: OpenSBI powers off with a 16-bit write of 0x5555.
        if (offset != 0 || size is not (2 or 4)) return;
        uint word = (uint)value;
        switch (word & 0xffff)
        {
            case Pass:
                powerOff(0);
                break;
            case Fail:
                powerOff((int)(word >> 16));
                break;
            case ResetRequest:
                if (Reset is { } reset) reset();
                else powerOff(0);
                break;
        }
    }
}
