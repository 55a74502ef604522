namespace Ferry.Migration.Guest;

/// <summary>
/// Reads a source region that is not mapped into this process (<see cref="MemoryRegion.Reader"/>): a copied disk image,
/// whose mapping would turn a read error (a bad sector, an NFS error, a file truncated under it) into a SIGBUS that
/// kills the whole source process, running guest and all. Read with <c>pread</c> instead, the same error is an
/// exception that fails the migration, and the guest runs on.
/// </summary>
/// <remarks>
/// <para><b>Threading</b>: called at once by every page sender (each for the pages of its own shard) and by the
/// source's digest thread (verification, the guest paused): implementations must be safe for concurrent reads.</para>
/// <para><b>Allocation</b>: called per batch on the senders' hot path; must allocate nothing.</para>
/// </remarks>
public interface IRegionReader
{
    /// <summary>
    /// Read pages [<paramref name="firstPage"/>, <paramref name="firstPage"/> + <paramref name="pages"/>) of the
    /// region into the <paramref name="pages"/> x <see cref="MemoryRegion.PageSize"/> bytes at
    /// <paramref name="destination"/>, all of them. A read that fails, or ends short of them, throws
    /// <see cref="IOException"/> saying what could not be read, where, and why.
    /// </summary>
    void Read(ulong firstPage, int pages, nint destination);
}
