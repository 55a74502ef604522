using System.Buffers.Binary;
using Ferry.Machine.Memory;
using Microsoft.Win32.SafeHandles;

namespace Ferry.Machine.Board;

/// <summary>
/// Loads a RISC-V ELF64 executable into RAM, as QEMU's <c>-bios prog.elf</c> does: every <c>PT_LOAD</c> segment at its
/// physical address (<c>p_paddr</c>), its file bytes followed by zeros up to <c>p_memsz</c>.
/// </summary>
/// <remarks>
/// The file is treated as hostile: every offset and size is checked against the file's length, in arithmetic that
/// cannot overflow, before it is used, and every segment is checked against RAM before any byte is written, so a
/// rejected file leaves RAM as it was. Only the headers and the segments' bytes are read, in bounded chunks straight
/// into RAM: a kernel with debug info may be far larger than the guest, and none of that is read.
/// </remarks>
public static class ElfLoader
{
    // ELF64 sizes and fields (System V ABI, "ELF-64 Object File Format" 1.5).
    private const int EhdrSize = 64;
    private const int PhdrSize = 56;
    private const byte ElfClass64 = 2;
    private const byte ElfData2Lsb = 1;
    private const ushort EtExec = 2;
    private const ushort EmRiscv = 243;
    private const uint PtLoad = 1;
    // PN_XNUM: the real count lives in section header 0; no firmware needs that many segments.
    private const ushort PnXnum = 0xffff;
    // Linux's binfmt_elf refuses a program header table larger than 64 KiB; so does this loader.
    private const int MaxPhdrTable = 64 * 1024;
    // Segment bytes are copied through a buffer of this size, so loading never holds a whole segment on the heap.
    private const int ChunkSize = 1 << 20;

    private readonly record struct Segment(int Index, ulong Offset, ulong Address, ulong FileSize, ulong MemSize, ulong VirtualAddress);

    /// <summary>
    /// Load every PT_LOAD segment of <paramref name="path"/> into <paramref name="ram"/> (through its tracked write path)
    /// and return the entry point. Throws <see cref="MachineConfigException"/> with one line for a missing file, not an
    /// ELF, not 64-bit little-endian RISC-V, a segment outside RAM.
    /// </summary>
    /// <remarks>
    /// The entry point is where the hart jumps with paging off, so it is a physical address: an <c>e_entry</c> inside a
    /// segment whose virtual and physical addresses differ is moved by the same offset. It must lie in a loaded
    /// segment, or at least in RAM.
    /// </remarks>
    public static ulong Load(string path, GuestRam ram)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(ram);
        using SafeFileHandle file = Open(path);
        long length = Length(file, path);

        Span<byte> ehdr = stackalloc byte[EhdrSize];
        int got = ReadAt(file, ehdr, 0, path);
        if (got < 4 || ehdr[0] != 0x7f || ehdr[1] != (byte)'E' || ehdr[2] != (byte)'L' || ehdr[3] != (byte)'F')
        {
            throw Fail(path, "not an ELF file (no \\x7fELF magic)");
        }
        if (got < 6) throw Fail(path, $"file truncated: {got} bytes, shorter than an ELF header");
        if (ehdr[4] != ElfClass64)
        {
            throw Fail(path, ehdr[4] == 1 ? "a 32-bit ELF; the virt board needs a 64-bit (ELFCLASS64) RISC-V executable"
                : $"unknown ELF class {ehdr[4]}, not 64-bit");
        }
        if (ehdr[5] != ElfData2Lsb)
        {
            throw Fail(path, ehdr[5] == 2 ? "a big-endian ELF; RISC-V executables are little-endian" : $"unknown ELF data encoding {ehdr[5]}");
        }
        if (got < EhdrSize) throw Fail(path, $"file truncated: {got} bytes, shorter than the 64-byte ELF64 header");

