using System.Security.Cryptography;

namespace Ferry.Migration.Protocol;

/// <summary>
/// Ferry migration stream protocol, version 1. This file is the specification; the codecs beside it implement it.
/// </summary>
/// <remarks>
/// <para><b>Channels.</b> One migration is one control channel plus N page channels (1..16), each an ordered reliable
/// byte stream (TCP connection). The transport's own preamble groups them (see Transport/TcpMigrationListener); the
/// protocol starts after it. Control is bidirectional (the destination's return path); page channels carry records
/// from source to destination only. A given guest page is always sent on the same page channel (the engine shards
/// by page index), so the destination never needs to order pages across channels.</para>
///
/// <para><b>A migration</b> (time flows down):</para>
/// <code>
///   source                                             destination
///     | ctl  Hello{magic,version,uuid,layout,caps,token} ->|  validate everything; nothing is allocated before this
///     | ctl  &lt;- Welcome{version,caps} | Refuse{reason}  |  Refuse: both close, source keeps running
///     | pgN  PageBatch* (round 0: all memory)            ->|  written straight into guest memory
///     | pgN  PageBatch* (round k: pages dirtied)         ->|
///     | ctl  Keepalive (both ways, every PeerTimeout/3;   |
///     |      the destination echoes each source one)      |
///     |  ... pause guest ...                              |
///     | pgN  PageBatch*{FinalPass} , Flush{seq}          ->|  per page channel: "all before this was sent"
///     | ctl  StateSection*  , Complete{seq,flags}        ->|  wait for Flush{seq} on every page channel,
///     |                                                   |  then load state (and digest memory if Verify;
///     |                                                   |  with VerifyPageHashes: the pages' landed hashes)
///     | ctl  &lt;- Ready{digest-us,load-us,lag-us,digest?}  |  -- or Error/Cancel: source resumes its guest
///     | ctl  Commit                                      ->|  POINT OF NO RETURN: source never runs the VM again
///     | ctl  &lt;- Resumed{resume-us}                      |  guest runs on the destination
/// </code>
/// <para>Before Commit either side may send Cancel or Error and close; the source then resumes its guest. After
/// Commit the source never resumes, even if Resumed never arrives: at most one copy of the VM ever runs.</para>
///
/// <para><b>Receiver (destination) state machine</b>, control channel:</para>
/// <code>
///   AwaitHello --Hello ok--> Welcome sent: Receiving --Complete--> Draining (wait for Flush{seq} on all page channels)
///   AwaitHello --bad/unsupported--> Refuse sent, closed
///   (Shape negotiated: the first record after Welcome must be one StateSection, the guest's shape, handed to the
///   target before the page channels are read; anything else there, or a shape the target cannot take, fails it)
///   Receiving: StateSection* accumulated (at most 4 MiB each, and a receiver's total bound), Keepalive echoed,
///              MissingPages accumulated when post-copy was negotiated, any other record answered with Error
///   Draining (at most PeerTimeout) --state loaded--> Ready sent: AwaitCommit (at most PeerTimeout) --Commit--> start
///              guest, Resumed sent: Done
///   any state --Cancel/Error/EOF/timeout/bad record--> Failed: guest discarded (never started)
/// </code>
/// Page channels: PageBatch* / Keepalive* (pre-copy), then PageBatch*{FinalPass} (stop-and-copy; once one batch is
/// marked, every later one must be), then Flush{seq}; anything else (or any record after the final Flush that is not
/// a PageBatch of a following phase) is a protocol error.
///
/// <para><b>Versions.</b> A receiver accepts the current version and the previous one (Cloud Hypervisor's rule).
/// v1 is the first, so only 1 is accepted today. v1 is not released yet, and its wire format still changes without a
/// version bump (the FinalPass flag, the split of the capability bits); the first release freezes it. The version is the first thing after the magic in Hello and is
/// checked before any other field (a later version may lay Hello out differently), i.e. before any memory moves.
/// Welcome states the version both sides will speak.</para>
///
/// <para><b>Framing.</b> Every record is an 8-byte header then its payload; all integers are little-endian:</para>
/// <code>
///   0  u8  kind          RecordKind; 0 (Invalid) and unknown kinds are refused
///   1  u8  flags         per-kind flag bits; bits a kind does not define must be 0
///   2  u16 reserved      must be 0
///   4  u32 length        payload bytes; checked against the kind's own maximum BEFORE anything is read or allocated
/// </code>
/// <para>A reader holds a fixed scratch buffer (<see cref="ControlScratchBytes"/>) for control payloads; the only
/// allocation driven by the peer is a state section's data, made exactly after its bound (4 MiB) was checked.
/// Page data is never buffered: it is received straight into guest memory.</para>
///
/// <para><b>Payloads</b> (packed, no padding unless noted):</para>
/// <code>
///   Hello        magic "FERRYMIG" 8 | version u16 | vm uuid 16 (RFC 4122 byte order) | page size u32 (=4096)
///                | page channels u16 (1..16) | capabilities u64 | region count u16 (1..64)
///                | regions {gpa u64, size u64}* | token length u16 (&lt;=256) | token bytes
///   Welcome      version u16 | accepted capabilities u64
///   Refuse       reason: string
///   PageBatch    region u16 | run count u16 (1..512) | reserved u32 (0)
///                | runs {first page u64, count u32 (>0), encoding u8, reserved u8[3] (0)}*
///                | data of the Normal runs, in run order, 4096 bytes per page (&lt;= 256 pages)
///                | checksum u64   flags: bit0 DataChecksummed, bit1 FinalPass
///   StateSection name length u8 (1..64) | name (printable ASCII) | version u32 | data length u32 (&lt;= 4 MiB)
///                | data | checksum u64 (XxHash3 of every payload byte before it)
///   Flush        sequence u64
///   Complete     flush sequence u64                       flags: bit0 VerifyRequested
///   Ready        digest-us u32 | load-us u32 | flush-lag-us i32 | [digest 16]   flags: bit0 DigestPresent (digest iff set)
///                (flush-lag-us: last page channel's Flush arrival minus Complete's, destination clock; < 0 = pages were first)
///   Commit       (empty)
///   Resumed      resume-us u32
///   Cancel       reason: string
///   Error        code u16 | message: string
///   MissingPages region u16 | run count u16 (1..4096) | runs {first page u64, count u32 (>0)}*  (post-copy)
///   PopulatedPages  as MissingPages (0 runs only on the Last record)   flags: bit0 Last   (capability PopulatedMap, pure post-copy:
///                the pages the source holds data in, sent after the handshake; the destination faults only those in)
///   PostcopyDone faults u32 | latency p50 u32 | p99 u32 | max u32 (us) | blocked-us u64 | working set u64
///                (u64 max = unknown) | installed u64 | duplicates u64 | [digest 16]   flags: bit0 DigestPresent
///   Keepalive    sender timestamp u64 (sender's clock, opaque to the receiver; the destination echoes a source
///                Keepalive's value back at once, from which the source measures the control round trip)
///                On a page channel with LandedSync negotiated, the destination echoes the value on the control
///                channel after every record before it on that channel was applied (see "Landed sync").
///   PageRequest  region u16 | first page u64 | count u32 (1..512)  (post-copy only; a source that is not in
///                post-copy, or a range outside guest memory, is answered with Error)
///   string       length u16 (&lt;= 1024) | UTF-8 bytes (strictly valid)
/// </code>
///
/// <para><b>PageBatch checksum.</b> h = XxHash3-64 (seed 0) of the record header, the batch header and the runs;
/// when DataChecksummed is set, then for each Normal run in order h = XxHash3-64 of that run's data with seed h
/// (the u64 reinterpreted as a signed seed). One-shot hashes chained by seed, not one streaming hash: .NET's streaming
/// XxHash3 measured 1.06 GB/s on 4 KiB appends against 22-40 GB/s one-shot, ~10 µs per page of downtime in the final
/// pass. Data is only checksummed when flagged because during pre-copy the
/// guest keeps writing the very pages being sent straight from its memory: a page changed between hashing and
/// sending would fail a sound transfer, and it is re-sent anyway because the dirty log saw the write. So only
/// stop-and-copy batches (FinalPass) can carry DataChecksummed, and the engine sets it there only when asked
/// (MigrationOptions.ChecksumFinalPass): it would cover only the pages dirtied last, at ~0.7 µs per page of downtime
/// on a 2-core host (the final pass of a 200k pages/s hotset guest: downtime median 36.9 ms with it, 28.0 without).
/// TCP's own checksum covers the bytes in flight, and the header-and-runs checksum always guards the framing.
/// FinalPass tells the receiver the source is paused from this batch on, so background work there (prefaulting)
/// should get out of the way.
/// A receiver writes data into guest memory before the trailer is checked; a bad trailer fails the migration and the
/// half-built guest is discarded, so nothing unverified ever runs.</para>
///
/// <para><b>Post-copy</b> (capabilities Postcopy and UrgentChannel, both required: a receiver that cannot run a guest
/// before its memory arrived refuses the handshake). The switchover changes: the source pauses, sends Flush on every
/// page channel (everything of the pre-copy rounds, if any, lands first), then MissingPages records naming every page
/// the destination must not use as it holds it (never sent, or dirtied since it was), the state sections, and Complete
/// with flag Postcopy. A source that sent no page before the switchover (pure post-copy) sends no Flush then and puts
/// sequence 0 in Complete: the destination must have received no page batch at all, and every page is missing. With
/// PopulatedMap negotiated (optional; a pure post-copy source offers it) such a source first sends, right after the
/// handshake, PopulatedPages records naming the pages it holds data in, the last flagged Last; the destination reads
/// them (and nothing else but Keepalives, which it does not echo yet) before it prepares its memory. The
/// destination drains the Flushes, makes those pages missing, loads the state and answers Ready;
/// Commit and Resumed as in pre-copy, and the guest runs at the destination from Commit. From Complete on (while
/// the destination loads the state) the source may send the pages the guest will need first on the urgent channel,
/// as PageBatch records flagged Postcopy; the destination installs them once it has read Complete, and if no Commit
/// follows they go with the rest of the half-built guest. Then the source pushes every
/// missing page on the page channels as PageBatch records flagged Postcopy (and DataChecksummed: the source is paused
/// for good, so the data never changes), ended by Flush 2 on each; a page a guest thread waits for is asked for with
/// PageRequest on the control channel and sent at once on the urgent channel (a connection of the transport's own, so
/// it never waits behind bulk data). Postcopy batches may come on any page channel (ordering no longer matters: each page
/// has one content) and are installed only into pages still missing, after their checksum held. When the last
/// missing page is installed the destination sends PostcopyDone (its figures, and with verification the digest of
/// every page as installed plus the pages held at the start, against the source's of its frozen memory), and the source
/// closes.</para>
/// <para><b>Post-copy recovery.</b> A connection lost after Commit (reset, closed, or silent for the peer timeout) does
/// not end the migration: both sides pause (postcopy-paused), the destination's guest threads that need a missing page
/// wait, and the source keeps every page. The source then connects again (the operator's resume) with a Hello that
/// carries PostcopyResume and the same VM identity and layout; the destination answers Welcome, MissingPages for every
/// page it still lacks, ResumeReady{missing page count u64}, and asks again for the pages its threads wait for. Whatever
/// was in flight on the lost connection is simply sent again. A destination that sees no resume within its recovery
/// timeout gives the VM up as lost.</para>
///
/// <para><b>Landed sync</b> (capability LandedSync). A source's send returns once the bytes are in its socket buffer;
/// the destination may still be megabytes behind (two 4 MiB buffers per channel), landing pages into memory it has to
/// fault in first, at up to ~100 µs per page on the PVM host where this was found. A source that measured its rounds
/// by its sends converged on a bandwidth it never had, and its stop-and-copy pages queued behind the backlog: 20-45 ms
/// of a 50 ms downtime limit, with the pages themselves landing in under 10 ms. So at the end of every pre-copy pass
/// the source sends on each page channel a Keepalive whose value has bit 62 set (bit 63 clear: the value is not a
/// timestamp), the pass's round number in bits 8..47 and the channel index in bits 0..7, and waits until the
/// destination has echoed all of them on the control channel before it measures the round and decides. The round's
/// figures then count pages landed, and the pause finds the destination caught up. A destination whose memory includes
/// a file it must flush before its guest runs (a copied disk) flushes it before it echoes a marker
/// (IMigrationTarget.SyncLanded): the pass counts as landed once durable, and the flush inside the downtime has only the
/// last pass left (pure post-copy with a copied disk, 512 MiB guest: downtime 13.5-16.2 -> 4.4-5.1 ms). The wait is bounded by the peer
/// timeout; a destination that did not accept the capability is not waited for. Such a flush may take longer than the
/// peer timeout (storage slower than the network: the page cache holds up to the kernel's dirty limit, gigabytes on a
/// large host, and a 125 MB/s volume writes 4 GB in 32 s), so with capability LandedProgress the destination sends,
/// every third of the peer timeout while it flushes, the marker's value with bit 61 set, and the source's wait is
/// bounded by the peer timeout since the last of those instead: it fails a destination that says nothing about the
/// round, not one whose storage is slow. The rounds then measure the storage's rate, and the policy converges on it. (QEMU's multifd sync at each
/// iteration's end has the same purpose, without the destination's acknowledgement.)</para>
///
/// <para><b>Limits and why.</b> 64 regions: a PC layout has 2-3 RAM regions (below/above the PCI hole), and 64
/// leaves room for hotplugged memory. 16 page channels: more channels than cores gains nothing (QEMU's multifd
/// default is 2). 512 runs and 256 Normal pages per batch: 1 MiB of data per writev makes the per-syscall cost (a few
/// microseconds) about 1% of copying the megabyte, while the run table stays at 8 KiB, so the decoder's scratch is
/// small and fixed. Measured: 0.8 GiB/s on one channel and 1.05 GiB/s on two over loopback, on a 2-core box under
/// load average 12 (bench/Ferry.Bench/WireBenchmarks.cs). A 256-byte token fits any bearer token or HMAC. 1024-byte
/// strings fit any error message worth reading. 4 MiB state sections: one vCPU is ~11 KB, and no device we emulate
/// comes near; Firecracker caps a whole snapshot's state at 10 MB.</para>
/// </remarks>
public static class MigrationProtocol
{
    /// <summary>The version this build speaks.</summary>
    public const ushort CurrentVersion = 1;

