// The memory dirtier and its self-check, as in the x86 guest (docs/GUEST.md, "Memory self-check").
//
// Word j of page p with counter c holds (p << 32 | c) + j * 0x9E3779B97F4A7C15. Words below ferry.words carry
// the page's counter, the rest carry counter 0. Every word differs from every other word, in every page and at
// every counter value, so the check catches a stale page, a zeroed page, two pages swapped and a page that was
// only partly copied. The counters (4 bytes a page) live in guest RAM too, so they migrate with the pages.
//
// Thread t of T owns the pages p with p % T == t, so no two threads ever write the same page and a page and
// its counter always change together. Writers hold a read lock while they write a batch; the self-check
// takes the write lock (writer-preferring, so it cannot starve), which pauses every writer between two pages.
#define _GNU_SOURCE
#include "ferry.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define WORDS (PAGE / 8)
#define GOLDEN 0x9E3779B97F4A7C15ull
#define BATCH 256           // most pages written under one hold of the lock: ~0.3 ms under QEMU TCG
#define MAX_BACKLOG_NS 100000000ull   // after a stall, catch up at most 100 ms of pages, not a burst

struct writer {
    _Atomic uint64_t dirtied;   // pages this thread has dirtied
    uint64_t rng;               // this thread's PRNG state
    uint64_t cursor;            // next owned page for pattern=sequential
    unsigned index;             // t: owns the pages p with p % nthreads == t
    char pad[64];               // keeps two writers' counters off one cache line
};

static uint64_t *ws;                    // the working set, npages * PAGE bytes
static _Atomic uint32_t *counters;      // counters[p]: the value page p should hold
static uint64_t npages;
static unsigned nthreads;
static struct writer *writers;
static pthread_rwlock_t pause_lock;     // writers: read, per batch; selfcheck and corrupt: write
static _Atomic uint64_t rate;           // pages per second, all threads together; 0 = off
static _Atomic int pattern;
static _Atomic uint64_t epoch;          // bumped on every rate or pattern change
static pthread_mutex_t change_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed;          // on CLOCK_MONOTONIC

static inline uint64_t word_value(uint64_t p, uint32_t c, unsigned j) { return (p << 32 | c) + j * GOLDEN; }

static void write_page(uint64_t p, uint32_t c, unsigned words)
{
    uint64_t *w = ws + p * WORDS;
    for (unsigned j = 0; j < words; j++) w[j] = word_value(p, c, j);
}

static uint64_t owned_pages(unsigned t) { return (npages - t + nthreads - 1) / nthreads; }

static uint64_t pick(struct writer *w, int pat, uint64_t owned)
{
    uint64_t r = rng_next(&w->rng), k;
    switch (pat) {
    case PATTERN_SEQUENTIAL:
        k = w->cursor++ % owned;
        break;
    case PATTERN_HOTSET: {
        // 9 writes in 10 go to the first hot% of the set (of this thread's share of it).
        uint64_t hot = owned * cfg.hot_pct / 100;
        if (hot == 0) hot = 1;
        k = (r % 10 != 0) ? (r >> 8) % hot : (r >> 8) % owned;
        break;
    }
    default:
        k = (r >> 8) % owned;
    }
    return w->index + k * nthreads;
}

// Waits up to `deadline` (or forever when 0) for a rate or pattern change. Returns at once when `seen` is stale.
static void wait_change(uint64_t seen, uint64_t deadline)
{
    pthread_mutex_lock(&change_lock);
    if (atomic_load(&epoch) == seen) {
        if (deadline == 0) {
            pthread_cond_wait(&changed, &change_lock);
        } else {
            struct timespec ts = { .tv_sec = deadline / 1000000000u, .tv_nsec = deadline % 1000000000u };
            pthread_cond_timedwait(&changed, &change_lock, &ts);
        }
    }
    pthread_mutex_unlock(&change_lock);
}

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    uint64_t owned = owned_pages(w->index);
    for (;;) {
        uint64_t seen = atomic_load(&epoch);
        uint64_t total = atomic_load(&rate);
        int pat = atomic_load(&pattern);
        // This thread's share of the rate; the remainder goes to the first threads.
        uint64_t r = total / nthreads + (w->index < total % nthreads);
        if (r == 0 || owned == 0) { wait_change(seen, 0); continue; }
        uint64_t start = now_ns(), done = 0;
        while (atomic_load(&epoch) == seen) {
            uint64_t elapsed = now_ns() - start;
            uint64_t due = (uint64_t)((unsigned __int128)elapsed * r / 1000000000u);
            if (due <= done) {
                // Sleep until the next page is due (or a change arrives).
                uint64_t next = start + (uint64_t)((unsigned __int128)(done + 1) * 1000000000u / r);
                wait_change(seen, next);
                continue;
            }
            if (elapsed > MAX_BACKLOG_NS && due - done > r * MAX_BACKLOG_NS / 1000000000u + BATCH) {
                start = now_ns();
                done = 0;
                continue;
            }
            uint64_t n = due - done < BATCH ? due - done : BATCH;
            pthread_rwlock_rdlock(&pause_lock);
            for (uint64_t i = 0; i < n; i++) {
                uint64_t p = pick(w, pat, owned);
                uint32_t c = atomic_load_explicit(&counters[p], memory_order_relaxed) + 1;
                write_page(p, c, cfg.words);
                atomic_store_explicit(&counters[p], c, memory_order_relaxed);
            }
            pthread_rwlock_unlock(&pause_lock);
            done += n;
            atomic_fetch_add_explicit(&w->dirtied, n, memory_order_relaxed);
        }
    }
    return NULL;
}

