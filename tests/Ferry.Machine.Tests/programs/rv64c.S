/* rv64c: compressed instructions, each written with its explicit c. mnemonic so the assembler cannot choose.
 * Exit codes:
 *  1-9   c.li/c.lui (sign-extended 6-bit immediates, c.lui's 18-bit result), c.addi, c.addiw (sign extension of
 *        the 32-bit sum), c.addi16sp, c.addi4spn
 * 10-19  c.slli/c.srli/c.srai (shift amounts up to 63), c.andi with a negative immediate
 * 20-29  c.mv/c.add/c.sub/c.xor/c.or/c.and/c.subw/c.addw (W forms sign-extend)
 * 30-39  c.lw (sign-extends)/c.ld/c.sw/c.sd, c.lwsp/c.ldsp/c.swsp/c.sdsp, c.fld/c.fsd/c.fldsp/c.fsdsp
 * 40-49  c.j, c.jr, c.jalr (links pc+2), c.beqz/c.bnez taken and not taken
 */
#include "common.h"

    .text
    .globl main
main:
    addi    sp, sp, -64
    sd      ra, 56(sp)
    sd      s0, 48(sp)
    sd      s1, 40(sp)

    c.li    a0, -32
    CHECK   1, a0, -32
    c.lui   a1, 0xfffe0             /* imm field -32: a1 = -32 << 12 */
    CHECK   2, a1, 0xfffffffffffe0000
    c.lui   a1, 0x1f                /* largest positive: 31 << 12 */
    CHECK   3, a1, 0x1f000
    c.addi  a0, 31
    CHECK   4, a0, -1
    li      a2, 0x7fffffff
    c.addiw a2, 1
    CHECK   5, a2, 0xffffffff80000000
    li      a2, 0x123456789
    c.addiw a2, 0                   /* sext.w */
    CHECK   6, a2, 0x23456789
    mv      s1, sp
    c.addi16sp sp, -64
    addi    t0, s1, -64
    CHECKR  7, sp, t0
    c.addi16sp sp, 64
    CHECKR  8, sp, s1
    c.addi4spn a3, sp, 1020         /* largest: zero-extended 10-bit multiple of 4 */
    addi    t0, sp, 1020
    CHECKR  9, a3, t0

    li      a0, 1
    c.slli  a0, 63
    CHECK   10, a0, 0x8000000000000000
    mv      a1, a0
    c.srai  a1, 63
    CHECK   11, a1, -1
    c.srli  a0, 63
    CHECK   12, a0, 1
    li      a2, 0x12345
    c.andi  a2, -16
    CHECK   13, a2, 0x12340
    li      a2, -1
    c.andi  a2, 31
    CHECK   14, a2, 31

    li      a0, 0x70000000
    c.mv    a1, a0
    c.add   a1, a0
    CHECK   20, a1, 0xe0000000
    li      a2, 0x70000000
    c.addw  a2, a0
    CHECK   21, a2, 0xffffffffe0000000
    li      a3, 0
    c.sub   a3, a0
    CHECK   22, a3, 0xffffffff90000000
    li      a4, 0
    li      a5, 0x80000000
    c.subw  a4, a5
    CHECK   23, a4, 0xffffffff80000000
    li      a4, 0xff00
    li      a5, 0x0ff0
    c.xor   a4, a5
    CHECK   24, a4, 0xf0f0
    c.or    a4, a5
    CHECK   25, a4, 0xfff0
    c.and   a4, a5
    CHECK   26, a4, 0x0ff0

    la      s0, data
    c.lw    a0, 4(s0)
    CHECK   30, a0, 0xffffffff80000000
    c.ld    a1, 8(s0)
    CHECK   31, a1, 0x8877665544332211
    c.sw    a1, 0(s0)
    ld      a2, 0(s0)
    CHECK   32, a2, 0x8000000044332211
    c.sd    a1, 16(s0)
    ld      a2, 16(s0)
    CHECKR  33, a2, a1
    c.sdsp  a1, 8(sp)
    c.ldsp  a2, 8(sp)
    CHECKR  34, a2, a1
    c.swsp  a0, 4(sp)
    c.lwsp  a2, 4(sp)
    CHECK   35, a2, 0xffffffff80000000
    c.fld   fa0, 8(s0)
    c.fsd   fa0, 24(s0)
    ld      a2, 24(s0)
    CHECKR  36, a2, a1
    c.fsdsp fa0, 16(sp)
    c.fldsp fa1, 16(sp)
    fmv.x.d a2, fa1
    CHECKR  37, a2, a1

    c.j     1f
    li      a0, 40
    j       rt_fail
1:  la      a0, 2f
    c.jr    a0
    li      a0, 41
    j       rt_fail
2:  la      a0, 4f
    c.jalr  a0
3:  li      a0, 42                  /* returns here from 4: */
    j       5f
4:  la      t0, 3b                  /* ra = address after the 2-byte c.jalr */
    CHECKR  43, ra, t0
    ret
5:  li      a0, 0
    c.beqz  a0, 6f
    li      a0, 44
    j       rt_fail
6:  c.bnez  a0, 7f                  /* not taken */
    li      a1, 1
    c.bnez  a1, 8f
7:  li      a0, 45
    j       rt_fail
8:  c.nop

    ld      ra, 56(sp)
    ld      s0, 48(sp)
    ld      s1, 40(sp)
    addi    sp, sp, 64
    li      a0, 0
    ret

    .data
    .balign 8
data:
    .word 0x12345678, 0x80000000
    .dword 0x8877665544332211
    .dword 0, 0
