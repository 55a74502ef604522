using Ferry.Migration.Protocol;

namespace Ferry.Migration.Transport;

/// <summary>What an injected fault does once it starts (microsoft/FASTER's SimulatedFlakyDevice is the idea).</summary>
public enum FaultKind
{
    /// <summary>Silently discard every byte from the start on (sends succeed; receives never see the data).</summary>
    Drop = 1,
    /// <summary>Sleep <see cref="Fault.Delay"/> before every operation from the start on.</summary>
    Delay = 2,
    /// <summary>Pass bytes up to the start, then close the connection; later sends are silently discarded.</summary>
    Truncate = 3,
    /// <summary>Flip every bit of the one byte at the start.</summary>
    Corrupt = 4,
    /// <summary>Pass bytes up to the start, then close the connection and fail the operation (like a reset).</summary>
    Close = 5,
}

/// <summary>Which way of a channel a fault applies to.</summary>
public enum FaultDirection
{
    /// <summary>Bytes this side sends.</summary>
    Send = 1,
    /// <summary>Bytes this side receives.</summary>
    Receive = 2,
}

/// <summary>Which channels a fault applies to.</summary>
public readonly record struct FaultTarget(int Index)
{
    /// <summary>The control channel.</summary>
    public static FaultTarget Control => new(0);

    /// <summary>Every page channel.</summary>
    public static FaultTarget AnyPage => new(-1);

    /// <summary>Every channel.</summary>
    public static FaultTarget Any => new(-2);

    /// <summary>Page channel <paramref name="k"/> (0-based).</summary>
    public static FaultTarget Page(int k) => new(k + 1);

    /// <summary>Post-copy's urgent channel.</summary>
    public static FaultTarget Urgent => new(UrgentIndex);

    internal const int UrgentIndex = int.MaxValue;

    internal bool Matches(int channelIndex) => Index switch
    {
        -2 => true,
        -1 => channelIndex is > 0 and not UrgentIndex,
        _ => Index == channelIndex,
    };
}

/// <summary>Where a fault starts: a byte offset, a record boundary, or when a callback first says so.</summary>
public abstract record FaultTrigger
{
    /// <summary>At byte <paramref name="offset"/> of the direction's stream (0 = from the first byte).</summary>
    public static FaultTrigger AtOffset(long offset) => new OffsetTrigger(offset);

    /// <summary>At the first byte of the <paramref name="nth"/> (1-based) record of <paramref name="kind"/>.</summary>
    public static FaultTrigger BeforeRecord(RecordKind kind, int nth = 1) => new RecordTrigger(kind, nth, After: false);

    /// <summary>Right after the last byte of the <paramref name="nth"/> (1-based) record of <paramref name="kind"/>.</summary>
    public static FaultTrigger AfterRecord(RecordKind kind, int nth = 1) => new RecordTrigger(kind, nth, After: true);

    /// <summary>At the current position of the first operation for which <paramref name="condition"/> returns true.</summary>
    public static FaultTrigger When(Func<bool> condition) => new CallbackTrigger(condition);

    internal sealed record OffsetTrigger(long Offset) : FaultTrigger;
    internal sealed record RecordTrigger(RecordKind Kind, int Nth, bool After) : FaultTrigger;
    internal sealed record CallbackTrigger(Func<bool> Condition) : FaultTrigger;
}

/// <summary>One fault: what, where, which channels, which direction.</summary>
public sealed class Fault
{
    private int _fired;

    public Fault(FaultKind kind, FaultTarget target, FaultTrigger trigger, FaultDirection direction = FaultDirection.Send, TimeSpan delay = default)
    {
        ArgumentNullException.ThrowIfNull(trigger);
        if (kind == FaultKind.Delay && delay <= TimeSpan.Zero)
            throw new ArgumentException("a Delay fault needs a positive delay", nameof(delay));
        Kind = kind;
        Target = target;
        Trigger = trigger;
        Direction = direction;
        Delay = delay;
    }

    public FaultKind Kind { get; }
    public FaultTarget Target { get; }
    public FaultTrigger Trigger { get; }
    public FaultDirection Direction { get; }

    /// <summary>Sleep per operation for <see cref="FaultKind.Delay"/>.</summary>
    public TimeSpan Delay { get; }

    /// <summary>How many channels this fault has started on (tests assert it really happened).</summary>
    public int TimesFired => Volatile.Read(ref _fired);

    internal void MarkFired() => Interlocked.Increment(ref _fired);
}

/// <summary>The faults to inject into the channels of <see cref="FaultInjectingConnector"/> or <see cref="FaultInjectingListener"/>.</summary>
public sealed class FaultPlan
{
    private readonly List<Fault> _faults = [];

    public IReadOnlyList<Fault> Faults => _faults;

    /// <summary>Add a fault; returns it so a test can check <see cref="Fault.TimesFired"/>.</summary>
    public Fault Add(Fault fault)
    {
        ArgumentNullException.ThrowIfNull(fault);
        _faults.Add(fault);
        return fault;
    }

    public Fault Drop(FaultTarget target, FaultTrigger at, FaultDirection direction = FaultDirection.Send) => Add(new(FaultKind.Drop, target, at, direction));
    public Fault Delay(FaultTarget target, FaultTrigger from, TimeSpan delay, FaultDirection direction = FaultDirection.Send) => Add(new(FaultKind.Delay, target, from, direction, delay));
    public Fault Truncate(FaultTarget target, FaultTrigger at, FaultDirection direction = FaultDirection.Send) => Add(new(FaultKind.Truncate, target, at, direction));
    public Fault Corrupt(FaultTarget target, FaultTrigger at, FaultDirection direction = FaultDirection.Send) => Add(new(FaultKind.Corrupt, target, at, direction));
    public Fault Close(FaultTarget target, FaultTrigger at, FaultDirection direction = FaultDirection.Send) => Add(new(FaultKind.Close, target, at, direction));

    internal IMigrationChannel Wrap(IMigrationChannel channel, int index)
    {
        var mine = _faults.Where(f => f.Target.Matches(index)).ToArray();
        return mine.Length == 0 ? channel : new FaultInjectingChannel(channel, mine);
    }

    /// <summary>The urgent channel, if any, counts as the channel after the last page channel.</summary>
    internal MigrationConnection Wrap(MigrationConnection c) =>
        new(Wrap(c.Control, 0), c.Pages.Select((p, k) => Wrap(p, k + 1)).ToArray(), c.Urgent is null ? null : Wrap(c.Urgent, FaultTarget.UrgentIndex));
}

/// <summary>Wraps a connector so the channels it opens misbehave as <see cref="FaultPlan"/> says.</summary>
public sealed class FaultInjectingConnector(IMigrationConnector inner, FaultPlan plan) : IMigrationConnector
{
    public MigrationConnection Connect(int pageChannels, CancellationToken cancellationToken) =>
        plan.Wrap(inner.Connect(pageChannels, cancellationToken));

    public MigrationConnection Connect(int pageChannels, bool urgentChannel, CancellationToken cancellationToken) =>
        plan.Wrap(inner.Connect(pageChannels, urgentChannel, cancellationToken));
}

/// <summary>Wraps a listener so the channels it accepts misbehave as <see cref="FaultPlan"/> says.</summary>
public sealed class FaultInjectingListener(IMigrationListener inner, FaultPlan plan) : IMigrationListener
{
    public MigrationConnection Accept(CancellationToken cancellationToken) => plan.Wrap(inner.Accept(cancellationToken));

    public void Dispose() => inner.Dispose();
}
