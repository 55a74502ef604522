using System.Runtime.CompilerServices;
using Ferry.Migration.Guest;

namespace Ferry.Migration.Memory;

/// <summary>
/// Makes the kernel back a freshly allocated buffer now: a large managed array is zeroed memory the kernel maps lazily,
/// so its first write to each 4 KiB page is a page fault (~11 µs on these virtual machines). Structures that are first
/// written inside a migration's downtime are allocated early and written through here.
/// </summary>
internal static class Prefault
{
    /// <summary>Write (its own value back) one element in every 4 KiB of <paramref name="span"/>.</summary>
    public static void Array<T>(Span<T> span) where T : unmanaged
    {
        int step = Math.Max(1, MemoryRegion.PageSize / Unsafe.SizeOf<T>());
        for (int i = 0; i < span.Length; i += step) Volatile.Write(ref Unsafe.As<T, byte>(ref span[i]), Unsafe.As<T, byte>(ref span[i]));
        if (span.Length > 0) Volatile.Write(ref Unsafe.As<T, byte>(ref span[^1]), Unsafe.As<T, byte>(ref span[^1]));
    }
}
