using Ferry.Migration.Postcopy;
using Ferry.Migration.Protocol;

namespace Ferry.Migration.Tests.Postcopy;

/// <summary>
/// The source sends the guest's first pages on the urgent channel right after Complete, so the urgent channel's thread
/// may read them before the control thread has read Complete and attached the guest's memory.
/// </summary>
public class EarlyPagesTests
{
    // A guest whose every page is missing (regions only counted: nothing is read from host memory).
    private static PostcopyIncoming Begun() => FaultAroundTests.Make().Incoming;

    /// <summary>Run <paramref name="install"/> on a thread of its own, as the urgent channel's receiver would.</summary>
    private static (Thread Thread, Func<Exception?> Error) Installing(Action install)
    {
        Exception? error = null;
        var thread = new Thread(() =>
        {
            try
            {
                install();
            }
            catch (Exception e)
            {
                error = e;
            }
        }) { IsBackground = true };
        thread.Start();
        return (thread, () => error);
    }

    [Fact]
    public void PagesThatArriveBeforeTheMemoryIsAttachedWaitForItAndAreInstalled()
    {
        var incoming = Begun();
        var (thread, error) = Installing(() => incoming.InstallZero(0, 2, 3));
        Assert.False(thread.Join(TimeSpan.FromMilliseconds(100)), "installed with nothing attached");
        var memory = new RecordingMemory();
        incoming.Attach(memory);
        Assert.True(thread.Join(TimeSpan.FromSeconds(10)));
        Assert.Null(error());
        Assert.Equal([(2UL, 3)], memory.Installs);
        Assert.Equal((long)FaultAroundTests.Pages - 3, incoming.Missing);
    }

    [Fact]
    public void AMigrationThatFailsBeforeTheSwitchoverReleasesAWaitingInstallWithAnError()
    {
        var incoming = Begun();
        var (thread, error) = Installing(() => incoming.InstallZero(0, 0, 1));
        Assert.False(thread.Join(TimeSpan.FromMilliseconds(100)));
        incoming.Abandon();
        Assert.True(thread.Join(TimeSpan.FromSeconds(10)));
        var e = Assert.IsType<MigrationProtocolException>(error());
        Assert.Equal("post-copy pages arrived, and no switchover to post-copy followed", e.Message);
    }
}
