/* Shared by every test program (assembly and C): the virt board's addresses and, for assembly, check macros.
 *
 * Conventions: a program reports through the SiFive test device. Exit 0 = every check passed; any other code
 * (1..255; a process exit status keeps only 8 bits) names the failing check and is listed at the top of the
 * program's file. rt_fail also prints "FAIL <code> got <value>" on the UART first, so a failure is readable. */
#pragma once

#define UART_BASE      0x10000000
#define UART_LSR       5
#define UART_LSR_THRE  0x20
#define TEST_BASE      0x100000
#define TEST_PASS      0x5555
#define TEST_FAIL      0x3333
#define CLINT_BASE     0x2000000
#define CLINT_MTIMECMP 0x4000   /* + 8 * hart */
#define CLINT_MTIME    0xbff8

/* a7 value of the ecall with which code run by rt_run_in_mode returns to M-mode ("RT" in ASCII). */
#define RT_ECALL_TO_M  0x5254

#define PRV_U 0
#define PRV_S 1
#define PRV_M 3

#define MSTATUS_SIE   (1 << 1)
#define MSTATUS_MIE   (1 << 3)
#define MSTATUS_SPIE  (1 << 5)
#define MSTATUS_MPIE  (1 << 7)
#define MSTATUS_SPP   (1 << 8)
#define MSTATUS_MPP   (3 << 11)
#define MSTATUS_FS    (3 << 13)
#define MSTATUS_MPRV  (1 << 17)
#define MSTATUS_SUM   (1 << 18)
#define MSTATUS_MXR   (1 << 19)

#ifdef __ASSEMBLER__

/* CHECK code, reg, value: fail with `code` unless reg == value (an immediate, any 64-bit constant).
 * Clobbers t6; on failure the program ends, printing reg's value. */
.macro CHECK code, reg, value
    li      t6, \value
    beq     \reg, t6, .Lcheck_ok\@
    mv      a1, \reg
    li      a0, \code
    j       rt_fail
.Lcheck_ok\@:
.endm

/* CHECKR code, reg, reg2: fail with `code` unless reg == reg2. */
.macro CHECKR code, reg, reg2
    beq     \reg, \reg2, .Lcheck_ok\@
    mv      a1, \reg
    li      a0, \code
    j       rt_fail
.Lcheck_ok\@:
.endm

/* LOADVAR reg, symbol: reg = the 64-bit variable at symbol. */
.macro LOADVAR reg, sym
    la      \reg, \sym
    ld      \reg, 0(\reg)
.endm

/* TRAP_ARM: forget the last M-mode trap, so CHECK_TRAP sees only what follows. Clobbers t5. */
.macro TRAP_ARM
    la      t5, rt_trap_cause
    li      t6, -1
    sd      t6, 0(t5)
.endm

/* CHECK_TRAP code, cause: fail unless the last M-mode trap since TRAP_ARM had this mcause. Clobbers t5, t6. */
.macro CHECK_TRAP code, cause
    LOADVAR t5, rt_trap_cause
    CHECK   \code, t5, \cause
.endm

#endif
