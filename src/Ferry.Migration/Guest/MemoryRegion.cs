namespace Ferry.Migration.Guest;

/// <summary>
/// One contiguous range of guest-physical memory and where it lives in this process.
/// Pages are 4 KiB (<see cref="PageSize"/>); <see cref="Size"/> is a multiple of it.
/// </summary>
/// <param name="GuestPhysicalAddress">Guest-physical base, page aligned.</param>
/// <param name="Size">Length in bytes, a multiple of <see cref="PageSize"/>.</param>
/// <param name="HostAddress">Base of the host mapping (mmap'd, native; never moved by the GC); 0 for a region read
/// through its <see cref="Reader"/>.</param>
public readonly record struct MemoryRegion(ulong GuestPhysicalAddress, ulong Size, nint HostAddress)
{
    /// <summary>Guest page size: the unit of the dirty log and of the stream.</summary>
    public const int PageSize = 4096;

    /// <summary>log2 of <see cref="PageSize"/>.</summary>
    public const int PageShift = 12;

    /// <summary>
    /// The memory is a <c>MAP_SHARED</c> mapping of a file (a disk image copied as a region), not private anonymous
    /// memory. <c>MADV_DONTNEED</c> does not zero such memory (its pages read back from the file), so the destination
    /// zeroes it with <c>MADV_REMOVE</c> (a hole punched in the file) or by writing; and it never faults such memory in
    /// ahead of the data (<see cref="Precopy.ChunkPrefaulter"/>), which would allocate every hole of the file.
    /// </summary>
    public bool FileBacked { get; init; }

    /// <summary>
    /// Every page of the region must be on the destination before its guest runs there, because nothing there could
    /// catch a touch of a missing one (a copied disk image, which the guest's disk device reads from the file). A
    /// migration that ends in post-copy moves such a region with its pre-copy rounds (pure post-copy in rounds of such
    /// regions alone), and its switchover sends what the guest dirtied of it since, with the state, instead of naming
    /// it missing. Set by the source; not part of the stream.
    /// </summary>
    public bool PrecopyOnly { get; init; }

    /// <summary>
    /// Where the source reads a region that is not mapped here (its <see cref="HostAddress"/> is 0), or null for one
    /// that is. Only for <see cref="PrecopyOnly"/> regions: post-copy serves the destination's faults straight from
    /// memory. Set by the source; not part of the stream.
    /// </summary>
    public IRegionReader? Reader { get; init; }

    /// <summary>Number of pages in the region.</summary>
    public ulong Pages => Size >> PageShift;

    /// <summary>Host address of page <paramref name="page"/> (0-based within this region); not for a region with a <see cref="Reader"/>.</summary>
    public nint PageAddress(ulong page) => HostAddress + (nint)(page << PageShift);

    /// <summary>
    /// Read pages [<paramref name="firstPage"/>, <paramref name="firstPage"/> + <paramref name="pages"/>) through the
    /// <see cref="Reader"/> into <paramref name="destination"/>; a read error is a <see cref="RegionReadException"/>.
    /// </summary>
    internal void Read(ulong firstPage, int pages, nint destination)
    {
        try
        {
            Reader!.Read(firstPage, pages, destination);
        }
        catch (IOException e)
        {
            throw new RegionReadException(e);
        }
    }
}
