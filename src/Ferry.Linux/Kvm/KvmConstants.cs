namespace Ferry.Linux.Kvm;

/// <summary>
/// The KVM constants Ferry uses, with the kernel's names and values (&lt;linux/kvm.h&gt;, &lt;asm/kvm.h&gt;).
/// tools/kvm-layout prints each from the headers and KvmLayoutTests compares them.
/// </summary>
public static class KvmConstants
{
    /// <summary>The only API version KVM has had since 2007; anything else is not KVM as we know it.</summary>
    public const int KVM_API_VERSION = 12;

    // asm/kvm.h sizes
    public const int KVM_NR_INTERRUPTS = 256;
    public const int KVM_IOAPIC_NUM_PINS = 24;
    public const int KVM_NR_IRQCHIPS = 3;
    public const int KVM_APIC_REG_SIZE = 0x400;
    public const int KVM_MAX_XCRS = 16;

    /// <summary>Page of the kvm_run mapping where KVM_EXIT_IO data lives.</summary>
    public const int KVM_PIO_PAGE_OFFSET = 1;

    // exit reasons (kvm_run.exit_reason)
    public const uint KVM_EXIT_UNKNOWN = 0;
    public const uint KVM_EXIT_EXCEPTION = 1;
    public const uint KVM_EXIT_IO = 2;
    public const uint KVM_EXIT_HYPERCALL = 3;
    public const uint KVM_EXIT_DEBUG = 4;
    public const uint KVM_EXIT_HLT = 5;
    public const uint KVM_EXIT_MMIO = 6;
    public const uint KVM_EXIT_IRQ_WINDOW_OPEN = 7;
    public const uint KVM_EXIT_SHUTDOWN = 8;
    public const uint KVM_EXIT_FAIL_ENTRY = 9;
    public const uint KVM_EXIT_INTR = 10;
    public const uint KVM_EXIT_SET_TPR = 11;
    public const uint KVM_EXIT_TPR_ACCESS = 12;
    public const uint KVM_EXIT_NMI = 16;
    public const uint KVM_EXIT_INTERNAL_ERROR = 17;
    public const uint KVM_EXIT_SYSTEM_EVENT = 24;
    public const uint KVM_EXIT_IOAPIC_EOI = 26;
    public const uint KVM_EXIT_HYPERV = 27;
    public const uint KVM_EXIT_X86_RDMSR = 29;
    public const uint KVM_EXIT_X86_WRMSR = 30;
    public const uint KVM_EXIT_DIRTY_RING_FULL = 31;
    public const uint KVM_EXIT_X86_BUS_LOCK = 33;
    public const uint KVM_EXIT_NOTIFY = 37;

    // kvm_run.io.direction
    public const byte KVM_EXIT_IO_IN = 0;
    public const byte KVM_EXIT_IO_OUT = 1;

    // kvm_run.internal.suberror
    public const uint KVM_INTERNAL_ERROR_EMULATION = 1;
    public const uint KVM_INTERNAL_ERROR_SIMUL_EX = 2;
    public const uint KVM_INTERNAL_ERROR_DELIVERY_EV = 3;
    public const uint KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4;
    public const ulong KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES = 1UL << 0;

    // kvm_run.system_event.type
    public const uint KVM_SYSTEM_EVENT_SHUTDOWN = 1;
    public const uint KVM_SYSTEM_EVENT_RESET = 2;
    public const uint KVM_SYSTEM_EVENT_CRASH = 3;
    public const uint KVM_SYSTEM_EVENT_WAKEUP = 4;
    public const uint KVM_SYSTEM_EVENT_SUSPEND = 5;

    // kvm_run.kvm_valid_regs / kvm_dirty_regs
    public const ulong KVM_SYNC_X86_REGS = 1UL << 0;
    public const ulong KVM_SYNC_X86_SREGS = 1UL << 1;
    public const ulong KVM_SYNC_X86_EVENTS = 1UL << 2;

