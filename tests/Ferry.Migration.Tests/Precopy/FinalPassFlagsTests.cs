using System.Buffers.Binary;
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
        long finalPages = 0, precopyPages = 0;
        foreach (var (channel, batches) in connector.Batches)
        {
            // Per channel: pre-copy batches, then the final pass's, never one back after a final one.
            int firstFinal = batches.FindIndex(b => b.Flags != PageBatchFlags.None);
            if (firstFinal < 0) firstFinal = batches.Count;
            Assert.All(batches[firstFinal..], b => Assert.Equal(final, b.Flags));
            precopyPages += batches[..firstFinal].Sum(b => b.Pages);
            finalPages += batches[firstFinal..].Sum(b => b.Pages);
        }
        // Exactly the stop-and-copy pass's pages travelled marked, every pre-copy round's unmarked.
        Assert.Equal(48, outcome.Stats.Rounds[^1].Pages);
        Assert.Equal(48, finalPages);
        Assert.Equal(outcome.Stats.Rounds.SkipLast(1).Sum(r => r.Pages), precopyPages);
    }

    private sealed class FlagRecordingConnector(IMigrationConnector inner) : IMigrationConnector
    {
        public ConcurrentDictionary<string, List<(PageBatchFlags Flags, long Pages)>> Batches { get; } = new();

        public MigrationConnection Connect(int pageChannels, CancellationToken cancellationToken)
        {
            var c = inner.Connect(pageChannels, cancellationToken);
            return new MigrationConnection(c.Control, [.. c.Pages.Select(p => (IMigrationChannel)new FlagRecordingChannel(p, Batches.GetOrAdd(p.Name, _ => [])))]);
        }
    }

    /// <summary>
    /// Reads the start of each gathered send, the writer's header buffer: a page batch's flags are its byte 1, and its
    /// run table (the batch header's run count, then 16-byte runs with their page count at +8) follows the headers.
    /// </summary>
    private sealed class FlagRecordingChannel(IMigrationChannel inner, List<(PageBatchFlags Flags, long Pages)> batches) : IMigrationChannel
    {
        public string Name => inner.Name;
        public void Send(ReadOnlySpan<byte> data) => inner.Send(data);

        public unsafe void SendGather(ReadOnlySpan<IoSegment> segments)
        {
            // SAFETY: the writer's first segment is its header buffer: record header, batch header and runs.
            var table = new ReadOnlySpan<byte>((void*)segments[0].Address, segments[0].Length);
            if (table[0] == (byte)RecordKind.PageBatch)
            {
                const int Runs = MigrationProtocol.HeaderSize + 8;
                int runCount = BinaryPrimitives.ReadUInt16LittleEndian(table[(MigrationProtocol.HeaderSize + 2)..]);
                long pages = 0;
                for (int i = 0; i < runCount; i++)
                    pages += BinaryPrimitives.ReadUInt32LittleEndian(table[(Runs + (i * MigrationProtocol.RunSize) + 8)..]);
                batches.Add(((PageBatchFlags)table[1], pages));
            }
            inner.SendGather(segments);
        }

        public bool ReceiveExactly(Span<byte> buffer) => inner.ReceiveExactly(buffer);
        public void Abort() => inner.Abort();
        public void Dispose() => inner.Dispose();
    }
}
