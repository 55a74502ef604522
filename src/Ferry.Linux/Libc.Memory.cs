using System.Runtime.InteropServices;

namespace Ferry.Linux;

// Memory mappings: mmap(2), munmap(2), mprotect(2), madvise(2). Constants are x86-64/aarch64 Linux values (asm-generic/mman*.h).
public static partial class Libc
{
    /// <summary>Pages may not be accessed.</summary>
    public const int PROT_NONE = 0x0;

    /// <summary>Pages may be read.</summary>
    public const int PROT_READ = 0x1;

    /// <summary>Pages may be written.</summary>
    public const int PROT_WRITE = 0x2;

    /// <summary>Share the mapping with other processes mapping the same object.</summary>
    public const int MAP_SHARED = 0x01;

    /// <summary>Copy-on-write mapping private to this process.</summary>
    public const int MAP_PRIVATE = 0x02;

    /// <summary>Not backed by a file; contents start zero-filled.</summary>
    public const int MAP_ANONYMOUS = 0x20;

    /// <summary>Do not reserve swap/commit for the mapping: only touched pages cost memory.</summary>
    public const int MAP_NORESERVE = 0x4000;

    /// <summary>Pre-fault the whole mapping at mmap time.</summary>
    public const int MAP_POPULATE = 0x8000;

    /// <summary>mmap's error return, <c>(void*)-1</c>.</summary>
    public static readonly nint MAP_FAILED = -1;

    /// <summary>Drop the pages: private anonymous memory reads back as zeros afterwards and its RAM is freed.</summary>
    public const int MADV_DONTNEED = 4;

    /// <summary>
    /// Free the range and its backing store (a shared file mapping: punches a hole in the file, as
    /// <c>fallocate(FALLOC_FL_PUNCH_HOLE)</c>); it reads as zeros afterwards. EOPNOTSUPP where the file system cannot punch.
    /// </summary>
    public const int MADV_REMOVE = 9;

    /// <summary>Ask for transparent huge pages in the range.</summary>
    public const int MADV_HUGEPAGE = 14;

    /// <summary>Never use transparent huge pages in the range.</summary>
    public const int MADV_NOHUGEPAGE = 15;

    /// <summary>Fault in the range writable now (Linux 5.14+), far cheaper than one page fault per first touch.</summary>
    public const int MADV_POPULATE_WRITE = 23;

    /// <summary>
    /// Collapse the range's 4 KiB pages into transparent huge pages now, synchronously, keeping their contents
    /// (Linux 6.1+; EINVAL before). Safe while other threads use the memory: as khugepaged does, but on request.
    /// </summary>
    public const int MADV_COLLAPSE = 25;

    /// <summary>errno value: invalid argument (e.g. an madvise advice this kernel does not know).</summary>
    public const int EINVAL = 22;

    /// <summary>mmap(2). Returns <see cref="MAP_FAILED"/> and sets errno on failure.</summary>
    [LibraryImport(LibraryName, SetLastError = true)]
    public static partial nint mmap(nint addr, nuint length, int prot, int flags, int fd, long offset);

    /// <summary>munmap(2). Returns 0, or -1 and sets errno.</summary>
    [LibraryImport(LibraryName, SetLastError = true)]
    public static partial int munmap(nint addr, nuint length);

    /// <summary>mprotect(2): change the access of a page-aligned range. Returns 0, or -1 and sets errno.</summary>
    [LibraryImport(LibraryName, SetLastError = true)]
    public static partial int mprotect(nint addr, nuint length, int prot);

    [LibraryImport(LibraryName)]
    private static partial nint memmove(nint destination, nint source, nuint length);

    /// <summary>
    /// Read and write back <paramref name="length"/> bytes at <paramref name="address"/> from native code (memmove(3)
    /// onto itself), so the page is present and writable afterwards. A managed thread that faults on memory registered
    /// with a userfaultfd sleeps in cooperative GC mode and stalls every GC meanwhile; inside a P/Invoke it sleeps in
    /// preemptive mode, and the GC goes on without it.
    /// </summary>
    public static void TouchForWrite(nint address, nuint length) => memmove(address, address, length);

    [LibraryImport(LibraryName)]
    private static partial nint memset(nint destination, int value, nuint length);

    /// <summary>
    /// Copy <paramref name="length"/> bytes with the C library's memmove(3), which only writes the destination. For
    /// memory that may never have been touched: the runtime's managed copy and clear read their destination's first
    /// byte before writing it (a null check), and that read maps the kernel's shared zero page, so the write that
    /// follows is a second fault that replaces it and flushes the TLB of every CPU running the process (an
    /// inter-processor interrupt each; ~20 µs a page on this VM host, docs/BENCH-POSTCOPY.md).
    /// </summary>
    public static void CopyMemory(nint destination, nint source, nuint length) => memmove(destination, source, length);

    /// <summary>Zero <paramref name="length"/> bytes with memset(3), for the reason <see cref="CopyMemory"/> gives.</summary>
    public static void ZeroMemory(nint destination, nuint length) => memset(destination, 0, length);

    /// <summary>madvise(2). Returns 0, or -1 and sets errno.</summary>
    [LibraryImport(LibraryName, SetLastError = true)]
    public static partial int madvise(nint addr, nuint length, int advice);
}
