/* GDT/TSS/IDT, exceptions, interrupts and the service calls from ring 3. */
#include "kernel.h"
#include "x86.h"

#define TSS_SEL 0x28
#define VEC_UD 6
#define VEC_DF 8
#define VEC_PF 14

struct tss {
    u32 reserved0;
    u64 rsp[3];
    u64 reserved1;
    u64 ist[7];
    u64 reserved2;
    u16 reserved3;
    u16 iomap_base;
} __attribute__((packed));

struct idt_entry {
    u16 off_lo;
    u16 sel;
    u8 ist;
    u8 type;
    u16 off_mid;
    u32 off_hi;
    u32 reserved;
};

extern u64 gdt[];
extern char isr_stubs[];

static struct tss tss;
static struct idt_entry idt[256] __attribute__((aligned(16)));
static u8 kernel_stack[16384] __attribute__((aligned(16)));   /* ring 3 -> ring 0 (TSS.rsp0) */
static u8 df_stack[4096] __attribute__((aligned(16)));        /* #DF runs on its own stack (IST1) */

void cpu_init(void)
{
    tss.rsp[0] = (u64)(kernel_stack + sizeof(kernel_stack));
    tss.ist[0] = (u64)(df_stack + sizeof(df_stack));
    tss.iomap_base = sizeof(tss); /* no I/O bitmap: ring 3 has no port access */
    u64 base = (u64)&tss, limit = sizeof(tss) - 1;
    gdt[TSS_SEL / 8] = (limit & 0xffff) | (base & 0xffffff) << 16 | 0x89UL << 40 /* present, 64-bit TSS */
                       | ((limit >> 16) & 0xf) << 48 | ((base >> 24) & 0xff) << 56;
    gdt[TSS_SEL / 8 + 1] = base >> 32;
    __asm__ volatile("ltr %w0" : : "r"(TSS_SEL));

    for (u32 v = 0; v < 256; v++) {
        u64 h = (u64)isr_stubs + 16 * v;
        idt[v] = (struct idt_entry){
            .off_lo = (u16)h,
            .sel = 0x08,
            .ist = v == VEC_DF ? 1 : 0,
            .type = 0x8E, /* present, DPL 0, interrupt gate (IF cleared on entry) */
            .off_mid = (u16)(h >> 16),
            .off_hi = (u32)(h >> 32),
        };
    }
    struct {
        u16 limit;
        u64 base;
    } __attribute__((packed)) idtr = { sizeof(idt) - 1, (u64)idt };
    __asm__ volatile("lidt %0" : : "m"(idtr));

    /* Let ring 3 use SSE (gcc vectorises the dirtier's page fill): CR0.MP on, CR0.EM off, CR4.OSFXSR and
     * OSXMMEXCPT on. Ring-0 code is built with -mgeneral-regs-only, so interrupts need not save FP state. */
    write_cr0((read_cr0() & ~(1UL << 2)) | (1UL << 1));
    write_cr4(read_cr4() | (1UL << 9) | (1UL << 10));
}

static const char *const exception_names[32] = {
    "#DE divide error", "#DB debug", "NMI", "#BP breakpoint", "#OF overflow", "#BR bound range",
    "#UD invalid opcode", "#NM device not available", "#DF double fault", "coprocessor overrun",
    "#TS invalid TSS", "#NP segment not present", "#SS stack fault", "#GP general protection",
    "#PF page fault", "reserved 15", "#MF x87 error", "#AC alignment check", "#MC machine check",
    "#XM SIMD error", "#VE virtualization", "#CP control protection",
};

static void exception(struct frame *f)
{
    char line[256];
    struct buf b = BUF_ON(line);
    b_str(&b, "panic: exception ");
    b_u64(&b, f->vector);
    b_str(&b, " ");
    b_str(&b, exception_names[f->vector] ? exception_names[f->vector] : "reserved");
    b_str(&b, (f->cs & 3) == 3 ? " in user mode" : " in kernel mode");
    b_str(&b, " rip=");
    b_hex(&b, f->rip);
    b_str(&b, " rsp=");
    b_hex(&b, f->rsp);
    b_str(&b, " rflags=");
    b_hex(&b, f->rflags);
    b_str(&b, " error=");
    b_hex(&b, f->error);
    if (f->vector == VEC_PF) {
        b_str(&b, " addr=");
        b_hex(&b, read_cr2());
    }
    panic(&b);
}

static u64 time_ns(void)
{
    u64 t = rdtsc() - boot_info.tsc_boot, k = tsc_khz();
    return t / k * 1000000 + t % k * 1000000 / k;
}

static void bad_service(struct frame *f)
{
    char line[160];
    struct buf b = BUF_ON(line);
    b_str(&b, "panic: bad service call rax=");
    b_u64(&b, f->rax);
    b_str(&b, " rdi=");
    b_hex(&b, f->rdi);
    b_str(&b, " rsi=");
    b_hex(&b, f->rsi);
    b_str(&b, " at rip=");
    b_hex(&b, f->rip);
    panic(&b);
}

/* A ud2 (0f 0b) executed in ring 3 is a service call; any other #UD is a crash. */
static bool service(struct frame *f)
{
    if ((f->cs & 3) != 3 || !user_range_ok(f->rip, 2) || *(const u16 *)f->rip != 0x0b0f)
        return false;
    switch (f->rax) {
    case SVC_WRITE:
        if (!user_range_ok(f->rdi, f->rsi))
            bad_service(f);
        serial_write((const char *)f->rdi, f->rsi);
        break;
    case SVC_TIME_NS:
        f->rax = time_ns();
        break;
    case SVC_SLEEP:
        /* Interrupts are off in here (interrupt gate); the timer interrupt wakes each hlt. */
        while (rdtsc() < f->rdi && boot_info.in_head == boot_info.in_tail) {
            sti_hlt();
            cli();
        }
        break;
    case SVC_EXIT:
        shutdown((u32)f->rdi);
    default:
        bad_service(f);
    }
    f->rip += 2;
    return true;
}

void trap(struct frame *f)
{
    if (f->vector == VEC_TIMER) {
        serial_poll_input();
        apic_eoi();
        return;
    }
    if (f->vector == VEC_UD && service(f))
        return;
    if (f->vector < 32)
        exception(f);
    /* 8259 spurious IRQs (7 and 15) and the LAPIC spurious vector take no EOI; all 8259 lines are masked. */
    if (f->vector == VEC_APIC_SPURIOUS || f->vector == VEC_PIC_MASTER + 7 || f->vector == VEC_PIC_SLAVE + 7)
        return;
    char line[64];
    struct buf b = BUF_ON(line);
    b_str(&b, "warning: unexpected interrupt vector ");
    b_u64(&b, f->vector);
    serial_line(&b);
    apic_eoi();
}
