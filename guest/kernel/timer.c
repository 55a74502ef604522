/*
 * Time: the 8259 (remapped and masked), the PIT (only to measure the TSC), the TSC, and the LAPIC's periodic timer.
 */
#include "kernel.h"
#include "x86.h"

#define PIT_HZ 1193182UL
/* 20 ms of PIT counts (the 16-bit counter lasts 55 ms). Under PVM each poll is ~4 port exits (~50 us), so the
 * window bounds the error to ~0.25%, and agreed() takes the mean of two windows. */
#define PIT_WINDOW 23864UL

static u64 khz;

/*
 * Firmware-less boot leaves the 8259 at its reset vectors, so IRQ0 would arrive on vector 8 and look like a double
 * fault (measured under PVM, issue 3). Remap both chips above the exceptions, then mask every line: all our
 * interrupts come from the LAPIC.
 */
void pic_disable(void)
{
    outb(0x20, 0x11);           /* ICW1: edge, cascade, ICW4 follows */
    outb(0xA0, 0x11);
    outb(0x21, VEC_PIC_MASTER); /* ICW2: vector base */
    outb(0xA1, VEC_PIC_SLAVE);
    outb(0x21, 0x04);           /* ICW3: slave on IRQ2 */
    outb(0xA1, 0x02);
    outb(0x21, 0x01);           /* ICW4: 8086 mode */
    outb(0xA1, 0x01);
    outb(0x21, 0xff);           /* OCW1: mask all */
    outb(0xA1, 0xff);
}

/* Latch and read PIT channel 0's count. */
static u16 pit_read(void)
{
    outb(0x43, 0x00);
    u8 lo = inb(0x40);
    u8 hi = inb(0x40);
    return (u16)(hi << 8 | lo);
}

/*
 * One measurement: channel 0 in mode 0 counts down once from 0xffff (and then stops interrupting, which also
 * silences the BIOS's 18.2 Hz tick: IRQ0 is masked, but the host still pays for a periodic PIT). Channel 0 rather
 * than the usual channel 2 because channel 2's gate needs port 0x61, which not every machine has (QEMU microvm).
 */
static u64 tsc_khz_from_pit_once(void)
{
    outb(0x43, 0x30); /* channel 0, lo/hi byte, mode 0 */
    outb(0x40, 0xff);
    outb(0x40, 0xff);
    u16 c0 = pit_read();
    u64 t0 = rdtsc();
    for (u32 i = 0; i < 10000000; i++) {
        u16 c = pit_read();
        u64 t = rdtsc();
        if (c > c0)
            return 0; /* wrapped, or no PIT: the count must only go down */
        if ((u64)(c0 - c) >= PIT_WINDOW)
            return (t - t0) * PIT_HZ / (c0 - c) / 1000;
    }
    return 0;
}

/*
 * Repeats a measurement until two in a row agree within 0.2%. A host stall inside a window (a descheduled QEMU
 * thread on a loaded host; seen as a 4x error under TCG) wraps the PIT or falls between a counter read and its TSC
 * read, and skews that window alone; two windows skewed alike are unlikely. Gives up (0) after 12 tries.
 */
static u64 agreed(u64 (*measure)(void))
{
    u64 prev = measure();
    for (int i = 0; i < 12; i++) {
        u64 cur = measure();
        u64 diff = cur > prev ? cur - prev : prev - cur;
        if (cur && prev && diff * 500 <= prev)
            return (cur + prev) / 2;
        prev = cur;
    }
    return 0;
}

const char *tsc_init(void)
{
    u32 max = cpuid(0, 0).a;
    if (max >= 0x15) {
        /* Leaf 0x15: TSC = crystal * ebx / eax; exact when the crystal frequency (ecx) is given. */
        struct cpuid r = cpuid(0x15, 0);
        if (r.a && r.b && r.c) {
            khz = (u64)r.c * r.b / r.a / 1000;
            return "cpuid 0x15";
        }
    }
    if (cpuid(1, 0).c & (1u << 31)) {
        /* Hypervisor timing leaf 0x40000010 (eax = TSC kHz), offered by KVM/QEMU and VMware when enabled. */
        struct cpuid h = cpuid(0x40000000, 0);
        if (h.a >= 0x40000010) {
            struct cpuid t = cpuid(0x40000010, 0);
            if (t.a) {
                khz = t.a;
                return "cpuid 0x40000010";
            }
        }
    }
    khz = agreed(tsc_khz_from_pit_once);
    /* Plausible TSC rates are 100 MHz .. 20 GHz; anything else means the PIT did not count. */
    if (khz < 100000 || khz > 20000000) {
        char line[96];
        struct buf b = BUF_ON(line);
        b_str(&b, "panic: cannot measure the TSC: no CPUID frequency and the PIT gave ");
        b_u64(&b, khz);
        b_str(&b, " kHz");
        panic(&b);
    }
    return "pit";
}

