using Ferry.Linux;
using Microsoft.Win32.SafeHandles;

namespace Ferry.Cli;

/// <summary>
/// Bytes typed at the VM's console, fed to the guest's UART from a background thread. The terminal stays in its usual
/// line mode: a line reaches the guest when Enter is pressed (raw mode is not needed for a shell's commands).
/// </summary>
/// <remarks>
/// The thread is a background one: a read blocked on a terminal never keeps the process alive. At end of input (a
/// pipe or file on stdin) it stops reading. After <see cref="Stop"/> nothing more is delivered, even if a blocked read
/// returns later. Started in the background of an interactive shell (<c>ferry vm run ... &amp;</c>), it does not read
/// the terminal until the job is brought to the foreground: a read from the background would stop the whole VM
/// process (SIGTTIN).
/// </remarks>
internal sealed class ConsoleInput
{
    /// <summary>Stdin's file descriptor.</summary>
    private const int StdinFd = 0;

    private readonly Stream input;
    private readonly Action<ReadOnlySpan<byte>> deliver;
    // The input is the process's stdin: watch whether the job is in the terminal's foreground before reading.
    private readonly bool isStdin;
    private volatile bool stopped;

    private ConsoleInput(Stream input, Action<ReadOnlySpan<byte>> deliver, bool isStdin)
    {
        this.input = input;
        this.deliver = deliver;
        this.isStdin = isStdin;
    }

    /// <summary>The process's stdin (file descriptor 0) as raw bytes, not decoded by <see cref="Console"/>; null if there is none.</summary>
    public static Stream? OpenStdin()
    {
        try
        {
            return new StdinStream(new SafeFileHandle(StdinFd, ownsHandle: false));
        }
        catch (Exception e) when (e is IOException or ArgumentException or UnauthorizedAccessException)
        {
            return null; // stdin closed: no console input
        }
    }

    /// <summary>Start reading <paramref name="input"/> and passing each chunk read to <paramref name="deliver"/>.</summary>
    public static ConsoleInput Start(Stream input, Action<ReadOnlySpan<byte>> deliver)
    {
        var pump = new ConsoleInput(input, deliver, input is StdinStream);
        new Thread(pump.Pump) { IsBackground = true, Name = "ferry console input" }.Start();
        return pump;
    }

    public void Stop() => stopped = true;

    private void Pump()
    {
        // 256 bytes: a typed line, or a paste in a few reads; the UART queues 4 KiB behind its FIFO.
        var buffer = new byte[256];
        try
        {
            while (!stopped)
            {
                // 200 ms: how soon typing works after 'fg'; the check is three cheap syscalls.
                while (isStdin && !stopped && Libc.IsBackgroundOnTerminal(StdinFd)) Thread.Sleep(200);
                if (stopped) return;
                int n = input.Read(buffer);
                if (n == 0 || stopped) return;
                deliver(buffer.AsSpan(0, n));
            }
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or NotSupportedException)
        {
            // Input gone (closed terminal, disposed stream): the guest just gets no more.
        }
    }

    /// <summary>The process's stdin, unbuffered: what tells <see cref="Start"/> to watch the terminal's foreground.</summary>
    private sealed class StdinStream(SafeFileHandle handle) : FileStream(handle, FileAccess.Read, bufferSize: 0);
}
