/* C side of lib/rt.S: UART output, exit through the test device, trap records and the switch to S/U mode. */
#pragma once
#include "common.h"

typedef unsigned long u64;
typedef long i64;
typedef unsigned int u32;
typedef int i32;

#define csr_read(csr) ({ u64 __v; __asm__ volatile("csrr %0, " #csr : "=r"(__v) : : "memory"); __v; })
#define csr_write(csr, val) __asm__ volatile("csrw " #csr ", %0" : : "r"((u64)(val)) : "memory")
#define csr_set(csr, val) __asm__ volatile("csrs " #csr ", %0" : : "r"((u64)(val)) : "memory")
#define csr_clear(csr, val) __asm__ volatile("csrc " #csr ", %0" : : "r"((u64)(val)) : "memory")

void rt_putc(int c);
void rt_puts(const char *s);
void rt_puthex(u64 v);                       /* 16 hex digits */
__attribute__((noreturn)) void rt_exit(long code);
__attribute__((noreturn)) void rt_fail(long code, u64 value);

/* Run fn(arg) in privilege mode `mode` (PRV_U or PRV_S) and return its result to M-mode. fn may simply return
 * (through rt_lower_exit, which must then be executable in that mode) or do ecall with a7 = RT_ECALL_TO_M, a0 = result. */
i64 rt_run_in_mode(int mode, i64 (*fn)(i64), i64 arg);

/* What the default M-mode handler (rt_mtrap) last saw. After an exception it resumes at rt_trap_recover if that
 * is non-zero (then clears it), else after the trapping instruction (read at mepc, physically). */
extern volatile u64 rt_trap_count, rt_trap_cause, rt_trap_epc, rt_trap_tval, rt_trap_mstatus, rt_trap_recover;
/* The same for traps delegated to S-mode (rt_strap, installed by programs that delegate). */
extern volatile u64 rt_strap_count, rt_strap_cause, rt_strap_epc, rt_strap_tval, rt_strap_sstatus, rt_strap_recover;
/* Interrupts the default handlers took (they disable the interrupt's enable bit so it cannot storm). */
extern volatile u64 rt_irq_count, rt_irq_last, rt_sirq_count, rt_sirq_last;

/* A hook sees the trap frame (x1..x31 at frame[1..31]) first; non-zero return: handled, just return from the trap. */
typedef i64 (*rt_hook_t)(u64 *frame);
extern rt_hook_t volatile rt_trap_hook, rt_strap_hook;
void rt_mtrap(void);
void rt_strap(void);
void rt_lower_exit(void);

extern char __free_ram[];

#define CHECK(code, cond) do { if (!(cond)) rt_fail((code), 0); } while (0)
#define CHECK_EQ(code, got, want) do { u64 __g = (u64)(got); if (__g != (u64)(want)) rt_fail((code), __g); } while (0)

static inline void rt_print(const char *name, u64 v)
{
    rt_puts(name);
    rt_putc('=');
    rt_puthex(v);
    rt_putc('\n');
}

/* Accesses the compiler cannot drop or move, for memory that may fault. */
static inline u64 ld64(u64 a) { u64 v; __asm__ volatile("ld %0, 0(%1)" : "=r"(v) : "r"(a) : "memory"); return v; }
static inline u64 lw32(u64 a) { u64 v; __asm__ volatile("lw %0, 0(%1)" : "=r"(v) : "r"(a) : "memory"); return v; }
static inline void sd64(u64 a, u64 v) { __asm__ volatile("sd %0, 0(%1)" : : "r"(v), "r"(a) : "memory"); }
static inline void sw32(u64 a, u64 v) { __asm__ volatile("sw %0, 0(%1)" : : "r"(v), "r"(a) : "memory"); }
static inline void sfence_vma(void) { __asm__ volatile("sfence.vma" : : : "memory"); }
