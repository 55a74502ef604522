using System.Runtime.CompilerServices;
using static Ferry.Linux.Libc;

namespace Ferry.Linux.Kvm;

/// <summary>
/// The KVM ioctl request numbers, encoded like &lt;linux/kvm.h&gt; does: direction, KVMIO, command number and the
/// size of the argument struct. Several commands share a number and differ only in size or direction
/// (KVM_GET_PIT2 and KVM_GET_VCPU_EVENTS are both 0x9f; KVM_SET_TSC_KHZ and KVM_SET_DEBUGREGS 0xa2;
/// KVM_GET_TSC_KHZ and KVM_ENABLE_CAP 0xa3), so each is computed from its struct, never typed as a literal;
/// tools/kvm-layout checks every value against the kernel headers.
/// </summary>
public static class KvmIoctls
{
    /// <summary>The ioctl type byte of KVM.</summary>
    public const uint KVMIO = 0xAE;

    // ioctls for /dev/kvm fds
    public static readonly uint KVM_GET_API_VERSION = _IO(KVMIO, 0x00);
    public static readonly uint KVM_CREATE_VM = _IO(KVMIO, 0x01);
    public static readonly uint KVM_GET_MSR_INDEX_LIST = _IOWR(KVMIO, 0x02, Unsafe.SizeOf<kvm_msr_list>());
    public static readonly uint KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03);
    public static readonly uint KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04);
    public static readonly uint KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, Unsafe.SizeOf<kvm_cpuid2>());
    public static readonly uint KVM_GET_MSR_FEATURE_INDEX_LIST = _IOWR(KVMIO, 0x0a, Unsafe.SizeOf<kvm_msr_list>());

    // ioctls for VM fds
    public static readonly uint KVM_CREATE_VCPU = _IO(KVMIO, 0x41);
    public static readonly uint KVM_GET_DIRTY_LOG = _IOW(KVMIO, 0x42, Unsafe.SizeOf<kvm_dirty_log>());
    public static readonly uint KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, Unsafe.SizeOf<kvm_userspace_memory_region>());
    public static readonly uint KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47);
    public static readonly uint KVM_SET_IDENTITY_MAP_ADDR = _IOW(KVMIO, 0x48, sizeof(ulong));
    public static readonly uint KVM_CREATE_IRQCHIP = _IO(KVMIO, 0x60);
    public static readonly uint KVM_IRQ_LINE = _IOW(KVMIO, 0x61, Unsafe.SizeOf<kvm_irq_level>());
    public static readonly uint KVM_GET_IRQCHIP = _IOWR(KVMIO, 0x62, Unsafe.SizeOf<kvm_irqchip>());

    /// <summary>_IOR although userspace writes: a historical mistake the ABI keeps.</summary>
    public static readonly uint KVM_SET_IRQCHIP = _IOR(KVMIO, 0x63, Unsafe.SizeOf<kvm_irqchip>());
    public static readonly uint KVM_IRQ_LINE_STATUS = _IOWR(KVMIO, 0x67, Unsafe.SizeOf<kvm_irq_level>());
    public static readonly uint KVM_SET_GSI_ROUTING = _IOW(KVMIO, 0x6a, Unsafe.SizeOf<kvm_irq_routing>());
    public static readonly uint KVM_IRQFD = _IOW(KVMIO, 0x76, Unsafe.SizeOf<kvm_irqfd>());
    public static readonly uint KVM_CREATE_PIT2 = _IOW(KVMIO, 0x77, Unsafe.SizeOf<kvm_pit_config>());
    public static readonly uint KVM_IOEVENTFD = _IOW(KVMIO, 0x79, Unsafe.SizeOf<kvm_ioeventfd>());
    public static readonly uint KVM_SET_CLOCK = _IOW(KVMIO, 0x7b, Unsafe.SizeOf<kvm_clock_data>());
    public static readonly uint KVM_GET_CLOCK = _IOR(KVMIO, 0x7c, Unsafe.SizeOf<kvm_clock_data>());
    public static readonly uint KVM_GET_PIT2 = _IOR(KVMIO, 0x9f, Unsafe.SizeOf<kvm_pit_state2>());
    public static readonly uint KVM_SET_PIT2 = _IOW(KVMIO, 0xa0, Unsafe.SizeOf<kvm_pit_state2>());
    public static readonly uint KVM_CLEAR_DIRTY_LOG = _IOWR(KVMIO, 0xc0, Unsafe.SizeOf<kvm_clear_dirty_log>());

    // ioctls for VM and vCPU fds
    public static readonly uint KVM_ENABLE_CAP = _IOW(KVMIO, 0xa3, Unsafe.SizeOf<kvm_enable_cap>());
    public static readonly uint KVM_SET_TSC_KHZ = _IO(KVMIO, 0xa2);
    public static readonly uint KVM_GET_TSC_KHZ = _IO(KVMIO, 0xa3);
    public static readonly uint KVM_SET_DEVICE_ATTR = _IOW(KVMIO, 0xe1, Unsafe.SizeOf<kvm_device_attr>());
    public static readonly uint KVM_GET_DEVICE_ATTR = _IOW(KVMIO, 0xe2, Unsafe.SizeOf<kvm_device_attr>());
    public static readonly uint KVM_HAS_DEVICE_ATTR = _IOW(KVMIO, 0xe3, Unsafe.SizeOf<kvm_device_attr>());

    // ioctls for vCPU fds
    public static readonly uint KVM_RUN = _IO(KVMIO, 0x80);
    public static readonly uint KVM_GET_REGS = _IOR(KVMIO, 0x81, Unsafe.SizeOf<kvm_regs>());
    public static readonly uint KVM_SET_REGS = _IOW(KVMIO, 0x82, Unsafe.SizeOf<kvm_regs>());
    public static readonly uint KVM_GET_SREGS = _IOR(KVMIO, 0x83, Unsafe.SizeOf<kvm_sregs>());
    public static readonly uint KVM_SET_SREGS = _IOW(KVMIO, 0x84, Unsafe.SizeOf<kvm_sregs>());
    public static readonly uint KVM_GET_MSRS = _IOWR(KVMIO, 0x88, Unsafe.SizeOf<kvm_msrs>());
    public static readonly uint KVM_SET_MSRS = _IOW(KVMIO, 0x89, Unsafe.SizeOf<kvm_msrs>());
    public static readonly uint KVM_SET_SIGNAL_MASK = _IOW(KVMIO, 0x8b, Unsafe.SizeOf<kvm_signal_mask>());
    public static readonly uint KVM_GET_FPU = _IOR(KVMIO, 0x8c, Unsafe.SizeOf<kvm_fpu>());
    public static readonly uint KVM_SET_FPU = _IOW(KVMIO, 0x8d, Unsafe.SizeOf<kvm_fpu>());
    public static readonly uint KVM_GET_LAPIC = _IOR(KVMIO, 0x8e, Unsafe.SizeOf<kvm_lapic_state>());
    public static readonly uint KVM_SET_LAPIC = _IOW(KVMIO, 0x8f, Unsafe.SizeOf<kvm_lapic_state>());
    public static readonly uint KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, Unsafe.SizeOf<kvm_cpuid2>());
    public static readonly uint KVM_GET_CPUID2 = _IOWR(KVMIO, 0x91, Unsafe.SizeOf<kvm_cpuid2>());
    public static readonly uint KVM_GET_MP_STATE = _IOR(KVMIO, 0x98, Unsafe.SizeOf<kvm_mp_state>());
    public static readonly uint KVM_SET_MP_STATE = _IOW(KVMIO, 0x99, Unsafe.SizeOf<kvm_mp_state>());
    public static readonly uint KVM_GET_VCPU_EVENTS = _IOR(KVMIO, 0x9f, Unsafe.SizeOf<kvm_vcpu_events>());
    public static readonly uint KVM_SET_VCPU_EVENTS = _IOW(KVMIO, 0xa0, Unsafe.SizeOf<kvm_vcpu_events>());
    public static readonly uint KVM_GET_DEBUGREGS = _IOR(KVMIO, 0xa1, Unsafe.SizeOf<kvm_debugregs>());
    public static readonly uint KVM_SET_DEBUGREGS = _IOW(KVMIO, 0xa2, Unsafe.SizeOf<kvm_debugregs>());
    public static readonly uint KVM_GET_XSAVE = _IOR(KVMIO, 0xa4, Unsafe.SizeOf<kvm_xsave>());
    public static readonly uint KVM_SET_XSAVE = _IOW(KVMIO, 0xa5, Unsafe.SizeOf<kvm_xsave>());
    public static readonly uint KVM_GET_XCRS = _IOR(KVMIO, 0xa6, Unsafe.SizeOf<kvm_xcrs>());
    public static readonly uint KVM_SET_XCRS = _IOW(KVMIO, 0xa7, Unsafe.SizeOf<kvm_xcrs>());
    public static readonly uint KVM_KVMCLOCK_CTRL = _IO(KVMIO, 0xad);

    /// <summary>Same struct as KVM_GET_XSAVE, but the kernel fills KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) bytes.</summary>
    public static readonly uint KVM_GET_XSAVE2 = _IOR(KVMIO, 0xcf, Unsafe.SizeOf<kvm_xsave>());
}