        ushort type = BinaryPrimitives.ReadUInt16LittleEndian(ehdr[16..]);
        ushort machine = BinaryPrimitives.ReadUInt16LittleEndian(ehdr[18..]);
        ulong entry = BinaryPrimitives.ReadUInt64LittleEndian(ehdr[24..]);
        ulong phoff = BinaryPrimitives.ReadUInt64LittleEndian(ehdr[32..]);
        ushort phentsize = BinaryPrimitives.ReadUInt16LittleEndian(ehdr[54..]);
        ushort phnum = BinaryPrimitives.ReadUInt16LittleEndian(ehdr[56..]);

        if (machine != EmRiscv) throw Fail(path, $"not RISC-V: the ELF is for {MachineName(machine)} (e_machine {machine}, RISC-V is {EmRiscv})");
        if (type != EtExec) throw Fail(path, $"{TypeName(type)}, not an executable (ET_EXEC); link it with a fixed address (-static, no -pie)");
        if (phnum == 0) throw Fail(path, "no program headers, nothing to load");
        if (phnum == PnXnum) throw Fail(path, "too many program headers (PN_XNUM)");
        if (phentsize < PhdrSize) throw Fail(path, $"program header size {phentsize} is smaller than ELF64's {PhdrSize}");
        // In 64 bits: 0xfffe entries of 0xffff bytes overflow an int.
        long tableSize = (long)phentsize * phnum;
        if (tableSize > MaxPhdrTable) throw Fail(path, $"program header table of {tableSize} bytes is larger than {MaxPhdrTable}");
        if (phoff > (ulong)length || (ulong)tableSize > (ulong)length - phoff)
        {
            throw Fail(path, $"file truncated: program headers at 0x{phoff:x}+0x{tableSize:x} lie past its end (0x{length:x} bytes)");
        }

        var table = new byte[(int)tableSize];
        if (ReadAt(file, table, (long)phoff, path) != table.Length) throw Fail(path, "file truncated while reading the program headers");

        // Check everything before writing anything.
        var segments = new List<Segment>();
        for (int i = 0; i < phnum; i++)
        {
            ReadOnlySpan<byte> ph = table.AsSpan(i * phentsize, PhdrSize);
            if (BinaryPrimitives.ReadUInt32LittleEndian(ph) != PtLoad) continue;
            var s = new Segment(
                Index: i,
                Offset: BinaryPrimitives.ReadUInt64LittleEndian(ph[8..]),
                Address: BinaryPrimitives.ReadUInt64LittleEndian(ph[24..]),
                FileSize: BinaryPrimitives.ReadUInt64LittleEndian(ph[32..]),
                MemSize: BinaryPrimitives.ReadUInt64LittleEndian(ph[40..]),
                VirtualAddress: BinaryPrimitives.ReadUInt64LittleEndian(ph[16..]));
            if (s.MemSize == 0) continue;
            if (s.FileSize > s.MemSize)
            {
                throw Fail(path, $"segment {i} has more file bytes (0x{s.FileSize:x}) than memory bytes (0x{s.MemSize:x})");
            }
            if (!ram.Contains(s.Address, s.MemSize))
            {
                UInt128 end = (UInt128)s.Address + s.MemSize;
                throw Fail(path, $"segment 0x{s.Address:x}-0x{end:x} is outside RAM 0x{ram.Base:x}-0x{ram.Base + ram.Size:x}");
            }
            if (s.Offset > (ulong)length || s.FileSize > (ulong)length - s.Offset)
            {
                UInt128 end = (UInt128)s.Offset + s.FileSize;
                throw Fail(path, $"file truncated: segment {i} needs file bytes 0x{s.Offset:x}-0x{end:x} but the file has 0x{length:x}");
            }
            segments.Add(s);
        }
        if (segments.Count == 0) throw Fail(path, "no loadable (PT_LOAD) segments");

        ulong start = PhysicalEntry(entry, segments, out bool inSegment);
        if (!inSegment && !ram.Contains(start, 2))
        {
            throw Fail(path, $"entry point 0x{entry:x} is neither in a loaded segment nor in RAM 0x{ram.Base:x}-0x{ram.Base + ram.Size:x}");
        }

