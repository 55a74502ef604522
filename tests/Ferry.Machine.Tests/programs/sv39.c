/* sv39 (and sv48, which includes this file with LEVELS 4): paging from S and U. Tables are built at run time in
 * M-mode; RAM is identity-mapped (S only) by a gigapage, and aliased at 0x4000_0000 with U set so U code can run
 * (the code is position-independent). The test pages live at VA 0xc000_0000. Faults are not delegated: M's handler
 * records mcause/mtval. Exit codes:
 *  1-9   satp: the mode reads back; a 4 KiB leaf and a 2 MiB megapage translate to the right physical memory
 * 10-19  A/D: hardware sets A on a load (D still clear), D on a store; a store to a page with A = D = 0 sets both
 * 20-29  page faults: load (13) from an invalid PTE, store (15) to a read-only page, fetch (12) from a
 *        non-executable page, each with mtval = the faulting virtual address; a non-canonical address faults
 * 30-39  U and SUM: S loads from a U page fault unless sstatus.SUM; U loads from an S page fault; U can load a U page
 * 40-49  MXR: S loads from an execute-only page fault unless sstatus.MXR
 * 50-59  sfence.vma: a PTE changed to point elsewhere takes effect after sfence.vma
 * 60-69  a misaligned superpage (megapage whose PPN[0] is not zero) faults
 * 70-79  (sv48 only) a 512 GiB level-3 leaf, and a 48-bit non-canonical address faults
 */
#include "rt.h"

#ifndef LEVELS
#define LEVELS 3
#endif

#define PTE_V 1
#define PTE_R 2
#define PTE_W 4
#define PTE_X 8
#define PTE_U 16
#define PTE_G 32
#define PTE_A 64
#define PTE_D 128
#define LEAF_RWX (PTE_V | PTE_R | PTE_W | PTE_X | PTE_A | PTE_D)

#define VA_TEST 0xc0000000ul    /* l0[0..7]: 4 KiB pages */
#define VA_MEGA 0xc0200000ul    /* l1[1]: a 2 MiB megapage */
#define VA_BADMEGA 0xc0400000ul /* l1[2]: a misaligned megapage */
#define U_ALIAS 0x40000000ul

static u64 l2[512] __attribute__((aligned(4096)));   /* Sv39's root; Sv48's level-2 table under root[0] */
static u64 l1[512] __attribute__((aligned(4096)));
static u64 l0[512] __attribute__((aligned(4096)));
#if LEVELS == 4
static u64 l3[512] __attribute__((aligned(4096)));
#endif
static u64 pages[8][512] __attribute__((aligned(4096)));

static u64 pte(u64 pa, u64 flags) { return ((pa >> 12) << 10) | flags; }
static u64 ptr(void *table) { return pte((u64)table, PTE_V); }

/* S-mode helpers: each runs with paging on, through rt_run_in_mode. */
static i64 s_load(i64 va) { return (i64)ld64((u64)va); }
static i64 s_store(i64 va) { sd64((u64)va, 0x5a5a); return 0; }
static i64 s_fetch(i64 va)
{
    __asm__ volatile("la t0, 1f\n sd t0, 0(%1)\n jalr ra, 0(%0)\n 1:" : : "r"(va), "r"(&rt_trap_recover) : "t0", "ra", "memory");
    return 0;
}
static i64 s_sfence_load(i64 va) { sfence_vma(); return (i64)ld64((u64)va); }

/* U-mode code must not touch S memory (its stack is S memory), so it is a leaf that returns by ecall. */
__asm__(
    "   .text\n"
    "u_load:\n"
    "   ld a0, 0(a0)\n"
    "u_load_ret:\n"
    "   li a7, 0x5254\n"        /* RT_ECALL_TO_M */
    "   ecall\n");
extern char u_load[], u_load_ret[];
static i64 (*const u_load_alias)(i64) = 0;
#define U_FN(f) ((i64 (*)(i64))((u64)(f) - 0x80000000ul + U_ALIAS))

static u64 fault(int mode, i64 (*fn)(i64), u64 va)
{
    rt_trap_cause = -1;
    rt_trap_tval = 0;
    /* M's handler would read the faulting instruction at mepc physically to skip it; U code runs at an alias. */
    if (mode == PRV_U) rt_trap_recover = (u64)U_FN(u_load_ret);
    rt_run_in_mode(mode, fn, (i64)va);
    return rt_trap_cause;
}