static uint64_t total_dirtied(void)
{
    uint64_t sum = 0;
    for (unsigned t = 0; t < nthreads; t++) sum += atomic_load(&writers[t].dirtied);
    return sum;
}

static void bump_epoch(void)
{
    pthread_mutex_lock(&change_lock);
    atomic_fetch_add(&epoch, 1);
    pthread_cond_broadcast(&changed);
    pthread_mutex_unlock(&change_lock);
}

void dirtier_set_rate(uint64_t pages_per_s)
{
    atomic_store(&rate, pages_per_s);
    bump_epoch();
}

void dirtier_set_pattern(int p)
{
    atomic_store(&pattern, p);
    bump_epoch();
}

void dirtier_selfcheck(void)
{
    if (npages == 0) { out("selfcheck ok pages=0 dirtied=0 us=0"); return; }
    pthread_rwlock_wrlock(&pause_lock);
    uint64_t t0 = now_ns();
    uint64_t bad = 0, first = 0;
    unsigned first_word = 0;
    uint64_t want0 = 0, got0 = 0;
    for (uint64_t p = 0; p < npages; p++) {
        uint32_t c = atomic_load_explicit(&counters[p], memory_order_relaxed);
        const uint64_t *w = ws + p * WORDS;
        for (unsigned j = 0; j < WORDS; j++) {
            uint64_t want = word_value(p, j < cfg.words ? c : 0, j);
            if (w[j] != want) {
                if (bad++ == 0) { first = p; first_word = j; want0 = want; got0 = w[j]; }
                break;
            }
        }
    }
    uint64_t us = (now_ns() - t0) / 1000;
    uint64_t dirtied = total_dirtied();
    pthread_rwlock_unlock(&pause_lock);
    if (bad == 0)
        out("selfcheck ok pages=%llu dirtied=%llu us=%llu", (unsigned long long)npages,
            (unsigned long long)dirtied, (unsigned long long)us);
    else
        out("selfcheck bad page=%llu word=%u want=%016llx got=%016llx bad_pages=%llu dirtied=%llu us=%llu",
            (unsigned long long)first, first_word, (unsigned long long)want0, (unsigned long long)got0,
            (unsigned long long)bad, (unsigned long long)dirtied, (unsigned long long)us);
}

// Flips one bit in the last word of a random page without touching its counter, so a test can see that
// selfcheck names that page. With ferry.words=512 the next write to the page repairs it.
void dirtier_corrupt(void)
{
    if (npages == 0) { out("error: no working set"); return; }
    static uint64_t rng = 0x5EED;
    pthread_rwlock_wrlock(&pause_lock);
    uint64_t p = rng_next(&rng) % npages;
    ws[p * WORDS + WORDS - 1] ^= 1;
    pthread_rwlock_unlock(&pause_lock);
    out("corrupted page %llu", (unsigned long long)p);
}

void dirtier_status(char *buf, int size)
{
    snprintf(buf, size, "ws=%lluK threads=%u rate=%llu pattern=%s dirtied=%llu", (unsigned long long)(npages * 4),
             nthreads, (unsigned long long)atomic_load(&rate), pattern_name(atomic_load(&pattern)),
             (unsigned long long)total_dirtied());
}

void dirtier_start(void)
{
    npages = cfg.ws_bytes / PAGE;
    nthreads = cfg.threads ? cfg.threads : (unsigned)sysconf(_SC_NPROCESSORS_ONLN);
    if (nthreads == 0) nthreads = 1;
    atomic_store(&rate, cfg.rate);
    atomic_store(&pattern, cfg.pattern);

    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&pause_lock, &ra);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&changed, &ca);

    if (npages == 0) { nthreads = 0; out("dirtier: off (ws=0)"); return; }
    uint64_t t0 = now_ns();
    // MAP_POPULATE: the pages are touched here, once, not on the first dirtying.
    ws = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    counters = calloc(npages, sizeof *counters);
    writers = calloc(nthreads, sizeof *writers);
    if (ws == MAP_FAILED || !counters || !writers)
        fatal("dirtier: cannot allocate a %llu KiB working set", (unsigned long long)(npages * 4));
    for (uint64_t p = 0; p < npages; p++) write_page(p, 0, WORDS);
    out("dirtier: %llu pages filled in %llu us, %u threads, rate=%llu pattern=%s", (unsigned long long)npages,
        (unsigned long long)((now_ns() - t0) / 1000), nthreads, (unsigned long long)cfg.rate,
        pattern_name(cfg.pattern));
    for (unsigned t = 0; t < nthreads; t++) {
        writers[t].index = t;
        writers[t].rng = (cfg.seed + t) * 0x9E3779B97F4A7C15ull | 1;
        pthread_t th;
        if (pthread_create(&th, NULL, writer_main, &writers[t])) fatal("dirtier: cannot start thread %u", t);
    }
}