    /// <summary>A landed-sync Keepalive's value: bit 62 set, bit 63 clear (see Landed sync above).</summary>
    public const ulong LandedMarkerTag = 1UL << 62;

    /// <summary>The bits of a Keepalive's value that tell a landed-sync marker (<see cref="LandedMarkerTag"/>) from a timestamp.</summary>
    public const ulong LandedMarkerMask = 3UL << 62;

    /// <summary>
    /// Set in a marker's value the destination sends while it is still making that marker's pass durable (capability
    /// LandedProgress); never in a marker itself (its round is bits 8..47).
    /// </summary>
    public const ulong LandedProgressFlag = 1UL << 61;

    /// <summary>Oldest version this build accepts (current and previous; v1 is the first).</summary>
    public const ushort OldestSupportedVersion = 1;

    /// <summary>Hello's first 8 bytes, "FERRYMIG".</summary>
    public static ReadOnlySpan<byte> Magic => "FERRYMIG"u8;

    /// <summary>Record header size in bytes.</summary>
    public const int HeaderSize = 8;

    /// <summary>The only page size v1 carries.</summary>
    public const int PageSize = 4096;

    /// <summary>
    /// log2 of the pages per shard chunk (2 MiB, the x86-64 huge page): page p of region r always travels on page
    /// channel ((p &gt;&gt; ChunkShift) + r) % N, which the receiver enforces. The destination's per-chunk memory
    /// handling (ReceivedPageMap, ChunkPrefaulter) uses the same chunks.
    /// </summary>
    public const int ChunkShift = 9;

