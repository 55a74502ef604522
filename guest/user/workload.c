/*
 * The ring-3 workload: a memory dirtier that can prove every page it wrote still holds what it wrote, and a
 * heartbeat that reports the longest stall this loop saw. Under PVM ring-3 code runs natively, so everything
 * here runs at full speed; only service calls (ud2) and interrupts enter the emulated kernel.
 */
#include "abi.h"
#include "fmt.h"

/* Filled by the kernel before ring 3 starts; .data so the workload's .bss clearing leaves it alone. */
__attribute__((section(".data"))) struct boot_info boot_info;

#define WORDS_PER_PAGE 512
/* Word j of page p at counter c is (p << 32 | c) + j * K: every word changes with c, and no two pages or words
 * match, so a stale, zeroed, swapped or partly-copied page all fail the check. K is odd (2^64 / golden ratio). */
#define K 0x9E3779B97F4A7C15UL
/* After a stall the dirtier resumes its rate without catching up on more than this much missed work. */
#define BACKLOG_US 10000

static long svc(long n, long a, long b)
{
    long r;
    __asm__ volatile("ud2" : "=a"(r) : "a"(n), "D"(a), "S"(b) : "memory");
    return r;
}

static void print(struct buf *b)
{
    b_char(b, '\n');
    svc(SVC_WRITE, (long)b->p, b->len);
    b->len = 0;
}

static inline u64 rdtsc(void)
{
    u32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}

static u64 khz;
static u64 us_to_tsc(u64 us) { return us / 1000 * khz + us % 1000 * khz / 1000; }
static u64 tsc_to_us(u64 t) { return t / khz * 1000 + t % khz * 1000 / khz; }

/* --- the dirtier ----------------------------------------------------------------------------------------- */

static u32 *counters; /* expected counter of each page */
static u8 *ws;        /* the working set */
static u64 npages, hot_pages, seq_next, rng;
static u32 words;
static u64 dirtied;

static u64 next_random(void)
{
    /* xorshift64* */
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 0x2545F4914F6CDD1DUL;
}

/* A uniform index below n (n < 2^32) without a division. */
static u64 below(u64 r, u64 n) { return ((r >> 32) * n) >> 32; }

static u64 pick_page(u32 pattern)
{
    if (pattern == PATTERN_SEQUENTIAL) {
        u64 p = seq_next;
        seq_next = p + 1 == npages ? 0 : p + 1;
        return p;
    }
    u64 r = next_random();
    /* hotset: 9 writes in 10 go to the first hot% of the working set, the rest anywhere. */
    if (pattern == PATTERN_HOTSET && (r & 0xff) < 230)
        return below(r, hot_pages);
    return below(r, npages);
}

static void fill_page(u64 p, u32 c, u32 from, u32 to)
{
    u64 *w = (u64 *)(ws + p * 4096);
    u64 base = p << 32 | c;
    for (u32 j = from; j < to; j++)
        w[j] = base + j * K;
}

static void dirty_page(u64 p)
{
    u32 c = ++counters[p];
    fill_page(p, c, 0, words);
    dirtied++;
}

static void dirtier_init(const struct config *cfg)
{
    npages = cfg->ws_bytes / 4096;
    counters = (u32 *)boot_info.user_ram_base;
    ws = (u8 *)ALIGN_UP(boot_info.user_ram_base + npages * 4, 4096);
    words = cfg->words;
    hot_pages = MAX(1, npages * cfg->hot_pct / 100);
    rng = cfg->seed ? cfg->seed : 1;
    /* Counter 1 for the rewritten words, 0 for the words never rewritten (j >= words): never all zero. */
    for (u64 p = 0; p < npages; p++) {
        counters[p] = 1;
        fill_page(p, 1, 0, words);
        fill_page(p, 0, words, WORDS_PER_PAGE);
    }
}

/* Returns true when every page holds what its counter says. */
static bool selfcheck(struct buf *b)
{
    u64 t0 = rdtsc(), bad = 0, first = 0, first_word = 0, want_first = 0, got_first = 0;
    for (u64 p = 0; p < npages; p++) {
        const u64 *w = (const u64 *)(ws + p * 4096);
        u64 base = p << 32 | counters[p], base0 = p << 32;
        for (u32 j = 0; j < WORDS_PER_PAGE; j++) {
            u64 want = (j < words ? base : base0) + j * K;
            if (w[j] != want) {
                if (!bad) {
                    first = p;
                    first_word = j;
                    want_first = want;
                    got_first = w[j];
                }
                bad++;
                break;
            }
        }
    }
    if (bad) {
        b_str(b, "selfcheck bad page ");
        b_u64(b, first);
        b_str(b, " gpa=");
        b_hex(b, (u64)(ws + first * 4096));
        b_str(b, " word=");
        b_u64(b, first_word);
        b_str(b, " want=");
        b_hex(b, want_first);
        b_str(b, " got=");
        b_hex(b, got_first);
        b_str(b, " bad_pages=");
        b_u64(b, bad);
    } else {
        b_str(b, "selfcheck ok pages=");
        b_u64(b, npages);
    }
    b_str(b, " dirtied=");
    b_u64(b, dirtied);
    b_str(b, " us=");
    b_u64(b, tsc_to_us(rdtsc() - t0));
    print(b);
    return bad == 0;
}

