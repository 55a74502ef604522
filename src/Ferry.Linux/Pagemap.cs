using System.Numerics;
using System.Runtime.Intrinsics;
using Microsoft.Win32.SafeHandles;

namespace Ferry.Linux;

/// <summary>
/// Reads this process's page table through <c>/proc/self/pagemap</c> (Documentation/admin-guide/mm/pagemap.rst):
/// one little-endian u64 per 4 KiB virtual page, bit 63 "present in RAM", bit 62 "swapped" (also set for migration
/// entries while the kernel moves a page). Only those two bits are used, so no privilege is needed (PFNs, which
/// need CAP_SYS_ADMIN, read as zero otherwise and are ignored).
/// </summary>
/// <remarks>
/// <para>A page with neither bit set has no page behind it: never touched, or dropped with <c>MADV_DONTNEED</c>.
/// For <b>private anonymous</b> memory (what <see cref="GuestMemoryMapping"/> maps) such a page reads as zeros, so a
/// caller may treat it as a zero page without touching it. That conclusion is wrong for shared or file-backed
/// mappings (the data lives in the page cache or shmem and is simply not mapped yet): do not use this for them.</para>
/// <para>The answer is a snapshot: a page touched after its entry was read is not reported (the caller's dirty log
/// must cover that). A page read-faulted on a kernel that maps the shared zero page is reported present: populated
/// means "may hold data", a superset of the pages that do.</para>
/// <para>Not thread safe: one reader per thread (it owns a reusable buffer).</para>
/// </remarks>
public sealed class Pagemap : IDisposable
{
    /// <summary>pagemap entry bit 63: the page is present in RAM.</summary>
    public const ulong PM_PRESENT = 1UL << 63;

    /// <summary>pagemap entry bit 62: the page is swapped out (or a migration entry).</summary>
    public const ulong PM_SWAP = 1UL << 62;

    /// <summary>
    /// Entries per pread: 8 Ki x 8 bytes = 64 KiB covering 32 MiB of address space, so 4 GiB is 128 calls (an 8 MiB
    /// buffer measured no faster than 512 KiB). Below the runtime's large-object threshold (85,000 bytes): a reader
    /// opened right after a post-copy resume (the source's digest) allocated 512 KiB there, and that set off a
    /// background collection in the guest's first milliseconds on the destination, in the same process in the bench.
    /// </summary>
    private const int EntriesPerRead = 8 * 1024;

    private const int PageShift = 12;

    private readonly SafeFileHandle _file;
    private readonly ulong[] _entries = new ulong[EntriesPerRead];

    private Pagemap(SafeFileHandle file) => _file = file;

    /// <summary>Open <c>/proc/self/pagemap</c>. Throws <see cref="IOException"/> (or a subclass) if it cannot.</summary>
    public static Pagemap OpenSelf() => new(File.OpenHandle("/proc/self/pagemap", FileMode.Open, FileAccess.Read));

    /// <summary>
    /// OR into <paramref name="bitmap"/> bit <c>firstBit + i</c> for every page <c>i</c> of
    /// [<paramref name="address"/>, <paramref name="address"/> + <paramref name="length"/>) that is present or swapped
    /// (word <c>b / 64</c>, bit <c>b % 64</c>). Bits of other pages are left as they are. Returns how many pages were
    /// reported. <paramref name="address"/> and <paramref name="length"/> are 4 KiB aligned; the range must be mapped
    /// (an unmapped hole reads as not populated).
    /// </summary>
    public ulong OrPopulated(nint address, ulong length, Span<ulong> bitmap, ulong firstBit)
    {
        ObjectDisposedException.ThrowIf(_file.IsClosed, this);
        if ((address & 4095) != 0 || (length & 4095) != 0)
        {
            throw new ArgumentException($"range 0x{address:x}+{length} is not page aligned");
        }

        ulong pages = length >> PageShift;
        if (pages > 0 && (firstBit + pages - 1) / 64 >= (ulong)bitmap.Length)
        {
            throw new ArgumentException($"bitmap of {bitmap.Length} words cannot hold bits {firstBit}..{firstBit + pages - 1}", nameof(bitmap));
        }

        ulong firstPage = (ulong)address >> PageShift;
        ulong done = 0;
        ulong populated = 0;
        Span<byte> raw = System.Runtime.InteropServices.MemoryMarshal.AsBytes(_entries.AsSpan());
        while (done < pages)
        {
            int count = (int)Math.Min(pages - done, EntriesPerRead);
            ReadFully(raw[..(count * 8)], (long)((firstPage + done) * 8));
            populated += Pack(_entries.AsSpan(0, count), bitmap, firstBit + done);
            done += (ulong)count;
        }

        return populated;
    }

    /// <inheritdoc/>
    public void Dispose() => _file.Dispose();

    private void ReadFully(Span<byte> buffer, long offset)
    {
        while (!buffer.IsEmpty)
        {
            // RandomAccess.Read is pread(2): the file position is not shared state, and EINTR is retried for us.
            int n = RandomAccess.Read(_file, buffer, offset);
            if (n <= 0)
            {
                throw new IOException($"/proc/self/pagemap ended at offset {offset} (address 0x{(offset / 8) << PageShift:x})");
            }

            buffer = buffer[n..];
            offset += n;
        }
    }

    /// <summary>Turn entries into bits, 64 entries per output word (four at a time with Vector256), and OR them in.</summary>
    private static ulong Pack(ReadOnlySpan<ulong> entries, Span<ulong> bitmap, ulong firstBit)
    {
        var mask = Vector256.Create(PM_PRESENT | PM_SWAP);
        ulong populated = 0;
        for (int start = 0; start < entries.Length; start += 64)
        {
            int n = Math.Min(64, entries.Length - start);
            var chunk = entries.Slice(start, n);
            ulong word = 0;
            int i = 0;
            for (; i + 4 <= n; i += 4)
            {
                var v = Vector256.Create(chunk.Slice(i, 4)) & mask;
                // Lanes that are zero (neither bit) give 1 in the "equals" mask; populated lanes are its complement.
                ulong absent = Vector256.Equals(v, Vector256<ulong>.Zero).ExtractMostSignificantBits();
                word |= (~absent & 0xF) << i;
            }

            for (; i < n; i++)
            {
                word |= ((chunk[i] & (PM_PRESENT | PM_SWAP)) != 0 ? 1UL : 0) << i;
            }

            if (word == 0)
            {
                continue;
            }

            populated += (ulong)BitOperations.PopCount(word);
            ulong bit = firstBit + (ulong)start;
            int shift = (int)(bit & 63);
            int at = (int)(bit >> 6);
            bitmap[at] |= word << shift;
            if (shift != 0 && (word >> (64 - shift)) != 0)
            {
                bitmap[at + 1] |= word >> (64 - shift);
            }
        }

        return populated;
    }
}
