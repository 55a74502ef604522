/* Pause/state test program (MachineStateTests.Paused...): a deterministic computation that keeps state in every
 * kind of architectural register: integer and FP registers, fcsr flags and rounding mode, mscratch, the trap CSRs (an
 * ecall every iteration) and LR/SC loops. It prints a running hash every 4096 iterations. Paused and moved between
 * machines any number of times, its serial output must not change. */
    .equ UART, 0x10000000
    .equ ITER, 1000000
    .text
    .globl main
main:
    la   t0, trap
    csrw mtvec, t0
    li   t0, 0x2000           # mstatus.FS = initial: enable the FPU
    csrs mstatus, t0
    li   t0, 2                # frm = RDN, so rounding mode state matters
    csrw frm, t0
    la   sp, stack_top
    li   s0, 0x243f6a8885a308d3   # hash
    li   s1, 0                # iteration
    li   s2, ITER
    la   s3, table            # 512 doublewords, stirred as we go
    li   t0, 3
    fcvt.d.l fs0, t0          # fs0 = 3.0 accumulates
    li   t0, 7
    fcvt.d.l fs1, t0
    fdiv.d fs1, fs1, fs0      # 7/3, inexact
loop:
    # integer mixing: multiply, divide, shifts, W forms
    li   t0, 0x9e3779b97f4a7c15
    mul  s0, s0, t0
    srli t1, s0, 29
    xor  s0, s0, t1
    ori  t2, s1, 1
    divu t3, s0, t2
    remw t4, s0, t2
    add  s0, s0, t3
    addw t4, t4, s1
    xor  s0, s0, t4
    # memory: read-modify-write a table slot chosen by the hash
    srli t0, s0, 40
    andi t0, t0, 511
    slli t0, t0, 3
    add  t0, t0, s3
    ld   t1, 0(t0)
    add  t1, t1, s0
    sd   t1, 0(t0)
    xor  s0, s0, t1
    # an LR/SC increment of a counter (a pause between lr and sc makes sc fail and retry)
    la   t0, counter
1:  lr.d t1, (t0)
    addi t1, t1, 1
    sc.d t2, t1, (t0)
    bnez t2, 1b
    # an AMO
    la   t0, amo_word
    amoadd.w t1, s1, (t0)
    add  s0, s0, t1
    # floating point with the dynamic rounding mode: accumulate and fold into the hash
    fcvt.d.lu fa0, s1
    fmadd.d fs0, fa0, fs1, fs0
    fsqrt.d fa1, fs0
    fmv.x.d t0, fa1
    xor  s0, s0, t0
    # a trap round trip: the handler adds mscratch into a0 and bumps mscratch
    mv   a0, s0
    ecall
    mv   s0, a0
    addi s1, s1, 1
    li   t0, 4095
    and  t0, s1, t0
    bnez t0, 2f
    mv   a0, s0
    call print_hex
    csrr a0, fflags
    call print_hex
2:  blt  s1, s2, loop
    la   t0, counter
    ld   a0, 0(t0)
    call print_hex
    mv   a0, s0
    call print_hex
    li   t0, 0x100000
    li   t1, 0x5555
    sw   t1, 0(t0)
3:  j    3b

# print a0 as 16 hex digits and a newline (uses t0-t3, a1)
print_hex:
    li   t0, UART
    li   t1, 60
4:  srl  t2, a0, t1
    andi t2, t2, 15
    li   t3, 10
    blt  t2, t3, 5f
    addi t2, t2, 'a' - 10
    j    6f
5:  addi t2, t2, '0'
6:  lbu  t3, 5(t0)            # wait for THR empty
    andi t3, t3, 0x20
    beqz t3, 6b
    sb   t2, 0(t0)
    addi t1, t1, -4
    bgez t1, 4b
    li   t2, '\n'
    sb   t2, 0(t0)
    ret

    .align 2
trap:
    csrr t5, mscratch
    add  a0, a0, t5
    addi t5, t5, 3
    csrw mscratch, t5
    csrr t5, mepc
    addi t5, t5, 4
    csrw mepc, t5
    mret

    .section .data
    .align 3
counter:  .dword 0
amo_word: .word 0
    .align 3
table:    .fill 512, 8, 0x5555aaaa
    .align 4
    .fill 1024, 1, 0
stack_top:
