using Ferry.Migration.InProcess;

namespace Ferry.Migration.Tests.Precopy;

internal static class DestinationChecks
{
    /// <summary>
    /// The started destination guest runs its workload on the migrated memory, and every page agrees with the
    /// workload state that travelled in the "workload" section (QEMU's migration-test idea).
    /// </summary>
    public static void AssertSelfCheckAfterStart(RecordingTarget target)
    {
        var inner = Assert.IsType<InProcessTarget>(target.Inner);
        var guest = inner.Guest;
        Assert.NotNull(guest);
        Assert.True(guest.IsRunning, "destination guest is not running after Start");
        guest.Pause();
        try
        {
            var bad = guest.SelfCheck();
            Assert.True(bad is null, $"destination self-check failed: {bad}");
        }
        finally
        {
            guest.Resume();
        }
    }
}
