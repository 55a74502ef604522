using System.Runtime.InteropServices;

namespace Ferry.Linux.Kvm;

// The architecture-neutral structs of <linux/kvm.h> that Ferry uses, field for field (see KvmStructs.X86.cs for the
// naming rules and how the layouts are checked). C unions become LayoutKind.Explicit with overlapping fields.
#pragma warning disable CS8981 // lowercase type names are the kernel's
#pragma warning disable CA1815 // interop structs: equality is never used

/// <summary>A guest memory slot (KVM_SET_USER_MEMORY_REGION). memory_size 0 deletes the slot.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct kvm_userspace_memory_region
{
    public uint slot;

    /// <summary>KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY.</summary>
    public uint flags;
    public ulong guest_phys_addr;

    /// <summary>Bytes, a multiple of the page size.</summary>
    public ulong memory_size;

    /// <summary>Start of the host mapping backing the slot; must stay mapped while the slot exists.</summary>
    public ulong userspace_addr;
}

/// <summary>KVM_IRQ_LINE / KVM_IRQ_LINE_STATUS: drive a GSI; the status variant returns the delivery result in <c>status</c>.</summary>
[StructLayout(LayoutKind.Explicit)]
public struct kvm_irq_level
{
    [FieldOffset(0)] public uint irq;
    [FieldOffset(0)] public int status;
    [FieldOffset(4)] public uint level;
}

/// <summary>One in-kernel interrupt controller's state (KVM_GET/SET_IRQCHIP); chip_id picks which.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct kvm_irqchip
{
    /// <summary>KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE or KVM_IRQCHIP_IOAPIC.</summary>
    public uint chip_id;
    public uint pad;
    public Chip chip;

    /// <summary>The chip's state; <c>dummy</c> is the whole 512-byte union, which is what a migration stream carries.</summary>
    [StructLayout(LayoutKind.Explicit)]
    public unsafe struct Chip
    {
        [FieldOffset(0)] public fixed byte dummy[512];
        [FieldOffset(0)] public kvm_pic_state pic;
        [FieldOffset(0)] public kvm_ioapic_state ioapic;
    }
}

/// <summary>KVM_CREATE_PIT2's argument.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct kvm_pit_config
{
    /// <summary>KVM_PIT_SPEAKER_DUMMY: port 0x61 handled in the kernel as a dummy speaker.</summary>
    public uint flags;
    public fixed uint pad[15];
}

/// <summary>The guest's kvmclock (KVM_GET/SET_CLOCK): what makes guest time continue across a migration.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct kvm_clock_data
{
    /// <summary>kvmclock nanoseconds.</summary>
    public ulong clock;

    /// <summary>KVM_CLOCK_TSC_STABLE, KVM_CLOCK_REALTIME, KVM_CLOCK_HOST_TSC: which of the fields below are valid.</summary>
    public uint flags;
    public uint pad0;

    /// <summary>CLOCK_REALTIME at the moment <c>clock</c> was read (with KVM_CLOCK_REALTIME).</summary>
    public ulong realtime;

    /// <summary>Host TSC at the moment <c>clock</c> was read (with KVM_CLOCK_HOST_TSC).</summary>
    public ulong host_tsc;
    public fixed uint pad[4];
}

/// <summary>KVM_GET_DIRTY_LOG: fetch-and-clear the dirty bitmap of one slot (with KVM_MEM_LOG_DIRTY_PAGES).</summary>
[StructLayout(LayoutKind.Explicit)]
public struct kvm_dirty_log
{
    [FieldOffset(0)] public uint slot;
    [FieldOffset(4)] public uint padding1;

    /// <summary>One bit per page of the slot, the buffer rounded up to 64 pages.</summary>
    [FieldOffset(8)] public nint dirty_bitmap;
    [FieldOffset(8)] public ulong padding2;
}

/// <summary>KVM_CLEAR_DIRTY_LOG (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2): re-protect the given pages of a slot.</summary>
[StructLayout(LayoutKind.Explicit)]
public struct kvm_clear_dirty_log
{
    [FieldOffset(0)] public uint slot;

