/* Post-copy test program (PostcopyRamTests): S-mode code under Sv39 reaches pages the host has made missing before
 * the hart started, each in a different way. The page tables and the test pages are written by the host, not here,
 * so the first access to each is the one under test. Physical layout (the host's PostcopyRamTests.Sv39 names it):
 *   0x8040_0000 root: [2] a gigapage mapping 0x8000_0000 to itself (S, RWX, A and D set: this program's code, stack
 *               and data); [3] -> l1                                                       (missing: a walk reads it)
 *   0x8040_1000 l1: [0] -> l0                                                              (missing: a walk reads it)
 *   0x8040_2000 l0: 4 KiB leaves at VA 0xc000_0000 + k pages, A and D clear (the walk sets them)     (missing)
 *               [0] DATA, [1] STORE, [2] CODE (X only), [3] AMO, [4] SPAN1, [5] SPAN2, [6] SPAN3, [7] SPAN4
 *   0x8040_3000 + k * 0x1000: the pages of l0[k]; SPAN1 and SPAN3 are present, the others missing.
 * Exit codes: 1 the load from DATA; 2 a store to STORE read back; 3 the function on CODE; 4-5 amoadd.d on AMO (old
 * value, new value); 6 a misaligned load across SPAN1 | SPAN2; 7 a misaligned store across SPAN3 | SPAN4 read back. */
#include "rt.h"

#define ROOT 0x80400000ul
#define VA 0xc0000000ul
#define PAGE 0x1000ul

static volatile u64 results[8];

static i64 s_test(i64 arg)
{
    (void)arg;
    results[0] = ld64(VA);
    sd64(VA + PAGE + 8, 0xabcdef);
    results[1] = ld64(VA + PAGE + 8);
    i64 (*fn)(i64) = (i64 (*)(i64))(VA + 2 * PAGE);
    results[2] = (u64)fn(5);
    u64 old;
    __asm__ volatile("amoadd.d %0, %2, (%1)" : "=r"(old) : "r"(VA + 3 * PAGE), "r"(7ul) : "memory");
    results[3] = old;
    results[4] = ld64(VA + 3 * PAGE);
    results[5] = ld64(VA + 5 * PAGE - 4);
    sd64(VA + 7 * PAGE - 4, 0x0102030405060708ul);
    results[6] = ld64(VA + 7 * PAGE - 4);
    return 0;
}

long main(long hart)
{
    (void)hart;
    csr_write(satp, (8ul << 60) | (ROOT >> 12));
    sfence_vma();
    rt_run_in_mode(PRV_S, s_test, 0);
    csr_write(satp, 0);
    CHECK_EQ(1, results[0], 0x1122334455667788ul);
    CHECK_EQ(2, results[1], 0xabcdef);
    CHECK_EQ(3, results[2], 5 + 0x123);
    CHECK_EQ(4, results[3], 1000);
    CHECK_EQ(5, results[4], 1007);
    CHECK_EQ(6, results[5], 0x8877665544332211ul);
    CHECK_EQ(7, results[6], 0x0102030405060708ul);
    return 0;
}
