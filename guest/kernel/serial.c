/* COM1, an 8250/16550 UART at 0x3f8: polled output, input polled from the timer interrupt. */
#include "kernel.h"
#include "x86.h"

#define COM1 0x3f8
#define RBR 0 /* receive buffer (read) */
#define THR 0 /* transmit holding (write) */
#define IER 1
#define FCR 2
#define LCR 3
#define MCR 4
#define LSR 5
#define LSR_DR 0x01   /* data ready */
#define LSR_THRE 0x20 /* transmit holding register empty */

/* Each poll is a port read (a VM exit, ~10 us): a UART that never drains must not hang the guest. */
#define THRE_POLLS 100000

static bool present;

void serial_init(void)
{
    outb(COM1 + IER, 0x00);  /* no UART interrupts: output is polled, input is polled from the timer tick */
    outb(COM1 + LCR, 0x80);  /* DLAB to set the divisor */
    outb(COM1 + 0, 0x01);    /* 115200 baud */
    outb(COM1 + 1, 0x00);
    outb(COM1 + LCR, 0x03);  /* 8N1 */
    outb(COM1 + FCR, 0x07);  /* enable and clear the FIFOs (a plain 8250 ignores this) */
    outb(COM1 + MCR, 0x03);  /* DTR, RTS */
    /* With no UART an ISA port reads 0xff; a real one never reports LSR = 0xff. */
    present = inb(COM1 + LSR) != 0xff;
}

static void put(u8 c)
{
    for (u32 i = 0; i < THRE_POLLS; i++) {
        if (inb(COM1 + LSR) & LSR_THRE) {
            outb(COM1 + THR, c);
            return;
        }
        cpu_relax();
    }
}

void serial_write(const char *s, usize n)
{
    if (!present)
        return;
    for (usize i = 0; i < n; i++)
        put((u8)s[i]);
}

void serial_line(struct buf *b)
{
    serial_write(b->p, b->len);
    serial_write("\n", 1);
}

void serial_poll_input(void)
{
    if (!present)
        return;
    /* Bounded: a flood of input must not keep the timer interrupt running. */
    for (int i = 0; i < 16 && (inb(COM1 + LSR) & LSR_DR); i++) {
        u8 c = inb(COM1 + RBR);
        u32 head = boot_info.in_head;
        if (head - boot_info.in_tail < INPUT_RING) { /* full: drop the byte */
            boot_info.in_buf[head % INPUT_RING] = c;
            __asm__ volatile("" : : : "memory"); /* the byte before the index that publishes it */
            boot_info.in_head = head + 1;
        }
    }
}
