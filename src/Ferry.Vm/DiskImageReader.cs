using Ferry.Machine.Virtio;
using Ferry.Migration.Guest;

namespace Ferry.Vm;

/// <summary>A copied disk's region as the source reads it: page p is the image's block p (both 4 KiB), read with <c>pread</c>.</summary>
internal sealed class DiskImageReader(VirtioBlk disk) : IRegionReader
{
    public void Read(ulong firstPage, int pages, nint destination) => disk.ReadBlocks(firstPage, pages, destination);
}
