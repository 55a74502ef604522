using System.Buffers.Binary;

namespace Ferry.Machine.Board;

/// <summary>
/// The Goldfish real-time clock at 0x10_1000, as QEMU <c>hw/rtc/goldfish_rtc.c</c> (Linux
/// <c>drivers/rtc/rtc-goldfish.c</c>): a 64-bit count of nanoseconds since the Unix epoch, read from the host's wall
/// clock plus an offset the guest sets by writing the time, and a one-shot alarm that raises the interrupt line.
/// </summary>
/// <remarks>
/// <para>Registers (32-bit; other sizes and offsets read 0 and ignore writes, as QEMU's 4-byte-only window):</para>
/// <list type="table">
/// <item><term>0x00 TIME_LOW</term><description>read: the time's low half, latching its high half into TIME_HIGH; write: set the low half</description></item>
/// <item><term>0x04 TIME_HIGH</term><description>read: the half latched by the last TIME_LOW read; write: set the high half</description></item>
/// <item><term>0x08 ALARM_LOW</term><description>write: set the alarm's low half and arm it (an alarm already due fires at once)</description></item>
/// <item><term>0x0c ALARM_HIGH</term><description>write: set the alarm's high half (write it first)</description></item>
/// <item><term>0x10 IRQ_ENABLED</term><description>bit 0 gates the interrupt line</description></item>
/// <item><term>0x14 CLEAR_ALARM</term><description>write: disarm the alarm</description></item>
/// <item><term>0x18 ALARM_STATUS</term><description>read: 1 while the alarm is armed</description></item>
/// <item><term>0x1c CLEAR_INTERRUPT</term><description>write: drop the pending interrupt</description></item>
/// </list>
/// <para>The line is high while an interrupt is pending and enabled. It drives <see cref="InterruptChanged"/>, which
/// is called under the device's lock whenever the level changes (levels arrive in order); the callee must not call
/// back into the RTC.</para>
/// <para>Time is the host's wall clock (<see cref="TimeProvider.GetUtcNow"/>, 100 ns resolution) plus an offset, as
/// QEMU's <c>rtc_clock</c> with its default <c>-rtc clock=host</c>. The saved state carries the offset, not the time,
/// as QEMU migrates <c>tick_offset</c>: on the destination the guest's clock follows that host's wall clock, so time
/// spent in migration is not lost from the guest's calendar.</para>
/// </remarks>
public sealed class GoldfishRtc : IMmioDevice, IDisposable
{
    public const ulong RtcBase = 0x10_1000;
    public const ulong RtcSize = 0x1000;

    public const int TimeLow = 0x00, TimeHigh = 0x04, AlarmLow = 0x08, AlarmHigh = 0x0c, IrqEnabled = 0x10,
        ClearAlarm = 0x14, AlarmStatus = 0x18, ClearInterrupt = 0x1c;

    private const uint StateMagic = 0x43545247; // "GRTC"
    private const ushort StateVersion = 1;
    // Header (8), offset (8), alarm (8), time_high latch (4), flags (4).
    public const int StateSize = 8 + 8 + 8 + 4 + 4;
    private const uint FlagAlarmRunning = 1, FlagIrqPending = 2, FlagIrqEnabled = 4;

    private readonly object gate = new();
    private readonly TimeProvider time;
    // Guest time = host wall clock (ns since the epoch) + offset; wraps as QEMU's uint64_t arithmetic does.
    private ulong offset;
    // The alarm time in guest nanoseconds, as the guest last wrote it.
    private ulong alarmNext;
    // The high half latched by the last TIME_LOW read.
    private uint timeHigh;
    // Armed and not yet fired or cleared.
    private bool alarmRunning;
    private bool irqPending;
    private bool irqEnabled;
    // Fires the alarm; created on first use, null when never armed.
    private ITimer? alarmTimer;
    private bool lineLevel;
    private bool disposed;

    public GoldfishRtc() : this(TimeProvider.System) { }

    /// <summary>An RTC reading the wall clock of <paramref name="time"/> (tests inject a manual clock).</summary>
    public GoldfishRtc(TimeProvider time)
    {
        ArgumentNullException.ThrowIfNull(time);
        this.time = time;
    }

    /// <summary>Called with the interrupt line's new level whenever it changes, under the device's lock.</summary>
    public Action<bool>? InterruptChanged { get; set; }

    /// <summary>True while the interrupt line is high.</summary>
    public bool InterruptPending
    {
        get { lock (gate) return lineLevel; }
    }

    /// <summary>The time the guest reads now, in nanoseconds since the Unix epoch.</summary>
    public ulong Now
    {
        get { lock (gate) return Count(); }
    }

    private ulong HostNanoseconds() => (ulong)(time.GetUtcNow() - DateTimeOffset.UnixEpoch).Ticks * 100;

    private ulong Count() => HostNanoseconds() + offset;

    public ulong Read(ulong offsetInWindow, int size)
    {
        if (size != 4) return 0;
        lock (gate)
        {
            switch (offsetInWindow)
            {
                case TimeLow:
                    ulong now = Count();
                    timeHigh = (uint)(now >> 32);
                    return (uint)now;
                case TimeHigh:
                    return timeHigh;
                case AlarmLow:
                    return (uint)alarmNext;
                case AlarmHigh:
                    return alarmNext >> 32;
                case IrqEnabled:
                    return irqEnabled ? 1u : 0;
                case AlarmStatus:
                    return alarmRunning ? 1u : 0;
                default:
                    return 0;
            }
        }
    }

