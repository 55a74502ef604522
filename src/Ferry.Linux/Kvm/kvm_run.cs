using System.Runtime.InteropServices;

namespace Ferry.Linux.Kvm;

#pragma warning disable CS8981 // lowercase type names are the kernel's
#pragma warning disable CA1815 // interop structs: equality is never used

/// <summary>
/// The page shared between KVM and the vCPU thread, mmap'd from the vCPU fd (see <see cref="KvmRunMapping"/>).
/// Before KVM_RUN userspace may set <c>immediate_exit</c> and <c>request_interrupt_window</c>; after it,
/// <c>exit_reason</c> (KVM_EXIT_*) says which member of the exit union is valid. The x86 members are modeled;
/// s390/PPC/RISC-V/Xen/Hyper-V members live in <c>padding</c>.
/// </summary>
[StructLayout(LayoutKind.Explicit)]
public unsafe struct kvm_run
{
    // in
    [FieldOffset(0)] public byte request_interrupt_window;

    /// <summary>Set to 1 to make the next (or a signal-interrupted) KVM_RUN return EINTR at once (KVM_CAP_IMMEDIATE_EXIT).</summary>
    [FieldOffset(1)] public byte immediate_exit;
    [FieldOffset(2)] public fixed byte padding1[6];

    // out
    [FieldOffset(8)] public uint exit_reason;
    [FieldOffset(12)] public byte ready_for_interrupt_injection;
    [FieldOffset(13)] public byte if_flag;
    [FieldOffset(14)] public ushort flags;

    // in (pre_kvm_run), out (post_kvm_run)
    [FieldOffset(16)] public ulong cr8;
    [FieldOffset(24)] public ulong apic_base;

    // The exit union: 256 bytes at offset 32.
    [FieldOffset(32)] public Hw hw;
    [FieldOffset(32)] public FailEntry fail_entry;
    [FieldOffset(32)] public Ex ex;
    [FieldOffset(32)] public Io io;
    [FieldOffset(32)] public Debug debug;
    [FieldOffset(32)] public Mmio mmio;
    [FieldOffset(32)] public Hypercall hypercall;
    [FieldOffset(32)] public TprAccess tpr_access;
    [FieldOffset(32)] public Internal @internal;
    [FieldOffset(32)] public EmulationFailure emulation_failure;
    [FieldOffset(32)] public SystemEvent system_event;
    [FieldOffset(32)] public Eoi eoi;
    [FieldOffset(32)] public Msr msr;
    [FieldOffset(32)] public Notify notify;
    [FieldOffset(32)] public fixed byte padding[256];

    /// <summary>Register classes KVM filled in <c>s</c> (KVM_SYNC_X86_*).</summary>
    [FieldOffset(288)] public ulong kvm_valid_regs;

    /// <summary>Register classes userspace changed in <c>s</c> (KVM_SYNC_X86_*).</summary>
    [FieldOffset(296)] public ulong kvm_dirty_regs;
    [FieldOffset(304)] public S s;

    /// <summary>KVM_EXIT_UNKNOWN.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct Hw
    {
        public ulong hardware_exit_reason;
    }

    /// <summary>KVM_EXIT_FAIL_ENTRY: the hardware refused the guest state (VMX/SVM entry failure code).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct FailEntry
    {
        public ulong hardware_entry_failure_reason;
        public uint cpu;
    }

    /// <summary>KVM_EXIT_EXCEPTION.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct Ex
    {
        public uint exception;
        public uint error_code;
    }

    /// <summary>KVM_EXIT_IO: <c>count</c> items of <c>size</c> bytes at kvm_run + <c>data_offset</c>.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct Io
    {
        /// <summary>KVM_EXIT_IO_IN or KVM_EXIT_IO_OUT.</summary>
        public byte direction;

        /// <summary>Bytes per item: 1, 2 or 4.</summary>
        public byte size;
        public ushort port;

        /// <summary>Items (more than 1 for rep ins/outs).</summary>
        public uint count;

        /// <summary>Offset of the data from the start of kvm_run (KVM_PIO_PAGE_OFFSET pages in).</summary>
        public ulong data_offset;
    }

    /// <summary>KVM_EXIT_DEBUG.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct Debug
    {
        public kvm_debug_exit_arch arch;
    }

    /// <summary>KVM_EXIT_MMIO: a guest access to unbacked guest-physical memory; reads fill <c>data</c>.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public unsafe struct Mmio
    {
        public ulong phys_addr;
        public fixed byte data[8];
        public uint len;
        public byte is_write;
    }

    /// <summary>KVM_EXIT_HYPERCALL (with KVM_CAP_EXIT_HYPERCALL).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public unsafe struct Hypercall
    {
        public ulong nr;
        public fixed ulong args[6];
        public ulong ret;
        public uint longmode;
        public uint pad;
    }

    /// <summary>KVM_EXIT_TPR_ACCESS.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct TprAccess
    {
        public ulong rip;
        public uint is_write;
        public uint pad;
    }

    /// <summary>KVM_EXIT_INTERNAL_ERROR: <c>suberror</c> is KVM_INTERNAL_ERROR_*; <c>ndata</c> words of <c>data</c> are valid.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public unsafe struct Internal
    {
        public uint suberror;
        public uint ndata;
        public fixed ulong data[16];
    }

    /// <summary>
    /// The overlay of <c>internal</c> for KVM_INTERNAL_ERROR_EMULATION: with
    /// KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES in <c>flags</c>, the bytes KVM's emulator failed on
    /// (under PVM: cmpxchg16b, xrstor, int3 in long mode).
    /// </summary>
    [StructLayout(LayoutKind.Sequential)]
    public unsafe struct EmulationFailure
    {
        public uint suberror;
        public uint ndata;
        public ulong flags;
        public byte insn_size;
        public fixed byte insn_bytes[15];
    }

    /// <summary>KVM_EXIT_SYSTEM_EVENT: KVM_SYSTEM_EVENT_SHUTDOWN, _RESET, _CRASH, ...</summary>
    [StructLayout(LayoutKind.Explicit)]
    public unsafe struct SystemEvent
    {
        [FieldOffset(0)] public uint type;
        [FieldOffset(4)] public uint ndata;
        [FieldOffset(8)] public ulong flags;
        [FieldOffset(8)] public fixed ulong data[16];
    }

    /// <summary>KVM_EXIT_IOAPIC_EOI (split irqchip only).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct Eoi
    {
        public byte vector;
    }

    /// <summary>KVM_EXIT_X86_RDMSR / KVM_EXIT_X86_WRMSR (with KVM_CAP_X86_USER_SPACE_MSR).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public unsafe struct Msr
    {
        /// <summary>Set by userspace to 1 to inject #GP.</summary>
        public byte error;
        public fixed byte pad[7];
        public uint reason;
        public uint index;
        public ulong data;
    }

    /// <summary>KVM_EXIT_NOTIFY.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct Notify
    {
        public uint flags;
    }

    /// <summary>The sync-regs union (SYNC_REGS_SIZE_BYTES = 2048).</summary>
    [StructLayout(LayoutKind.Explicit)]
    public unsafe struct S
    {
        [FieldOffset(0)] public kvm_sync_regs regs;
        [FieldOffset(0)] public fixed byte padding[2048];
    }
}

#pragma warning restore CA1815
#pragma warning restore CS8981