    /// <summary>Most page channels one migration may open.</summary>
    public const int MaxPageChannels = 16;

    /// <summary>Most memory regions in a Hello.</summary>
    public const int MaxRegions = 64;

    /// <summary>Longest authorisation token.</summary>
    public const int MaxTokenLength = 256;

    /// <summary>Longest string (reason, error message) in bytes of UTF-8.</summary>
    public const int MaxStringLength = 1024;

    /// <summary>Most runs in one page batch.</summary>
    public const int MaxRunsPerBatch = 512;

    /// <summary>Most Normal (data-carrying) pages in one page batch: 1 MiB of data.</summary>
    public const int MaxNormalPagesPerBatch = 256;

    /// <summary>Most pages one PageRequest may ask for.</summary>
    public const int MaxRequestPages = 512;

    /// <summary>Longest state section name (see <see cref="Guest.StateSection.MaxNameLength"/>).</summary>
    public const int MaxSectionNameLength = Guest.StateSection.MaxNameLength;

    /// <summary>Largest state section data (see <see cref="Guest.StateSection.MaxDataLength"/>).</summary>
    public const int MaxSectionDataLength = Guest.StateSection.MaxDataLength;

    /// <summary>Size of the fixed buffer a reader uses for every control payload (state section data excepted).</summary>
    public const int ControlScratchBytes = 64 << 10;

