#include "fmt.h"

void b_char(struct buf *b, char c)
{
    if (b->len < b->cap)
        b->p[b->len++] = c;
}

void b_mem(struct buf *b, const char *s, u32 n)
{
    for (u32 i = 0; i < n; i++)
        b_char(b, s[i]);
}

void b_str(struct buf *b, const char *s)
{
    while (*s)
        b_char(b, *s++);
}

void b_u64(struct buf *b, u64 v)
{
    char tmp[20];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        b_char(b, tmp[--n]);
}

void b_hex(struct buf *b, u64 v)
{
    static const char digits[] = "0123456789abcdef";
    int shift = 60;
    b_str(b, "0x");
    while (shift > 0 && ((v >> shift) & 0xf) == 0)
        shift -= 4;
    for (; shift >= 0; shift -= 4)
        b_char(b, digits[(v >> shift) & 0xf]);
}

void b_size(struct buf *b, u64 v)
{
    static const char units[] = "KMGT";
    int u = -1;
    while (v && v % 1024 == 0 && u < 3) {
        v /= 1024;
        u++;
    }
    b_u64(b, v);
    if (u >= 0)
        b_char(b, units[u]);
}

usize str_len(const char *s)
{
    usize n = 0;
    while (s[n])
        n++;
    return n;
}

bool mem_eq(const void *a, const void *b, usize n)
{
    const u8 *x = a, *y = b;
    for (usize i = 0; i < n; i++)
        if (x[i] != y[i])
            return false;
    return true;
}

/* gcc may emit calls to these for struct copies and zeroing even in freestanding code. */
void *memset(void *d, int c, usize n)
{
    u8 *p = d;
    while (n--)
        *p++ = (u8)c;
    return d;
}

void *memcpy(void *d, const void *s, usize n)
{
    u8 *p = d;
    const u8 *q = s;
    while (n--)
        *p++ = *q++;
    return d;
}
