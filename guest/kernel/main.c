/* Boot: start_info -> command line -> page tables -> CPU tables -> timers -> ring 3. */
#include "kernel.h"
#include "x86.h"

#define ISA_DEBUG_EXIT 0xf4

extern char user_start[], user_stack_top[];

static char cmdline[1024];
static bool shutting_down;

/*
 * Every way out, tried in order: QEMU's isa-debug-exit (when present QEMU exits with code * 2 + 1), an i8042
 * reset pulse (Firecracker, Ferry, QEMU pc), then a triple fault (an empty IDT and a fault), which every VMM
 * treats as a reset. "exit <code>" is printed first, so a VMM without an exit port still learns the code.
 */
void shutdown(u32 code)
{
    cli();
    if (!shutting_down) {
        shutting_down = true;
        char line[32];
        struct buf b = BUF_ON(line);
        b_str(&b, "exit ");
        b_u64(&b, code);
        serial_line(&b);
    }
    outl(ISA_DEBUG_EXIT, code);
    outb(0x64, 0xFE);
    struct {
        u16 limit;
        u64 base;
    } __attribute__((packed)) none = { 0, 0 };
    __asm__ volatile("lidt %0; ud2" : : "m"(none));
    for (;;)
        __asm__ volatile("hlt");
}

void panic(struct buf *why)
{
    if (!shutting_down)
        serial_line(why);
    shutdown(EXIT_PANIC);
}

static void say(struct buf *b)
{
    serial_line(b);
    b->len = 0;
}

void kmain(u32 start_info_pa)
{
    u64 tsc0 = rdtsc();
    char line[512];
    struct buf b = BUF_ON(line);

    serial_init();
    b_str(&b, "ferry-guest: PVH boot");
    say(&b);

    memory_init(start_info_pa, cmdline, sizeof(cmdline));
    b_str(&b, "cmdline: \"");
    b_str(&b, cmdline);
    b_str(&b, "\"");
    say(&b);

    struct config *cfg = &boot_info.cfg;
    struct ram_range ur = memory_user_range();
    if (!cmdline_parse(cmdline, cfg, &b) || !config_fit_memory(cfg, ur.size, &b)) {
        say(&b);
        shutdown(EXIT_BAD_CMDLINE);
    }

    u64 apic_base;
    const char *apic = apic_init(cfg->apic, cfg->hz, &apic_base);
    paging_init(apic_base);
    cpu_init();
    pic_disable();
    const char *tsc_source = tsc_init();
    apic_start_timer();

    b_str(&b, "memory: ");
    b_u64(&b, memory_total() / MiB);
    b_str(&b, " MiB, workload RAM ");
    b_hex(&b, ur.base);
    b_str(&b, "..");
    b_hex(&b, ur.base + ur.size);
    b_str(&b, " (");
    b_u64(&b, ur.size / MiB);
    b_str(&b, " MiB)");
    say(&b);
    b_str(&b, "tsc: ");
    b_u64(&b, tsc_khz());
    b_str(&b, " kHz from ");
    b_str(&b, tsc_source);
    say(&b);
    b_str(&b, "timer: ");
    b_str(&b, apic);
    b_str(&b, " periodic ");
    b_u64(&b, cfg->hz);
    b_str(&b, " Hz (timer clock ");
    b_u64(&b, apic_timer_khz());
    b_str(&b, " kHz)");
    say(&b);
    config_describe(cfg, &b);
    say(&b);

    boot_info.tsc_khz = tsc_khz();
    boot_info.tsc_boot = tsc0;
    boot_info.user_ram_base = ur.base;
    boot_info.user_ram_size = ur.size;
    boot_info.timer_hz = cfg->hz;
    b_str(&b, "boot: ");
    b_u64(&b, tsc_to_us(rdtsc() - tsc0));
    b_str(&b, " us in ring 0, entering ring 3");
    say(&b);
    enter_user((u64)user_start, (u64)user_stack_top);
}