    /// <summary>A multiple of 64, or reaching the end of the slot.</summary>
    [FieldOffset(4)] public uint num_pages;

    /// <summary>A multiple of 64.</summary>
    [FieldOffset(8)] public ulong first_page;
    [FieldOffset(16)] public nint dirty_bitmap;
    [FieldOffset(16)] public ulong padding2;
}

/// <summary>Header of KVM_SET_SIGNAL_MASK's argument; <c>len</c> bytes of kernel sigset follow (8 on x86-64).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct kvm_signal_mask
{
    public uint len;
}

/// <summary>KVM_GET/SET_MP_STATE: KVM_MP_STATE_RUNNABLE, _HALTED, _INIT_RECEIVED, ...</summary>
[StructLayout(LayoutKind.Sequential)]
public struct kvm_mp_state
{
    public uint mp_state;
}

/// <summary>KVM_ENABLE_CAP on a VM or vCPU.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct kvm_enable_cap
{
    public uint cap;
    public uint flags;
    public fixed ulong args[4];
    public fixed byte pad[64];
}

/// <summary>An IRQ routing entry's irqchip target.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct kvm_irq_routing_irqchip
{
    public uint irqchip;
    public uint pin;
}

/// <summary>An IRQ routing entry's MSI target.</summary>
[StructLayout(LayoutKind.Explicit)]
public struct kvm_irq_routing_msi
{
    [FieldOffset(0)] public uint address_lo;
    [FieldOffset(4)] public uint address_hi;
    [FieldOffset(8)] public uint data;
    [FieldOffset(12)] public uint pad;
    [FieldOffset(12)] public uint devid;
}

/// <summary>One GSI route (KVM_SET_GSI_ROUTING).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct kvm_irq_routing_entry
{
    public uint gsi;

    /// <summary>KVM_IRQ_ROUTING_IRQCHIP or KVM_IRQ_ROUTING_MSI.</summary>
    public uint type;
    public uint flags;
    public uint pad;
    public U u;

    /// <summary>The target, chosen by <c>type</c>.</summary>
    [StructLayout(LayoutKind.Explicit)]
    public unsafe struct U
    {
        [FieldOffset(0)] public kvm_irq_routing_irqchip irqchip;
        [FieldOffset(0)] public kvm_irq_routing_msi msi;
        [FieldOffset(0)] public fixed uint pad[8];
    }
}

/// <summary>Header of KVM_SET_GSI_ROUTING's argument; <c>nr</c> kvm_irq_routing_entry follow it. Replaces the whole table.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct kvm_irq_routing
{
    public uint nr;
    public uint flags;
}

/// <summary>KVM_IRQFD: an eventfd whose signal raises <c>gsi</c>.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct kvm_irqfd
{
    public uint fd;
    public uint gsi;

    /// <summary>KVM_IRQFD_FLAG_DEASSIGN, KVM_IRQFD_FLAG_RESAMPLE.</summary>
    public uint flags;
    public uint resamplefd;
    public fixed byte pad[16];
}

/// <summary>KVM_IOEVENTFD: a guest write to a port or MMIO address signals an eventfd without an exit to userspace.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct kvm_ioeventfd
{
    public ulong datamatch;
    public ulong addr;

    /// <summary>1, 2, 4 or 8 bytes; 0 matches any length.</summary>
    public uint len;
    public int fd;

    /// <summary>KVM_IOEVENTFD_FLAG_DATAMATCH, _PIO, _DEASSIGN.</summary>
    public uint flags;
    public fixed byte pad[36];
}

/// <summary>KVM_GET/SET/HAS_DEVICE_ATTR (on a vCPU: group KVM_VCPU_TSC_CTRL, attr KVM_VCPU_TSC_OFFSET).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct kvm_device_attr
{
    public uint flags;
    public uint group;
    public ulong attr;

    /// <summary>Userspace address of the attribute's value.</summary>
    public ulong addr;
}

#pragma warning restore CA1815
#pragma warning restore CS8981