        var buffer = new byte[(int)Math.Min(ChunkSize, MaxSegmentBytes(segments))];
        foreach (Segment s in segments) Copy(file, s, ram, buffer, path);
        return start;
    }

    /// <summary><paramref name="entry"/> as a physical address, moved like the segment (if any) whose virtual range holds it.</summary>
    private static ulong PhysicalEntry(ulong entry, List<Segment> segments, out bool inSegment)
    {
        foreach (Segment s in segments)
        {
            if (entry - s.VirtualAddress < s.MemSize)
            {
                inSegment = true;
                return entry - s.VirtualAddress + s.Address;
            }
        }
        inSegment = false;
        return entry;
    }

    private static ulong MaxSegmentBytes(List<Segment> segments)
    {
        ulong max = 1;
        foreach (Segment s in segments) max = Math.Max(max, s.MemSize);
        return max;
    }

    /// <summary>The segment's file bytes, then zeros to its memory size, through <see cref="GuestRam.Write"/> (dirty log, code).</summary>
    private static void Copy(SafeFileHandle file, Segment s, GuestRam ram, byte[] buffer, string path)
    {
        ulong done = 0;
        while (done < s.FileSize)
        {
            int n = (int)Math.Min((ulong)buffer.Length, s.FileSize - done);
            Span<byte> chunk = buffer.AsSpan(0, n);
            if (ReadAt(file, chunk, (long)(s.Offset + done), path) != n)
            {
                throw Fail(path, $"file truncated while reading segment {s.Index} (did it change during loading?)");
            }
            ram.Write(s.Address + done, chunk);
            done += (ulong)n;
        }
        if (done < s.MemSize) Array.Clear(buffer);
        while (done < s.MemSize)
        {
            int n = (int)Math.Min((ulong)buffer.Length, s.MemSize - done);
            ram.Write(s.Address + done, buffer.AsSpan(0, n));
            done += (ulong)n;
        }
    }

    private static SafeFileHandle Open(string path)
    {
        if (Directory.Exists(path)) throw Fail(path, "is a directory, not an ELF file");
        try
        {
            return File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new MachineConfigException($"{path}: no such file", e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new MachineConfigException($"{path}: cannot open: {e.Message}", e);
        }
    }

    private static long Length(SafeFileHandle file, string path)
    {
        try
        {
            return RandomAccess.GetLength(file);
        }
        catch (IOException e)
        {
            throw new MachineConfigException($"{path}: cannot read: {e.Message}", e);
        }
    }

    /// <summary>Read until <paramref name="into"/> is full or the file ends; returns the bytes read.</summary>
    private static int ReadAt(SafeFileHandle file, Span<byte> into, long offset, string path)
    {
        int total = 0;
        try
        {
            while (total < into.Length)
            {
                int n = RandomAccess.Read(file, into[total..], offset + total);
                if (n == 0) break;
                total += n;
            }
        }
        catch (IOException e)
        {
            throw new MachineConfigException($"{path}: cannot read: {e.Message}", e);
        }
        return total;
    }

    private static MachineConfigException Fail(string path, string problem) => new($"{path}: {problem}");

    private static string TypeName(ushort type) => type switch
    {
        0 => "an ELF of no type (ET_NONE)",
        1 => "a relocatable object (ET_REL)",
        3 => "a shared object or position-independent executable (ET_DYN)",
        4 => "a core dump (ET_CORE)",
        _ => $"an ELF of type {type}",
    };

    private static string MachineName(ushort machine) => machine switch
    {
        0 => "no machine",
        3 => "x86 (i386)",
        8 => "MIPS",
        20 => "PowerPC",
        21 => "PowerPC64",
        22 => "s390",
        40 => "ARM",
        42 => "SuperH",
        43 => "SPARC v9",
        62 => "x86-64",
        183 => "AArch64",
        247 => "BPF",
        258 => "LoongArch",
        _ => $"machine {machine}",
    };
}
