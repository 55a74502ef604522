namespace Ferry.Machine.Memory;

/// <summary>
/// Guest memory that harts reach through their TLBs with a host pointer: RAM (<see cref="GuestRam"/>) or the boot ROM.
/// Frames (4 KiB pages) of all regions are numbered in one space (<see cref="FirstFrame"/>), so a hart can keep one
/// table of decoded code pages for all of them.
/// </summary>
public abstract unsafe class MemoryRegion
{
    /// <summary>The guest page size; Sv39/Sv48 leaf pages and the dirty log both work in it.</summary>
    public const ulong PageSize = 4096;

    public const int PageShift = 12;

    protected MemoryRegion(ulong guestBase, ulong size)
    {
        if ((guestBase & (PageSize - 1)) != 0 || size == 0 || (size & (PageSize - 1)) != 0)
        {
            throw new ArgumentException($"region 0x{guestBase:x}+0x{size:x} is not page aligned");
        }
        Base = guestBase;
        Size = size;
    }

    /// <summary>Guest-physical address of the first byte.</summary>
    public ulong Base { get; }

    /// <summary>Length in bytes, a multiple of <see cref="PageSize"/>.</summary>
    public ulong Size { get; }

    /// <summary>Number of 4 KiB pages.</summary>
    public int PageCount => (int)(Size >> PageShift);

    /// <summary>Host address of the first byte; valid until the region is disposed.</summary>
    public abstract byte* Host { get; }

    /// <summary>False for ROM: stores take the slow path and fault as an access fault.</summary>
    public abstract bool Writable { get; }

    /// <summary>The global frame number of this region's first page (set once by the address space).</summary>
    public int FirstFrame { get; internal set; }

    /// <summary>True if [<paramref name="gpa"/>, +<paramref name="length"/>) lies inside the region.</summary>
    public bool Contains(ulong gpa, ulong length) => gpa >= Base && length <= Size && gpa - Base <= Size - length;
}
