using System.Text;

namespace Ferry.Machine.Tests;

/// <summary>What one run of a program produced: the UART's bytes and the test device's exit code.</summary>
/// <remarks>The exit code keeps only its low 8 bits on both sides: QEMU's becomes a process exit status, which does.</remarks>
internal sealed record RunResult(byte[] Serial, int ExitCode)
{
    /// <summary>The serial output as text, for failure messages (the programs print ASCII only).</summary>
    public string Text => Encoding.Latin1.GetString(Serial);
}
