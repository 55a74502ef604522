/* Dirty-log test program, driven step by step by MachineStateTests.DirtyLog... through two words in RAM, each on a
 * page of its own: MAILBOX, where the guest writes the step it reached, and GO, where the host writes (through the
 * device path, GuestRam.Write) the step the guest may take next. No stack is used, so the only pages the guest
 * writes are the ones named here.
 *   1: guest says ready; the host starts the dirty log and sets GO = 1.
 *   2: guest stores into the ten pages DATA + 3k pages (k = 0..9), at an offset and near the end; says 2, waits GO 2.
 *   3: guest stores again into the first of those pages (already written before the harvest); says 3, waits GO 3.
 *   then powers off with success. */
    .equ MAILBOX, 0x80200000
    .equ GO,      0x80201000
    .equ DATA,    0x80300000

    .text
    .globl main
main:
    li   s4, MAILBOX
    li   s5, GO
    li   t1, 1
    sd   t1, 0(s4)
1:  ld   t3, 0(s5)
    blt  t3, t1, 1b

    li   s0, DATA
    li   s1, 10
    li   s2, 3 * 4096
2:  sd   s1, 8(s0)
    addi t0, s0, 2047
    sb   s1, 2047(t0)
    add  s0, s0, s2
    addi s1, s1, -1
    bnez s1, 2b
    li   t1, 2
    sd   t1, 0(s4)
3:  ld   t3, 0(s5)
    blt  t3, t1, 3b

    li   s0, DATA
    sd   t1, 16(s0)
    li   t1, 3
    sd   t1, 0(s4)
4:  ld   t3, 0(s5)
    blt  t3, t1, 4b

    li   t0, 0x100000
    li   t1, 0x5555
    sw   t1, 0(t0)
5:  j    5b
