using System.Buffers.Binary;
using Ferry.Machine.Board;

namespace Ferry.Machine.Tests;

/// <summary>The Goldfish RTC driven through its registers, on a wall clock the test moves by hand.</summary>
public sealed class GoldfishRtcTests : IDisposable
{
    // 2024-01-02 03:04:05.6789012 UTC, in nanoseconds since the epoch.
    private static readonly DateTimeOffset Start = new DateTimeOffset(2024, 1, 2, 3, 4, 5, TimeSpan.Zero).AddTicks(6_789_012);
    private static readonly ulong StartNs = (ulong)(Start - DateTimeOffset.UnixEpoch).Ticks * 100;

    private readonly ManualClock clock = new(Start);
    private readonly GoldfishRtc rtc;
    private readonly List<bool> levels = [];

    public GoldfishRtcTests()
    {
        rtc = new GoldfishRtc(clock) { InterruptChanged = levels.Add };
    }

    public void Dispose() => rtc.Dispose();

    private ulong ReadTime()
    {
        ulong low = rtc.Read(GoldfishRtc.TimeLow, 4);
        return (rtc.Read(GoldfishRtc.TimeHigh, 4) << 32) | low;
    }

    private void SetAlarm(ulong ns)
    {
        rtc.Write(GoldfishRtc.AlarmHigh, 4, ns >> 32);
        rtc.Write(GoldfishRtc.AlarmLow, 4, ns & 0xffff_ffff);
    }

    [Fact]
    public void TimeIsTheHostsWallClockInNanosecondsSinceTheEpoch()
    {
        Assert.Equal(StartNs, ReadTime());
        clock.Advance(TimeSpan.FromMilliseconds(1500));
        Assert.Equal(StartNs + 1_500_000_000, ReadTime());
    }

    [Fact]
    public void ReadingTimeLowLatchesTheHighHalf()
    {
        ulong low = rtc.Read(GoldfishRtc.TimeLow, 4);
        clock.Advance(TimeSpan.FromSeconds(10)); // more than 2^32 ns: the live high half moves on
        ulong high = rtc.Read(GoldfishRtc.TimeHigh, 4);

        Assert.Equal(StartNs, (high << 32) | low);
        Assert.Equal(StartNs >> 32, rtc.Read(GoldfishRtc.TimeHigh, 4));
    }

    [Fact]
    public void WritingTheTimeSetsTheGuestsClockWhichThenKeepsRunning()
    {
        const ulong Set = 1_000_000_000_000_000_000; // 2001-09-09
        rtc.Write(GoldfishRtc.TimeHigh, 4, Set >> 32);
        rtc.Write(GoldfishRtc.TimeLow, 4, Set & 0xffff_ffff);

        Assert.Equal(Set, ReadTime());
        clock.Advance(TimeSpan.FromSeconds(2));
        Assert.Equal(Set + 2_000_000_000, ReadTime());
    }

    [Fact]
    public void AnAlarmArmsATimerAndRaisesTheLineWhenItFiresIfEnabled()
    {
        rtc.Write(GoldfishRtc.IrqEnabled, 4, 1);
        SetAlarm(StartNs + 3_000_000_000);

        Assert.Equal(1UL, rtc.Read(GoldfishRtc.AlarmStatus, 4));
        Assert.Equal(TimeSpan.FromSeconds(3), clock.Timer!.Due);
        Assert.Equal(StartNs + 3_000_000_000, (rtc.Read(GoldfishRtc.AlarmHigh, 4) << 32) | rtc.Read(GoldfishRtc.AlarmLow, 4));
        Assert.Empty(levels);

        clock.Advance(TimeSpan.FromSeconds(3));
        clock.Timer.Fire();

        Assert.Equal(0UL, rtc.Read(GoldfishRtc.AlarmStatus, 4));
        Assert.True(rtc.InterruptPending);
        rtc.Write(GoldfishRtc.ClearInterrupt, 4, 0);
        Assert.False(rtc.InterruptPending);
        Assert.Equal([true, false], levels);
    }

    [Fact]
    public void AnAlarmAlreadyDueFiresAtOnceAndTheLineWaitsForIrqEnabled()
    {
        SetAlarm(StartNs - 1);

        Assert.Equal(0UL, rtc.Read(GoldfishRtc.AlarmStatus, 4));
        Assert.False(rtc.InterruptPending); // pending, but the interrupt is disabled
        rtc.Write(GoldfishRtc.IrqEnabled, 4, 1);
        Assert.True(rtc.InterruptPending);
        Assert.Equal(1UL, rtc.Read(GoldfishRtc.IrqEnabled, 4));
        rtc.Write(GoldfishRtc.IrqEnabled, 4, 0);
        Assert.Equal([true, false], levels);
    }

