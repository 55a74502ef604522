/* amo_counter: run with 2 harts. Each hart adds 1 to a shared word N = 200000 times: the first half with
 * amoadd.w, the second with lr.w/sc.w retry loops. Hart 1 then raises a done flag; hart 0, when it has finished
 * its own share and seen the flag, checks the total. Exit codes:
 *  1  the total is not exactly 2 * N (a lost or duplicated update; the value printed is the total)
 *  2  run with fewer than 2 harts (hart 0 waited for hart 1 for about 2^31 iterations)
 */
#include "rt.h"

#define N 200000

static volatile u32 counter __attribute__((aligned(64)));
static volatile u32 done __attribute__((aligned(64)));

static void add_amo(void) { __asm__ volatile("amoadd.w zero, %0, (%1)" : : "r"(1), "r"(&counter) : "memory"); }

static void add_lrsc(void)
{
    u32 tmp, fail;
    __asm__ volatile(
        "1: lr.w %0, (%2)\n"
        "   addiw %0, %0, 1\n"
        "   sc.w %1, %0, (%2)\n"
        "   bnez %1, 1b\n"
        : "=&r"(tmp), "=&r"(fail) : "r"(&counter) : "memory");
}

long main(long hart)
{
    if (hart > 1) for (;;) __asm__ volatile("wfi");
    for (int i = 0; i < N / 2; i++) add_amo();
    for (int i = 0; i < N / 2; i++) add_lrsc();
    if (hart == 1)
    {
        __asm__ volatile("fence rw, w" ::: "memory");   /* release: our updates before the flag */
        done = 1;
        for (;;) __asm__ volatile("wfi");
    }
    for (u64 spins = 0; done == 0; spins++)
    {
        if (spins > (1UL << 31)) rt_fail(2, counter);
    }
    __asm__ volatile("fence r, rw" ::: "memory");
    if (counter != 2 * N) rt_fail(1, counter);
    rt_puts("amo_counter ok\n");
    return 0;
}
