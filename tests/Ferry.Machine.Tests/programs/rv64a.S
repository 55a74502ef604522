/* rv64a: atomics on one hart. Exit codes:
 *  1-19  AMO .w: old value returned sign-extended, memory updated with the 32-bit result (neighbour word untouched);
 *        swap/add/xor/and/or, min/max signed, minu/maxu unsigned
 * 20-39  AMO .d: the same in 64 bits
 * 40-49  LR/SC: lr.w sign-extends, sc.w succeeds (rd = 0) after lr to the same address and stores
 * 50-59  SC fails (rd != 0, no store) with no reservation, after a successful sc (it clears the reservation),
 *        and to an address other than the reserved one
 * 60-69  amo with rd = x0; aq/rl variants behave the same
 */
#include "common.h"

/* AMOW code, op, init, operand, expect_old, expect_new: memory word = init; rd = op(word, operand). */
.macro AMOW code, op, init, operand, old, new
    li      t0, \init
    sw      t0, 0(s1)
    li      t1, \operand
    \op     a1, t1, (s1)
    CHECK   \code, a1, \old
    lwu     a2, 0(s1)
    CHECK   \code, a2, \new
    lwu     a2, 4(s1)               /* the neighbour word is untouched */
    CHECK   \code, a2, 0x5a5a5a5a
.endm
.macro AMOD code, op, init, operand, old, new
    li      t0, \init
    sd      t0, 8(s1)
    li      t1, \operand
    addi    t2, s1, 8
    \op     a1, t1, (t2)
    CHECK   \code, a1, \old
    ld      a2, 8(s1)
    CHECK   \code, a2, \new
.endm

    .text
    .globl main
main:
    la      s1, cell
    li      t0, 0x5a5a5a5a
    sw      t0, 4(s1)

    AMOW    1, amoswap.w, 0x80000000, 0x12345678, 0xffffffff80000000, 0x12345678
    AMOW    2, amoadd.w, 0x7fffffff, 1, 0x7fffffff, 0x80000000
    AMOW    3, amoadd.w, 0xffffffff, 0x100000001, 0xffffffffffffffff, 0     /* operand's upper half ignored */
    AMOW    4, amoxor.w, 0xf0f0f0f0, 0xffffffff, 0xfffffffff0f0f0f0, 0x0f0f0f0f
    AMOW    5, amoand.w, 0xf0f0f0f0, 0x3c3c3c3c, 0xfffffffff0f0f0f0, 0x30303030
    AMOW    6, amoor.w, 0x0000f0f0, 0x3c3c0000, 0xf0f0, 0x3c3cf0f0
    AMOW    7, amomin.w, 0x80000000, 1, 0xffffffff80000000, 0x80000000
    AMOW    8, amomax.w, 0x80000000, 1, 0xffffffff80000000, 1
    AMOW    9, amominu.w, 0x80000000, 1, 0xffffffff80000000, 1
    AMOW    10, amomaxu.w, 0x80000000, 1, 0xffffffff80000000, 0x80000000
    AMOW    11, amomin.w, 5, 0xffffffff, 5, 0xffffffff     /* -1 < 5 signed */
    AMOW    12, amominu.w, 5, 0xffffffff, 5, 5
    AMOW    13, amomax.w, 0xfffffffe, 0xffffffff, 0xfffffffffffffffe, 0xffffffff
    AMOW    14, amomin.w, 0, 0x1ffffffff, 0, 0xffffffff    /* compares the low 32 bits, signed: -1 < 0 */

    AMOD    20, amoswap.d, 0x8000000000000000, 7, 0x8000000000000000, 7
    AMOD    21, amoadd.d, -1, 1, -1, 0
    AMOD    22, amoxor.d, 0xff00ff00ff00ff00, -1, 0xff00ff00ff00ff00, 0x00ff00ff00ff00ff
    AMOD    23, amoand.d, 0xff00ff00ff00ff00, 0x0ff00ff00ff00ff0, 0xff00ff00ff00ff00, 0x0f000f000f000f00
    AMOD    24, amoor.d, 0xff00000000000000, 1, 0xff00000000000000, 0xff00000000000001
    AMOD    25, amomin.d, 0x8000000000000000, 1, 0x8000000000000000, 0x8000000000000000
    AMOD    26, amomax.d, 0x8000000000000000, 1, 0x8000000000000000, 1
    AMOD    27, amominu.d, 0x8000000000000000, 1, 0x8000000000000000, 1
    AMOD    28, amomaxu.d, 0x8000000000000000, 1, 0x8000000000000000, 0x8000000000000000
    AMOD    29, amomin.d, 5, -1, 5, -1
    AMOD    30, amomaxu.d, 5, -1, 5, -1

    /* LR/SC success */
    li      t0, 0x80000001
    sw      t0, 0(s1)
    lr.w    a1, (s1)
    CHECK   40, a1, 0xffffffff80000001
    li      t1, 42
    sc.w    a2, t1, (s1)
    CHECK   41, a2, 0
    lw      a3, 0(s1)
    CHECK   42, a3, 42
    addi    s2, s1, 8
    lr.d    a1, (s2)
    addi    a1, a1, 1
    sc.d    a2, a1, (s2)
    CHECK   43, a2, 0
    ld      a3, 0(s2)
    CHECKR  44, a3, a1

    /* SC failures */
    li      t1, 99
    sc.w    a2, t1, (s1)            /* the last sc cleared the reservation */
    CHECK   50, a2, 1
    lw      a3, 0(s1)
    CHECK   51, a3, 42              /* a failed sc stores nothing */
    sc.d    a2, t1, (s2)
    CHECK   52, a2, 1
    lr.d    a1, (s2)
    addi    s3, s1, 16
    sc.d    a2, t1, (s3)            /* a different address than the reservation */
    CHECK   53, a2, 1
    ld      a3, 16(s1)
    CHECK   54, a3, 0
    sc.d    a2, t1, (s2)            /* the failed sc to another address also ends the reservation (the spec: any SC, failed or not, invalidates the reservation) */
    CHECK   55, a2, 1

    /* rd = x0, ordering bits */
    li      t0, 10
    sd      t0, 0(s3)
    li      t1, 5
    amoadd.d x0, t1, (s3)
    amoadd.d.aq x0, t1, (s3)
    amoadd.d.aqrl a1, t1, (s3)
    CHECK   60, a1, 20
    ld      a3, 0(s3)
    CHECK   61, a3, 25
    lr.d.aq a1, (s3)
    sc.d.rl a2, t1, (s3)
    CHECK   62, a2, 0
    li      a0, 0
    ret

    .data
    .balign 64
cell:   .dword 0, 0, 0, 0