    [Fact]
    public void AnEarlyOrStaleTimerCallbackDoesNotFireTheAlarm()
    {
        rtc.Write(GoldfishRtc.IrqEnabled, 4, 1);
        SetAlarm(StartNs + 5_000_000_000);

        // The timer comes early (its due time was clamped, or the wall clock was stepped back): it re-arms for the rest.
        clock.Advance(TimeSpan.FromSeconds(2));
        clock.Timer!.Fire();
        Assert.False(rtc.InterruptPending);
        Assert.Equal(TimeSpan.FromSeconds(3), clock.Timer.Due);

        // Cleared, then a callback already on its way arrives: nothing happens.
        rtc.Write(GoldfishRtc.ClearAlarm, 4, 0);
        Assert.Equal(0UL, rtc.Read(GoldfishRtc.AlarmStatus, 4));
        clock.Advance(TimeSpan.FromSeconds(10));
        clock.Timer.Callback();
        Assert.False(rtc.InterruptPending);
        Assert.Empty(levels);
    }

    [Theory]
    [InlineData(0x20UL, 4)]
    [InlineData(0x00UL, 8)]
    [InlineData(0x10UL, 1)]
    public void OtherOffsetsAndSizesReadZeroAndIgnoreWrites(ulong offset, int size)
    {
        byte[] before = rtc.SaveState();
        rtc.Write(offset, size, ulong.MaxValue);
        Assert.Equal(0UL, rtc.Read(offset, size));
        Assert.Equal(before, rtc.SaveState());
    }

    [Fact]
    public void StateCarriesTheOffsetFromTheWallClockAndRearmsARunningAlarm()
    {
        const ulong GuestTime = 1_600_000_000_000_000_000;
        rtc.Write(GoldfishRtc.TimeHigh, 4, GuestTime >> 32);
        rtc.Write(GoldfishRtc.TimeLow, 4, GuestTime & 0xffff_ffff);
        rtc.Write(GoldfishRtc.IrqEnabled, 4, 1);
        SetAlarm(GuestTime + 4_000_000_000);
        byte[] saved = rtc.SaveState();
        Assert.Equal(GoldfishRtc.StateSize, saved.Length);

        // The destination's wall clock is a second later (the migration took that long): so is the guest's clock.
        var there = new ManualClock(Start + TimeSpan.FromSeconds(1));
        using var copy = new GoldfishRtc(there);
        var copyLevels = new List<bool>();
        copy.InterruptChanged = copyLevels.Add;
        copy.LoadState(saved);

        Assert.Equal(GuestTime + 1_000_000_000, copy.Now);
        Assert.Equal(1UL, copy.Read(GoldfishRtc.AlarmStatus, 4));
        Assert.Equal(TimeSpan.FromSeconds(3), there.Timer!.Due);
        there.Advance(TimeSpan.FromSeconds(3));
        there.Timer.Fire();
        Assert.Equal([true], copyLevels);
    }

    [Fact]
    public void LoadingAStateWithAPendingEnabledInterruptRaisesTheLine()
    {
        using var source = new GoldfishRtc(clock);
        source.Write(GoldfishRtc.IrqEnabled, 4, 1);
        source.Write(GoldfishRtc.AlarmLow, 4, 0); // long past: fires at once
        Assert.True(source.InterruptPending);

        rtc.LoadState(source.SaveState());

        Assert.True(rtc.InterruptPending);
        Assert.Equal([true], levels);
    }

    [Fact]
    public void ABadSectionIsRejectedAndLeavesTheRtcUnchanged()
    {
        rtc.Write(GoldfishRtc.IrqEnabled, 4, 1);
        byte[] good = rtc.SaveState();

        byte[] Spoil(Action<byte[]> change)
        {
            byte[] copy = [.. good];
            change(copy);
            return copy;
        }
        byte[][] bad =
        [
            good[..^1],
            [.. good, 0],
            Spoil(b => b[0] ^= 1),
            Spoil(b => BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(4), 2)),
            Spoil(b => BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(6), 31)),
            Spoil(b => b[28] |= 0x80),
        ];
        foreach (byte[] section in bad)
        {
            Assert.Throws<InvalidDataException>(() => rtc.LoadState(section));
            Assert.Equal(good, rtc.SaveState());
        }
    }

    /// <summary>A wall clock that moves only when told, and the one timer the RTC creates.</summary>
    private sealed class ManualClock(DateTimeOffset now) : TimeProvider
    {
        private DateTimeOffset now = now;

        public ManualTimer? Timer { get; private set; }

        public override DateTimeOffset GetUtcNow() => now;

        public void Advance(TimeSpan by) => now += by;

        public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
        {
            Assert.Null(Timer); // the RTC reuses its timer
            Timer = new ManualTimer(() => callback(state)) { Due = dueTime };
            return Timer;
        }
    }

    private sealed class ManualTimer(Action callback) : ITimer
    {
        public TimeSpan Due { get; set; } = Timeout.InfiniteTimeSpan;

        /// <summary>Run the callback whatever the due time (a callback already on its way).</summary>
        public Action Callback { get; } = callback;

        public bool Change(TimeSpan dueTime, TimeSpan period)
        {
            Due = dueTime;
            return true;
        }

        /// <summary>Fire as the timer would: only when armed.</summary>
        public void Fire()
        {
            Assert.NotEqual(Timeout.InfiniteTimeSpan, Due);
            Due = Timeout.InfiniteTimeSpan;
            Callback();
        }

        public void Dispose() { }

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}
