/* rv64i: the base integer ISA's edge cases. Exit codes (each names one check):
 *  1-9   add/sub/slt/sltu/xor/or/and and immediates: overflow wraps, signed vs unsigned compare, sign-extended imm
 * 10-19  shifts: by 63, by register (only low 6 bits count), srai of a negative
 * 20-29  W forms: sign extension of the 32-bit result, shift amounts 31 and bit 5 of rs2 ignored
 * 30-39  LUI/AUIPC: sign extension of the 32-bit immediate, auipc relative to its own pc
 * 40-59  loads: lb/lh/lw sign-extend, lbu/lhu/lwu zero-extend, ld; stores write only their width
 * 60-69  branches: signed vs unsigned, taken and not taken
 * 70-79  jal/jalr: link register value, jalr clears bit 0 of the target, rd == rs1
 * 80-89  x0 ignores writes
 */
#include "common.h"

    .text
    .globl main
main:
    mv      s0, ra

    /* ---- ALU */
    li      a0, 0x7fffffffffffffff
    addi    a1, a0, 1
    CHECK   1, a1, 0x8000000000000000
    li      a2, 0
    addi    a2, a2, -2048           /* most negative 12-bit immediate */
    CHECK   2, a2, -2048
    sub     a3, a2, a0              /* -2048 - MAX wraps */
    CHECK   3, a3, 0x7ffffffffffff801
    li      a0, -1
    li      a1, 1
    slt     a2, a0, a1
    CHECK   4, a2, 1
    sltu    a2, a0, a1
    CHECK   5, a2, 0
    sltiu   a2, a1, -1              /* immediate sign-extends to all ones, compared unsigned: 1 < max */
    CHECK   6, a2, 1
    slti    a2, a0, -2048
    CHECK   7, a2, 0
    li      a0, 0x0f0f0f0f0f0f0f0f
    xori    a1, a0, -1              /* xori -1 is not */
    CHECK   8, a1, 0xf0f0f0f0f0f0f0f0
    andi    a2, a0, -16
    ori     a2, a2, 0x7ff
    CHECK   9, a2, 0x0f0f0f0f0f0f0fff

    /* ---- shifts */
    li      a0, 1
    slli    a1, a0, 63
    CHECK   10, a1, 0x8000000000000000
    srai    a2, a1, 63
    CHECK   11, a2, -1
    srli    a2, a1, 63
    CHECK   12, a2, 1
    li      a3, 64 + 4              /* register shifts use rs2[5:0] only: 68 shifts by 4 */
    sll     a2, a0, a3
    CHECK   13, a2, 16
    li      a3, -1                  /* shift by 63 */
    srl     a2, a1, a3
    CHECK   14, a2, 1
    sra     a2, a1, a3
    CHECK   15, a2, -1
    li      a0, -256
    srai    a2, a0, 4
    CHECK   16, a2, -16

    /* ---- W forms: operate on the low 32 bits, sign-extend the result */
    li      a0, 0x7fffffff
    addiw   a1, a0, 1
    CHECK   20, a1, 0xffffffff80000000
    li      a0, 0x1234567880000000  /* upper bits ignored */
    addw    a1, a0, zero
    CHECK   21, a1, 0xffffffff80000000
    li      a0, 1
    slliw   a1, a0, 31
    CHECK   22, a1, 0xffffffff80000000
    li      a0, 0x80000000
    sraiw   a1, a0, 31
    CHECK   23, a1, -1
    srliw   a1, a0, 31
    CHECK   24, a1, 1
    li      a3, 32 + 1              /* W register shifts use rs2[4:0]: bit 5 is ignored, so 33 shifts by 1 */
    sllw    a1, a0, a3
    CHECK   25, a1, 0
    srlw    a1, a0, a3
    CHECK   26, a1, 0x40000000
    sraw    a1, a0, a3
    CHECK   27, a1, 0xffffffffc0000000
    li      a0, 0xffffffff00000000
    li      a1, 1
    subw    a2, a0, a1              /* 0 - 1 = -1 */
    CHECK   28, a2, -1
    li      a0, 0x00000000ffffffff
    srliw   a1, a0, 0               /* shift by 0 still sign-extends */
    CHECK   29, a1, -1

    /* ---- LUI / AUIPC */
    lui     a0, 0x80000
    CHECK   30, a0, 0xffffffff80000000
    lui     a0, 0x7ffff
    CHECK   31, a0, 0x7ffff000