    public void Write(ulong offsetInWindow, int size, ulong value)
    {
        if (size != 4) return;
        uint v = (uint)value;
        lock (gate)
        {
            if (disposed) return;
            switch (offsetInWindow)
            {
                case TimeLow:
                {
                    ulong now = Count();
                    offset += ((now & ~0xffff_ffffUL) | v) - now;
                    break;
                }
                case TimeHigh:
                {
                    ulong now = Count();
                    offset += (((ulong)v << 32) | (now & 0xffff_ffffUL)) - now;
                    break;
                }
                case AlarmLow:
                    alarmNext = (alarmNext & ~0xffff_ffffUL) | v;
                    Arm();
                    break;
                case AlarmHigh:
                    alarmNext = ((ulong)v << 32) | (alarmNext & 0xffff_ffffUL);
                    break;
                case IrqEnabled:
                    irqEnabled = (v & 1) != 0;
                    UpdateLine();
                    break;
                case ClearAlarm:
                    Disarm();
                    break;
                case ClearInterrupt:
                    irqPending = false;
                    UpdateLine();
                    break;
            }
        }
    }

    // Arm the alarm for alarmNext, or fire it now if that time has come (QEMU goldfish_rtc_set_alarm).
    private void Arm()
    {
        ulong now = Count();
        if (alarmNext <= now)
        {
            Disarm();
            Fire();
            return;
        }
        // Round up to a whole 100 ns tick so the timer never fires before the guest's clock reaches the alarm.
        ulong ticks = Math.Min((alarmNext - now + 99) / 100, (ulong)TimeSpan.MaxValue.Ticks / 2);
        var due = TimeSpan.FromTicks((long)ticks);
        alarmTimer ??= time.CreateTimer(OnTimer, null, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        alarmTimer.Change(ClampDue(due), Timeout.InfiniteTimeSpan);
        alarmRunning = true;
    }

    // Timers accept at most about 49.7 days (uint.MaxValue - 1 ms); a later alarm re-arms when this one fires early.
    private static TimeSpan ClampDue(TimeSpan due)
    {
        var max = TimeSpan.FromMilliseconds(uint.MaxValue - 1);
        return due > max ? max : due;
    }

    private void Disarm()
    {
        alarmTimer?.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        alarmRunning = false;
    }

    private void Fire()
    {
        alarmRunning = false;
        irqPending = true;
        UpdateLine();
    }

    private void OnTimer(object? state)
    {
        lock (gate)
        {
            // A callback for an alarm since cleared finds it not running. Otherwise check the guest's clock rather than
            // trust the timer: the due time may have been clamped, the host clock stepped, or the alarm been re-armed
            // for later while this callback was on its way; Arm fires or waits again as the clock says.
            if (disposed || !alarmRunning) return;
            Arm();
        }
    }

    private void UpdateLine()
    {
        bool now = irqPending && irqEnabled;
        if (now == lineLevel) return;
        lineLevel = now;
        InterruptChanged?.Invoke(now);
    }

    /// <summary>
    /// The state as a section of <see cref="StateSize"/> bytes: magic "GRTC", version, size, the offset from the host's
    /// wall clock, the alarm time, the TIME_HIGH latch and the alarm/interrupt flags.
    /// </summary>
    public byte[] SaveState()
    {
        var buf = new byte[StateSize];
        Span<byte> s = buf;
        StateHeader.Write(s, StateMagic, StateVersion);
        lock (gate)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(s[8..], offset);
            BinaryPrimitives.WriteUInt64LittleEndian(s[16..], alarmNext);
            BinaryPrimitives.WriteUInt32LittleEndian(s[24..], timeHigh);
            uint flags = (alarmRunning ? FlagAlarmRunning : 0) | (irqPending ? FlagIrqPending : 0) | (irqEnabled ? FlagIrqEnabled : 0);
            BinaryPrimitives.WriteUInt32LittleEndian(s[28..], flags);
        }
        return buf;
    }

    /// <summary>
    /// Replace the state from a section <see cref="SaveState"/> made (version 1 only). Throws
    /// <see cref="InvalidDataException"/> naming the problem for a short, foreign, other-version or inconsistent
    /// section; the RTC is left unchanged then. A running alarm is armed again (firing at once if its time has passed,
    /// as QEMU's post-load does); <see cref="InterruptChanged"/> is driven if the line's level changes.
    /// </summary>
    public void LoadState(ReadOnlySpan<byte> s)
    {
        StateHeader.Check(s, "rtc", StateMagic, StateVersion, StateSize);
        uint flags = BinaryPrimitives.ReadUInt32LittleEndian(s[28..]);
        if ((flags & ~(FlagAlarmRunning | FlagIrqPending | FlagIrqEnabled)) != 0) throw new InvalidDataException($"rtc section has unknown flags 0x{flags:x}");

        lock (gate)
        {
            ObjectDisposedException.ThrowIf(disposed, this);
            Disarm();
            offset = BinaryPrimitives.ReadUInt64LittleEndian(s[8..]);
            alarmNext = BinaryPrimitives.ReadUInt64LittleEndian(s[16..]);
            timeHigh = BinaryPrimitives.ReadUInt32LittleEndian(s[24..]);
            irqPending = (flags & FlagIrqPending) != 0;
            irqEnabled = (flags & FlagIrqEnabled) != 0;
            if ((flags & FlagAlarmRunning) != 0) Arm();
            UpdateLine();
        }
    }

    public void Dispose()
    {
        ITimer? timer;
        lock (gate)
        {
            if (disposed) return;
            disposed = true;
            timer = alarmTimer;
        }
        timer?.Dispose();
    }
}
