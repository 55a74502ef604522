using System.Diagnostics;
using Ferry.Migration.Protocol;
using Ferry.Migration.Transport;

// Channels are blocking by design (one thread per channel), so these tests drive them from plain threads and
// wait on them with bounded timeouts; async test methods would add nothing but noise.
#pragma warning disable xUnit1031, xUnit1051

namespace Ferry.Migration.Tests.Transport;

public class FaultInjectionTests
{
    private static readonly byte[] Data = Enumerable.Range(0, 100).Select(i => (byte)i).ToArray();

    private static (FaultInjectingChannel Faulty, InMemoryChannel Peer, Fault Fault) Wrap(Func<FaultPlan, Fault> add)
    {
        var plan = new FaultPlan();
        var fault = add(plan);
        var (a, b) = InMemoryTransport.CreatePair("pages-0", receiveTimeout: TimeSpan.FromMilliseconds(200));
        return (new FaultInjectingChannel(a, plan.Faults), b, fault);
    }

    /// <summary>Everything the peer receives until end of stream, timeout or error.</summary>
    private static byte[] Drain(IMigrationChannel c)
    {
        var got = new List<byte>();
        var one = new byte[1];
        try
        {
            while (c.ReceiveExactly(one)) got.Add(one[0]);
        }
        catch (MigrationTransportException)
        {
        }
        return got.ToArray();
    }

    [Fact]
    public void DropSilentlyDiscardsEverythingFromTheOffsetOn()
    {
        var (faulty, peer, fault) = Wrap(p => p.Drop(FaultTarget.Any, FaultTrigger.AtOffset(40)));
        faulty.Send(Data.AsSpan(0, 30));
        faulty.Send(Data.AsSpan(30));
        Assert.Equal(Data[..40], Drain(peer)); // then silence: the receive timed out
        Assert.Equal(1, fault.TimesFired);
        Assert.Equal(100, faulty.BytesSent);
    }

    [Fact]
    public void DelaySleepsBeforeEverySendFromTheOffsetOn()
    {
        var (faulty, peer, fault) = Wrap(p => p.Delay(FaultTarget.Any, FaultTrigger.AtOffset(10), TimeSpan.FromMilliseconds(60)));
        var watch = Stopwatch.StartNew();
        faulty.Send(Data.AsSpan(0, 10)); // before the offset: not delayed
        var undelayed = watch.Elapsed;
        faulty.Send(Data.AsSpan(10, 10));
        faulty.Send(Data.AsSpan(20, 10));
        Assert.True(watch.Elapsed - undelayed >= TimeSpan.FromMilliseconds(115), $"{watch.Elapsed - undelayed}");
        Assert.Equal(Data[..30], Drain(peer));
    }

    [Fact]
    public void TruncateSendsUpToTheOffsetThenClosesWhileTheSenderCarriesOn()
    {
        var (faulty, peer, _) = Wrap(p => p.Truncate(FaultTarget.Any, FaultTrigger.AtOffset(25)));
        faulty.Send(Data); // no error for the sender
        faulty.Send(Data);
        Assert.True(peer.ReceiveExactly(new byte[20]));
        Assert.Equal("pages-0: the peer closed the connection after 5 of 10 bytes", Assert.Throws<MigrationTransportException>(() => peer.ReceiveExactly(new byte[10])).Message);
    }

    [Fact]
    public void CorruptFlipsExactlyTheByteAtTheOffset()
    {
        var (faulty, peer, _) = Wrap(p => p.Corrupt(FaultTarget.Any, FaultTrigger.AtOffset(57)));
        faulty.Send(Data);
        var got = new byte[100];
        Assert.True(peer.ReceiveExactly(got));
        var expected = (byte[])Data.Clone();
        expected[57] = (byte)~expected[57];
        Assert.Equal(expected, got);
        Assert.Equal(57, Data[57]); // the sender's buffer (guest memory) is never modified
    }

    [Fact]
    public void CorruptOnReceiveFlipsTheByteTheReceiverSees()
    {
        var plan = new FaultPlan();
        plan.Corrupt(FaultTarget.Any, FaultTrigger.AtOffset(3), FaultDirection.Receive);
        var (a, b) = InMemoryTransport.CreatePair("control");
        var faulty = new FaultInjectingChannel(b, plan.Faults);
        a.Send([1, 2, 3, 4, 5]);
        var got = new byte[5];
        Assert.True(faulty.ReceiveExactly(got));
        Assert.Equal(new byte[] { 1, 2, 3, unchecked((byte)~4), 5 }, got);
    }

