using System.Runtime.CompilerServices;
using Ferry.Machine.Memory;

namespace Ferry.Machine.Board;

/// <summary>
/// The board's physical address map: memory regions that harts reach with host pointers (RAM, boot ROM), and device
/// windows reached through <see cref="IMmioDevice"/>. Harts ask it only on their slow path (a TLB miss or an MMIO
/// access), so a short linear search is enough; the tables are fixed once the board is built.
/// </summary>
public sealed class AddressSpace
{
    private MemoryRegion[] regions = [];
    private Window[] windows = [];
    private int frames;

    private readonly record struct Window(ulong Base, ulong Size, IMmioDevice Device);

    /// <summary>Total frames across all memory regions (the size of per-frame tables).</summary>
    public int FrameCount => frames;

    public IReadOnlyList<MemoryRegion> Regions => regions;

    public void AddRegion(MemoryRegion region)
    {
        CheckFree(region.Base, region.Size);
        region.FirstFrame = frames;
        frames = checked(frames + region.PageCount);
        regions = [.. regions, region];
    }

    public void AddDevice(ulong windowBase, ulong size, IMmioDevice device)
    {
        CheckFree(windowBase, size);
        windows = [.. windows, new Window(windowBase, size, device)];
    }

    private void CheckFree(ulong start, ulong size)
    {
        foreach (MemoryRegion r in regions)
        {
            if (start < r.Base + r.Size && r.Base < start + size) throw new ArgumentException($"0x{start:x} overlaps a region");
        }
        foreach (Window w in windows)
        {
            if (start < w.Base + w.Size && w.Base < start + size) throw new ArgumentException($"0x{start:x} overlaps a device");
        }
    }

    /// <summary>The memory region holding [<paramref name="pa"/>, +<paramref name="length"/>), or null.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public MemoryRegion? RegionAt(ulong pa, ulong length = 1)
    {
        foreach (MemoryRegion r in regions)
        {
            if (r.Contains(pa, length)) return r;
        }
        return null;
    }

    /// <summary>The region owning global frame <paramref name="frame"/>.</summary>
    public MemoryRegion RegionOfFrame(int frame)
    {
        foreach (MemoryRegion r in regions)
        {
            if (frame >= r.FirstFrame && frame < r.FirstFrame + r.PageCount) return r;
        }
        throw new ArgumentOutOfRangeException(nameof(frame));
    }

    /// <summary>
    /// A device read. False (an access fault for the hart) when no device is there, or the access is not naturally
    /// aligned or crosses the window's end.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public bool Read(ulong pa, int size, out ulong value)
    {
        foreach (Window w in windows)
        {
            if (pa - w.Base < w.Size)
            {
                value = 0;
                if ((pa & (ulong)(size - 1)) != 0 || pa - w.Base + (ulong)size > w.Size) return false;
                value = w.Device.Read(pa - w.Base, size);
                return true;
            }
        }
        value = 0;
        return false;
    }

    /// <summary>A device write; false as for <see cref="Read"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public bool Write(ulong pa, int size, ulong value)
    {
        foreach (Window w in windows)
        {
            if (pa - w.Base < w.Size)
            {
                if ((pa & (ulong)(size - 1)) != 0 || pa - w.Base + (ulong)size > w.Size) return false;
                w.Device.Write(pa - w.Base, size, value);
                return true;
            }
        }
        return false;
    }
}
