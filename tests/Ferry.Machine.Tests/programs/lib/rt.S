/* Start-up and run-time support linked into every test program. Each program provides `long main(long hartid)`;
 * its return value is the exit code (0 = pass). Every hart runs main; single-hart programs run with -smp 1. */
#include "common.h"

#define FRAME 256   /* x0..x31, 8 bytes each; x[i] at i*8 */

    .section .text.init
    .globl _start
_start:
    /* QEMU's reset vector enters here in M-mode with a0 = mhartid (a1 = FDT, a2 = fw_dynamic_info: unused). */
    csrr    a0, mhartid
    la      sp, __stacks_end
    slli    t1, a0, 13              /* 8 KiB stack per hart */
    sub     sp, sp, t1
    la      t2, __trap_stacks_end
    slli    t1, a0, 12              /* 4 KiB trap stack per hart: upper half M-mode, lower half S-mode */
    sub     t2, t2, t1
    csrw    mscratch, t2
    addi    t2, t2, -2048
    csrw    sscratch, t2
    la      t0, rt_mtrap
    csrw    mtvec, t0
    /* PMP entry 0: NAPOT over the whole address space, RWX, as OpenSBI sets it, so S and U may reach RAM and devices
     * (with PMP implemented and no entry matching, S/U accesses fail). */
    li      t0, -1
    csrw    pmpaddr0, t0
    li      t0, 0x1f
    csrw    pmpcfg0, t0
    li      t0, (1 << 13)           /* mstatus.FS = Initial: FP instructions legal */
    csrs    mstatus, t0
    csrw    fcsr, zero
    bnez    a0, 2f
    la      t0, __bss_start         /* hart 0 zeroes .bss; the others wait for it */
    la      t1, __bss_end
1:  bgeu    t0, t1, 3f
    sd      zero, 0(t0)
    addi    t0, t0, 8
    j       1b
3:  fence   rw, rw
    la      t0, rt_bss_done
    li      t1, 1
    sw      t1, 0(t0)
    j       4f
2:  la      t0, rt_bss_done
5:  lw      t1, 0(t0)
    beqz    t1, 5b
    fence   rw, rw
4:  csrr    a0, mhartid
    call    main
    j       rt_exit

    .text
/* void rt_putc(int c): polls LSR.THRE, then writes THR. Clobbers t0, t1. */
    .globl rt_putc
rt_putc:
    li      t0, UART_BASE
1:  lbu     t1, UART_LSR(t0)
    andi    t1, t1, UART_LSR_THRE
    beqz    t1, 1b
    sb      a0, 0(t0)
    ret

/* void rt_puts(const char *s). Clobbers a0, t0-t2. */
    .globl rt_puts
rt_puts:
    mv      t2, a0
    mv      t3, ra
1:  lbu     a0, 0(t2)
    beqz    a0, 2f
    call    rt_putc
    addi    t2, t2, 1
    j       1b
2:  mv      ra, t3
    ret

/* void rt_puthex(u64 v): 16 lower-case hex digits. Clobbers a0, t0-t4. */
    .globl rt_puthex
rt_puthex:
    mv      t2, a0
    mv      t3, ra
    li      t4, 60
1:  srl     a0, t2, t4
    andi    a0, a0, 15
    addi    a0, a0, '0'
    li      t0, '9'
    ble     a0, t0, 2f
    addi    a0, a0, 'a' - '9' - 1
2:  call    rt_putc
    addi    t4, t4, -4
    bgez    t4, 1b
    mv      ra, t3
    ret

/* void rt_exit(long code): 0 powers off with exit 0; anything else exits with that code. Never returns. */
    .globl rt_exit
rt_exit:
    li      t0, TEST_BASE
    bnez    a0, 1f
    li      t1, TEST_PASS
    sw      t1, 0(t0)
    j       2f
1:  slli    t1, a0, 16
    li      t2, TEST_FAIL
    or      t1, t1, t2
    sw      t1, 0(t0)
2:  wfi
    j       2b

/* void rt_fail(long code, u64 value): prints "FAIL <code> got <value>" and exits with code (forced non-zero in
 * its low 8 bits, the part a process exit status keeps). */
    .globl rt_fail
rt_fail:
    mv      s10, a0
    mv      s11, a1
    la      a0, .Lfail_msg
    call    rt_puts
    mv      a0, s10
    call    rt_puthex
    la      a0, .Lgot_msg
    call    rt_puts
    mv      a0, s11
    call    rt_puthex
    li      a0, '\n'
    call    rt_putc
    andi    t0, s10, 0xff
    mv      a0, s10
    bnez    t0, rt_exit
    li      a0, 0xff
    j       rt_exit

