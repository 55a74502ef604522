/* diff_irq (differential): interrupt priority, delegation and a storm, printed in a form that does not depend on
 * timing (no mtime values, no iteration counts of waiting loops; only orders fixed by the priority rules and counts
 * fixed by the program). Exit code: 0, or 1 if a phase waits far too long (an interrupt never arrived).
 *   phase 1: MSIP and MTIP both pending and enabled, then mstatus.MIE set: M takes MSI (3) before MTI (7); then
 *            SSIP and STIP (not delegated) likewise: SSI (1) before STI (5). Each handler clears its source.
 *            M-level and S-level interrupts are never pending together here: QEMU 7.2 (without AIA) takes the
 *            lowest-numbered pending interrupt first (SSI 1 < MSI 3 < STI 5 < MTI 7 < SEI 9 < MEI 11), which
 *            differs from the spec's MEI > MSI > MTI > SEI > SSI > STI exactly when the two levels mix;
 *   phase 2: SSIP and STIP delegated (mideleg), pending in M with MIE = 1: M takes neither; then in S with
 *            sstatus.SIE = 1, S takes SSI before STI (scause with the interrupt bit), sip/sie as S sees them;
 *   phase 3: a storm: the timer handler re-arms the timer 5 us ahead and raises MSIP (a self-IPI), which outranks
 *            the timer, so the causes alternate 7, 3, 7, 3 ... for exactly K timer interrupts, while a loop of
 *            integer and FP arithmetic runs; its result must not change (handlers preserve every register).
 */
#include "rt.h"

#define MIP_SSIP (1 << 1)
#define MIP_MSIP (1 << 3)
#define MIP_STIP (1 << 5)
#define MIP_MTIP (1 << 7)
#define K 200

static volatile u64 *const msip = (volatile u64 *)CLINT_BASE;
static volatile u64 *const mtime = (volatile u64 *)(CLINT_BASE + CLINT_MTIME);
static volatile u64 *const mtimecmp = (volatile u64 *)(CLINT_BASE + CLINT_MTIMECMP);

static volatile u64 seq[16];
static volatile u64 nseq, seq_hash, timer_count, soft_count, storm;

static void record(u64 cause)
{
    if (nseq < 16) seq[nseq] = cause;
    nseq++;
    seq_hash = (seq_hash ^ cause) * 0x100000001b3ul;
}

static i64 m_hook(u64 *frame)
{
    (void)frame;
    u64 cause = csr_read(mcause);
    if ((i64)cause >= 0) return 0;                      /* exceptions: the default handler */
    cause &= 63;
    record(cause);
    switch (cause)
    {
    case 3:
        *(volatile u32 *)msip = 0;
        soft_count++;
        break;
    case 7:
        timer_count++;
        if (storm && timer_count < K)
        {
            *mtimecmp = *mtime + 50;
            *(volatile u32 *)msip = 1;
        }
        else *mtimecmp = -1UL;
        break;
    case 1: csr_clear(mip, MIP_SSIP); break;
    case 5: csr_clear(mip, MIP_STIP); break;
    default: rt_fail(2, cause);
    }
    return 1;
}

static i64 s_hook(u64 *frame)
{
    (void)frame;
    u64 cause = csr_read(scause);
    if ((i64)cause >= 0) return 0;
    cause &= 63;
    record(0x100 | cause);                              /* 0x100: taken in S */
    if (cause == 1) csr_clear(sip, MIP_SSIP);
    else csr_clear(sie, 1ul << cause);                  /* S cannot clear STIP; it masks it instead */
    return 1;
}

static i64 s_phase(i64 a)
{
    rt_print("s.sip", csr_read(sip));
    rt_print("s.sie", csr_read(sie));
    csr_set(sstatus, MSTATUS_SIE);
    for (u64 spins = 0; nseq < 2; spins++)
    {
        if (spins > 100000000ul) rt_fail(1, nseq);
    }
    csr_clear(sstatus, MSTATUS_SIE);
    return a;
}

static void wait_seq(u64 n)
{
    for (u64 spins = 0; nseq < n; spins++)
    {
        if (spins > 100000000ul) rt_fail(1, nseq);
    }
}

static void print_seq(const char *name)
{
    rt_print(name, nseq);
    for (u64 i = 0; i < nseq && i < 16; i++) rt_print("  cause", seq[i]);
    nseq = 0;
}

long main(long hart)
{
    (void)hart;
    *mtimecmp = -1UL;
    rt_trap_hook = m_hook;
    rt_strap_hook = s_hook;
    csr_write(stvec, (u64)rt_strap);

    /* ---- phase 1 */
    csr_clear(mstatus, MSTATUS_MIE);
    *(volatile u32 *)msip = 1;
    *mtimecmp = 0;
    csr_write(mie, MIP_MSIP | MIP_MTIP | MIP_SSIP | MIP_STIP);
    while ((csr_read(mip) & MIP_MTIP) == 0) { }
    rt_print("p1.mip", csr_read(mip));
    csr_set(mstatus, MSTATUS_MIE);
    wait_seq(2);
    csr_clear(mstatus, MSTATUS_MIE);
    print_seq("p1.m.taken");
    csr_set(mip, MIP_SSIP | MIP_STIP);
    rt_print("p1.mip.s", csr_read(mip));
    csr_set(mstatus, MSTATUS_MIE);
    wait_seq(2);
    csr_clear(mstatus, MSTATUS_MIE);
    print_seq("p1.s.taken");
    rt_print("p1.mip.after", csr_read(mip));

    /* ---- phase 2 */
    csr_write(mideleg, MIP_SSIP | MIP_STIP);
    csr_write(mie, MIP_SSIP | MIP_STIP);
    csr_set(mip, MIP_SSIP | MIP_STIP);
    csr_set(mstatus, MSTATUS_MIE);
    for (volatile int i = 0; i < 1000; i++) { }         /* delegated interrupts are never taken in M */
    csr_clear(mstatus, MSTATUS_MIE);
    rt_print("p2.m.taken", nseq);
    rt_run_in_mode(PRV_S, s_phase, 0);
    print_seq("p2.s.taken");
    rt_print("p2.mip", csr_read(mip));
    csr_clear(mip, MIP_STIP);
    csr_write(mideleg, 0);
    csr_write(mie, 0);

    /* ---- phase 3 */
    nseq = 0;
    seq_hash = 0xcbf29ce484222325ul;
    timer_count = soft_count = 0;
    storm = 1;
    csr_write(mie, MIP_MSIP | MIP_MTIP);
    *mtimecmp = *mtime + 50;
    csr_set(mstatus, MSTATUS_MIE);
    u64 acc = 1;
    double f = 1.0;
    for (int i = 0; i < 200000; i++)
    {
        acc = acc * 6364136223846793005ul + (u64)i;
        f = f * 1.0000001 + 1e-9;
    }
    for (u64 spins = 0; timer_count < K || (csr_read(mip) & MIP_MSIP); spins++)
    {
        if (spins > 1000000000ul) rt_fail(1, timer_count);
    }
    csr_clear(mstatus, MSTATUS_MIE);
    storm = 0;
    rt_print("p3.acc", acc);
    u64 fbits;
    __builtin_memcpy(&fbits, &f, 8);
    rt_print("p3.f", fbits);
    rt_print("p3.timer", timer_count);
    rt_print("p3.soft", soft_count);
    rt_print("p3.hash", seq_hash);
    print_seq("p3.taken");
    return 0;
}