    /// <summary>PageBatch header before the runs: region u16, run count u16, reserved u32.</summary>
    public const int BatchHeaderSize = 8;

    /// <summary>One run descriptor: first page u64, count u32, encoding u8, reserved u8[3].</summary>
    public const int RunSize = 16;

    /// <summary>Checksum trailer of a PageBatch or StateSection.</summary>
    public const int TrailerSize = 8;

    /// <summary>Hello bytes before the regions (magic .. region count).</summary>
    internal const int HelloFixedSize = 8 + 2 + 16 + 4 + 2 + 8 + 2;

    /// <summary>The required half of the capability bits (32-63): unknown ones make a receiver refuse.</summary>
    public const ProtocolCapabilities RequiredCapabilities = (ProtocolCapabilities)0xFFFF_FFFF_0000_0000UL;

    /// <summary>Capabilities a v1 receiver can honour.</summary>
    public const ProtocolCapabilities SupportedCapabilities = ProtocolCapabilities.Verify | ProtocolCapabilities.LandedSync
        | ProtocolCapabilities.LandedProgress | ProtocolCapabilities.VerifyPageHashes | ProtocolCapabilities.PopulatedMap | ProtocolCapabilities.Shape
        | ProtocolCapabilities.Postcopy | ProtocolCapabilities.UrgentChannel | ProtocolCapabilities.PostcopyResume;