/* i64 rt_run_in_mode(int mode, i64 (*fn)(i64), i64 arg): mret into fn at `mode`; returns when the lower mode does
 * ecall with a7 = RT_ECALL_TO_M (rt_lower_exit does that when fn returns). Not reentrant. */
    .globl rt_run_in_mode
rt_run_in_mode:
    addi    sp, sp, -112
    sd      ra, 0(sp)
    sd      s0, 8(sp)
    sd      s1, 16(sp)
    sd      s2, 24(sp)
    sd      s3, 32(sp)
    sd      s4, 40(sp)
    sd      s5, 48(sp)
    sd      s6, 56(sp)
    sd      s7, 64(sp)
    sd      s8, 72(sp)
    sd      s9, 80(sp)
    sd      s10, 88(sp)
    sd      s11, 96(sp)
    la      t0, rt_run_sp
    sd      sp, 0(t0)
    li      t0, MSTATUS_MPP
    csrc    mstatus, t0
    slli    t0, a0, 11
    csrs    mstatus, t0
    csrw    mepc, a1
    mv      a0, a2
    la      ra, rt_lower_exit
    mret
rt_run_resume:
    ld      ra, 0(sp)
    ld      s0, 8(sp)
    ld      s1, 16(sp)
    ld      s2, 24(sp)
    ld      s3, 32(sp)
    ld      s4, 40(sp)
    ld      s5, 48(sp)
    ld      s6, 56(sp)
    ld      s7, 64(sp)
    ld      s8, 72(sp)
    ld      s9, 80(sp)
    ld      s10, 88(sp)
    ld      s11, 96(sp)
    addi    sp, sp, 112
    ret

    .globl rt_lower_exit
rt_lower_exit:
    li      a7, RT_ECALL_TO_M
    ecall
    j       rt_lower_exit

.macro SAVE_REGS
    .irp n, 1,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    sd      x\n, \n*8(sp)
    .endr
.endm
.macro RESTORE_REGS
    .irp n, 1,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    ld      x\n, \n*8(sp)
    .endr
.endm

/* The default M-mode trap handler. mscratch holds the top of this hart's M trap stack. */
    .balign 64                      /* usable as a vectored mtvec base too */
    .globl rt_mtrap
rt_mtrap:
    csrrw   sp, mscratch, sp
    addi    sp, sp, -FRAME
    SAVE_REGS
    csrr    t0, mscratch
    sd      t0, 2*8(sp)             /* the interrupted sp */
    la      t0, rt_trap_hook
    ld      t0, 0(t0)
    beqz    t0, 1f
    mv      a0, sp
    jalr    t0
    bnez    a0, .Lm_restore
1:  csrr    t0, mcause
    bltz    t0, .Lm_irq
    li      t1, 8
    bltu    t0, t1, .Lm_record
    li      t1, 11
    bgtu    t0, t1, .Lm_record
    li      t1, 10
    beq     t0, t1, .Lm_record
    ld      t1, 17*8(sp)            /* an ecall: is it the return to rt_run_in_mode's caller? */
    li      t2, RT_ECALL_TO_M
    bne     t1, t2, .Lm_record
    ld      a0, 10*8(sp)
    addi    t0, sp, FRAME
    csrw    mscratch, t0
    li      t0, MSTATUS_MPP
    csrs    mstatus, t0
    la      t0, rt_run_resume
    csrw    mepc, t0
    la      t0, rt_run_sp
    ld      sp, 0(t0)
    mret
.Lm_record:
    la      t3, rt_trap_count
    ld      t1, 0(t3)
    addi    t1, t1, 1
    sd      t1, 0(t3)
    la      t3, rt_trap_cause
    sd      t0, 0(t3)
    csrr    t1, mepc
    la      t3, rt_trap_epc
    sd      t1, 0(t3)
    csrr    t2, mtval
    la      t3, rt_trap_tval
    sd      t2, 0(t3)
    csrr    t2, mstatus
    la      t3, rt_trap_mstatus
    sd      t2, 0(t3)
    li      t2, 8                   /* ecall: always 4 bytes */
    bltu    t0, t2, 2f
    li      t2, 11
    bgtu    t0, t2, 2f
    addi    t1, t1, 4
    j       4f
2:  la      t3, rt_trap_recover
    ld      t2, 0(t3)
    beqz    t2, 3f
    sd      zero, 0(t3)
    mv      t1, t2
    j       4f
3:  lhu     t2, 0(t1)               /* skip the instruction: 2 or 4 bytes by its low bits */
    andi    t2, t2, 3
    addi    t1, t1, 2
    li      t3, 3
    bne     t2, t3, 4f
    addi    t1, t1, 2
4:  csrw    mepc, t1
    j       .Lm_restore
