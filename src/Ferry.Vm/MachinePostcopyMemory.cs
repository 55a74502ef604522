using Ferry.Migration.Guest;
using GuestRam = Ferry.Machine.Memory.GuestRam;

namespace Ferry.Vm;

/// <summary>
/// A migrating <see cref="Machine.VirtMachine"/>'s RAM during post-copy: pages are installed through
/// <see cref="GuestRam.InstallPage"/>, which publishes each before the harts' and devices' slow paths see it present
/// and wakes the threads waiting for it. No kernel in the loop: a missing page is caught where the machine already
/// takes its slow path (TLB fill, fetch fill, page walk, device access), which a fault round trip through
/// userfaultfd could not beat.
/// </summary>
internal sealed class MachinePostcopyMemory(GuestRam ram) : IPostcopyMemory
{
    public unsafe void Install(int region, ulong firstPage, int count, nint source)
    {
        for (int i = 0; i < count; i++)
        {
            // SAFETY: the engine passes count whole pages of its staging buffer, valid for the call.
            ram.InstallPage(firstPage + (ulong)i, new ReadOnlySpan<byte>((void*)(source + (i << GuestRam.PageShift)), (int)GuestRam.PageSize));
        }
    }

    /// <inheritdoc/>
    /// <remarks>RAM only (region 0): a copied disk is never missing.</remarks>
    public unsafe nint ReceiveInPlaceAddress(int region) => region == 0 ? (nint)ram.Host : 0;

    public void PublishReceived(int region, ulong firstPage, int count)
    {
        if (region != 0) throw new ArgumentOutOfRangeException(nameof(region), region, "only RAM is received in place");
        for (int i = 0; i < count; i++) ram.PublishWrittenPage(firstPage + (ulong)i);
    }

    public void InstallZero(int region, ulong firstPage, ulong count)
    {
        for (ulong i = 0; i < count; i++) ram.InstallZeroPage(firstPage + i);
    }

    public void InstallFreshZero(int region, ulong firstPage, ulong count)
    {
        for (ulong i = 0; i < count; i++) ram.InstallZeroPage(firstPage + i, fresh: true);
    }

    public long BlockedTicks => ram.BlockedTicks;

    public long WorkingSetPages => ram.WorkingSetPages;

    public IReadOnlyList<(int Region, ulong Page)> AwaitedPages() => [.. ram.AwaitedPostcopyPages().Select(p => (0, (ulong)p))];

    public void Abort(string reason) => ram.AbortPostcopy(new IOException(reason));

    public void Dispose()
    {
        // Every page is in when the engine ends post-copy this way (an abort went through Abort first).
        if (ram.MissingPages == 0) ram.EndPostcopy();
    }
}
