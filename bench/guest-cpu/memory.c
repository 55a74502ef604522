/* Random 8-byte stores across a 64 MiB buffer with Sv39 on, to stress the TLB and the store path.
 * M-mode builds identity page tables: 4 KiB leaf pages for the buffer (16384 of them, so a TLB cannot hold it) and
 * 2 MiB megapages for the program image, opens all memory to S-mode in PMP, drops to S-mode through mret, runs STORES
 * LCG-addressed stores, and ecalls back to M-mode, which prints a checksum (one word read per page) and exits 0.
 * Nearly every store misses the TLB of both machines: Ferry's is 256 entries, and QEMU's stays at its initial 256
 * because QEMU resizes its TLB only when it is flushed, which this program never does after the switch to S-mode.
 * So this measures the page-walk (miss) path as much as the store path. */
#include "rt.h"

#ifndef STORES
#define STORES 1000000
#endif

#define BUF_BASE 0x82000000UL
#define BUF_SIZE (64UL << 20)
#define IMAGE_MEGAPAGES 16 /* 0x8000_0000-0x8200_0000 */
#define PAGE 4096UL
#define MEGA (2UL << 20)

#define PTE_V 0x01UL
#define PTE_R 0x02UL
#define PTE_W 0x04UL
#define PTE_X 0x08UL
/* A and D preset: the benchmark measures the TLB and stores, not the A/D update path (QEMU sets them, others fault). */
#define PTE_A 0x40UL
#define PTE_D 0x80UL
#define PTE_PPN(pa) (((pa) >> 12) << 10)
#define SATP_SV39 (8UL << 60)

static u64 root[512] __attribute__((aligned(4096)));
static u64 level1[512] __attribute__((aligned(4096)));
static u64 level0[BUF_SIZE / MEGA][512] __attribute__((aligned(4096)));

static volatile u64 s_result;

static void build_tables(void)
{
    root[(0x80000000UL >> 30) & 511] = PTE_PPN((u64)level1) | PTE_V;
    for (u64 i = 0; i < IMAGE_MEGAPAGES; i++) {
        level1[i] = PTE_PPN(0x80000000UL + i * MEGA) | PTE_V | PTE_R | PTE_W | PTE_X | PTE_A | PTE_D;
    }
    for (u64 t = 0; t < BUF_SIZE / MEGA; t++) {
        level1[((BUF_BASE - 0x80000000UL) / MEGA) + t] = PTE_PPN((u64)level0[t]) | PTE_V;
        for (u64 p = 0; p < 512; p++) {
            level0[t][p] = PTE_PPN(BUF_BASE + (t * 512 + p) * PAGE) | PTE_V | PTE_R | PTE_W | PTE_A | PTE_D;
        }
    }
}

/* Runs in S-mode with paging on. */
static void __attribute__((noinline)) s_main(void)
{
    u64 x = 0x243f6a8885a308d3UL;
    for (u64 i = 0; i < STORES; i++) {
        x = x * 6364136223846793005UL + 1442695040888963407UL;
        *(volatile u64 *)(BUF_BASE + ((x >> 24) & (BUF_SIZE - 8))) = x;
    }
    s_result = x;
    __asm__ volatile("ecall" : : : "memory");
    for (;;) { }
}

static void __attribute__((noreturn)) finish(void)
{
    u64 sum = 0;
    for (u64 a = BUF_BASE; a < BUF_BASE + BUF_SIZE; a += PAGE) sum = sum * 31 + *(volatile u64 *)(a + 8 * ((a >> 12) & 511));
    rt_puts("memory: stores=");
    rt_putdec(STORES);
    rt_puts(" last=");
    rt_puthex(s_result);
    rt_puts(" checksum=");
    rt_puthex(sum);
    rt_putc('\n');
    rt_exit(0);
}

u64 trap_handler(u64 cause, u64 epc, u64 tval)
{
    if (cause == CAUSE_ECALL_S) {
        csr_write(satp, 0);
        __asm__ volatile("sfence.vma" : : : "memory");
        finish();
    }
    rt_unexpected_trap(cause, epc, tval);
}

int main(void)
{
    build_tables();
    /* QEMU denies S-mode every access while no PMP entry matches: one NAPOT entry over all memory, RWX. */
    csr_write(pmpaddr0, ~0UL >> 10);
    csr_write(pmpcfg0, 0x1f);
    csr_write(satp, SATP_SV39 | ((u64)root >> 12));
    __asm__ volatile("sfence.vma" : : : "memory");
    csr_clear(mstatus, 3UL << 11);
    csr_set(mstatus, 1UL << 11); /* MPP = S */
    csr_write(mepc, (u64)s_main);
    __asm__ volatile("mret" : : : "memory");
    return 1;
}