u64 tsc_khz(void) { return khz; }

u64 tsc_to_us(u64 ticks) { return ticks / khz * 1000 + ticks % khz * 1000 / khz; }

/*
 * LAPIC: x2APIC through MSRs when CPUID offers it (apic=auto) or when asked, else xAPIC through MMIO. The register
 * offsets are the xAPIC ones; x2APIC's MSR is 0x800 + offset / 16.
 */
#define APIC_EOI 0x0B0
#define APIC_SVR 0x0F0
#define APIC_LVT_TIMER 0x320
#define APIC_TIMER_INIT 0x380
#define APIC_TIMER_CUR 0x390
#define APIC_TIMER_DIV 0x3E0
#define LVT_MASKED (1u << 16)
#define LVT_PERIODIC (1u << 17)
#define APIC_BASE_ENABLE (1UL << 11)
#define APIC_BASE_X2APIC (1UL << 10)

static bool x2apic;
static volatile u32 *xapic;
static u64 apic_khz;
static u32 timer_hz;

static void apic_write(u32 reg, u32 v)
{
    if (x2apic)
        wrmsr(0x800 + reg / 16, v);
    else
        xapic[reg / 4] = v;
}

static u32 apic_read(u32 reg)
{
    return x2apic ? (u32)rdmsr(0x800 + reg / 16) : xapic[reg / 4];
}

void apic_eoi(void) { apic_write(APIC_EOI, 0); }

const char *apic_init(u32 mode, u32 hz, u64 *apic_base_out)
{
    bool has_x2apic = cpuid(1, 0).c & (1u << 21);
    if (mode == APIC_X2APIC && !has_x2apic) {
        char line[64];
        struct buf b = BUF_ON(line);
        b_str(&b, "error: apic=x2apic but CPUID has no x2APIC");
        serial_line(&b);
        shutdown(EXIT_BAD_CMDLINE);
    }
    x2apic = mode == APIC_X2APIC || (mode == APIC_AUTO && has_x2apic);
    u64 base = rdmsr(MSR_APIC_BASE);
    if (x2apic) {
        /* Enable then switch: x2APIC mode is entered from xAPIC-enabled state. */
        wrmsr(MSR_APIC_BASE, base | APIC_BASE_ENABLE);
        wrmsr(MSR_APIC_BASE, base | APIC_BASE_ENABLE | APIC_BASE_X2APIC);
        *apic_base_out = 0;
    } else {
        wrmsr(MSR_APIC_BASE, base | APIC_BASE_ENABLE);
        *apic_base_out = base & 0xffffff000UL;
        xapic = (volatile u32 *)*apic_base_out;
    }
    timer_hz = hz;
    return x2apic ? "x2apic" : "xapic";
}

/* One measurement: 10 ms against the TSC. The timer ran ~1 GHz under PVM, 10^7 counts here, far from 2^32. */
static u64 apic_khz_once(void)
{
    apic_write(APIC_TIMER_INIT, 0xffffffffu);
    u64 t0 = rdtsc(), wait = khz * 10;
    while (rdtsc() - t0 < wait)
        cpu_relax();
    u32 cur = apic_read(APIC_TIMER_CUR);
    u64 elapsed = rdtsc() - t0;
    return (u64)(0xffffffffu - cur) * khz / elapsed;
}

/* Called after paging_init mapped the xAPIC page: software-enable, measure the timer, start it periodic. */
void apic_start_timer(void)
{
    apic_write(APIC_SVR, 0x100 | VEC_APIC_SPURIOUS);
    apic_write(APIC_TIMER_DIV, 0xB); /* divide by 1 */
    apic_write(APIC_LVT_TIMER, LVT_MASKED | VEC_TIMER);
    apic_khz = agreed(apic_khz_once);
    u64 count = apic_khz * 1000 / timer_hz;
    if (count == 0 || count > 0xffffffffUL) {
        char line[96];
        struct buf b = BUF_ON(line);
        b_str(&b, "panic: LAPIC timer runs at ");
        b_u64(&b, apic_khz);
        b_str(&b, " kHz, cannot make the asked period");
        panic(&b);
    }
    apic_write(APIC_TIMER_INIT, 0);
    apic_write(APIC_LVT_TIMER, LVT_PERIODIC | VEC_TIMER);
    apic_write(APIC_TIMER_INIT, (u32)count);
}

u64 apic_timer_khz(void) { return apic_khz; }