/* Flip one bit of one page without telling its counter, so tests can see selfcheck fail. */
static void corrupt(struct buf *b)
{
    u64 p = below(next_random(), npages);
    ((u64 *)(ws + p * 4096))[WORDS_PER_PAGE - 1] ^= 1;
    b_str(b, "corrupted page ");
    b_u64(b, p);
    print(b);
}

/* --- the loop ---------------------------------------------------------------------------------------------- */

static __attribute__((noreturn)) void finish(const struct config *cfg, struct buf *b)
{
    bool ok = !cfg->dirty || selfcheck(b);
    svc(SVC_EXIT, ok ? EXIT_OK : EXIT_SELFCHECK_BAD, 0);
    __builtin_unreachable();
}

void user_main(void)
{
    const struct config *cfg = &boot_info.cfg;
    char line[256];
    struct buf b = BUF_ON(line);
    khz = boot_info.tsc_khz;

    if (cfg->dirty) {
        u64 t = rdtsc();
        dirtier_init(cfg);
        b_str(&b, "dirtier: ");
        b_u64(&b, npages);
        b_str(&b, " pages at ");
        b_hex(&b, (u64)ws);
        b_str(&b, " filled in ");
        b_u64(&b, tsc_to_us(rdtsc() - t));
        b_str(&b, " us");
        print(&b);
    }

    const u64 hb = us_to_tsc(cfg->heartbeat_us), check = us_to_tsc(cfg->check_us);
    const u64 stats = us_to_tsc(cfg->stats_us), backlog = us_to_tsc(BACKLOG_US);
    const u64 per_page = cfg->rate ? khz * 1000 / cfg->rate : 0; /* TSC ticks between pages */
    const u64 never = ~0UL;
    u64 now = rdtsc();
    u64 next_hb = now, next_check = check ? now + check : never, next_stats = stats ? now + stats : never;
    u64 end = cfg->runtime_us ? now + us_to_tsc(cfg->runtime_us) : never;
    u64 next_page = now, seq = 0, last = now, maxstall = 0, stats_pages = 0, stats_t = now;
    if (!hb)
        next_hb = never;
    if (!cfg->dirty || !stats)
        next_stats = never;

    for (;;) {
        /* The stall measure: the largest gap between consecutive TSC reads of this loop. Time spent in our own
         * service calls and selfchecks is not a stall: `last` is reset after them. */
        now = rdtsc();
        if (now - last > maxstall)
            maxstall = now - last;
        last = now;

        while (boot_info.in_tail != boot_info.in_head) {
            u8 c = boot_info.in_buf[boot_info.in_tail % INPUT_RING];
            boot_info.in_tail++;
            if (c == 'c' && cfg->dirty)
                selfcheck(&b);
            else if (c == 'x' && cfg->dirty)
                corrupt(&b);
            else if (c == 'q')
                finish(cfg, &b);
            else if (c == 'f')
                __asm__ volatile("movq $0, 0x8" : : : "memory"); /* a ring-3 page fault on purpose: page 0 is unmapped */
            last = rdtsc();
        }

        if (now >= next_hb) {
            b_str(&b, "heartbeat ");
            b_u64(&b, ++seq);
            b_str(&b, " maxstall_us=");
            b_u64(&b, tsc_to_us(maxstall));
            print(&b);
            maxstall = 0;
            /* Keep the cadence; after a stall longer than a period, restart it instead of bursting lines. */
            next_hb += hb;
            if (next_hb <= now)
                next_hb = now + hb;
            last = rdtsc();
        }
        if (now >= next_stats) {
            u64 us = tsc_to_us(now - stats_t);
            b_str(&b, "stats dirtied=");
            b_u64(&b, dirtied);
            b_str(&b, " pages_per_s=");
            b_u64(&b, us ? (dirtied - stats_pages) * 1000000 / us : 0);
            print(&b);
            stats_pages = dirtied;
            stats_t = now;
            next_stats = now + stats;
            last = rdtsc();
        }
        if (now >= next_check) {
            selfcheck(&b);
            next_check = rdtsc() + check;
            last = rdtsc();
        }
        if (now >= end)
            finish(cfg, &b);

        if (cfg->dirty) {
            if (!per_page) {
                dirty_page(pick_page(cfg->pattern));
                continue;
            }
            if (now >= next_page) {
                dirty_page(pick_page(cfg->pattern));
                next_page += per_page;
                if (now > next_page && now - next_page > backlog)
                    next_page = now - backlog;
                continue;
            }
        }
        if (cfg->idle_spin)
            continue;

        /* Nothing due: sleep until the next thing is. The kernel wakes on the periodic timer, so the wake-up
         * can be up to one timer period late; that lateness is part of what the loop experienced, so it counts
         * as a stall too (idle=spin gives microsecond resolution instead). */
        u64 deadline = MIN(MIN(next_hb, next_stats), MIN(next_check, end));
        if (cfg->dirty)
            deadline = MIN(deadline, next_page);
        svc(SVC_SLEEP, (long)deadline, 0);
        u64 woke = rdtsc();
        if (woke > deadline && woke - deadline > maxstall)
            maxstall = woke - deadline;
        last = woke;
    }
}
