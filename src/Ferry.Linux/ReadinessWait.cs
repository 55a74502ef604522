using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Ferry.Linux;

/// <summary>
/// A reader's wait for a file descriptor (a socket) to have data, which another thread can cut short. For a reader
/// that sleeps while nothing is expected and, while an answer is due, polls without sleeping (<see cref="HasData"/>):
/// data that reaches a sleeping reader wakes it through the sender's kernel, an inter-processor interrupt when it
/// slept on another CPU, where data that reaches a polling one wakes nobody.
/// </summary>
public sealed unsafe class ReadinessWait : IDisposable
{
    /// <summary>How a <see cref="Wait"/> ended.</summary>
    public enum Result
    {
        /// <summary>The fd has data, or its end or an error, which a read then reports.</summary>
        Ready,

        /// <summary><see cref="Nudge"/> was called (before or during the wait).</summary>
        Nudged,

        /// <summary>The timeout passed first.</summary>
        TimedOut,
    }

    // An eventfd: readable while a nudge is pending.
    private readonly SafeFileHandle _event;

    public ReadinessWait()
    {
        int fd = Libc.eventfd(0, Libc.EFD_CLOEXEC | Libc.EFD_NONBLOCK);
        if (fd < 0) throw new LinuxException("eventfd", Marshal.GetLastPInvokeError());
        _event = new SafeFileHandle(fd, ownsHandle: true);
    }

    /// <summary>Make the current or next <see cref="Wait"/> return <see cref="Result.Nudged"/>. Any thread.</summary>
    public void Nudge()
    {
        bool added = false;
        try
        {
            _event.DangerousAddRef(ref added);
            ulong one = 1;
            _ = Libc.write((int)_event.DangerousGetHandle(), &one, sizeof(ulong));
        }
        catch (ObjectDisposedException)
        {
            // Disposed: nobody waits any more.
        }
        finally
        {
            if (added) _event.DangerousRelease();
        }
    }

    /// <summary>
    /// Block until <paramref name="fd"/> is readable (or at its end), a <see cref="Nudge"/>, or
    /// <paramref name="timeoutMilliseconds"/> (-1: none). A pending nudge is consumed. One thread at a time.
    /// </summary>
    public Result Wait(int fd, int timeoutMilliseconds)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(timeoutMilliseconds, -1);
        long deadline = timeoutMilliseconds < 0 ? long.MaxValue : Environment.TickCount64 + timeoutMilliseconds;
        bool added = false;
        try
        {
            _event.DangerousAddRef(ref added);
            int wake = (int)_event.DangerousGetHandle();
            pollfd* set = stackalloc pollfd[2];
            set[0] = new pollfd { fd = fd, events = Libc.POLLIN };
            set[1] = new pollfd { fd = wake, events = Libc.POLLIN };
            // SAFETY: set is two initialised pollfds on this stack frame.
            if (Libc.PollUntil(set, 2, deadline) == 0) return Result.TimedOut;
            if (set[1].revents != 0)
            {
                ulong count;
                _ = Libc.read(wake, &count, sizeof(ulong));
                if (set[0].revents == 0) return Result.Nudged;
            }
            return Result.Ready;
        }
        finally
        {
            if (added) _event.DangerousRelease();
        }
    }

    /// <summary>True if <paramref name="fd"/> has data (or is at its end, or failed) now; never sleeps.</summary>
    public static bool HasData(int fd)
    {
        pollfd set = new() { fd = fd, events = Libc.POLLIN };
        // SAFETY: set is one initialised pollfd on this stack frame; timeout 0 returns at once.
        return Libc.poll(&set, 1, 0) > 0;
    }

    public void Dispose() => _event.Dispose();
}