    /// <summary>
    /// Most runs in one MissingPages record (48 KiB): a whole region missing is one run, and a hybrid's scattered
    /// dirty pages take a run each, so a record or two carry the usual map where a bitmap would take 32 KiB per GiB.
    /// </summary>
    public const int MaxMissingRuns = 4096;

    /// <summary>MissingPages payload before its runs: region u16, run count u16.</summary>
    internal const int MissingPagesFixedSize = 2 + 2;

    /// <summary>One run of a MissingPages record: first page u64, count u32.</summary>
    internal const int MissingRunSize = 8 + 4;

    /// <summary>PostcopyDone payload without its digest.</summary>
    internal const int PostcopyDoneFixedSize = (4 * 4) + 8 + 8 + 8 + 8;

    /// <summary>Largest payload of <paramref name="kind"/>, or -1 if the kind is not defined.</summary>
    /// <remarks>Hello's bound is 4 KiB though a v1 Hello is at most 1,324 bytes, so that a later version's larger
    /// Hello still reaches the version check and is refused with a clear message, not a length error.</remarks>
    public static long MaxPayloadLength(RecordKind kind) => kind switch
    {
        RecordKind.Hello => 4096,
        RecordKind.Welcome => 2 + 8,
        RecordKind.Refuse => 2 + MaxStringLength,
        RecordKind.PageBatch => BatchHeaderSize + (MaxRunsPerBatch * RunSize) + (MaxNormalPagesPerBatch * PageSize) + TrailerSize,
        RecordKind.StateSection => 1 + MaxSectionNameLength + 4 + 4 + (long)MaxSectionDataLength + TrailerSize,
        RecordKind.Flush => 8,
        RecordKind.Complete => 8,
        RecordKind.Ready => 4 + 4 + 4 + 16,
        RecordKind.Commit => 0,
        RecordKind.Resumed => 4,
        RecordKind.Cancel => 2 + MaxStringLength,
        RecordKind.Error => 2 + 2 + MaxStringLength,
        RecordKind.Keepalive => 8,
        RecordKind.PageRequest => 2 + 8 + 4,
        RecordKind.MissingPages => MissingPagesFixedSize + (MaxMissingRuns * MissingRunSize),
        RecordKind.PopulatedPages => MissingPagesFixedSize + (MaxMissingRuns * MissingRunSize),
        RecordKind.PostcopyDone => PostcopyDoneFixedSize + 16,
        RecordKind.ResumeReady => 8,
        _ => -1,
    };

    /// <summary>Flag bits <paramref name="kind"/> defines in the record header; any other bit is an error.</summary>
    public static byte DefinedFlags(RecordKind kind) => kind switch
    {
        RecordKind.PageBatch => (byte)(PageBatchFlags.DataChecksummed | PageBatchFlags.FinalPass | PageBatchFlags.Postcopy),
        RecordKind.Complete => (byte)(CompleteFlags.VerifyRequested | CompleteFlags.Postcopy),
        RecordKind.Ready => (byte)ReadyFlags.DigestPresent,
        RecordKind.PostcopyDone => (byte)ReadyFlags.DigestPresent,
        RecordKind.PopulatedPages => PopulatedPagesMessage.LastFlag,
        _ => 0,
    };

