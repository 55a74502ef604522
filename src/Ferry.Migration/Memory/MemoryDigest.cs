using System.Buffers.Binary;
using System.IO.Hashing;
using Ferry.Migration.Guest;

namespace Ferry.Migration.Memory;

/// <summary>
/// A 128-bit fingerprint of all guest memory and its layout, computed on the source at pause and on the
/// destination after load: equal digests mean the destination holds the same bytes at the same guest addresses.
/// </summary>
/// <remarks>
/// XxHash128 measured 22 GB/s on one core here (64 MiB in 3.1 ms, MemoryDigestBenchmarks), so a 1 GiB guest costs
/// ~50 ms: fine for tests and verification runs, too slow to do inside every downtime window of a 16 GiB guest. Sequential and deterministic:
/// the same memory gives the same digest on any host. Each region contributes its guest-physical base and size
/// (16 bytes, little endian) before its bytes, so a different layout with the same concatenated bytes differs.
/// </remarks>
public static class MemoryDigest
{
    /// <summary>Bytes hashed per span: spans are int-length, and 1 GiB keeps well inside that.</summary>
    private const int Chunk = 1 << 30;

    /// <summary>Digest of <paramref name="regions"/> in the given order. Memory must not change meanwhile.</summary>
    public static unsafe UInt128 Compute(IReadOnlyList<MemoryRegion> regions)
    {
        var hash = new XxHash128();
        Span<byte> header = stackalloc byte[16];
        for (int i = 0; i < regions.Count; i++)
        {
            MemoryRegion region = regions[i];
            BinaryPrimitives.WriteUInt64LittleEndian(header, region.GuestPhysicalAddress);
            BinaryPrimitives.WriteUInt64LittleEndian(header[8..], region.Size);
            hash.Append(header);
            for (ulong offset = 0; offset < region.Size; offset += Chunk)
            {
                int length = (int)Math.Min(Chunk, region.Size - offset);
                // SAFETY: region memory is an mmap'd range of region.Size bytes that outlives this call.
                hash.Append(new ReadOnlySpan<byte>((byte*)(region.HostAddress + (nint)offset), length));
            }
        }

        return hash.GetCurrentHashAsUInt128();
    }

    /// <summary>The digest as 32 lowercase hex digits (most significant first), for logs and JSON.</summary>
    public static string ToHex(UInt128 digest) => digest.ToString("x32", System.Globalization.CultureInfo.InvariantCulture);
}
