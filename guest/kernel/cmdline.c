/*
 * The command line: space-separated key=value options, all optional. Anything unknown or malformed stops the boot
 * with one "error: ..." line, so a typo never runs a different experiment than the one asked for.
 */
#include "kernel.h"

#define DEFAULT_WS (64 * MiB)
#define MAX_U32 0xffffffffUL

/* A token: [p, p + n). */
struct tok { const char *p; u32 n; };

static bool tok_is(struct tok t, const char *s)
{
    return str_len(s) == t.n && mem_eq(t.p, s, t.n);
}

static bool parse_u64(struct tok t, u64 *out, u32 *used)
{
    u64 v = 0;
    u32 i = 0;
    for (; i < t.n && t.p[i] >= '0' && t.p[i] <= '9'; i++) {
        u64 d = (u64)(t.p[i] - '0');
        if (v > (~0UL - d) / 10)
            return false; /* overflow */
        v = v * 10 + d;
    }
    *out = v;
    *used = i;
    return i > 0;
}

static bool parse_number(struct tok t, u64 *out)
{
    u32 used;
    return parse_u64(t, out, &used) && used == t.n;
}

/* 4096, 64K, 256M, 2G (binary units). */
static bool parse_size(struct tok t, u64 *out)
{
    u32 used;
    u64 v;
    if (!parse_u64(t, &v, &used))
        return false;
    if (used == t.n) {
        *out = v;
        return true;
    }
    if (used + 1 != t.n)
        return false;
    u32 shift;
    switch (t.p[used]) {
    case 'K': case 'k': shift = 10; break;
    case 'M': case 'm': shift = 20; break;
    case 'G': case 'g': shift = 30; break;
    default: return false;
    }
    if (v > (~0UL >> shift))
        return false;
    *out = v << shift;
    return true;
}

/* 500us, 10ms, 2s; a bare 0 means off. Result in microseconds. */
static bool parse_duration(struct tok t, u64 *out)
{
    u32 used;
    u64 v;
    if (!parse_u64(t, &v, &used))
        return false;
    struct tok unit = { t.p + used, t.n - used };
    u64 mul;
    if (unit.n == 0 && v == 0)
        mul = 1;
    else if (tok_is(unit, "us"))
        mul = 1;
    else if (tok_is(unit, "ms"))
        mul = 1000;
    else if (tok_is(unit, "s"))
        mul = 1000000;
    else
        return false;
    if (v > ~0UL / mul)
        return false;
    *out = v * mul;
    return true;
}

static void err_value(struct buf *err, struct tok key, struct tok val, const char *want)
{
    b_str(err, "error: bad value '");
    b_mem(err, val.p, val.n);
    b_str(err, "' for ");
    b_mem(err, key.p, key.n);
    b_str(err, "= (want ");
    b_str(err, want);
    b_str(err, ")");
}

static bool set_option(struct config *c, struct tok key, struct tok val, struct buf *err)
{
    u64 v;
#define NEED(ok, want)                                                                                             \
    do {                                                                                                           \
        if (!(ok)) {                                                                                               \
            err_value(err, key, val, want);                                                                        \
            return false;                                                                                          \
        }                                                                                                          \
    } while (0)

    if (tok_is(key, "dirty")) {
        NEED(parse_number(val, &v) && v <= 1, "0 or 1");
        c->dirty = v;
    } else if (tok_is(key, "ws")) {
        NEED(parse_size(val, &v) && v >= PAGE_SIZE && v % PAGE_SIZE == 0, "a size of whole 4K pages like 64M");
        c->ws_bytes = v;
        c->ws_given = true;
    } else if (tok_is(key, "rate")) {
        NEED(parse_number(val, &v) && v <= 100000000, "pages/s, 0 = unlimited, at most 100000000");
        c->rate = v;
    } else if (tok_is(key, "pattern")) {
        if (tok_is(val, "uniform"))
            c->pattern = PATTERN_UNIFORM;
        else if (tok_is(val, "hotset"))
            c->pattern = PATTERN_HOTSET;
        else if (tok_is(val, "sequential"))
            c->pattern = PATTERN_SEQUENTIAL;
        else
            NEED(false, "uniform, hotset or sequential");
    } else if (tok_is(key, "hot")) {
        NEED(parse_number(val, &v) && v >= 1 && v <= 100, "a percentage 1..100");
        c->hot_pct = (u32)v;
    } else if (tok_is(key, "words")) {
        NEED(parse_number(val, &v) && v >= 1 && v <= 512, "1..512");
        c->words = (u32)v;
    } else if (tok_is(key, "heartbeat")) {
        NEED(parse_duration(val, &v), "a duration like 10ms, or 0");
        c->heartbeat_us = v;
    } else if (tok_is(key, "check")) {
        NEED(parse_duration(val, &v), "a duration like 1s, or 0");
        c->check_us = v;
    } else if (tok_is(key, "stats")) {
        NEED(parse_duration(val, &v), "a duration like 1s, or 0");
        c->stats_us = v;
    } else if (tok_is(key, "runtime")) {
        NEED(parse_duration(val, &v), "a duration like 5s, or 0");
        c->runtime_us = v;
    } else if (tok_is(key, "hz")) {
        NEED(parse_number(val, &v) && v >= 10 && v <= 10000, "10..10000");
        c->hz = (u32)v;
    } else if (tok_is(key, "idle")) {
        if (tok_is(val, "hlt"))
            c->idle_spin = false;
        else if (tok_is(val, "spin"))
            c->idle_spin = true;
        else
            NEED(false, "hlt or spin");
    } else if (tok_is(key, "apic")) {
        if (tok_is(val, "auto"))
            c->apic = APIC_AUTO;
        else if (tok_is(val, "xapic"))
            c->apic = APIC_XAPIC;
        else if (tok_is(val, "x2apic"))
            c->apic = APIC_X2APIC;
        else
            NEED(false, "auto, xapic or x2apic");
    } else if (tok_is(key, "seed")) {
        NEED(parse_number(val, &v), "a number");
        c->seed = v;
    } else {
        b_str(err, "error: unknown option '");
        b_mem(err, key.p, key.n);
        b_str(err, "' (known: dirty ws rate pattern hot words heartbeat check stats runtime hz idle apic seed)");
        return false;
    }
    return true;
#undef NEED
}