    // capabilities (KVM_CHECK_EXTENSION, KVM_ENABLE_CAP)
    public const int KVM_CAP_IRQCHIP = 0;
    public const int KVM_CAP_HLT = 1;
    public const int KVM_CAP_USER_MEMORY = 3;
    public const int KVM_CAP_SET_TSS_ADDR = 4;
    public const int KVM_CAP_EXT_CPUID = 7;
    public const int KVM_CAP_NR_VCPUS = 9;
    public const int KVM_CAP_NR_MEMSLOTS = 10;
    public const int KVM_CAP_MP_STATE = 14;
    public const int KVM_CAP_SYNC_MMU = 16;
    public const int KVM_CAP_IRQ_ROUTING = 25;
    public const int KVM_CAP_IRQ_INJECT_STATUS = 26;
    public const int KVM_CAP_IRQFD = 32;
    public const int KVM_CAP_PIT2 = 33;
    public const int KVM_CAP_PIT_STATE2 = 35;
    public const int KVM_CAP_IOEVENTFD = 36;
    public const int KVM_CAP_SET_IDENTITY_MAP_ADDR = 37;
    public const int KVM_CAP_ADJUST_CLOCK = 39;
    public const int KVM_CAP_INTERNAL_ERROR_DATA = 40;
    public const int KVM_CAP_VCPU_EVENTS = 41;
    public const int KVM_CAP_DEBUGREGS = 50;
    public const int KVM_CAP_ENABLE_CAP = 54;
    public const int KVM_CAP_XSAVE = 55;
    public const int KVM_CAP_XCRS = 56;
    public const int KVM_CAP_TSC_CONTROL = 60;
    public const int KVM_CAP_GET_TSC_KHZ = 61;
    public const int KVM_CAP_MAX_VCPUS = 66;
    public const int KVM_CAP_TSC_DEADLINE_TIMER = 72;
    public const int KVM_CAP_SYNC_REGS = 74;
    public const int KVM_CAP_KVMCLOCK_CTRL = 76;
    public const int KVM_CAP_READONLY_MEM = 81;
    public const int KVM_CAP_ENABLE_CAP_VM = 98;
    public const int KVM_CAP_VM_ATTRIBUTES = 101;
    public const int KVM_CAP_CHECK_EXTENSION_VM = 105;
    public const int KVM_CAP_SPLIT_IRQCHIP = 121;
    public const int KVM_CAP_VCPU_ATTRIBUTES = 127;
    public const int KVM_CAP_MAX_VCPU_ID = 128;
    public const int KVM_CAP_X2APIC_API = 129;
    public const int KVM_CAP_IMMEDIATE_EXIT = 136;
    public const int KVM_CAP_X86_DISABLE_EXITS = 143;
    public const int KVM_CAP_GET_MSR_FEATURES = 153;
    public const int KVM_CAP_EXCEPTION_PAYLOAD = 164;
    public const int KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = 168;
    public const int KVM_CAP_DIRTY_LOG_RING = 192;
    public const int KVM_CAP_X86_TRIPLE_FAULT_EVENT = 218;
    public const int KVM_CAP_XSAVE2 = 208;
    public const int KVM_CAP_VM_TSC_CONTROL = 214;
    public const int KVM_CAP_SYSTEM_EVENT_DATA = 215;

    // kvm_userspace_memory_region.flags
    public const uint KVM_MEM_LOG_DIRTY_PAGES = 1u << 0;
    public const uint KVM_MEM_READONLY = 1u << 1;

    // kvm_irqchip.chip_id
    public const uint KVM_IRQCHIP_PIC_MASTER = 0;
    public const uint KVM_IRQCHIP_PIC_SLAVE = 1;
    public const uint KVM_IRQCHIP_IOAPIC = 2;

    // kvm_pit_config.flags, kvm_pit_state2.flags
    public const uint KVM_PIT_SPEAKER_DUMMY = 1;
    public const uint KVM_PIT_FLAGS_HPET_LEGACY = 0x00000001;
    public const uint KVM_PIT_FLAGS_SPEAKER_DATA_ON = 0x00000002;

    // kvm_mp_state.mp_state (x86 ones)
    public const uint KVM_MP_STATE_RUNNABLE = 0;
    public const uint KVM_MP_STATE_UNINITIALIZED = 1;
    public const uint KVM_MP_STATE_INIT_RECEIVED = 2;
    public const uint KVM_MP_STATE_HALTED = 3;
    public const uint KVM_MP_STATE_SIPI_RECEIVED = 4;
    public const uint KVM_MP_STATE_AP_RESET_HOLD = 9;

    // kvm_vcpu_events.flags
    public const uint KVM_VCPUEVENT_VALID_NMI_PENDING = 0x00000001;
    public const uint KVM_VCPUEVENT_VALID_SIPI_VECTOR = 0x00000002;
    public const uint KVM_VCPUEVENT_VALID_SHADOW = 0x00000004;
    public const uint KVM_VCPUEVENT_VALID_SMM = 0x00000008;
    public const uint KVM_VCPUEVENT_VALID_PAYLOAD = 0x00000010;
    public const uint KVM_VCPUEVENT_VALID_TRIPLE_FAULT = 0x00000020;

    // kvm_vcpu_events.interrupt.shadow
    public const byte KVM_X86_SHADOW_INT_MOV_SS = 0x01;
    public const byte KVM_X86_SHADOW_INT_STI = 0x02;

    // kvm_cpuid_entry2.flags
    public const uint KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1u << 0;

    // kvm_clock_data.flags
    public const uint KVM_CLOCK_TSC_STABLE = 2;
    public const uint KVM_CLOCK_REALTIME = 1u << 2;
    public const uint KVM_CLOCK_HOST_TSC = 1u << 3;

    // kvm_irq_routing_entry.type
    public const uint KVM_IRQ_ROUTING_IRQCHIP = 1;
    public const uint KVM_IRQ_ROUTING_MSI = 2;

    // kvm_irqfd.flags
    public const uint KVM_IRQFD_FLAG_DEASSIGN = 1u << 0;
    public const uint KVM_IRQFD_FLAG_RESAMPLE = 1u << 1;

    // kvm_ioeventfd.flags
    public const uint KVM_IOEVENTFD_FLAG_DATAMATCH = 1u << 0;
    public const uint KVM_IOEVENTFD_FLAG_PIO = 1u << 1;
    public const uint KVM_IOEVENTFD_FLAG_DEASSIGN = 1u << 2;

    // KVM_ENABLE_CAP(KVM_CAP_X86_DISABLE_EXITS) args[0]
    public const uint KVM_X86_DISABLE_EXITS_HLT = 1u << 1;

    // vCPU device attributes: the TSC offset, which a migration must carry for guests that read the TSC.
    public const uint KVM_VCPU_TSC_CTRL = 0;
    public const ulong KVM_VCPU_TSC_OFFSET = 0;
}
