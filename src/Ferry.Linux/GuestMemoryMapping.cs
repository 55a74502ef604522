using System.Runtime.InteropServices;

namespace Ferry.Linux;

/// <summary>
/// Owns one anonymous private read/write mapping made with <c>MAP_NORESERVE</c>, so a 16 GiB guest is only an
/// address-space reservation until its pages are touched (untouched pages cost no RAM and read as zeros).
/// The handle is the mapping's base address; releasing it calls <c>munmap</c>.
/// </summary>
/// <remarks>
/// Guest memory is handed out as raw addresses (the engine sends straight from it), which the SafeHandle cannot
/// ref-count: the owner must stop every user of the memory before <see cref="SafeHandle.Dispose()"/>.
/// </remarks>
public sealed class GuestMemoryMapping : SafeHandle
{
    /// <summary>An empty (invalid) handle; use <see cref="Create"/>. Public because SafeHandle types need it (CA1419).</summary>
    public GuestMemoryMapping()
        : base(invalidHandleValue: 0, ownsHandle: true)
    {
    }

    /// <summary>Length of the mapping in bytes.</summary>
    public ulong Length { get; private set; }

    /// <summary>Base address of the mapping.</summary>
    public nint Address => handle;

    /// <inheritdoc/>
    public override bool IsInvalid => handle == 0 || handle == Libc.MAP_FAILED;

    /// <summary>
    /// Reserve <paramref name="length"/> bytes (a positive multiple of the 4 KiB page) of zero-filled memory.
    /// Throws <see cref="LinuxException"/> naming <c>mmap</c> if the kernel refuses.
    /// </summary>
    public static GuestMemoryMapping Create(ulong length)
    {
        if (length == 0 || (length & 4095) != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(length), length, "must be a positive multiple of 4096");
        }

        var mapping = new GuestMemoryMapping();
        nint address = Libc.mmap(
            0,
            (nuint)length,
            Libc.PROT_READ | Libc.PROT_WRITE,
            Libc.MAP_PRIVATE | Libc.MAP_ANONYMOUS | Libc.MAP_NORESERVE,
            -1,
            0);
        if (address == Libc.MAP_FAILED)
        {
            throw Libc.LastError("mmap");
        }

        mapping.SetHandle(address);
        mapping.Length = length;
        return mapping;
    }

    /// <summary>
    /// Give pages back to the kernel with <c>MADV_DONTNEED</c>: they read as zeros afterwards and stop costing RAM.
    /// <paramref name="offset"/> and <paramref name="length"/> are page aligned and inside the mapping.
    /// </summary>
    public void DropPages(ulong offset, ulong length)
    {
        if ((offset & 4095) != 0 || (length & 4095) != 0 || offset > Length || length > Length - offset)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), $"range {offset}+{length} not page aligned inside {Length}");
        }

        ObjectDisposedException.ThrowIf(IsClosed, this);
        if (Libc.madvise(handle + (nint)offset, (nuint)length, Libc.MADV_DONTNEED) != 0)
        {
            throw Libc.LastError("madvise");
        }
    }

    /// <summary>
    /// Fault the whole mapping in, writable, with <c>MADV_POPULATE_WRITE</c> before it is filled: on a VM host (this
    /// one runs in Firecracker) a first-touch fault costs tens of microseconds, and populating in one call measured
    /// 3x faster than touching page by page (0.24 vs 0.08 GB/s, loaded 2-core box). Returns false on kernels
    /// older than 5.14, where touching does the same job more slowly.
    /// </summary>
    public bool Populate()
    {
        ObjectDisposedException.ThrowIf(IsClosed, this);
        if (Libc.madvise(handle, (nuint)Length, Libc.MADV_POPULATE_WRITE) == 0)
        {
            return true;
        }

        var error = Libc.LastError("madvise");
        return error.Errno == Libc.EINVAL ? false : throw error;
    }

    /// <inheritdoc/>
    protected override bool ReleaseHandle() => Libc.munmap(handle, (nuint)Length) == 0;
}
