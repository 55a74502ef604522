/*
 * The contract between the ring-0 kernel and the ring-3 workload.
 *
 * Service calls: the workload executes `ud2` with the service number in rax and arguments in rdi, rsi; the #UD
 * handler recognises a ud2 (0f 0b) at a ring-3 rip, runs the service, puts the result in rax and resumes after the
 * ud2. Not `syscall` or `int N`: under PVM `int N` from ring 3 raises #UD and `syscall` reaches its handler still in
 * ring 3, but exceptions raised in ring 3 reach the ring-0 IDT correctly (measured, issue 3).
 *
 * struct boot_info lives in the workload's data (user pages): the kernel fills it before entering ring 3 and then
 * only appends serial input to its ring from the timer interrupt, so the workload polls input with a memory read
 * instead of a service call (~100 us each under PVM, where ring-0 code is emulated).
 */
#pragma once
#include "types.h"

enum service {
    SVC_WRITE = 1,   /* rdi = buffer, rsi = length: write to the serial console; returns length */
    SVC_TIME_NS = 2, /* returns nanoseconds since boot, from the TSC */
    SVC_SLEEP = 3,   /* rdi = TSC deadline: sti;hlt until the deadline passes or serial input is pending */
    SVC_EXIT = 4,    /* rdi = exit code: print "exit <code>" and shut the machine down; does not return */
};

enum pattern { PATTERN_UNIFORM, PATTERN_HOTSET, PATTERN_SEQUENTIAL };
enum apic_mode { APIC_AUTO, APIC_XAPIC, APIC_X2APIC };

/* Exit codes, also written to isa-debug-exit (QEMU then exits with code * 2 + 1). */
enum exit_code { EXIT_OK = 0, EXIT_SELFCHECK_BAD = 1, EXIT_BAD_CMDLINE = 2, EXIT_PANIC = 3 };

/* The command line, parsed and validated by the kernel. Times are in microseconds, 0 = off. */
struct config {
    bool dirty;          /* dirty=0|1: run the memory dirtier */
    bool ws_given;       /* ws= was on the command line (else a default that fits) */
    bool idle_spin;      /* idle=spin|hlt */
    u32 pattern;         /* pattern=uniform|hotset|sequential */
    u32 hot_pct;         /* hot=N: hot set size in % of the working set (hotset pattern) */
    u32 words;           /* words=N: 8-byte words rewritten per dirtied page, 1..512 */
    u32 hz;              /* hz=N: LAPIC timer frequency */
    u32 apic;            /* apic=auto|xapic|x2apic */
    u64 ws_bytes;        /* ws=SIZE: working set */
    u64 rate;            /* rate=N: pages/s, 0 = as fast as possible */
    u64 heartbeat_us;    /* heartbeat=DUR */
    u64 check_us;        /* check=DUR: periodic selfcheck */
    u64 stats_us;        /* stats=DUR: dirtier throughput line */
    u64 runtime_us;      /* runtime=DUR: then selfcheck and exit */
    u64 seed;            /* seed=N: PRNG seed of the dirtier */
};

#define INPUT_RING 64

struct boot_info {
    struct config cfg;
    u64 tsc_khz;               /* TSC frequency */
    u64 tsc_boot;              /* TSC at kernel entry */
    u64 user_ram_base;         /* RAM free for the workload: [base, base + size), user-accessible */
    u64 user_ram_size;
    u32 timer_hz;              /* the periodic timer that bounds sleep lateness */
    volatile u32 in_head;      /* written by the kernel only */
    volatile u32 in_tail;      /* written by the workload only */
    volatile u8 in_buf[INPUT_RING];
};

extern struct boot_info boot_info;
