/* priv: privileged architecture, M/S/U. Exit codes:
 *  1-9   ecall from U, S and M: mcause 8/9/11, mepc = the ecall, mstatus.MPP = the mode it came from
 * 10-19  medeleg: U's ecall and illegal instruction delegated to S: scause, sepc, stval (= the instruction bits),
 *        sstatus.SPP = U; M saw nothing
 * 20-29  illegal instructions in M: mtval = the instruction bits (32-bit custom opcode, write to read-only
 *        mvendorid, 16-bit 0x0000 with mtval 0 and a 2-byte skip); sret from U and mret from S are illegal
 * 30-39  vectored mtvec: an exception enters at base, a machine timer interrupt at base + 4*7
 * 40-49  mret then sret down to U (S -> U via sstatus.SPP = 0): U cannot read sstatus
 * 50-59  mstatus.MPRV with MPP = U: M's loads and stores are checked by PMP as U's are (load/store access fault,
 *        mtval = address) while its fetches are not
 * 60-69  wfi with mstatus.MIE = 0 and mie.MTIE = 1 wakes when the CLINT timer fires, without taking the interrupt
 * 70-79  misaligned accesses: QEMU 7.2 performs misaligned loads and stores (checked here in M) without a trap;
 *        AMOs trap (QEMU 7.2: cause 4, load address misaligned; the spec prefers 6) and LR raises load address
 *        misaligned (4), mtval = the address
 */
#include "rt.h"

extern char ecall_u[], ecall_s[], ecall_m[], illegal_u[], sret_u[], mret_s[];

static i64 do_ecall_u(i64 a) { __asm__ volatile("li a7, 0\n ecall_u: ecall" ::: "a7", "memory"); return a; }
static i64 do_ecall_s(i64 a) { __asm__ volatile("li a7, 0\n ecall_s: ecall" ::: "a7", "memory"); return a; }
static i64 do_illegal_u(i64 a) { __asm__ volatile("illegal_u: .insn i 0x0b, 0, a0, a0, 5" ::: "a0", "memory"); return a; }
static i64 do_sret_u(i64 a) { __asm__ volatile("sret_u: sret" ::: "memory"); return a; }
static i64 do_mret_s(i64 a) { __asm__ volatile("mret_s: mret" ::: "memory"); return a; }
static i64 read_sstatus(i64 a) { (void)csr_read(sstatus); return a + 1; }

/* Runs in S: sret into U at read_sstatus (returning to M from there through rt_lower_exit). */
static i64 s_to_u(i64 a)
{
    csr_clear(sstatus, MSTATUS_SPP);
    csr_write(sepc, (u64)read_sstatus);
    __asm__ volatile("mv a0, %0\n la ra, rt_lower_exit\n sret" : : "r"(a) : "a0", "ra", "memory");
    return -1;
}

static u64 mstatus_mpp(u64 ms) { return (ms >> 11) & 3; }

/* Vectored trap table: entry 0 (exceptions) goes to the common handler, entry 7 (machine timer) to its own. */
__asm__(
    "   .text\n"
    "   .balign 256\n"
    "   .option push\n"
    "   .option norvc\n"                     /* 4-byte entries: the assembler must not compress the jumps */
    "vec_table:\n"
    "   j rt_mtrap\n"
    "   .rept 6\n"
    "   j vec_wrong\n"
    "   .endr\n"
    "   j vec_timer\n"
    "   .rept 8\n"
    "   j vec_wrong\n"
    "   .endr\n"
    "   .option pop\n"
    "vec_wrong:\n"
    "   li a0, 39\n"
    "   j rt_fail\n"
    "vec_timer:\n"                           /* count the hit and silence the timer: mtimecmp = max */
    "   csrrw sp, mscratch, sp\n"
    "   addi sp, sp, -16\n"
    "   sd t0, 0(sp)\n"
    "   sd t1, 8(sp)\n"
    "   la t0, timer_hits\n"
    "   ld t1, 0(t0)\n"
    "   addi t1, t1, 1\n"
    "   sd t1, 0(t0)\n"
    "   li t0, 0x2004000\n"
    "   li t1, -1\n"
    "   sd t1, 0(t0)\n"
    "   ld t0, 0(sp)\n"
    "   ld t1, 8(sp)\n"
    "   addi sp, sp, 16\n"
    "   csrrw sp, mscratch, sp\n"
    "   mret\n");
