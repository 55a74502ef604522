/* The small runtime every CPU benchmark program links (rt.c, start.S): UART output, exit, M-mode traps. */
#pragma once

typedef unsigned long u64;
typedef long i64;
typedef unsigned int u32;
typedef int i32;
typedef unsigned short u16;
typedef short i16;
typedef unsigned char u8;

#define csr_read(csr) ({ u64 __v; __asm__ volatile("csrr %0, " #csr : "=r"(__v) : : "memory"); __v; })
#define csr_write(csr, val) __asm__ volatile("csrw " #csr ", %0" : : "r"((u64)(val)) : "memory")
#define csr_set(csr, val) __asm__ volatile("csrs " #csr ", %0" : : "r"((u64)(val)) : "memory")
#define csr_clear(csr, val) __asm__ volatile("csrc " #csr ", %0" : : "r"((u64)(val)) : "memory")

#define MCAUSE_INTERRUPT (1UL << 63)
#define CAUSE_ECALL_S 9
#define IRQ_M_TIMER 7

void rt_putc(int c);
void rt_puts(const char *s);
void rt_puthex(u64 v);                 /* 0x and 16 hex digits */
void rt_putdec(u64 v);
__attribute__((noreturn)) void rt_exit(long code);

/* Each program defines this: called by trap_entry with the trap CSRs, returns where to resume (mepc). */
u64 trap_handler(u64 cause, u64 epc, u64 tval);

/* For programs that do not expect traps: print what happened and exit with code 3. */
__attribute__((noreturn)) void rt_unexpected_trap(u64 cause, u64 epc, u64 tval);
