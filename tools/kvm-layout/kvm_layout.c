/*
 * kvm_layout: print what the kernel headers say about every KVM struct, field, constant and ioctl number that
 * Ferry.Linux models, one "name value" line each, so tests/Ferry.Linux.Tests can compare them with the C# side.
 *
 *   sizeof.<struct> N              sizeof(struct <struct>)
 *   offsetof.<struct>.<field> N    offsetof(struct <struct>, <field>); nested members as a.b
 *   sizeof.<struct>.<field> N      sizeof the member
 *   lengthof.<struct>.<field> N    element count of an array member (C# flattens 2-D arrays: ARRAY2)
 *   <NAME> N                       a constant or ioctl number
 *
 * Build: gcc -O0 -o kvm_layout kvm_layout.c   (x86-64; needs linux-libc-dev). Depends on nothing but libc.
 */
#include <stddef.h>
#include <stdio.h>
#include <linux/kvm.h>

#define SIZE(T) printf("sizeof.%s %zu\n", #T, sizeof(struct T));
#define MEMBER(T, m) (((struct T *)0)->m)
#define FIELD(T, m)                                                             \
	printf("offsetof.%s.%s %zu\n", #T, #m, offsetof(struct T, m));          \
	printf("sizeof.%s.%s %zu\n", #T, #m, sizeof(MEMBER(T, m)));
#define ARRAY(T, m)                                                             \
	FIELD(T, m)                                                             \
	printf("lengthof.%s.%s %zu\n", #T, #m, sizeof(MEMBER(T, m)) / sizeof(MEMBER(T, m)[0]));
#define ARRAY2(T, m)                                                            \
	FIELD(T, m)                                                             \
	printf("lengthof.%s.%s %zu\n", #T, #m, sizeof(MEMBER(T, m)) / sizeof(MEMBER(T, m)[0][0]));
#define VALUE(N) printf("%s %llu\n", #N, (unsigned long long)(N));

static void structs_x86(void)
{
	SIZE(kvm_regs)
	FIELD(kvm_regs, rax) FIELD(kvm_regs, rbx) FIELD(kvm_regs, rcx) FIELD(kvm_regs, rdx)
	FIELD(kvm_regs, rsi) FIELD(kvm_regs, rdi) FIELD(kvm_regs, rsp) FIELD(kvm_regs, rbp)
	FIELD(kvm_regs, r8) FIELD(kvm_regs, r9) FIELD(kvm_regs, r10) FIELD(kvm_regs, r11)
	FIELD(kvm_regs, r12) FIELD(kvm_regs, r13) FIELD(kvm_regs, r14) FIELD(kvm_regs, r15)
	FIELD(kvm_regs, rip) FIELD(kvm_regs, rflags)

	SIZE(kvm_segment)
	FIELD(kvm_segment, base) FIELD(kvm_segment, limit) FIELD(kvm_segment, selector) FIELD(kvm_segment, type)
	FIELD(kvm_segment, present) FIELD(kvm_segment, dpl) FIELD(kvm_segment, db) FIELD(kvm_segment, s)
	FIELD(kvm_segment, l) FIELD(kvm_segment, g) FIELD(kvm_segment, avl) FIELD(kvm_segment, unusable)
	FIELD(kvm_segment, padding)

	SIZE(kvm_dtable)
	FIELD(kvm_dtable, base) FIELD(kvm_dtable, limit) ARRAY(kvm_dtable, padding)

	SIZE(kvm_sregs)
	FIELD(kvm_sregs, cs) FIELD(kvm_sregs, ds) FIELD(kvm_sregs, es) FIELD(kvm_sregs, fs)
	FIELD(kvm_sregs, gs) FIELD(kvm_sregs, ss) FIELD(kvm_sregs, tr) FIELD(kvm_sregs, ldt)
	FIELD(kvm_sregs, gdt) FIELD(kvm_sregs, idt)
	FIELD(kvm_sregs, cr0) FIELD(kvm_sregs, cr2) FIELD(kvm_sregs, cr3) FIELD(kvm_sregs, cr4) FIELD(kvm_sregs, cr8)
	FIELD(kvm_sregs, efer) FIELD(kvm_sregs, apic_base) ARRAY(kvm_sregs, interrupt_bitmap)

	SIZE(kvm_fpu)
	ARRAY2(kvm_fpu, fpr) FIELD(kvm_fpu, fcw) FIELD(kvm_fpu, fsw) FIELD(kvm_fpu, ftwx) FIELD(kvm_fpu, pad1)
	FIELD(kvm_fpu, last_opcode) FIELD(kvm_fpu, last_ip) FIELD(kvm_fpu, last_dp) ARRAY2(kvm_fpu, xmm)
	FIELD(kvm_fpu, mxcsr) FIELD(kvm_fpu, pad2)

	SIZE(kvm_msr_entry)
	FIELD(kvm_msr_entry, index) FIELD(kvm_msr_entry, reserved) FIELD(kvm_msr_entry, data)
	SIZE(kvm_msrs)
	FIELD(kvm_msrs, nmsrs) FIELD(kvm_msrs, pad)
	SIZE(kvm_msr_list)
	FIELD(kvm_msr_list, nmsrs)

	SIZE(kvm_cpuid_entry2)
	FIELD(kvm_cpuid_entry2, function) FIELD(kvm_cpuid_entry2, index) FIELD(kvm_cpuid_entry2, flags)
	FIELD(kvm_cpuid_entry2, eax) FIELD(kvm_cpuid_entry2, ebx) FIELD(kvm_cpuid_entry2, ecx) FIELD(kvm_cpuid_entry2, edx)
	ARRAY(kvm_cpuid_entry2, padding)
	SIZE(kvm_cpuid2)
	FIELD(kvm_cpuid2, nent) FIELD(kvm_cpuid2, padding)

	SIZE(kvm_pic_state)
	FIELD(kvm_pic_state, last_irr) FIELD(kvm_pic_state, irr) FIELD(kvm_pic_state, imr) FIELD(kvm_pic_state, isr)
	FIELD(kvm_pic_state, priority_add) FIELD(kvm_pic_state, irq_base) FIELD(kvm_pic_state, read_reg_select)
	FIELD(kvm_pic_state, poll) FIELD(kvm_pic_state, special_mask) FIELD(kvm_pic_state, init_state)
	FIELD(kvm_pic_state, auto_eoi) FIELD(kvm_pic_state, rotate_on_auto_eoi)
	FIELD(kvm_pic_state, special_fully_nested_mode) FIELD(kvm_pic_state, init4) FIELD(kvm_pic_state, elcr)
	FIELD(kvm_pic_state, elcr_mask)

	SIZE(kvm_ioapic_state)
	FIELD(kvm_ioapic_state, base_address) FIELD(kvm_ioapic_state, ioregsel) FIELD(kvm_ioapic_state, id)
	FIELD(kvm_ioapic_state, irr) FIELD(kvm_ioapic_state, pad) ARRAY(kvm_ioapic_state, redirtbl)

	SIZE(kvm_pit_channel_state)
	FIELD(kvm_pit_channel_state, count) FIELD(kvm_pit_channel_state, latched_count)
	FIELD(kvm_pit_channel_state, count_latched) FIELD(kvm_pit_channel_state, status_latched)
	FIELD(kvm_pit_channel_state, status) FIELD(kvm_pit_channel_state, read_state)
	FIELD(kvm_pit_channel_state, write_state) FIELD(kvm_pit_channel_state, write_latch)
	FIELD(kvm_pit_channel_state, rw_mode) FIELD(kvm_pit_channel_state, mode) FIELD(kvm_pit_channel_state, bcd)
	FIELD(kvm_pit_channel_state, gate) FIELD(kvm_pit_channel_state, count_load_time)

	SIZE(kvm_pit_state2)
	ARRAY(kvm_pit_state2, channels) FIELD(kvm_pit_state2, flags) ARRAY(kvm_pit_state2, reserved)

	SIZE(kvm_vcpu_events)
	FIELD(kvm_vcpu_events, exception)
	FIELD(kvm_vcpu_events, exception.injected) FIELD(kvm_vcpu_events, exception.nr)
	FIELD(kvm_vcpu_events, exception.has_error_code) FIELD(kvm_vcpu_events, exception.pending)
	FIELD(kvm_vcpu_events, exception.error_code)
	FIELD(kvm_vcpu_events, interrupt)
	FIELD(kvm_vcpu_events, interrupt.injected) FIELD(kvm_vcpu_events, interrupt.nr)
	FIELD(kvm_vcpu_events, interrupt.soft) FIELD(kvm_vcpu_events, interrupt.shadow)
	FIELD(kvm_vcpu_events, nmi)
	FIELD(kvm_vcpu_events, nmi.injected) FIELD(kvm_vcpu_events, nmi.pending)
	FIELD(kvm_vcpu_events, nmi.masked) FIELD(kvm_vcpu_events, nmi.pad)
	FIELD(kvm_vcpu_events, sipi_vector) FIELD(kvm_vcpu_events, flags)
	FIELD(kvm_vcpu_events, smi)
	FIELD(kvm_vcpu_events, smi.smm) FIELD(kvm_vcpu_events, smi.pending)
	FIELD(kvm_vcpu_events, smi.smm_inside_nmi) FIELD(kvm_vcpu_events, smi.latched_init)
	FIELD(kvm_vcpu_events, triple_fault) FIELD(kvm_vcpu_events, triple_fault.pending)
	ARRAY(kvm_vcpu_events, reserved) FIELD(kvm_vcpu_events, exception_has_payload)
	FIELD(kvm_vcpu_events, exception_payload)

	SIZE(kvm_debugregs)
	ARRAY(kvm_debugregs, db) FIELD(kvm_debugregs, dr6) FIELD(kvm_debugregs, dr7) FIELD(kvm_debugregs, flags)
	ARRAY(kvm_debugregs, reserved)

	SIZE(kvm_xsave)
	ARRAY(kvm_xsave, region)

	SIZE(kvm_xcr)
	FIELD(kvm_xcr, xcr) FIELD(kvm_xcr, reserved) FIELD(kvm_xcr, value)
	SIZE(kvm_xcrs)
	FIELD(kvm_xcrs, nr_xcrs) FIELD(kvm_xcrs, flags) ARRAY(kvm_xcrs, xcrs) ARRAY(kvm_xcrs, padding)

	SIZE(kvm_lapic_state)
	ARRAY(kvm_lapic_state, regs)

	SIZE(kvm_sync_regs)
	FIELD(kvm_sync_regs, regs) FIELD(kvm_sync_regs, sregs) FIELD(kvm_sync_regs, events)

	SIZE(kvm_debug_exit_arch)
	FIELD(kvm_debug_exit_arch, exception) FIELD(kvm_debug_exit_arch, pad) FIELD(kvm_debug_exit_arch, pc)
	FIELD(kvm_debug_exit_arch, dr6) FIELD(kvm_debug_exit_arch, dr7)
}

static void structs_generic(void)
{
	SIZE(kvm_userspace_memory_region)
	FIELD(kvm_userspace_memory_region, slot) FIELD(kvm_userspace_memory_region, flags)
	FIELD(kvm_userspace_memory_region, guest_phys_addr) FIELD(kvm_userspace_memory_region, memory_size)
	FIELD(kvm_userspace_memory_region, userspace_addr)

	SIZE(kvm_irq_level)
	FIELD(kvm_irq_level, irq) FIELD(kvm_irq_level, status) FIELD(kvm_irq_level, level)

	SIZE(kvm_irqchip)
	FIELD(kvm_irqchip, chip_id) FIELD(kvm_irqchip, pad) FIELD(kvm_irqchip, chip)
	ARRAY(kvm_irqchip, chip.dummy) FIELD(kvm_irqchip, chip.pic) FIELD(kvm_irqchip, chip.ioapic)

	SIZE(kvm_pit_config)
	FIELD(kvm_pit_config, flags) ARRAY(kvm_pit_config, pad)

	SIZE(kvm_clock_data)
	FIELD(kvm_clock_data, clock) FIELD(kvm_clock_data, flags) FIELD(kvm_clock_data, pad0)
	FIELD(kvm_clock_data, realtime) FIELD(kvm_clock_data, host_tsc) ARRAY(kvm_clock_data, pad)

	SIZE(kvm_dirty_log)
	FIELD(kvm_dirty_log, slot) FIELD(kvm_dirty_log, padding1) FIELD(kvm_dirty_log, dirty_bitmap)
	FIELD(kvm_dirty_log, padding2)

	SIZE(kvm_clear_dirty_log)
	FIELD(kvm_clear_dirty_log, slot) FIELD(kvm_clear_dirty_log, num_pages) FIELD(kvm_clear_dirty_log, first_page)
	FIELD(kvm_clear_dirty_log, dirty_bitmap) FIELD(kvm_clear_dirty_log, padding2)

	SIZE(kvm_signal_mask)
	FIELD(kvm_signal_mask, len)

	SIZE(kvm_mp_state)
	FIELD(kvm_mp_state, mp_state)

	SIZE(kvm_enable_cap)
	FIELD(kvm_enable_cap, cap) FIELD(kvm_enable_cap, flags) ARRAY(kvm_enable_cap, args) ARRAY(kvm_enable_cap, pad)

	SIZE(kvm_irq_routing_irqchip)
	FIELD(kvm_irq_routing_irqchip, irqchip) FIELD(kvm_irq_routing_irqchip, pin)

	SIZE(kvm_irq_routing_msi)
	FIELD(kvm_irq_routing_msi, address_lo) FIELD(kvm_irq_routing_msi, address_hi) FIELD(kvm_irq_routing_msi, data)
	FIELD(kvm_irq_routing_msi, pad) FIELD(kvm_irq_routing_msi, devid)

	SIZE(kvm_irq_routing_entry)
	FIELD(kvm_irq_routing_entry, gsi) FIELD(kvm_irq_routing_entry, type) FIELD(kvm_irq_routing_entry, flags)
	FIELD(kvm_irq_routing_entry, pad) FIELD(kvm_irq_routing_entry, u)
	FIELD(kvm_irq_routing_entry, u.irqchip) FIELD(kvm_irq_routing_entry, u.msi) ARRAY(kvm_irq_routing_entry, u.pad)

	SIZE(kvm_irq_routing)
	FIELD(kvm_irq_routing, nr) FIELD(kvm_irq_routing, flags)

	SIZE(kvm_irqfd)
	FIELD(kvm_irqfd, fd) FIELD(kvm_irqfd, gsi) FIELD(kvm_irqfd, flags) FIELD(kvm_irqfd, resamplefd)
	ARRAY(kvm_irqfd, pad)

	SIZE(kvm_ioeventfd)
	FIELD(kvm_ioeventfd, datamatch) FIELD(kvm_ioeventfd, addr) FIELD(kvm_ioeventfd, len) FIELD(kvm_ioeventfd, fd)
	FIELD(kvm_ioeventfd, flags) ARRAY(kvm_ioeventfd, pad)

	SIZE(kvm_device_attr)
	FIELD(kvm_device_attr, flags) FIELD(kvm_device_attr, group) FIELD(kvm_device_attr, attr)
	FIELD(kvm_device_attr, addr)
}

static void struct_kvm_run(void)
{
	SIZE(kvm_run)
	FIELD(kvm_run, request_interrupt_window) FIELD(kvm_run, immediate_exit) ARRAY(kvm_run, padding1)
	FIELD(kvm_run, exit_reason) FIELD(kvm_run, ready_for_interrupt_injection) FIELD(kvm_run, if_flag)
	FIELD(kvm_run, flags) FIELD(kvm_run, cr8) FIELD(kvm_run, apic_base)

	FIELD(kvm_run, hw) FIELD(kvm_run, hw.hardware_exit_reason)
	FIELD(kvm_run, fail_entry) FIELD(kvm_run, fail_entry.hardware_entry_failure_reason)
	FIELD(kvm_run, fail_entry.cpu)
	FIELD(kvm_run, ex) FIELD(kvm_run, ex.exception) FIELD(kvm_run, ex.error_code)
	FIELD(kvm_run, io) FIELD(kvm_run, io.direction) FIELD(kvm_run, io.size) FIELD(kvm_run, io.port)
	FIELD(kvm_run, io.count) FIELD(kvm_run, io.data_offset)
	FIELD(kvm_run, debug) FIELD(kvm_run, debug.arch)
	FIELD(kvm_run, mmio) FIELD(kvm_run, mmio.phys_addr) ARRAY(kvm_run, mmio.data) FIELD(kvm_run, mmio.len)
	FIELD(kvm_run, mmio.is_write)
	FIELD(kvm_run, hypercall) FIELD(kvm_run, hypercall.nr) ARRAY(kvm_run, hypercall.args)
	FIELD(kvm_run, hypercall.ret) FIELD(kvm_run, hypercall.longmode) FIELD(kvm_run, hypercall.pad)
	FIELD(kvm_run, tpr_access) FIELD(kvm_run, tpr_access.rip) FIELD(kvm_run, tpr_access.is_write)
	FIELD(kvm_run, tpr_access.pad)
	FIELD(kvm_run, internal) FIELD(kvm_run, internal.suberror) FIELD(kvm_run, internal.ndata)
	ARRAY(kvm_run, internal.data)
	FIELD(kvm_run, emulation_failure) FIELD(kvm_run, emulation_failure.suberror)
	FIELD(kvm_run, emulation_failure.ndata) FIELD(kvm_run, emulation_failure.flags)
	FIELD(kvm_run, emulation_failure.insn_size) ARRAY(kvm_run, emulation_failure.insn_bytes)
	FIELD(kvm_run, system_event) FIELD(kvm_run, system_event.type) FIELD(kvm_run, system_event.ndata)
	FIELD(kvm_run, system_event.flags) ARRAY(kvm_run, system_event.data)
	FIELD(kvm_run, eoi) FIELD(kvm_run, eoi.vector)
	FIELD(kvm_run, msr) FIELD(kvm_run, msr.error) ARRAY(kvm_run, msr.pad) FIELD(kvm_run, msr.reason)
	FIELD(kvm_run, msr.index) FIELD(kvm_run, msr.data)
	FIELD(kvm_run, notify) FIELD(kvm_run, notify.flags)
	ARRAY(kvm_run, padding)

	FIELD(kvm_run, kvm_valid_regs) FIELD(kvm_run, kvm_dirty_regs)
	FIELD(kvm_run, s) FIELD(kvm_run, s.regs) ARRAY(kvm_run, s.padding)
}

static void constants(void)
{
	VALUE(KVM_API_VERSION)
	VALUE(KVM_NR_INTERRUPTS) VALUE(KVM_IOAPIC_NUM_PINS) VALUE(KVM_NR_IRQCHIPS) VALUE(KVM_APIC_REG_SIZE)
	VALUE(KVM_MAX_XCRS) VALUE(KVM_PIO_PAGE_OFFSET)

	VALUE(KVM_EXIT_UNKNOWN) VALUE(KVM_EXIT_EXCEPTION) VALUE(KVM_EXIT_IO) VALUE(KVM_EXIT_HYPERCALL)
	VALUE(KVM_EXIT_DEBUG) VALUE(KVM_EXIT_HLT) VALUE(KVM_EXIT_MMIO) VALUE(KVM_EXIT_IRQ_WINDOW_OPEN)
	VALUE(KVM_EXIT_SHUTDOWN) VALUE(KVM_EXIT_FAIL_ENTRY) VALUE(KVM_EXIT_INTR) VALUE(KVM_EXIT_SET_TPR)
	VALUE(KVM_EXIT_TPR_ACCESS) VALUE(KVM_EXIT_NMI) VALUE(KVM_EXIT_INTERNAL_ERROR) VALUE(KVM_EXIT_SYSTEM_EVENT)
	VALUE(KVM_EXIT_IOAPIC_EOI) VALUE(KVM_EXIT_HYPERV) VALUE(KVM_EXIT_X86_RDMSR) VALUE(KVM_EXIT_X86_WRMSR)
	VALUE(KVM_EXIT_DIRTY_RING_FULL) VALUE(KVM_EXIT_X86_BUS_LOCK) VALUE(KVM_EXIT_NOTIFY)
	VALUE(KVM_EXIT_IO_IN) VALUE(KVM_EXIT_IO_OUT)

	VALUE(KVM_INTERNAL_ERROR_EMULATION) VALUE(KVM_INTERNAL_ERROR_SIMUL_EX) VALUE(KVM_INTERNAL_ERROR_DELIVERY_EV)
	VALUE(KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON) VALUE(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)

	VALUE(KVM_SYSTEM_EVENT_SHUTDOWN) VALUE(KVM_SYSTEM_EVENT_RESET) VALUE(KVM_SYSTEM_EVENT_CRASH)
	VALUE(KVM_SYSTEM_EVENT_WAKEUP) VALUE(KVM_SYSTEM_EVENT_SUSPEND)
	VALUE(KVM_SYNC_X86_REGS) VALUE(KVM_SYNC_X86_SREGS) VALUE(KVM_SYNC_X86_EVENTS)

	VALUE(KVM_CAP_IRQCHIP) VALUE(KVM_CAP_HLT) VALUE(KVM_CAP_USER_MEMORY) VALUE(KVM_CAP_SET_TSS_ADDR)
	VALUE(KVM_CAP_EXT_CPUID) VALUE(KVM_CAP_NR_VCPUS) VALUE(KVM_CAP_NR_MEMSLOTS) VALUE(KVM_CAP_MP_STATE)
	VALUE(KVM_CAP_SYNC_MMU) VALUE(KVM_CAP_IRQ_ROUTING) VALUE(KVM_CAP_IRQ_INJECT_STATUS) VALUE(KVM_CAP_IRQFD)
	VALUE(KVM_CAP_PIT2) VALUE(KVM_CAP_PIT_STATE2) VALUE(KVM_CAP_IOEVENTFD) VALUE(KVM_CAP_SET_IDENTITY_MAP_ADDR)
	VALUE(KVM_CAP_ADJUST_CLOCK) VALUE(KVM_CAP_INTERNAL_ERROR_DATA) VALUE(KVM_CAP_VCPU_EVENTS)
	VALUE(KVM_CAP_DEBUGREGS) VALUE(KVM_CAP_ENABLE_CAP) VALUE(KVM_CAP_XSAVE) VALUE(KVM_CAP_XCRS)
	VALUE(KVM_CAP_TSC_CONTROL) VALUE(KVM_CAP_GET_TSC_KHZ) VALUE(KVM_CAP_MAX_VCPUS)
	VALUE(KVM_CAP_TSC_DEADLINE_TIMER) VALUE(KVM_CAP_SYNC_REGS) VALUE(KVM_CAP_KVMCLOCK_CTRL)
	VALUE(KVM_CAP_READONLY_MEM) VALUE(KVM_CAP_ENABLE_CAP_VM) VALUE(KVM_CAP_VM_ATTRIBUTES)
	VALUE(KVM_CAP_CHECK_EXTENSION_VM) VALUE(KVM_CAP_SPLIT_IRQCHIP) VALUE(KVM_CAP_VCPU_ATTRIBUTES)
	VALUE(KVM_CAP_MAX_VCPU_ID) VALUE(KVM_CAP_X2APIC_API) VALUE(KVM_CAP_IMMEDIATE_EXIT)
	VALUE(KVM_CAP_X86_DISABLE_EXITS) VALUE(KVM_CAP_GET_MSR_FEATURES) VALUE(KVM_CAP_EXCEPTION_PAYLOAD)
	VALUE(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) VALUE(KVM_CAP_DIRTY_LOG_RING) VALUE(KVM_CAP_X86_TRIPLE_FAULT_EVENT)
	VALUE(KVM_CAP_XSAVE2) VALUE(KVM_CAP_VM_TSC_CONTROL) VALUE(KVM_CAP_SYSTEM_EVENT_DATA)

	VALUE(KVM_MEM_LOG_DIRTY_PAGES) VALUE(KVM_MEM_READONLY)
	VALUE(KVM_IRQCHIP_PIC_MASTER) VALUE(KVM_IRQCHIP_PIC_SLAVE) VALUE(KVM_IRQCHIP_IOAPIC)
	VALUE(KVM_PIT_SPEAKER_DUMMY) VALUE(KVM_PIT_FLAGS_HPET_LEGACY) VALUE(KVM_PIT_FLAGS_SPEAKER_DATA_ON)
	VALUE(KVM_MP_STATE_RUNNABLE) VALUE(KVM_MP_STATE_UNINITIALIZED) VALUE(KVM_MP_STATE_INIT_RECEIVED)
	VALUE(KVM_MP_STATE_HALTED) VALUE(KVM_MP_STATE_SIPI_RECEIVED) VALUE(KVM_MP_STATE_AP_RESET_HOLD)
	VALUE(KVM_VCPUEVENT_VALID_NMI_PENDING) VALUE(KVM_VCPUEVENT_VALID_SIPI_VECTOR) VALUE(KVM_VCPUEVENT_VALID_SHADOW)
	VALUE(KVM_VCPUEVENT_VALID_SMM) VALUE(KVM_VCPUEVENT_VALID_PAYLOAD) VALUE(KVM_VCPUEVENT_VALID_TRIPLE_FAULT)
	VALUE(KVM_X86_SHADOW_INT_MOV_SS) VALUE(KVM_X86_SHADOW_INT_STI)
	VALUE(KVM_CPUID_FLAG_SIGNIFCANT_INDEX)
	VALUE(KVM_CLOCK_TSC_STABLE) VALUE(KVM_CLOCK_REALTIME) VALUE(KVM_CLOCK_HOST_TSC)
	VALUE(KVM_IRQ_ROUTING_IRQCHIP) VALUE(KVM_IRQ_ROUTING_MSI)
	VALUE(KVM_IRQFD_FLAG_DEASSIGN) VALUE(KVM_IRQFD_FLAG_RESAMPLE)
	VALUE(KVM_IOEVENTFD_FLAG_DATAMATCH) VALUE(KVM_IOEVENTFD_FLAG_PIO) VALUE(KVM_IOEVENTFD_FLAG_DEASSIGN)
	VALUE(KVM_X86_DISABLE_EXITS_HLT)
	VALUE(KVM_VCPU_TSC_CTRL) VALUE(KVM_VCPU_TSC_OFFSET)
}

static void ioctls(void)
{
	VALUE(KVMIO)
	/* system */
	VALUE(KVM_GET_API_VERSION) VALUE(KVM_CREATE_VM) VALUE(KVM_GET_MSR_INDEX_LIST) VALUE(KVM_CHECK_EXTENSION)
	VALUE(KVM_GET_VCPU_MMAP_SIZE) VALUE(KVM_GET_SUPPORTED_CPUID) VALUE(KVM_GET_MSR_FEATURE_INDEX_LIST)
	/* VM */
	VALUE(KVM_CREATE_VCPU) VALUE(KVM_GET_DIRTY_LOG) VALUE(KVM_SET_USER_MEMORY_REGION) VALUE(KVM_SET_TSS_ADDR)
	VALUE(KVM_SET_IDENTITY_MAP_ADDR) VALUE(KVM_CREATE_IRQCHIP) VALUE(KVM_IRQ_LINE) VALUE(KVM_GET_IRQCHIP)
	VALUE(KVM_SET_IRQCHIP) VALUE(KVM_IRQ_LINE_STATUS) VALUE(KVM_SET_GSI_ROUTING) VALUE(KVM_IRQFD)
	VALUE(KVM_CREATE_PIT2) VALUE(KVM_IOEVENTFD) VALUE(KVM_SET_CLOCK) VALUE(KVM_GET_CLOCK) VALUE(KVM_GET_PIT2)
	VALUE(KVM_SET_PIT2) VALUE(KVM_CLEAR_DIRTY_LOG)
	/* VM and vCPU */
	VALUE(KVM_ENABLE_CAP) VALUE(KVM_SET_TSC_KHZ) VALUE(KVM_GET_TSC_KHZ)
	VALUE(KVM_SET_DEVICE_ATTR) VALUE(KVM_GET_DEVICE_ATTR) VALUE(KVM_HAS_DEVICE_ATTR)
	/* vCPU */
	VALUE(KVM_RUN) VALUE(KVM_GET_REGS) VALUE(KVM_SET_REGS) VALUE(KVM_GET_SREGS) VALUE(KVM_SET_SREGS)
	VALUE(KVM_GET_MSRS) VALUE(KVM_SET_MSRS) VALUE(KVM_SET_SIGNAL_MASK) VALUE(KVM_GET_FPU) VALUE(KVM_SET_FPU)
	VALUE(KVM_GET_LAPIC) VALUE(KVM_SET_LAPIC) VALUE(KVM_SET_CPUID2) VALUE(KVM_GET_CPUID2)
	VALUE(KVM_GET_MP_STATE) VALUE(KVM_SET_MP_STATE) VALUE(KVM_GET_VCPU_EVENTS) VALUE(KVM_SET_VCPU_EVENTS)
	VALUE(KVM_GET_DEBUGREGS) VALUE(KVM_SET_DEBUGREGS) VALUE(KVM_GET_XSAVE) VALUE(KVM_SET_XSAVE)
	VALUE(KVM_GET_XCRS) VALUE(KVM_SET_XCRS) VALUE(KVM_KVMCLOCK_CTRL) VALUE(KVM_GET_XSAVE2)
}

int main(void)
{
	structs_x86();
	structs_generic();
	struct_kvm_run();
	constants();
	ioctls();
	return 0;
}
