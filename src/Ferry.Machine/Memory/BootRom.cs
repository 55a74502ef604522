using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace Ferry.Machine.Memory;

/// <summary>
/// The mask ROM at 0x1000 holding QEMU <c>virt</c>'s reset vector, so firmware starts exactly as under QEMU:
/// a0 = mhartid, a1 = the device tree's address, a2 = the <c>fw_dynamic_info</c> structure, then a jump to the
/// firmware's entry. Read-only to the guest: stores fault.
/// </summary>
public sealed unsafe class BootRom : MemoryRegion, IDisposable
{
    public const ulong RomBase = 0x1000;
    public const ulong RomSize = 0x1000;

    private byte* host;

    public BootRom() : base(RomBase, RomSize)
    {
        host = (byte*)NativeMemory.AllocZeroed((nuint)RomSize);
    }

    public override byte* Host => host;

    public override bool Writable => false;

    /// <summary>Write the reset vector: jump to <paramref name="entry"/> with a1 = <paramref name="fdt"/>; fw_dynamic_info
    /// names <paramref name="nextAddress"/> as the next stage (OpenSBI's S-mode payload) in <paramref name="nextMode"/>.</summary>
    public void WriteResetVector(ulong entry, ulong fdt, ulong nextAddress = 0, ulong nextMode = 1)
    {
        Span<byte> rom = new(host, (int)RomSize);
        rom.Clear();
        // The same eight words QEMU's riscv_setup_rom_reset_vec writes (RV64).
        uint[] code =
        [
            0x00000297, // auipc t0, 0
            0x02828613, // addi  a2, t0, 40      (fw_dynamic_info)
            0xf1402573, // csrr  a0, mhartid
            0x0202b583, // ld    a1, 32(t0)      (fdt)
            0x0182b283, // ld    t0, 24(t0)      (entry)
            0x00028067, // jr    t0
        ];
        for (int i = 0; i < code.Length; i++) BinaryPrimitives.WriteUInt32LittleEndian(rom[(i * 4)..], code[i]);
        BinaryPrimitives.WriteUInt64LittleEndian(rom[24..], entry);
        BinaryPrimitives.WriteUInt64LittleEndian(rom[32..], fdt);
        // struct fw_dynamic_info { magic "OSBI", version 2, next_addr, next_mode, options, boot_hart }.
        BinaryPrimitives.WriteUInt64LittleEndian(rom[40..], 0x4942534f);
        BinaryPrimitives.WriteUInt64LittleEndian(rom[48..], 2);
        BinaryPrimitives.WriteUInt64LittleEndian(rom[56..], nextAddress);
        BinaryPrimitives.WriteUInt64LittleEndian(rom[64..], nextMode);
        BinaryPrimitives.WriteUInt64LittleEndian(rom[72..], 0);
        BinaryPrimitives.WriteUInt64LittleEndian(rom[80..], 0);
    }

    public void Dispose()
    {
        if (host != null)
        {
            NativeMemory.Free(host);
            host = null;
        }
    }
}
