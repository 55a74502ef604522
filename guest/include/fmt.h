/* Line building without libc: a bounded buffer that truncates rather than overflows. */
#pragma once
#include "types.h"

struct buf {
    char *p;
    u32 len;
    u32 cap;
};

#define BUF_ON(arr) ((struct buf){ .p = (arr), .len = 0, .cap = sizeof(arr) })

void b_char(struct buf *b, char c);
void b_str(struct buf *b, const char *s);
void b_mem(struct buf *b, const char *s, u32 n);
void b_u64(struct buf *b, u64 v);
void b_hex(struct buf *b, u64 v);
/* Size as the largest exact unit: 65536 -> "64K", 3 MiB -> "3M". */
void b_size(struct buf *b, u64 v);

usize str_len(const char *s);
bool mem_eq(const void *a, const void *b, usize n);
