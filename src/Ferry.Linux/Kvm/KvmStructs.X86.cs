using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Ferry.Linux.Kvm;

// The x86-64 structs of <asm/kvm.h>, field for field. Names are the kernel's (STYLE.md 8); C's anonymous structs
// become nested types, arrays of structs become [InlineArray] types. tools/kvm-layout prints the kernel's sizes and
// offsets of every field here and KvmLayoutTests compares them, so a typo in this file fails a test.
#pragma warning disable CS8981 // lowercase type names are the kernel's
#pragma warning disable CA1815 // interop structs: equality is never used

/// <summary>General purpose registers (KVM_GET_REGS / KVM_SET_REGS).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct kvm_regs
{
    public ulong rax, rbx, rcx, rdx;
    public ulong rsi, rdi, rsp, rbp;
    public ulong r8, r9, r10, r11;
    public ulong r12, r13, r14, r15;
    public ulong rip, rflags;
}

/// <summary>A segment register with its hidden descriptor cache.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct kvm_segment
{
    public ulong @base;
    public uint limit;
    public ushort selector;
    public byte type;
    public byte present, dpl, db, s, l, g, avl;
    public byte unusable;
    public byte padding;
}

/// <summary>GDTR / IDTR.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct kvm_dtable
{
    public ulong @base;
    public ushort limit;
    public fixed ushort padding[3];
}

/// <summary>Special registers (KVM_GET_SREGS / KVM_SET_SREGS).</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct kvm_sregs
{
    public kvm_segment cs, ds, es, fs, gs, ss;
    public kvm_segment tr, ldt;
    public kvm_dtable gdt, idt;
    public ulong cr0, cr2, cr3, cr4, cr8;
    public ulong efer;
    public ulong apic_base;

    /// <summary>One bit per pending external interrupt vector (KVM_NR_INTERRUPTS = 256 bits).</summary>
    public fixed ulong interrupt_bitmap[4];
}

/// <summary>x87/SSE state in fxsave format (KVM_GET_FPU / KVM_SET_FPU).</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct kvm_fpu
{
    /// <summary>__u8 fpr[8][16]: eight 16-byte x87 registers, flattened.</summary>
    public fixed byte fpr[8 * 16];
    public ushort fcw;
    public ushort fsw;
    public byte ftwx;
    public byte pad1;
    public ushort last_opcode;
    public ulong last_ip;
    public ulong last_dp;

    /// <summary>__u8 xmm[16][16]: sixteen 16-byte XMM registers, flattened.</summary>
    public fixed byte xmm[16 * 16];
    public uint mxcsr;
    public uint pad2;
}

/// <summary>One MSR in a KVM_GET_MSRS / KVM_SET_MSRS batch.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct kvm_msr_entry
{
    public uint index;
    public uint reserved;
    public ulong data;
}

/// <summary>Header of a KVM_GET_MSRS / KVM_SET_MSRS batch; <c>nmsrs</c> kvm_msr_entry follow it.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct kvm_msrs
{
    public uint nmsrs;
    public uint pad;
}

/// <summary>Header of KVM_GET_MSR_INDEX_LIST's answer; <c>nmsrs</c> u32 indices follow it.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct kvm_msr_list
{
    public uint nmsrs;
}

/// <summary>One CPUID leaf/subleaf (KVM_GET_SUPPORTED_CPUID, KVM_SET_CPUID2).</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct kvm_cpuid_entry2
{
    public uint function;
    public uint index;
    public uint flags;
    public uint eax;
    public uint ebx;
    public uint ecx;
    public uint edx;
    public fixed uint padding[3];
}

/// <summary>Header of a CPUID table; <c>nent</c> kvm_cpuid_entry2 follow it.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct kvm_cpuid2
{
    public uint nent;
    public uint padding;
}

/// <summary>One 8259 PIC (inside kvm_irqchip).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct kvm_pic_state
{
    public byte last_irr;
    public byte irr;
    public byte imr;
    public byte isr;
    public byte priority_add;
    public byte irq_base;
    public byte read_reg_select;
    public byte poll;
    public byte special_mask;
    public byte init_state;
    public byte auto_eoi;
    public byte rotate_on_auto_eoi;
    public byte special_fully_nested_mode;
    public byte init4;
    public byte elcr;
    public byte elcr_mask;
}

