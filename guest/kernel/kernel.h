/* Kernel-internal interfaces, one section per source file. */
#pragma once
#include "abi.h"
#include "fmt.h"

/* Interrupt vectors: the 8259 is remapped above the exceptions, the LAPIC timer above both. */
#define VEC_PIC_MASTER 0x20
#define VEC_PIC_SLAVE 0x28
#define VEC_TIMER 0x40
#define VEC_APIC_SPURIOUS 0xFF

/* The register frame built by entry.S: caller-saved registers only (C code preserves the rest, and each
 * instruction of ring-0 code costs ~3 us under PVM, which emulates it), then what the CPU pushed. */
struct frame {
    u64 r11, r10, r9, r8, rdi, rsi, rdx, rcx, rax;
    u64 vector, error;
    u64 rip, cs, rflags, rsp, ss;
};

/* serial.c: 8250 UART on COM1 */
void serial_init(void);
void serial_write(const char *s, usize n);
void serial_line(struct buf *b); /* writes b plus '\n' */
void serial_poll_input(void);    /* moves received bytes into boot_info's input ring */

/* cmdline.c */
bool cmdline_parse(const char *s, struct config *cfg, struct buf *err);
bool config_fit_memory(struct config *cfg, u64 free_bytes, struct buf *err);
void config_describe(const struct config *cfg, struct buf *b);

/* memory.c: start_info, memory map, page tables */
struct ram_range { u64 base, size; };
void memory_init(u32 start_info_pa, char *cmdline, usize cmdline_cap);
struct ram_range memory_user_range(void);
u64 memory_total(void);
void paging_init(u64 apic_base);
bool user_range_ok(u64 addr, u64 len);

/* cpu.c: GDT/TSS/IDT, traps, services */
void cpu_init(void);
void enter_user(u64 rip, u64 rsp) __attribute__((noreturn));
void trap(struct frame *f);

/* timer.c: 8259, PIT, TSC, LAPIC */
void pic_disable(void);
const char *tsc_init(void);
u64 tsc_khz(void);
u64 tsc_to_us(u64 ticks);
const char *apic_init(u32 mode, u32 hz, u64 *apic_base_out);
void apic_eoi(void);
void apic_start_timer(void);
u64 apic_timer_khz(void);

/* main.c */
void shutdown(u32 code) __attribute__((noreturn));
void panic(struct buf *why) __attribute__((noreturn));