.Lm_irq:
    la      t3, rt_irq_count
    ld      t1, 0(t3)
    addi    t1, t1, 1
    sd      t1, 0(t3)
    la      t3, rt_irq_last
    sd      t0, 0(t3)
    li      t1, 1                   /* disable this interrupt so it cannot fire again at once */
    sll     t1, t1, t0
    csrc    mie, t1
.Lm_restore:
    addi    t0, sp, FRAME
    csrw    mscratch, t0
    RESTORE_REGS
    ld      sp, 2*8(sp)
    mret

/* The default S-mode trap handler, for programs that delegate (they set stvec to it). sscratch: S trap stack. */
    .balign 64
    .globl rt_strap
rt_strap:
    csrrw   sp, sscratch, sp
    addi    sp, sp, -FRAME
    SAVE_REGS
    csrr    t0, sscratch
    sd      t0, 2*8(sp)
    la      t0, rt_strap_hook
    ld      t0, 0(t0)
    beqz    t0, 1f
    mv      a0, sp
    jalr    t0
    bnez    a0, .Ls_restore
1:  csrr    t0, scause
    bltz    t0, .Ls_irq
    li      t1, 8
    bne     t0, t1, .Ls_record
    ld      t1, 17*8(sp)            /* U's return-to-M ecall was delegated here: pass it on to M */
    li      t2, RT_ECALL_TO_M
    bne     t1, t2, .Ls_record
    addi    t0, sp, FRAME
    csrw    sscratch, t0
    ld      a0, 10*8(sp)
    li      a7, RT_ECALL_TO_M
    ecall
.Ls_record:
    la      t3, rt_strap_count
    ld      t1, 0(t3)
    addi    t1, t1, 1
    sd      t1, 0(t3)
    la      t3, rt_strap_cause
    sd      t0, 0(t3)
    csrr    t1, sepc
    la      t3, rt_strap_epc
    sd      t1, 0(t3)
    csrr    t2, stval
    la      t3, rt_strap_tval
    sd      t2, 0(t3)
    csrr    t2, sstatus
    la      t3, rt_strap_sstatus
    sd      t2, 0(t3)
    li      t2, 8
    bltu    t0, t2, 2f
    li      t2, 9
    bgtu    t0, t2, 2f
    addi    t1, t1, 4
    j       4f
2:  la      t3, rt_strap_recover
    ld      t2, 0(t3)
    beqz    t2, 3f
    sd      zero, 0(t3)
    mv      t1, t2
    j       4f
3:  li      t4, MSTATUS_SUM         /* the instruction may be on a U page: read it with SUM set */
    csrrs   t4, sstatus, t4
    lhu     t2, 0(t1)
    csrw    sstatus, t4
    andi    t2, t2, 3
    addi    t1, t1, 2
    li      t3, 3
    bne     t2, t3, 4f
    addi    t1, t1, 2
4:  csrw    sepc, t1
    j       .Ls_restore
.Ls_irq:
    la      t3, rt_sirq_count
    ld      t1, 0(t3)
    addi    t1, t1, 1
    sd      t1, 0(t3)
    la      t3, rt_sirq_last
    sd      t0, 0(t3)
    li      t1, 1
    sll     t1, t1, t0
    csrc    sie, t1
.Ls_restore:
    addi    t0, sp, FRAME
    csrw    sscratch, t0
    RESTORE_REGS
    ld      sp, 2*8(sp)
    sret

    .section .rodata
.Lfail_msg: .asciz "FAIL "
.Lgot_msg:  .asciz " got "

    .data
    .balign 8
rt_bss_done:        .dword 0
    .globl rt_trap_cause
rt_trap_cause:      .dword -1
    .globl rt_strap_cause
rt_strap_cause:     .dword -1

    .bss
    .balign 8
rt_run_sp:          .dword 0
    .globl rt_trap_count, rt_trap_epc, rt_trap_tval, rt_trap_mstatus, rt_trap_recover, rt_trap_hook
rt_trap_count:      .dword 0
rt_trap_epc:        .dword 0
rt_trap_tval:       .dword 0
rt_trap_mstatus:    .dword 0
rt_trap_recover:    .dword 0
rt_trap_hook:       .dword 0
    .globl rt_strap_count, rt_strap_epc, rt_strap_tval, rt_strap_sstatus, rt_strap_recover, rt_strap_hook
rt_strap_count:     .dword 0
rt_strap_epc:       .dword 0
rt_strap_tval:      .dword 0
rt_strap_sstatus:   .dword 0
rt_strap_recover:   .dword 0
rt_strap_hook:      .dword 0
    .globl rt_irq_count, rt_irq_last, rt_sirq_count, rt_sirq_last
rt_irq_count:       .dword 0
rt_irq_last:        .dword 0
rt_sirq_count:      .dword 0
rt_sirq_last:       .dword 0