    /// <summary>
    /// Check a region layout from a Hello: 1..64 regions, each page aligned and non-empty, sorted by address,
    /// non-overlapping, no address overflow, and a total of at most <paramref name="maxTotalBytes"/>.
    /// Throws <see cref="MigrationProtocolException"/> naming the first offending region.
    /// </summary>
    public static ulong ValidateRegions(IReadOnlyList<(ulong GuestPhysicalAddress, ulong Size)> regions, ulong maxTotalBytes)
    {
        ArgumentNullException.ThrowIfNull(regions);
        if (regions.Count is 0 or > MaxRegions)
            throw new MigrationProtocolException($"Hello: {regions.Count} memory regions; 1..{MaxRegions} allowed");
        ulong total = 0;
        ulong previousEnd = 0;
        for (int i = 0; i < regions.Count; i++)
        {
            var (gpa, size) = regions[i];
            if (size == 0)
                throw new MigrationProtocolException($"Hello: region {i} is empty");
            if ((gpa | size) % PageSize != 0)
                throw new MigrationProtocolException($"Hello: region {i} (gpa 0x{gpa:x}, size 0x{size:x}) is not {PageSize}-byte aligned");
            if (gpa + size < gpa)
                throw new MigrationProtocolException($"Hello: region {i} (gpa 0x{gpa:x}, size 0x{size:x}) wraps the address space");
            if (i > 0 && gpa < previousEnd)
                throw new MigrationProtocolException($"Hello: region {i} at 0x{gpa:x} overlaps or precedes region {i - 1} ending at 0x{previousEnd:x} (regions must be sorted and disjoint)");
            previousEnd = gpa + size;
            total += size; // cannot overflow: disjoint sorted ranges inside 2^64 sum to at most 2^64 - 1
            if (total > maxTotalBytes)
                throw new MigrationProtocolException($"Hello: guest memory exceeds this receiver's limit of {maxTotalBytes} bytes (at region {i})");
        }
        return total;
    }

    /// <summary>
    /// The destination's verdict on a decoded Hello: layout within <paramref name="maxMemoryBytes"/>, token equal to
    /// <paramref name="expectedToken"/> (constant-time; empty = no token required), page channel count as connected,
    /// and no required capability outside <paramref name="supported"/> (optional ones outside it are just not accepted).
    /// On success the Welcome carries <see cref="HandshakeDecision.Capabilities"/>; otherwise send Refuse with
    /// <see cref="HandshakeDecision.Reason"/>.
    /// </summary>
    public static HandshakeDecision Evaluate(HelloMessage hello, ulong maxMemoryBytes, string? expectedToken, int connectedPageChannels,
        ProtocolCapabilities supported = SupportedCapabilities)
        => Evaluate(hello, maxMemoryBytes, System.Text.Encoding.UTF8.GetBytes(expectedToken ?? ""), connectedPageChannels, supported);

    /// <summary>As above, with the token as bytes (empty = no token required).</summary>
    public static HandshakeDecision Evaluate(
        HelloMessage hello,
        ulong maxMemoryBytes,
        ReadOnlySpan<byte> expectedToken,
        int connectedPageChannels,
        ProtocolCapabilities supported = SupportedCapabilities)
    {
        ArgumentNullException.ThrowIfNull(hello);
        if (!expectedToken.IsEmpty && !CryptographicOperations.FixedTimeEquals(hello.Token.Span, expectedToken))
            return HandshakeDecision.Refused("authorisation token rejected");
        if (hello.PageChannels != connectedPageChannels)
            return HandshakeDecision.Refused($"Hello announces {hello.PageChannels} page channels but {connectedPageChannels} connected");
        var unsupported = hello.Capabilities & ~supported & RequiredCapabilities;
        if (unsupported != 0)
            return HandshakeDecision.Refused($"capabilities not supported by this receiver: {Describe(unsupported)}");
        try
        {
            ValidateRegions(hello.Regions, maxMemoryBytes);
        }
        catch (MigrationProtocolException e)
        {
            return HandshakeDecision.Refused(e.Message);
        }
        return new HandshakeDecision(true, hello.Capabilities & supported, null);
    }

    /// <summary>Capability bits by name ("Postcopy, bit 40"), unknown bits by number.</summary>
    public static string Describe(ProtocolCapabilities capabilities)
    {
        var parts = new List<string>();
        for (int bit = 0; bit < 64; bit++)
        {
            var flag = (ProtocolCapabilities)(1UL << bit);
            if ((capabilities & flag) == 0) continue;
            parts.Add(Enum.IsDefined(flag) ? flag.ToString() : $"bit {bit}");
        }
        return parts.Count == 0 ? "none" : string.Join(", ", parts);
    }
}

/// <summary>The outcome of <see cref="MigrationProtocol.Evaluate"/>.</summary>
/// <param name="Accepted">True to answer Welcome.</param>
/// <param name="Capabilities">Capabilities both sides will use (Welcome's field).</param>
/// <param name="Reason">Why it was refused (Refuse's reason), or null.</param>
public readonly record struct HandshakeDecision(bool Accepted, ProtocolCapabilities Capabilities, string? Reason)
{
    internal static HandshakeDecision Refused(string reason) => new(false, ProtocolCapabilities.None, reason);
}