    [Fact]
    public void CloseAtAnOffsetFailsTheSenderThereAndThePeerSeesTheEnd()
    {
        var (faulty, peer, _) = Wrap(p => p.Close(FaultTarget.Any, FaultTrigger.AtOffset(30)));
        Assert.Equal("pages-0: connection closed at byte 30 (injected fault)", Assert.Throws<MigrationTransportException>(() => faulty.Send(Data)).Message);
        Assert.Throws<MigrationTransportException>(() => faulty.Send(Data));
        Assert.True(peer.ReceiveExactly(new byte[30]));
        Assert.False(peer.ReceiveExactly(new byte[1]));
    }

    [Fact]
    public void CloseAfterTheSecondCompleteRecordLetsExactlyTwoThrough()
    {
        var plan = new FaultPlan();
        var fault = plan.Close(FaultTarget.Control, FaultTrigger.AfterRecord(RecordKind.Complete, 2));
        using var t = new InMemoryTransport(receiveTimeout: TimeSpan.FromSeconds(5));
        var source = new FaultInjectingConnector(t.Connector, plan).Connect(1, CancellationToken.None);
        var destination = t.Listener.Accept(CancellationToken.None);
        var w = new ProtocolWriter(source.Control);
        w.WriteKeepalive(1);
        w.WriteComplete(1, CompleteFlags.None);
        w.WriteKeepalive(2);
        w.WriteComplete(2, CompleteFlags.None);
        Assert.Equal(0, fault.TimesFired);
        Assert.Throws<MigrationTransportException>(() => w.WriteKeepalive(3));
        Assert.Equal(1, fault.TimesFired);
        var r = new ProtocolReader(destination.Control);
        Assert.Equal(1UL, r.Expect<CompleteMessage>().FlushSequence);
        Assert.Equal(2UL, r.Expect<CompleteMessage>().FlushSequence);
        Assert.Null(r.Read());
        source.Pages[0].Send([7]); // page channels are not in the plan's target
        Assert.True(destination.Pages[0].ReceiveExactly(new byte[1]));
    }

    [Fact]
    public void BeforeRecordCorruptsTheFirstByteOfThatRecord()
    {
        var (faulty, peer, _) = Wrap(p => p.Corrupt(FaultTarget.Any, FaultTrigger.BeforeRecord(RecordKind.Commit)));
        var w = new ProtocolWriter(faulty);
        w.WriteKeepalive(5);
        w.WriteCommit();
        var r = new ProtocolReader(peer);
        Assert.IsType<KeepaliveMessage>(r.Read());
        Assert.Contains("unknown record kind 246", Assert.Throws<MigrationProtocolException>(() => r.Read()).Message, StringComparison.Ordinal); // ~9
    }

    [Fact]
    public void ACallbackTriggerStartsTheFaultWhenItFirstSaysSo()
    {
        bool now = false;
        var (faulty, peer, _) = Wrap(p => p.Drop(FaultTarget.Any, FaultTrigger.When(() => now)));
        faulty.Send(Data.AsSpan(0, 10));
        now = true;
        faulty.Send(Data.AsSpan(10, 10));
        Assert.Equal(Data[..10], Drain(peer));
    }

    [Fact]
    public void FaultsApplyOnlyToTheirTargetChannel()
    {
        var plan = new FaultPlan();
        var fault = plan.Corrupt(FaultTarget.Page(1), FaultTrigger.AtOffset(0));
        using var t = new InMemoryTransport();
        var source = new FaultInjectingConnector(t.Connector, plan).Connect(2, CancellationToken.None);
        var destination = t.Listener.Accept(CancellationToken.None);
        source.Control.Send([1]);
        source.Pages[0].Send([1]);
        source.Pages[1].Send([1]);
        var b = new byte[1];
        Assert.True(destination.Control.ReceiveExactly(b));
        Assert.Equal(1, b[0]);
        Assert.True(destination.Pages[0].ReceiveExactly(b));
        Assert.Equal(1, b[0]);
        Assert.True(destination.Pages[1].ReceiveExactly(b));
        Assert.Equal(0xFE, b[0]);
        Assert.Equal(1, fault.TimesFired);
    }
}