/// <summary>The IOAPIC (inside kvm_irqchip).</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct kvm_ioapic_state
{
    public ulong base_address;
    public uint ioregsel;
    public uint id;
    public uint irr;
    public uint pad;

    /// <summary>KVM_IOAPIC_NUM_PINS redirection entries, each the 64-bit <c>bits</c> view of the kernel's union.</summary>
    public fixed ulong redirtbl[24];
}

/// <summary>One i8254 PIT channel.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct kvm_pit_channel_state
{
    public uint count;
    public ushort latched_count;
    public byte count_latched;
    public byte status_latched;
    public byte status;
    public byte read_state;
    public byte write_state;
    public byte write_latch;
    public byte rw_mode;
    public byte mode;
    public byte bcd;
    public byte gate;
    public long count_load_time;
}

/// <summary>The whole PIT (KVM_GET_PIT2 / KVM_SET_PIT2).</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct kvm_pit_state2
{
    public Channels channels;
    public uint flags;
    public fixed uint reserved[9];

    /// <summary>struct kvm_pit_channel_state channels[3].</summary>
    [InlineArray(3)]
    public struct Channels
    {
        private kvm_pit_channel_state _element0;
    }
}

/// <summary>Pending exceptions, interrupts, NMI, SMI and interrupt shadow (KVM_GET/SET_VCPU_EVENTS).</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct kvm_vcpu_events
{
    public Exception exception;
    public Interrupt interrupt;
    public Nmi nmi;
    public uint sipi_vector;
    public uint flags;
    public Smi smi;
    public TripleFault triple_fault;
    public fixed byte reserved[26];
    public byte exception_has_payload;
    public ulong exception_payload;

    [StructLayout(LayoutKind.Sequential)]
    public struct Exception
    {
        public byte injected;
        public byte nr;
        public byte has_error_code;
        public byte pending;
        public uint error_code;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct Interrupt
    {
        public byte injected;
        public byte nr;
        public byte soft;
        public byte shadow;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct Nmi
    {
        public byte injected;
        public byte pending;
        public byte masked;
        public byte pad;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct Smi
    {
        public byte smm;
        public byte pending;
        public byte smm_inside_nmi;
        public byte latched_init;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct TripleFault
    {
        public byte pending;
    }
}

/// <summary>Debug registers (KVM_GET/SET_DEBUGREGS).</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct kvm_debugregs
{
    public fixed ulong db[4];
    public ulong dr6;
    public ulong dr7;
    public ulong flags;
    public fixed ulong reserved[9];
}

/// <summary>
/// The legacy 4 KiB XSAVE image (KVM_GET/SET_XSAVE). Guests with dynamic features (AMX) need the larger
/// KVM_GET_XSAVE2 buffer whose size KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) reports on the VM fd.
/// </summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct kvm_xsave
{
    public fixed uint region[1024];
}

/// <summary>One extended control register (XCR0).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct kvm_xcr
{
    public uint xcr;
    public uint reserved;
    public ulong value;
}

/// <summary>Extended control registers (KVM_GET/SET_XCRS).</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct kvm_xcrs
{
    public uint nr_xcrs;
    public uint flags;
    public Xcrs xcrs;
    public fixed ulong padding[16];

    /// <summary>struct kvm_xcr xcrs[KVM_MAX_XCRS].</summary>
    [InlineArray(16)]
    public struct Xcrs
    {
        private kvm_xcr _element0;
    }
}

/// <summary>The local APIC register page (KVM_GET/SET_LAPIC), KVM_APIC_REG_SIZE bytes.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct kvm_lapic_state
{
    public fixed byte regs[0x400];
}

/// <summary>Registers mirrored in kvm_run when KVM_CAP_SYNC_REGS is used.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct kvm_sync_regs
{
    public kvm_regs regs;
    public kvm_sregs sregs;
    public kvm_vcpu_events events;
}

/// <summary>The exit data of KVM_EXIT_DEBUG.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct kvm_debug_exit_arch
{
    public uint exception;
    public uint pad;
    public ulong pc;
    public ulong dr6;
    public ulong dr7;
}

#pragma warning restore CA1815
#pragma warning restore CS8981