/// <summary>Record kinds. Numbers are the wire values and never change; 0 is reserved so zeroed bytes are invalid.</summary>
public enum RecordKind : byte
{
    /// <summary>Never valid on the wire.</summary>
    Invalid = 0,
    /// <summary>Source → destination, control, first record: identity, layout, capabilities, token.</summary>
    Hello = 1,
    /// <summary>Destination → source: handshake accepted.</summary>
    Welcome = 2,
    /// <summary>Destination → source: handshake refused, with the reason.</summary>
    Refuse = 3,
    /// <summary>Source → destination, page channels: a run table and page data for one region.</summary>
    PageBatch = 4,
    /// <summary>Source → destination, control: one named, versioned piece of device/CPU state.</summary>
    StateSection = 5,
    /// <summary>Source → destination, page channel: everything before this on this channel was sent.</summary>
    Flush = 6,
    /// <summary>Source → destination, control: all pages and state sent (switchover phase 1).</summary>
    Complete = 7,
    /// <summary>Destination → source: everything loaded, ready to run (phase 2).</summary>
    Ready = 8,
    /// <summary>Source → destination: the destination owns the VM now; the source never resumes.</summary>
    Commit = 9,
    /// <summary>Destination → source: the guest runs on the destination.</summary>
    Resumed = 10,
    /// <summary>Either way: the migration is cancelled, with a reason.</summary>
    Cancel = 11,
    /// <summary>Either way: the migration failed, with a code and a message.</summary>
    Error = 12,
    /// <summary>Either way: I am alive (lets a hung peer be detected in bounded time).</summary>
    Keepalive = 13,
    /// <summary>Destination → source, control: send these pages now (post-copy only; otherwise answered with Error).</summary>
    PageRequest = 14,
    /// <summary>Source → destination, control, post-copy switchover: a slice of the bitmap of pages still to come.</summary>
    MissingPages = 15,
    /// <summary>Destination → source, control: every missing page has landed; post-copy is over (its figures and digest).</summary>
    PostcopyDone = 16,
    /// <summary>Destination → source, control, resuming a paused post-copy: the MissingPages records before this are
    /// everything it still lacks; the push goes on.</summary>
    ResumeReady = 17,
    /// <summary>Source → destination, control, pure post-copy with PopulatedMap: a slice of the map of pages the source
    /// holds data in (flag Last on the final record), before the switchover.</summary>
    PopulatedPages = 18,
}

/// <summary>
/// Hello capability bits, in two halves. Bits 0-31 are <b>optional</b>: a receiver accepts the ones it honours and
/// leaves the others out of Welcome, and the source goes on without them (or gives up itself, as for Verify when the
/// user asked for it). Bits 32-63 are <b>required</b>: they change the stream itself, so a receiver refuses the
/// handshake if one is set that it does not honour. So a source may offer a new optional feature to an older
/// receiver (the way LandedSync came to v1), while a feature the receiver must understand is never silently dropped.
/// </summary>
[Flags]
public enum ProtocolCapabilities : ulong
{
    None = 0,
    /// <summary>Optional: digest all memory on both sides after the copy (XxHash128), reported in Ready.</summary>
    Verify = 1UL << 0,
    /// <summary>
    /// Optional: the destination echoes every Keepalive it reads on a page channel on the control channel, once each
    /// record before it on that channel has landed in guest memory: the source's round marker (see "Landed sync").
    /// </summary>
    LandedSync = 1UL << 1,
    /// <summary>
    /// Optional, with Verify, pre-copy: the digest in Ready is <c>PageHashDigest</c>'s (XxHash128 over the layout and
    /// each page's XxHash3, as post-copy's always is), which each side keeps as pages go out and land, instead of a
    /// read of all memory at the switchover while the guest stands paused (~40 ms per GiB on each side, measured).
    /// A receiver without it leaves it out of Welcome and both sides digest memory as before.
    /// </summary>
    VerifyPageHashes = 1UL << 2,
    /// <summary>
    /// Optional, pure post-copy: right after the handshake the source sends PopulatedPages records naming the pages it
    /// holds data in (the rest of its memory was never written: zero), the last flagged Last, and the destination
    /// faults only those in before it echoes the Keepalive that lets the source pause: the rest arrive as Zero runs,
    /// which need no memory. A receiver without it faults all of memory in, as before.
    /// </summary>
    PopulatedMap = 1UL << 3,
    /// <summary>
    /// Optional: right after the handshake the source sends one StateSection, its guest's shape
    /// (<see cref="Guest.IShapedMigrationSource"/>), before anything else on the control channel; the destination hands
    /// it to its target, which builds itself in that shape ahead of the switchover. Offered by a source whose guest has
    /// a shape to send.
    /// </summary>
    Shape = 1UL << 4,
    /// <summary>
    /// Optional, with LandedSync: while the destination makes a pass durable before echoing its marker (a copied disk's
    /// image flushed to storage slower than the network, which can take longer than the peer timeout), it says so
    /// every third of the peer timeout with the marker's value and <see cref="MigrationProtocol.LandedProgressFlag"/>
    /// set; the source waits for the echo as long as these come (see "Landed sync").
    /// </summary>
    LandedProgress = 1UL << 5,
    /// <summary>Required: post-copy (the destination runs first and faults missing pages in; see "Post-copy").</summary>
    Postcopy = 1UL << 32,
    /// <summary>Required: the transport's urgent channel carries faulted pages so they never queue behind bulk pages.</summary>
    UrgentChannel = 1UL << 33,
    /// <summary>
    /// Required: this Hello resumes a post-copy whose connection was lost (same VM identity and layout); the destination
    /// answers with what it still lacks (MissingPages, ResumeReady) instead of waiting for a switchover.
    /// </summary>
    PostcopyResume = 1UL << 37,
    /// <summary>Required, reserved: zstd-compressed pages.</summary>
    CompressionZstd = 1UL << 34,
    /// <summary>Required, reserved: LZ4-compressed pages.</summary>
    CompressionLz4 = 1UL << 35,
    /// <summary>Required, reserved: pages as XOR deltas against the last sent copy (QEMU XBZRLE).</summary>
    Delta = 1UL << 36,
}

