using System.Diagnostics;
using Ferry.Migration.Precopy;

namespace Ferry.Migration.Tests.Precopy;

/// <summary>The switchover warm-ups run in every migration, beside the other side's and the guest's threads.</summary>
/// <remarks>With the process to itself: its forced collections would stall other tests' timing.</remarks>
[Collection(MigrationCollection.Name)]
public class SwitchoverWarmupTests
{
    /// <summary>
    /// The checksummed dry run hands its scratch pages to the writer and reader as a raw address. Found in the post-copy
    /// benchmark (many migrations in one process): migrations failed with "checksum mismatch" on the warm-up's channel.
    /// The scratch was a pinned array the method no longer referenced once it had taken its address: optimised code let
    /// the collector free it mid-run, and other pinned allocations took its place. Here full collections and pinned
    /// allocations filled with junk run beside the dry run (with the array: 4 failures in 4 runs).
    /// </summary>
    [Fact]
    public void TheChecksummedDryRunSurvivesCollectionsBesideIt()
    {
        // Optimised code first, as the ferry command runs it (it compiles methods with loops optimised at once): called
        // more than 30 times, the runtime re-compiles it optimised in the background after its 100 ms tiering delay.
        for (int i = 0; i < 100; i++) SwitchoverWarmup.DryRunChecksummedBatches();
        Thread.Sleep(1000);
        using var stop = new CancellationTokenSource();
        var churn = new Thread(() =>
        {
            var keep = new byte[64][];
            while (!stop.IsCancellationRequested)
            {
                GC.Collect(2, GCCollectionMode.Forced, blocking: true);
                // Pinned arrays of the scratch's size, so that freed pinned memory is taken again and overwritten.
                for (int i = 0; i < keep.Length; i++)
                {
                    keep[i] = GC.AllocateArray<byte>(4 * 4096, pinned: true);
                    keep[i].AsSpan().Fill(0xA5);
                }
            }
        }) { IsBackground = true };
        churn.Start();
        try
        {
            var time = Stopwatch.StartNew();
            while (time.Elapsed < TimeSpan.FromSeconds(3)) SwitchoverWarmup.DryRunChecksummedBatches();
        }
        finally
        {
            stop.Cancel();
            churn.Join();
        }
    }
}