extern char vec_table[];
volatile u64 timer_hits;

static volatile u64 *const mtime = (volatile u64 *)(CLINT_BASE + CLINT_MTIME);
static volatile u64 *const mtimecmp = (volatile u64 *)(CLINT_BASE + CLINT_MTIMECMP);

static u64 misaligned_buf[4] __attribute__((aligned(64)));
static u64 deny_page[512] __attribute__((aligned(4096)));

long main(long hart)
{
    (void)hart;
    *mtimecmp = -1UL;                       /* QEMU resets mtimecmp to 0, so MTIP would be pending at once */

    /* ---- ecall from each mode */
    rt_trap_count = 0;
    CHECK_EQ(1, rt_run_in_mode(PRV_U, do_ecall_u, 5), 5);
    CHECK_EQ(2, rt_trap_cause, 8);
    CHECK_EQ(3, rt_trap_epc, (u64)ecall_u);
    CHECK_EQ(4, mstatus_mpp(rt_trap_mstatus), PRV_U);
    rt_run_in_mode(PRV_S, do_ecall_s, 0);
    CHECK_EQ(5, rt_trap_cause, 9);
    CHECK_EQ(6, rt_trap_epc, (u64)ecall_s);
    CHECK_EQ(7, mstatus_mpp(rt_trap_mstatus), PRV_S);
    __asm__ volatile("li a7, 0\n ecall_m: ecall" ::: "a7", "memory");
    CHECK_EQ(8, rt_trap_cause, 11);
    CHECK_EQ(9, rt_trap_epc, (u64)ecall_m);

    /* ---- delegation to S */
    csr_write(stvec, (u64)rt_strap);
    csr_write(medeleg, (1 << 8) | (1 << 2));
    rt_trap_count = 0;
    rt_run_in_mode(PRV_U, do_ecall_u, 0);
    CHECK_EQ(10, rt_strap_cause, 8);
    CHECK_EQ(11, rt_strap_epc, (u64)ecall_u);
    CHECK_EQ(12, rt_strap_tval, 0);
    CHECK_EQ(13, rt_strap_sstatus & MSTATUS_SPP, 0);
    rt_run_in_mode(PRV_U, do_illegal_u, 0);
    CHECK_EQ(14, rt_strap_cause, 2);
    CHECK_EQ(15, rt_strap_epc, (u64)illegal_u);
    CHECK_EQ(16, rt_strap_tval, 0x0055050b);
    CHECK_EQ(17, rt_trap_count, 0);         /* the return ecalls to M are not recorded; nothing else reached M */
    CHECK_EQ(18, rt_strap_count, 2);
    csr_write(medeleg, 0);

    /* ---- illegal instructions in M */
    __asm__ volatile(".insn i 0x0b, 0, a0, a0, 5" ::: "a0", "memory");
    CHECK_EQ(20, rt_trap_cause, 2);
    CHECK_EQ(21, rt_trap_tval, 0x0055050b);
    __asm__ volatile("csrw mvendorid, zero" ::: "memory");     /* 0xf1101073 */
    CHECK_EQ(22, rt_trap_tval, 0xf1101073);
    rt_trap_epc = 0;
    __asm__ volatile(".2byte 0\n c.nop" ::: "memory");          /* the handler skips 2 bytes */
    CHECK_EQ(23, rt_trap_cause, 2);
    CHECK_EQ(24, rt_trap_tval, 0);
    rt_run_in_mode(PRV_U, do_sret_u, 0);
    CHECK_EQ(25, rt_trap_cause, 2);
    CHECK_EQ(26, rt_trap_epc, (u64)sret_u);
    rt_run_in_mode(PRV_S, do_mret_s, 0);
    CHECK_EQ(27, rt_trap_epc, (u64)mret_s);
    CHECK_EQ(28, rt_trap_tval, 0x30200073);

    /* ---- vectored mtvec */
    csr_write(mtvec, (u64)vec_table | 1);
    CHECK_EQ(30, csr_read(mtvec), (u64)vec_table | 1);
    rt_trap_cause = -1;
    __asm__ volatile("li a7, 0\n ecall" ::: "a7", "memory");
    CHECK_EQ(31, rt_trap_cause, 11);        /* exceptions use the base even when vectored */
    csr_set(mie, 1 << 7);
    *mtimecmp = *mtime + 100;               /* 10 us */
    csr_set(mstatus, MSTATUS_MIE);
    while (timer_hits == 0) { }
    csr_clear(mstatus, MSTATUS_MIE);
    CHECK_EQ(32, timer_hits, 1);
    CHECK_EQ(33, csr_read(mip) & (1 << 7), 0);
    csr_clear(mie, 1 << 7);
    csr_write(mtvec, (u64)rt_mtrap);

    /* ---- M -> S -> U */
    rt_trap_cause = -1;
    CHECK_EQ(40, rt_run_in_mode(PRV_S, s_to_u, 41), 42);
    CHECK_EQ(41, rt_trap_cause, 2);         /* U's csrr sstatus */
    CHECK_EQ(42, mstatus_mpp(rt_trap_mstatus), PRV_U);
    /* Priv spec 1.12 says an mret to S or U clears MPRV; QEMU 7.2 does not, so nothing here depends on it. */

    /* ---- MPRV: PMP entry 0 denies deny_page (4 KiB NAPOT, no permissions), entry 1 allows everything */
    csr_write(pmpaddr0, ((u64)deny_page >> 2) | 0x1ff);
    csr_write(pmpaddr1, -1UL);
    csr_write(pmpcfg0, (0x1fUL << 8) | 0x18);
    deny_page[0] = 7;                       /* M is not checked by an unlocked entry */
    u64 ms = csr_read(mstatus);
    csr_write(mstatus, (ms & ~(u64)MSTATUS_MPP) | MSTATUS_MPRV);   /* MPP = U */
    rt_trap_cause = -1;
    (void)ld64((u64)&deny_page[1]);
    u64 c1 = rt_trap_cause, t1 = rt_trap_tval;
    sd64((u64)&deny_page[2], 1);
    u64 c2 = rt_trap_cause, t2 = rt_trap_tval;
    u64 ok = ld64((u64)&misaligned_buf[0]);                        /* outside the region: fine */
    csr_write(mstatus, ms);
    CHECK_EQ(50, c1, 5);
    CHECK_EQ(51, t1, (u64)&deny_page[1]);
    CHECK_EQ(52, c2, 7);
    CHECK_EQ(53, t2, (u64)&deny_page[2]);
    CHECK_EQ(54, ok, 0);
    CHECK_EQ(55, deny_page[2], 0);
    csr_write(pmpcfg0, 0x1f);
    csr_write(pmpaddr0, -1UL);

    /* ---- wfi woken by the timer with interrupts globally off */
    rt_irq_count = 0;
    csr_clear(mstatus, MSTATUS_MIE);        /* the mrets above left MIE = MPIE = 1 */
    csr_set(mie, 1 << 7);
    *mtimecmp = *mtime + 1000;              /* 100 us */
    while ((csr_read(mip) & (1 << 7)) == 0) __asm__ volatile("wfi");
    CHECK_EQ(60, rt_irq_count, 0);
    *mtimecmp = -1UL;
    CHECK_EQ(61, csr_read(mip) & (1 << 7), 0);
    csr_clear(mie, 1 << 7);

    /* ---- misaligned accesses */
    u64 base = (u64)misaligned_buf;
    misaligned_buf[0] = 0x8877665544332211ul;
    misaligned_buf[1] = 0xffeeddccbbaa9988ul;
    rt_trap_count = 0;
    CHECK_EQ(70, ld64(base + 3), 0xaa99888877665544ul);
    CHECK_EQ(71, lw32(base + 6), 0xffffffff99888877ul);
    sd64(base + 5, 0x0102030405060708ul);
    CHECK_EQ(72, misaligned_buf[0], 0x0607085544332211ul);
    CHECK_EQ(73, rt_trap_count, 0);
    u64 r;
    __asm__ volatile("amoadd.d %0, %1, (%2)" : "=r"(r) : "r"(1UL), "r"(base + 4) : "memory");
    /* The spec asks for store/AMO address misaligned (6); QEMU 7.2 raises load address misaligned (4) for a
     * misaligned AMO. Either is accepted here; the point is that it traps with mtval = the address. */
    CHECK(74, rt_trap_cause == 6 || rt_trap_cause == 4);
    CHECK_EQ(75, rt_trap_tval, base + 4);
    __asm__ volatile("lr.w %0, (%1)" : "=r"(r) : "r"(base + 2) : "memory");
    CHECK_EQ(76, rt_trap_cause, 4);
    CHECK_EQ(77, rt_trap_tval, base + 2);
    return 0;
}