1:  auipc   a0, 0
    la      a1, 1b
    CHECKR  32, a0, a1
2:  auipc   a0, 0xfffff             /* -4096 relative to this instruction */
    la      a1, 2b
    li      a2, -4096
    add     a1, a1, a2
    CHECKR  33, a0, a1

    /* ---- loads and stores */
    la      s1, data
    lb      a0, 0(s1)
    CHECK   40, a0, 0xffffffffffffff80
    lbu     a0, 0(s1)
    CHECK   41, a0, 0x80
    lh      a0, 2(s1)
    CHECK   42, a0, 0xffffffffffff8001
    lhu     a0, 2(s1)
    CHECK   43, a0, 0x8001
    lw      a0, 4(s1)
    CHECK   44, a0, 0xffffffff80000002
    lwu     a0, 4(s1)
    CHECK   45, a0, 0x80000002
    ld      a0, 8(s1)
    CHECK   46, a0, 0x8000000000000003
    lb      a0, 1(s1)
    CHECK   47, a0, 0x7f
    la      s2, scratch
    li      a0, -1
    sd      a0, 0(s2)
    li      a1, 0x1122334455667788
    sb      a1, 0(s2)
    ld      a2, 0(s2)
    CHECK   50, a2, 0xffffffffffffff88
    sh      a1, 2(s2)
    ld      a2, 0(s2)
    CHECK   51, a2, 0xffffffff7788ff88
    sw      a1, 4(s2)
    ld      a2, 0(s2)
    CHECK   52, a2, 0x556677887788ff88
    sd      a1, 0(s2)
    lw      a2, 4(s2)
    CHECK   53, a2, 0x11223344
    lh      a2, -2(s2)              /* negative offsets: the guard word before scratch */
    CHECK   54, a2, 0xffffffffffffbeef

    /* ---- branches */
    li      a0, -1
    li      a1, 1
    blt     a0, a1, 3f
    li      a0, 60
    j       rt_fail
3:  bltu    a0, a1, 4f              /* not taken: max unsigned */
    bgeu    a0, a1, 5f
4:  li      a0, 61
    j       rt_fail
5:  bge     a1, a0, 6f
    li      a0, 62
    j       rt_fail
6:  beq     a0, a1, 7f
    bne     a0, a1, 8f
7:  li      a0, 63
    j       rt_fail
8:  bge     a0, a0, 9f              /* equal: taken */
    li      a0, 64
    j       rt_fail
9:
    /* ---- jal / jalr */
    jal     a0, 10f
11: li      a0, 70
    j       rt_fail
10: la      a1, 11b
    CHECKR  71, a0, a1
    la      a2, 12f + 1             /* jalr clears bit 0 of the sum */
    jalr    a3, 0(a2)
    li      a0, 72
    j       rt_fail
12: la      a2, 13f - 4
    jalr    a2, 4(a2)               /* rd == rs1: the target uses the old value */
14: li      a0, 73
    j       rt_fail
13: la      a1, 14b
    CHECKR  74, a2, a1

    /* ---- x0 */
    addi    x0, x0, 5
    CHECK   80, x0, 0
    lui     x0, 1
    CHECK   81, x0, 0

    mv      ra, s0
    li      a0, 0
    ret

    .data
    .balign 8
data:
    .byte 0x80, 0x7f
    .half 0x8001
    .word 0x80000002
    .dword 0x8000000000000003
    .half 0, 0, 0, 0xbeef
scratch:
    .dword 0