/// <summary>How a run's pages travel.</summary>
public enum PageEncoding : byte
{
    /// <summary>Never valid.</summary>
    Invalid = 0,
    /// <summary>4096 bytes per page follow in the data section.</summary>
    Normal = 1,
    /// <summary>The pages are all zero; no data.</summary>
    Zero = 2,
    /// <summary>Reserved (Delta capability); refused in v1.</summary>
    Delta = 3,
    /// <summary>Reserved (compression capabilities); refused in v1.</summary>
    Compressed = 4,
}

/// <summary>PageBatch header flags.</summary>
[Flags]
public enum PageBatchFlags : byte
{
    None = 0,
    /// <summary>The trailer also covers the page data: sound only while the guest is paused, so only with
    /// <see cref="FinalPass"/>.</summary>
    DataChecksummed = 1,

    /// <summary>Sent in stop-and-copy: the source guest is paused from this batch on.</summary>
    FinalPass = 2,

    /// <summary>
    /// Sent after the post-copy switchover: the source is paused for good, so the data never changes again. Such a
    /// batch may come on any page channel or the urgent channel, and is installed only into pages still missing.
    /// </summary>
    Postcopy = 4,
}

/// <summary>Complete header flags.</summary>
[Flags]
public enum CompleteFlags : byte
{
    None = 0,
    /// <summary>The source wants the destination's memory digest in Ready (post-copy: in PostcopyDone).</summary>
    VerifyRequested = 1,

    /// <summary>Post-copy switchover: the pages of the MissingPages records come after the guest runs.</summary>
    Postcopy = 2,
}

/// <summary>Ready header flags.</summary>
[Flags]
public enum ReadyFlags : byte
{
    None = 0,
    /// <summary>Ready carries a 16-byte XxHash128 digest of all guest memory.</summary>
    DigestPresent = 1,
}

/// <summary>Error record codes. 0 is reserved.</summary>
public enum ProtocolErrorCode : ushort
{
    /// <summary>Never sent.</summary>
    None = 0,
    /// <summary>A bug or unexpected condition on the sender.</summary>
    Internal = 1,
    /// <summary>The peer's stream was malformed or out of order.</summary>
    Protocol = 2,
    /// <summary>A valid request this side cannot serve (e.g. PageRequest in v1).</summary>
    Unsupported = 3,
    /// <summary>Out of memory, disk or another resource.</summary>
    ResourceExhausted = 4,
    /// <summary>The destination could not load the guest state.</summary>
    StateLoadFailed = 5,
    /// <summary>The peer went quiet for longer than the timeout.</summary>
    Timeout = 6,
    /// <summary>The memory digests differ after verification.</summary>
    VerifyFailed = 7,
    /// <summary>Post-copy: the VM now exists only on the destination and it could not get a page (it is lost).</summary>
    VmLost = 8,
}
