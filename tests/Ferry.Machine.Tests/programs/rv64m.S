/* rv64m: multiply and divide edge cases. Exit codes:
 *  1-9   mul/mulh/mulhsu/mulhu: high halves of signed, mixed and unsigned products, MIN*MIN, -1*-1
 * 10-19  div/divu/rem/remu by zero: quotient all ones, remainder the dividend
 * 20-29  signed overflow MIN / -1: quotient MIN, remainder 0; rounding toward zero; remainder takes dividend's sign
 * 30-49  W forms: mulw/divw/divuw/remw/remuw use the low 32 bits and sign-extend the 32-bit result
 */
#include "common.h"

    .text
    .globl main
main:
    li      s1, 0x8000000000000000  /* MIN */
    li      s2, -1
    li      a0, 0x7fffffffffffffff
    mul     a1, a0, a0
    CHECK   1, a1, 1
    mulh    a1, a0, a0
    CHECK   2, a1, 0x3fffffffffffffff
    mulh    a1, s1, s1
    CHECK   3, a1, 0x4000000000000000
    mulh    a1, s2, s2              /* -1 * -1 = 1: high half 0 */
    CHECK   4, a1, 0
    mulhu   a1, s2, s2              /* (2^64-1)^2 high = 2^64-2 */
    CHECK   5, a1, 0xfffffffffffffffe
    mulhsu  a1, s2, s2              /* -1 * (2^64-1) = -(2^64-1): high half -1 */
    CHECK   6, a1, -1
    li      a2, 2
    mulhsu  a1, s1, a2              /* MIN * 2 = -2^64: high -1 */
    CHECK   7, a1, -1
    mulhsu  a1, a2, s1              /* 2 * 2^63 (rs2 unsigned) = 2^64: high 1 */
    CHECK   8, a1, 1
    mul     a1, s1, s2              /* MIN * -1 wraps to MIN */
    CHECKR  9, a1, s1

    /* divide by zero */
    li      a0, 1234
    div     a1, a0, zero
    CHECK   10, a1, -1
    divu    a1, a0, zero
    CHECK   11, a1, -1
    rem     a1, a0, zero
    CHECK   12, a1, 1234
    remu    a1, a0, zero
    CHECK   13, a1, 1234
    rem     a1, s1, zero
    CHECKR  14, a1, s1
    divw    a1, a0, zero
    CHECK   15, a1, -1
    divuw   a1, a0, zero
    CHECK   16, a1, -1              /* 0xffffffff sign-extended */
    li      a0, 0x1234567880000000
    remw    a1, a0, zero            /* remainder is the dividend's low 32 bits, sign-extended */
    CHECK   17, a1, 0xffffffff80000000
    remuw   a1, a0, zero
    CHECK   18, a1, 0xffffffff80000000

    /* overflow and rounding */
    div     a1, s1, s2
    CHECKR  20, a1, s1
    rem     a1, s1, s2
    CHECK   21, a1, 0
    li      a0, -7
    li      a2, 2
    div     a1, a0, a2              /* rounds toward zero */
    CHECK   22, a1, -3
    rem     a1, a0, a2
    CHECK   23, a1, -1
    li      a0, 7
    li      a2, -2
    rem     a1, a0, a2
    CHECK   24, a1, 1
    divu    a1, s2, a2              /* (2^64-1) / (2^64-2) = 1 */
    CHECK   25, a1, 1
    remu    a1, s2, a2
    CHECK   26, a1, 1

    /* W forms */
    li      a0, 0x80000000
    li      a2, -1
    divw    a1, a0, a2              /* 32-bit MIN / -1 */
    CHECK   30, a1, 0xffffffff80000000
    remw    a1, a0, a2
    CHECK   31, a1, 0
    li      a0, 0xffffffff00000010  /* upper bits ignored: 16 */
    li      a2, 0x0000000100000003  /* 3 */
    divw    a1, a0, a2
    CHECK   32, a1, 5
    remw    a1, a0, a2
    CHECK   33, a1, 1
    li      a0, 0xfffffffe          /* divuw: 4294967294 / 2 = 0x7fffffff */
    li      a2, 2
    divuw   a1, a0, a2
    CHECK   34, a1, 0x7fffffff
    li      a2, 1
    divuw   a1, a0, a2              /* result 0xfffffffe sign-extends */
    CHECK   35, a1, -2
    li      a2, 0xffffffff
    remuw   a1, a0, a2
    CHECK   36, a1, -2
    li      a0, 0x10000
    mulw    a1, a0, a0              /* 2^32 truncates to 0 */
    CHECK   37, a1, 0
    li      a0, 0xffff
    li      a2, 0x8001
    mulw    a1, a0, a2              /* 0x7fffffff... 0xffff*0x8001 = 0x8000_7fff: negative */
    CHECK   38, a1, 0xffffffff80007fff
    li      a0, -7
    li      a2, 2
    divw    a1, a0, a2
    CHECK   39, a1, -3
    li      a0, 0
    ret