long main(long hart)
{
    (void)hart;
    (void)u_load_alias;
    l2[0] = pte(0, LEAF_RWX);                          /* devices: UART, test device, CLINT */
    l2[1] = pte(0x80000000ul, LEAF_RWX | PTE_U);       /* U alias of RAM */
    l2[2] = pte(0x80000000ul, LEAF_RWX);               /* RAM, identity */
    l2[3] = ptr(l1);
    l1[0] = ptr(l0);
    u64 mega = (u64)__free_ram + 0x200000;             /* 2 MiB aligned */
    l1[1] = pte(mega, LEAF_RWX);
    l1[2] = pte(mega + 0x1000, LEAF_RWX);              /* PPN[0] != 0: misaligned */
    l0[0] = pte((u64)pages[0], PTE_V | PTE_R | PTE_W);          /* A = D = 0: hardware sets them */
    l0[1] = pte((u64)pages[1], PTE_V | PTE_R | PTE_A);          /* read-only */
    l0[2] = pte((u64)pages[2], PTE_V | PTE_X | PTE_A);          /* execute-only */
    l0[3] = pte((u64)pages[3], PTE_V | PTE_R | PTE_W | PTE_U | PTE_A | PTE_D);
    l0[4] = 0;                                                   /* invalid */
    l0[5] = pte((u64)pages[5], PTE_V | PTE_R | PTE_W);
    l0[6] = pte((u64)pages[6], PTE_V | PTE_R | PTE_A);           /* not executable */
    for (int i = 0; i < 8; i++) pages[i][0] = 0x1000 + i;
    sd64(mega + 0x1238, 0xabcdef);
#if LEVELS == 4
    l3[0] = ptr(l2);
    l3[1] = pte(0, LEAF_RWX);                          /* 512 GiB leaf: VA 0x80_0000_0000 + x -> PA x */
    u64 satp = (9ul << 60) | ((u64)l3 >> 12);
#else
    u64 satp = (8ul << 60) | ((u64)l2 >> 12);
#endif
    csr_write(satp, satp);
    CHECK_EQ(1, csr_read(satp), satp);
    __asm__ volatile("sfence.vma" ::: "memory");

    CHECK_EQ(2, rt_run_in_mode(PRV_S, s_load, (i64)&pages[4][0]), 0x1004);   /* the identity gigapage */
    CHECK_EQ(3, rt_run_in_mode(PRV_S, s_load, VA_TEST + 0x1000), 0x1001);
    CHECK_EQ(4, rt_run_in_mode(PRV_S, s_load, VA_MEGA + 0x1238), 0xabcdef);
    CHECK_EQ(5, rt_trap_count, 0);

    /* ---- A/D */
    CHECK_EQ(10, rt_run_in_mode(PRV_S, s_load, VA_TEST), 0x1000);
    CHECK_EQ(11, l0[0] & (PTE_A | PTE_D), PTE_A);
    rt_run_in_mode(PRV_S, s_store, VA_TEST);
    CHECK_EQ(12, l0[0] & (PTE_A | PTE_D), PTE_A | PTE_D);
    CHECK_EQ(13, pages[0][0], 0x5a5a);
    rt_run_in_mode(PRV_S, s_store, VA_TEST + 0x5000);
    CHECK_EQ(14, l0[5] & (PTE_A | PTE_D), PTE_A | PTE_D);
    CHECK_EQ(15, rt_trap_count, 0);

    /* ---- page faults */
    CHECK_EQ(20, fault(PRV_S, s_load, VA_TEST + 0x4010), 13);
    CHECK_EQ(21, rt_trap_tval, VA_TEST + 0x4010);
    CHECK_EQ(22, fault(PRV_S, s_store, VA_TEST + 0x1008), 15);
    CHECK_EQ(23, rt_trap_tval, VA_TEST + 0x1008);
    CHECK_EQ(24, pages[1][1], 0);
    CHECK_EQ(25, fault(PRV_S, s_fetch, VA_TEST + 0x6000), 12);
    CHECK_EQ(26, rt_trap_tval, VA_TEST + 0x6000);
    CHECK_EQ(27, rt_trap_epc, VA_TEST + 0x6000);
#if LEVELS == 4
    u64 noncanon = 0x0000800000000000ul;               /* bit 47 set, bits 63:48 clear */
#else
    u64 noncanon = 0x0000004000000000ul;               /* bit 38 set, bits 63:39 clear */
#endif
    CHECK_EQ(28, fault(PRV_S, s_load, noncanon), 13);
    CHECK_EQ(29, rt_trap_tval, noncanon);

    /* ---- U and SUM */
    CHECK_EQ(30, fault(PRV_S, s_load, VA_TEST + 0x3000), 13);
    csr_set(sstatus, MSTATUS_SUM);
    CHECK_EQ(31, rt_run_in_mode(PRV_S, s_load, VA_TEST + 0x3000), 0x1003);
    csr_clear(sstatus, MSTATUS_SUM);
    CHECK_EQ(32, rt_run_in_mode(PRV_U, U_FN(u_load), VA_TEST + 0x3000), 0x1003);
    CHECK_EQ(33, fault(PRV_U, U_FN(u_load), VA_TEST + 0x1000), 13);
    CHECK_EQ(34, rt_trap_tval, VA_TEST + 0x1000);

    /* ---- MXR */
    CHECK_EQ(40, fault(PRV_S, s_load, VA_TEST + 0x2000), 13);
    csr_set(sstatus, MSTATUS_MXR);
    CHECK_EQ(41, rt_run_in_mode(PRV_S, s_load, VA_TEST + 0x2000), 0x1002);
    csr_clear(sstatus, MSTATUS_MXR);

    /* ---- sfence.vma */
    l0[1] = pte((u64)pages[7], PTE_V | PTE_R | PTE_A);
    CHECK_EQ(50, rt_run_in_mode(PRV_S, s_sfence_load, VA_TEST + 0x1000), 0x1007);

    /* ---- misaligned superpage */
    CHECK_EQ(60, fault(PRV_S, s_load, VA_BADMEGA), 13);
    CHECK_EQ(61, rt_trap_tval, VA_BADMEGA);

#if LEVELS == 4
    CHECK_EQ(70, rt_run_in_mode(PRV_S, s_load, 0x8000000000ul + (u64)&pages[4][0]), 0x1004);
#endif
    csr_write(satp, 0);
    return 0;
}
