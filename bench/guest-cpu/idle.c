/* An idle kernel's tick: the CLINT timer fires every 10 ms (100 Hz), the M-mode handler counts it and re-arms
 * mtimecmp, and otherwise the hart sits in wfi. Prints "idle: start" once the timer is armed and "idle: done" after
 * TICKS ticks (the benchmark measures CPU time between the two lines), then idles TAIL_TICKS more ticks and exits 0,
 * which leaves the benchmark time to read QEMU's CPU time while it is still alive. */
#include "rt.h"

#ifndef TICKS
#define TICKS 1000
#endif
#define TAIL_TICKS 50

#define MTIMECMP0 ((volatile u64 *)0x2004000UL)
#define MTIME ((volatile u64 *)0x200bff8UL)
#define PERIOD 100000UL /* 10 ms at the virt board's 10 MHz timebase */

#define MIE_MTIE (1UL << 7)
#define MSTATUS_MIE (1UL << 3)

static volatile u64 ticks;

u64 trap_handler(u64 cause, u64 epc, u64 tval)
{
    if (cause == (MCAUSE_INTERRUPT | IRQ_M_TIMER)) {
        ticks = ticks + 1;
        /* Next deadline from the previous one, not from now: the tick rate stays 100 Hz even if a handler runs late. */
        *MTIMECMP0 = *MTIMECMP0 + PERIOD;
        return epc;
    }
    rt_unexpected_trap(cause, epc, tval);
}

static void idle_until(u64 n)
{
    while (ticks < n) __asm__ volatile("wfi");
}

int main(void)
{
    rt_puts("idle: start\n");
    *MTIMECMP0 = *MTIME + PERIOD;
    csr_set(mie, MIE_MTIE);
    csr_set(mstatus, MSTATUS_MIE);
    idle_until(TICKS);
    rt_puts("idle: done ticks=");
    rt_putdec(ticks);
    rt_putc('\n');
    idle_until(TICKS + TAIL_TICKS);
    return 0;
}
