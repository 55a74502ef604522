#include "rt.h"

#define UART ((volatile u8 *)0x10000000UL)
#define UART_LSR 5
#define LSR_THRE 0x20
#define TEST_DEVICE ((volatile u32 *)0x100000UL)

void rt_putc(int c)
{
    while ((UART[UART_LSR] & LSR_THRE) == 0) { }
    UART[0] = (u8)c;
}

void rt_puts(const char *s)
{
    while (*s) rt_putc(*s++);
}

void rt_puthex(u64 v)
{
    rt_puts("0x");
    for (int shift = 60; shift >= 0; shift -= 4) rt_putc("0123456789abcdef"[(v >> shift) & 0xf]);
}

void rt_putdec(u64 v)
{
    char digits[20];
    int n = 0;
    do { digits[n++] = (char)('0' + v % 10); v /= 10; } while (v != 0);
    while (n > 0) rt_putc(digits[--n]);
}

void rt_exit(long code)
{
    /* SiFive test device: 0x5555 powers off with status 0, (code << 16) | 0x3333 exits with code. */
    *TEST_DEVICE = code == 0 ? 0x5555u : (u32)((code << 16) | 0x3333);
    for (;;) __asm__ volatile("wfi");
}

void rt_unexpected_trap(u64 cause, u64 epc, u64 tval)
{
    rt_puts("unexpected trap: mcause=");
    rt_puthex(cause);
    rt_puts(" mepc=");
    rt_puthex(epc);
    rt_puts(" mtval=");
    rt_puthex(tval);
    rt_putc('\n');
    rt_exit(3);
}