bool cmdline_parse(const char *s, struct config *c, struct buf *err)
{
    *c = (struct config){
        .dirty = true,
        .ws_bytes = DEFAULT_WS,
        .rate = 50000,
        .pattern = PATTERN_UNIFORM,
        .hot_pct = 10,
        .words = 512,
        .hz = 1000,
        .apic = APIC_AUTO,
        .heartbeat_us = 10000,
        .stats_us = 1000000,
        .seed = 1,
    };
    while (*s) {
        while (*s == ' ' || *s == '\t' || *s == '\n')
            s++;
        if (!*s)
            break;
        const char *start = s;
        while (*s && *s != ' ' && *s != '\t' && *s != '\n')
            s++;
        struct tok word = { start, (u32)(s - start) };
        u32 eq = 0;
        while (eq < word.n && word.p[eq] != '=')
            eq++;
        if (eq == word.n || eq == 0) {
            b_str(err, "error: '");
            b_mem(err, word.p, word.n);
            b_str(err, "' is not key=value");
            return false;
        }
        struct tok key = { word.p, eq }, val = { word.p + eq + 1, word.n - eq - 1 };
        if (!set_option(c, key, val, err))
            return false;
    }
    return true;
}

/* The dirtier needs ws plus a 4-byte counter per page, both page-aligned. */
static u64 dirtier_bytes(u64 ws)
{
    return ws + ALIGN_UP(ws / PAGE_SIZE * 4, PAGE_SIZE);
}

bool config_fit_memory(struct config *c, u64 free_bytes, struct buf *err)
{
    if (!c->dirty)
        return true;
    if (dirtier_bytes(c->ws_bytes) <= free_bytes)
        return true;
    if (!c->ws_given && free_bytes > 4 * MiB) {
        /* The default shrinks to what fits (in 2 MiB steps), so a small VM still boots with no options. */
        u64 ws = ALIGN_DOWN(free_bytes - free_bytes / 1024 - PAGE_SIZE, 2 * MiB);
        while (ws && dirtier_bytes(ws) > free_bytes)
            ws -= 2 * MiB;
        if (ws) {
            c->ws_bytes = ws;
            return true;
        }
    }
    b_str(err, "error: ws=");
    b_size(err, c->ws_bytes);
    b_str(err, " does not fit: ");
    b_u64(err, free_bytes / MiB);
    b_str(err, " MiB of RAM are free for the workload, and it needs ws plus 4 bytes per page");
    return false;
}

void config_describe(const struct config *c, struct buf *b)
{
    static const char *const patterns[] = { "uniform", "hotset", "sequential" };
    b_str(b, "config: dirty=");
    b_u64(b, c->dirty);
    if (c->dirty) {
        b_str(b, " ws=");
        b_size(b, c->ws_bytes);
        b_str(b, " rate=");
        b_u64(b, c->rate);
        b_str(b, " pattern=");
        b_str(b, patterns[c->pattern]);
        if (c->pattern == PATTERN_HOTSET) {
            b_str(b, " hot=");
            b_u64(b, c->hot_pct);
        }
        b_str(b, " words=");
        b_u64(b, c->words);
        b_str(b, " seed=");
        b_u64(b, c->seed);
    }
    b_str(b, " heartbeat_us=");
    b_u64(b, c->heartbeat_us);
    b_str(b, " check_us=");
    b_u64(b, c->check_us);
    b_str(b, " stats_us=");
    b_u64(b, c->stats_us);
    b_str(b, " runtime_us=");
    b_u64(b, c->runtime_us);
    b_str(b, " hz=");
    b_u64(b, c->hz);
    b_str(b, c->idle_spin ? " idle=spin" : " idle=hlt");
}
