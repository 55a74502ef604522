using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.RegularExpressions;
using System.Threading.Channels;

namespace Ferry.Guest.Tests;

/// <summary>
/// One run of the test guest under qemu-system-x86_64 with TCG: its serial console is QEMU's stdio, so the test
/// reads the guest's lines from stdout and types commands on stdin. Disposing kills the QEMU process it started (by
/// its PID, never by name) if it is still running.
/// </summary>
internal sealed partial class QemuGuest : IDisposable
{
    /// <summary>Where Debian's qemu-system-x86 installs the emulator.</summary>
    public const string QemuPath = "/usr/bin/qemu-system-x86_64";

    private readonly Process _qemu;
    private readonly Channel<string> _lines = Channel.CreateUnbounded<string>();
    private readonly StringBuilder _transcript = new();
    private readonly Task _reader;
    private readonly Task<string> _stderr;

    private QemuGuest(Process qemu)
    {
        _qemu = qemu;
        _stderr = qemu.StandardError.ReadToEndAsync(); // drained alongside stdout, so neither pipe can fill up
        _reader = Task.Run(ReadLinesAsync);
    }

    /// <summary>The process id of the QEMU this run started.</summary>
    public int Pid => _qemu.Id;

    /// <summary>Skips the calling test when QEMU is not installed (apt-get install qemu-system-x86).</summary>
    public static void SkipWithoutQemu() =>
        Assert.SkipUnless(File.Exists(QemuPath), $"{QemuPath} is absent: apt-get install qemu-system-x86 to run the guest tests");

    /// <summary>Boots the guest with <paramref name="cmdline"/> on QEMU machine <paramref name="machine"/>.</summary>
    public static QemuGuest Boot(string cmdline, string machine = "microvm", string memory = "64M")
    {
        SkipWithoutQemu();
        var psi = new ProcessStartInfo(QemuPath)
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (var arg in Arguments(GuestImage.Path, cmdline, machine, memory))
            psi.ArgumentList.Add(arg);
        var qemu = Process.Start(psi) ?? throw new InvalidOperationException("cannot start " + QemuPath);
        return new QemuGuest(qemu);
    }

    /// <summary>The QEMU command line (also in docs/GUEST.md): TCG, no default devices, COM1 on stdio, no reboot,
    /// and isa-debug-exit so the guest's exit code becomes QEMU's (code * 2 + 1).</summary>
    public static IEnumerable<string> Arguments(string kernel, string cmdline, string machine, string memory) =>
    [
        "-M", machine, "-accel", "tcg", "-m", memory, "-nodefaults", "-no-user-config", "-display", "none",
        "-serial", "stdio", "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
        "-kernel", kernel, "-append", cmdline,
    ];

    private async Task ReadLinesAsync()
    {
        while (await _qemu.StandardOutput.ReadLineAsync().ConfigureAwait(false) is { } line)
        {
            lock (_transcript)
                _transcript.AppendLine(line);
            _lines.Writer.TryWrite(line);
        }
        var err = await _stderr.ConfigureAwait(false);
        if (err.Length > 0)
        {
            lock (_transcript)
                _transcript.Append("[qemu stderr] ").AppendLine(err);
        }
        _lines.Writer.TryComplete();
    }

    /// <summary>Everything the guest printed so far, for failure messages.</summary>
    public string Transcript
    {
        get
        {
            lock (_transcript)
                return _transcript.ToString();
        }
    }

    /// <summary>Waits for the next line matching <paramref name="pattern"/>, skipping others. TCG on a loaded
    /// 2-core box is slow, so the default limit is generous; a healthy guest answers in well under a second.</summary>
    public async Task<Match> WaitForLineAsync(string pattern, TimeSpan? timeout = null)
    {
        var regex = new Regex(pattern, RegexOptions.CultureInvariant);
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        cts.CancelAfter(timeout ?? TimeSpan.FromSeconds(20));
        try
        {
            while (await _lines.Reader.WaitToReadAsync(cts.Token).ConfigureAwait(false))
            {
                while (_lines.Reader.TryRead(out var line))
                {
                    var m = regex.Match(line);
                    if (m.Success)
                        return m;
                }
            }
        }
        catch (OperationCanceledException) when (!TestContext.Current.CancellationToken.IsCancellationRequested)
        {
            throw new TimeoutException($"no line matching /{pattern}/ within the limit; guest said:\n{Transcript}");
        }
        throw new InvalidOperationException($"QEMU ended before a line matching /{pattern}/; guest said:\n{Transcript}");
    }

    /// <summary>Types <paramref name="c"/> on the guest's serial input.</summary>
    public void Send(char c)
    {
        _qemu.StandardInput.Write(c);
        _qemu.StandardInput.Flush();
    }

    /// <summary>Waits for QEMU to exit and returns its exit code.</summary>
    public async Task<int> WaitForExitAsync(TimeSpan? timeout = null)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        cts.CancelAfter(timeout ?? TimeSpan.FromSeconds(20));
        try
        {
            await _qemu.WaitForExitAsync(cts.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!TestContext.Current.CancellationToken.IsCancellationRequested)
        {
            throw new TimeoutException($"QEMU did not exit; guest said:\n{Transcript}");
        }
        await _reader.ConfigureAwait(false);
        return _qemu.ExitCode;
    }

    /// <summary>Stops the whole QEMU process (every vCPU with it) for <paramref name="pause"/>, as a host that
    /// deschedules a VM does. Unlike QEMU's own `stop`, which freezes the guest's TSC under TCG, the guest
    /// sees this time pass.</summary>
    public async Task FreezeAsync(TimeSpan pause)
    {
        if (kill(_qemu.Id, SIGSTOP) != 0)
            throw new InvalidOperationException($"kill(SIGSTOP) failed: errno {Marshal.GetLastPInvokeError()}");
        try
        {
            await Task.Delay(pause, TestContext.Current.CancellationToken).ConfigureAwait(false);
        }
        finally
        {
            kill(_qemu.Id, SIGCONT);
        }
    }

    public void Dispose()
    {
        try
        {
            if (!_qemu.HasExited)
            {
                kill(_qemu.Id, SIGCONT); // a frozen process still dies on SIGKILL, but leave nothing stopped
                _qemu.Kill(entireProcessTree: false);
                _qemu.WaitForExit(5000);
            }
        }
        catch (InvalidOperationException)
        {
            // Exited between the check and the kill.
        }
        _qemu.Dispose();
    }

    private const int SIGCONT = 18;
    private const int SIGSTOP = 19;

    [LibraryImport("libc", SetLastError = true)]
    private static partial int kill(int pid, int sig);
}
