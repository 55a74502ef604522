/* pmp: physical memory protection checked on S (and U) accesses with paging off. Entries, lowest number wins:
 *   0  TOR [0, R)          RWX   (code, data, stacks, devices below the test pages)
 *   1  TOR [R, R+4K)       R     (read-only page)
 *   2  NAPOT [D, D+4K)     none  (deny page)
 *   3  TOR [D+4K, D+8K) with pmpaddr3 < pmpaddr2's top: an empty TOR range matches nothing
 *   4  NAPOT everything    RWX
 * where R = __free_ram and D = R + 8K. Exit codes:
 *  1-9   S loads from the read-only page work; stores fault (store access fault 7, mtval = the address); fetches
 *        fault (instruction access fault 1, mtval = the address); U is checked like S
 * 10-15  the NAPOT deny page: load (5) and store (7) access faults with mtval; the page after it is reachable
 *        (entry 4), so the NAPOT size is exactly 4 KiB
 * 16-19  a misaligned store straddling into the read-only page faults (7, mtval = the store's address) and writes
 *        nothing, not even its bytes on the writable page before it
 * 20-29  M is not checked by unlocked entries; pmpcfg reads back what was written
 * 30-39  a locked entry (L) applies to M too, and writes to a locked entry's pmpcfg and pmpaddr are ignored
 */
#include "rt.h"

#define PMP_R 1
#define PMP_W 2
#define PMP_X 4
#define PMP_TOR (1 << 3)
#define PMP_NAPOT (3 << 3)
#define PMP_L 0x80

static i64 s_load(i64 a) { return (i64)ld64((u64)a); }
static i64 s_store(i64 a) { sd64((u64)a, 0x77); return 0; }
static i64 s_store_wide(i64 a) { sd64((u64)a, 0x1122334455667788UL); return 0; }
static i64 s_fetch(i64 a)
{
    __asm__ volatile("la t0, 1f\n sd t0, 0(%1)\n jalr ra, 0(%0)\n 1:" : : "r"(a), "r"(&rt_trap_recover) : "t0", "ra", "memory");
    return 0;
}

static u64 run(int mode, i64 (*fn)(i64), u64 a)
{
    rt_trap_cause = -1;
    rt_trap_tval = 0;
    rt_run_in_mode(mode, fn, (i64)a);
    return rt_trap_cause;
}

long main(long hart)
{
    (void)hart;
    u64 r = (u64)__free_ram, d = r + 0x2000;
    for (u64 a = r; a < r + 0x4000; a += 8) sd64(a, a);     /* each word holds its own address */
    sw32(r + 0x10, 0x00008067);                              /* a `ret` on the read-only page, for the fetch test */
    __asm__ volatile("fence.i" ::: "memory");

    csr_write(pmpaddr0, r >> 2);
    csr_write(pmpaddr1, (r + 0x1000) >> 2);
    csr_write(pmpaddr2, (d >> 2) | 0x1ff);                   /* NAPOT 4 KiB: 9 trailing ones */
    csr_write(pmpaddr3, (d + 0x1000) >> 2);                  /* TOR from pmpaddr2 (its raw value) down: empty */
    csr_write(pmpaddr4, -1UL);
    u64 cfg = (PMP_TOR | PMP_R | PMP_W | PMP_X) | ((u64)(PMP_TOR | PMP_R) << 8) | ((u64)PMP_NAPOT << 16)
            | ((u64)(PMP_TOR | PMP_R | PMP_W | PMP_X) << 24) | ((u64)(PMP_NAPOT | PMP_R | PMP_W | PMP_X) << 32);
    csr_write(pmpcfg0, cfg);
    CHECK_EQ(20, csr_read(pmpcfg0), cfg);

    CHECK_EQ(1, rt_run_in_mode(PRV_S, s_load, (i64)(r + 0x18)), r + 0x18);
    CHECK_EQ(2, run(PRV_S, s_store, r + 0x20), 7);
    CHECK_EQ(3, rt_trap_tval, r + 0x20);
    CHECK_EQ(4, ld64(r + 0x20), r + 0x20);
    CHECK_EQ(5, run(PRV_S, s_fetch, r + 0x10), 1);
    CHECK_EQ(6, rt_trap_tval, r + 0x10);
    CHECK_EQ(7, rt_trap_epc, r + 0x10);
    CHECK_EQ(8, run(PRV_U, s_store, r + 0x28), 7);
    CHECK_EQ(9, rt_run_in_mode(PRV_U, s_load, (i64)(r + 0x1000)), r + 0x1000);   /* past the TOR top */

    CHECK_EQ(10, run(PRV_S, s_load, d + 0x100), 5);
    CHECK_EQ(11, rt_trap_tval, d + 0x100);
    CHECK_EQ(12, run(PRV_S, s_store, d + 0xff8), 7);
    CHECK_EQ(13, rt_trap_tval, d + 0xff8);
    CHECK_EQ(14, rt_run_in_mode(PRV_S, s_load, (i64)(d + 0x1000)), d + 0x1000);
    CHECK_EQ(15, rt_run_in_mode(PRV_S, s_load, (i64)(d - 8)), d - 8);

    u64 below = ld64(r - 8);
    CHECK_EQ(16, run(PRV_S, s_store_wide, r - 4), 7);
    CHECK_EQ(17, rt_trap_tval, r - 4);
    CHECK_EQ(18, ld64(r - 8), below);
    CHECK_EQ(19, ld64(r), r);

    sd64(r + 0x30, 5);                                       /* M ignores unlocked entries */
    CHECK_EQ(21, ld64(d), d);
    CHECK_EQ(22, rt_trap_count, 6);                          /* only the six faults above */

    /* Lock entry 2: now M is denied too, and the entry cannot be changed. */
    csr_write(pmpcfg0, cfg | ((u64)PMP_L << 16));
    rt_trap_cause = -1;
    (void)ld64(d + 8);
    CHECK_EQ(30, rt_trap_cause, 5);
    CHECK_EQ(31, rt_trap_tval, d + 8);
    csr_write(pmpaddr2, -1UL);
    CHECK_EQ(32, csr_read(pmpaddr2), (d >> 2) | 0x1ff);
    csr_write(pmpcfg0, cfg);                                 /* try to unlock: byte 2 is kept */
    CHECK_EQ(33, (csr_read(pmpcfg0) >> 16) & 0xff, PMP_L | PMP_NAPOT);
    return 0;
}
