using System.Collections.Concurrent;
using Ferry.Migration.Protocol;
using Ferry.Migration.Transport;
using static Ferry.Migration.Tests.Precopy.MigrationHarness;

namespace Ferry.Migration.Tests.Precopy;

/// <summary>
/// The flags the engine puts on its page batches: pre-copy batches carry none, stop-and-copy batches carry FinalPass,
/// and DataChecksummed only when <see cref="MigrationOptions.ChecksumFinalPass"/> asks for it.
/// </summary>
[Collection(MigrationCollection.Name)]
public class FinalPassFlagsTests
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void OnlyStopAndCopyBatchesAreMarkedAndTheirDataIsChecksummedOnlyWhenAsked(bool checksumFinalPass)
    {
        // Idle but for 48 pages its dirty log always holds, so every pass, the final one included, has pages to send.
        using var inner = NewGuest(16, writers: 0);
        var guest = new PrecopyMigrationTests.AlwaysDirtySource(inner, pages: 48);
        using var transport = new InMemoryTransport();
        var connector = new FlagRecordingConnector(transport.Connector);
        var outcome = Migrate(guest, connector, transport.Listener, Options() with { ChecksumFinalPass = checksumFinalPass });
        using var _ = outcome.Target;
        Assert.True(outcome.Stats.Status == MigrationStatus.Completed, $"{outcome.Stats.Status}: {outcome.Stats.Error}");
        Assert.True(outcome.Stats.Verify is { Match: true }, "the destination's memory differs from the source's");

        var final = checksumFinalPass ? PageBatchFlags.FinalPass | PageBatchFlags.DataChecksummed : PageBatchFlags.FinalPass;
        int finalBatches = 0;
        foreach (var (channel, flags) in connector.Batches)
        {
            // Per channel: pre-copy batches, then the final pass's, never one back after a final one.
            int firstFinal = flags.FindIndex(f => f != PageBatchFlags.None);
            if (firstFinal < 0) continue;
            Assert.All(flags[firstFinal..], f => Assert.Equal(final, f));
            Assert.True(firstFinal > 0, $"{channel}: its first batch (round 0) was already marked final");
            finalBatches += flags.Count - firstFinal;
        }
        Assert.True(finalBatches > 0, "no batch was marked final");
        Assert.Equal(48, outcome.Stats.Rounds[^1].Pages);
    }

    private sealed class FlagRecordingConnector(IMigrationConnector inner) : IMigrationConnector
    {
        public ConcurrentDictionary<string, List<PageBatchFlags>> Batches { get; } = new();

        public MigrationConnection Connect(int pageChannels, CancellationToken cancellationToken)
        {
            var c = inner.Connect(pageChannels, cancellationToken);
            return new MigrationConnection(c.Control, [.. c.Pages.Select(p => (IMigrationChannel)new FlagRecordingChannel(p, Batches.GetOrAdd(p.Name, _ => [])))]);
        }
    }

    /// <summary>Reads the record header at the start of each gathered send: a page batch's flags are its byte 1.</summary>
    private sealed class FlagRecordingChannel(IMigrationChannel inner, List<PageBatchFlags> flags) : IMigrationChannel
    {
        public string Name => inner.Name;
        public void Send(ReadOnlySpan<byte> data) => inner.Send(data);

        public unsafe void SendGather(ReadOnlySpan<IoSegment> segments)
        {
            // SAFETY: the writer's first segment is its header buffer, at least a record header long.
            var header = new ReadOnlySpan<byte>((void*)segments[0].Address, MigrationProtocol.HeaderSize);
            if (header[0] == (byte)RecordKind.PageBatch) flags.Add((PageBatchFlags)header[1]);
            inner.SendGather(segments);
        }

        public bool ReceiveExactly(Span<byte> buffer) => inner.ReceiveExactly(buffer);
        public void Abort() => inner.Abort();
        public void Dispose() => inner.Dispose();
    }
}
