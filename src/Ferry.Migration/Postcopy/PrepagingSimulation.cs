using Ferry.Migration.InProcess;
using Ferry.Migration.Memory;
using Ferry.Migration.Protocol;

namespace Ferry.Migration.Postcopy;

/// <summary>Which pages the simulated guest writes (as the in-process guest's writers do).</summary>
internal enum SimulatedPattern
{
    /// <summary>90 % of the writes to the first 10 % of memory, the rest anywhere else, uniformly.</summary>
    Hotset,

    /// <summary>Each writer walks its own pages (every writers-th one) upwards, side by side from where they were at the
    /// pause.</summary>
    Sequential,
}

/// <summary>What a simulated post-copy cost in faults.</summary>
internal readonly record struct SimulatedPostcopy(long Faults, long WorkingSet, double Milliseconds)
{
    /// <summary>Pages fetched by fault over the pages written.</summary>
    public double FaultedShare => WorkingSet == 0 ? 0 : (double)Faults / WorkingSet;
}

/// <summary>
/// Post-copy's push order judged without a network or a clock: a <see cref="Prepager"/> hands out batches at a fixed
/// page rate while simulated writers touch pages at theirs; a write to a page not pushed yet is a fault (the writer
/// waits a fixed latency, the page is claimed for the urgent channel, and the push loses some throughput to it). The
/// same seed gives the same writes to every order, so orders compare exactly; on a shared 2-core host the loopback
/// benchmark's faulted share varies by half from run to run. Defaults are this host's measurements
/// (docs/BENCH-POSTCOPY.md): 1 GiB pushed at ~600k pages/s, 20k writes/s by 2 writers, ~150 µs per fault, and ~7k
/// faults/s cutting the push to ~160k pages/s (about 60 pages of push per fault).
/// </summary>
internal static class PrepagingSimulation
{
    /// <param name="strategy">The order under test.</param>
    /// <param name="pattern">The writes.</param>
    /// <param name="seed">Picks the writes (and the sequential writers' starting page).</param>
    /// <param name="pages">Guest memory in pages, one region.</param>
    /// <param name="pushPagesPerSecond">The push's rate with no fault to serve.</param>
    /// <param name="writesPerSecond">Writes by all writers together while none waits.</param>
    /// <param name="writers">Writer threads; each waits alone for its faults.</param>
    /// <param name="faultSeconds">How long a faulting writer waits.</param>
    /// <param name="pushPagesLostPerFault">Pages the push does not send for each fault served.</param>
    /// <param name="hotStart">Where the hot tenth begins, as a share of memory (0: the first page, as in the in-process
    /// guest).</param>
    /// <param name="inFlightSeconds">How long a pushed page takes to land (the page channels' socket buffers): a write
    /// to a page on its way faults too, and waits for whichever comes first, it or the urgent copy.</param>
    public static SimulatedPostcopy Run(PrepagingStrategy strategy, SimulatedPattern pattern, ulong seed,
        ulong pages = 1UL << 18, double pushPagesPerSecond = 600_000, double writesPerSecond = 20_000, int writers = 2,
        double faultSeconds = 150e-6, double pushPagesLostPerFault = 60, double hotStart = 0, double inFlightSeconds = 2e-3)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(pages, 1024UL);
        ArgumentOutOfRangeException.ThrowIfLessThan(writers, 1);
        var toSend = new DirtyBitmap(pages);
        toSend.SetAll();
        var prepager = new Prepager(toSend, [pages], strategy);
        var written = new DirtyBitmap(pages);
        var random = WriterState.Seeded(seed, 0); // the same writes for every order
        ulong hot = pages / 10;
        ulong hotFirst = Math.Min(pages - hot, (ulong)(pages * hotStart));
        var cursor = new ulong[writers];
        var next = new double[writers];
        double interval = writers / writesPerSecond;
        // Sequential writers walk side by side, as the in-process guest's do (same rate, same start).
        ulong start = random.NextBelow(pages / (ulong)writers);
        for (int w = 0; w < writers; w++)
        {
            cursor[w] = start;
            next[w] = interval * (w + 1) / writers;
        }
        var runs = new DirtyRun[MigrationProtocol.MaxRunsPerBatch];
        var landsAt = new double[pages]; // when a pushed page lands
        double push = 0;
        long faults = 0, workingSet = 0;
        while (prepager.Remaining > 0)
        {
            int w = 0;
            for (int i = 1; i < writers; i++) if (next[i] < next[w]) w = i;
            if (push <= next[w])
            {
                int n = prepager.Take(runs, MigrationProtocol.MaxNormalPagesPerBatch, out _);
                ulong taken = 0;
                for (int i = 0; i < n; i++) taken += runs[i].Length;
                push += Math.Max(taken, 1) / pushPagesPerSecond;
                for (int i = 0; i < n; i++) Array.Fill(landsAt, push + inFlightSeconds, (int)runs[i].Start, (int)runs[i].Length);
                continue;
            }
            ulong page = pattern switch
            {
                SimulatedPattern.Hotset => (hotFirst + (random.NextDouble() < 0.9 ? random.NextBelow(hot) : hot + random.NextBelow(pages - hot))) % pages,
                _ => ((cursor[w]++ % (pages / (ulong)writers)) * (ulong)writers) + (ulong)w,
            };
            if (written.TestAndSetAtomic(page)) workingSet++; // newly set
            double now = next[w];
            if (toSend.TestAtomic(page) && prepager.Claim(page))
            {
                faults++;
                prepager.OnFault(page);
                next[w] += faultSeconds;
                push += pushPagesLostPerFault / pushPagesPerSecond;
            }
            else if (landsAt[page] > now)
            {
                // Pushed, not landed: the destination asks for it all the same (the source sends it again).
                faults++;
                prepager.OnFault(page);
                next[w] += Math.Min(faultSeconds, landsAt[page] - now);
                push += pushPagesLostPerFault / pushPagesPerSecond;
            }
            next[w] += interval;
        }
        return new SimulatedPostcopy(faults, workingSet, push * 1000);
    }
}
