// The disk writer and checker: what a migrated virtio-blk device must keep.
//
// Block b (4 KiB) written for the g-th time holds, in word j, (b << 32 | g) + j * 0xC2B2AE3D27D4EB4F. The
// generation table lives in guest RAM, so it migrates with the guest; `diskcheck` then rereads every block
// written so far from the device itself (O_DIRECT: not from the page cache) and compares. Writes use
// O_DIRECT | O_DSYNC, so a write has reached the device, flush included, before the generation counts.
// A write in flight during the switchover is the interesting case: the writer retries nothing, so a request
// the VMM lost shows up as a stale generation.
#define _GNU_SOURCE
#include "ferry.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define BLOCK 4096u
#define BWORDS (BLOCK / 8)
#define DISK_GOLDEN 0xC2B2AE3D27D4EB4Full
#define DEFAULT_REGION (64ull << 20)
static const char *const dev = "/dev/vda";

static int fd = -1;
static uint64_t nblocks;                // blocks in the region written and checked
static uint32_t *gens;                  // gens[b]: generation block b holds; 0 = never written
static uint64_t *buf;                   // one aligned block, for O_DIRECT
static uint64_t written;                // blocks ever written (total writes)
static uint64_t touched;                // blocks with gens[b] > 0
static uint64_t rng = 0xD15C;
static _Atomic uint64_t rate;           // blocks per second; 0 = paused
static pthread_mutex_t io_lock = PTHREAD_MUTEX_INITIALIZER;     // one write or one whole check at a time
static pthread_mutex_t change_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed;          // on CLOCK_MONOTONIC
static bool started;

static inline uint64_t word_value(uint64_t b, uint32_t g, unsigned j) { return (b << 32 | g) + j * DISK_GOLDEN; }

// Opens the disk once. devtmpfs creates /dev/vda asynchronously, so give it up to 2 s after boot.
static bool disk_open(void)
{
    if (fd >= 0) return true;
    for (int i = 0; i < 200 && access(dev, F_OK) != 0; i++) usleep(10000);
    fd = open(dev, O_RDWR | O_DIRECT | O_DSYNC | O_CLOEXEC);
    if (fd < 0) { out("error: cannot open %s: %s", dev, strerror(errno)); return false; }
    uint64_t size = 0;
    if (ioctl(fd, BLKGETSIZE64, &size) != 0) size = 0;
    uint64_t region = cfg.disk_bytes ? cfg.disk_bytes : DEFAULT_REGION;
    if (region > size) {
        if (cfg.disk_bytes) { out("error: ferry.disksize=%llu is larger than %s (%llu bytes)",
                                  (unsigned long long)cfg.disk_bytes, dev, (unsigned long long)size);
                              close(fd); fd = -1; return false; }
        region = size;
    }
    nblocks = region / BLOCK;
    gens = calloc(nblocks ? nblocks : 1, sizeof *gens);
    if (!gens || posix_memalign((void **)&buf, BLOCK, BLOCK) != 0) fatal("disk: out of memory");
    out("disk: %s %llu bytes, writing %llu blocks", dev, (unsigned long long)size, (unsigned long long)nblocks);
    return true;
}

static void write_one(void)
{
    if (nblocks == 0) return;
    pthread_mutex_lock(&io_lock);
    uint64_t b = rng_next(&rng) % nblocks;
    uint32_t g = gens[b] + 1;
    if (g == 0) g = 1;
    for (unsigned j = 0; j < BWORDS; j++) buf[j] = word_value(b, g, j);
    ssize_t n = pwrite(fd, buf, BLOCK, (off_t)(b * BLOCK));
    if (n == BLOCK) {
        if (gens[b] == 0) touched++;
        gens[b] = g;
        written++;
    } else {
        out("warning: disk write of block %llu failed: %s", (unsigned long long)b, n < 0 ? strerror(errno) : "short");
    }
    pthread_mutex_unlock(&io_lock);
}

static void *writer_main(void *arg)
{
    uint64_t next = now_ns();
    for (;;) {
        uint64_t r = atomic_load(&rate);
        pthread_mutex_lock(&change_lock);
        if (r == 0) {
            while (atomic_load(&rate) == 0) pthread_cond_wait(&changed, &change_lock);
            next = now_ns();
        } else if (now_ns() < next) {
            struct timespec ts = { .tv_sec = next / 1000000000u, .tv_nsec = next % 1000000000u };
            pthread_cond_timedwait(&changed, &change_lock, &ts);
        }
        pthread_mutex_unlock(&change_lock);
        r = atomic_load(&rate);
        uint64_t now = now_ns();
        if (r == 0 || now < next) continue;
        write_one();
        next += 1000000000u / r;
        if (now > next + 100000000u) next = now;   // after a stall, no burst
    }
    return NULL;
}

void disk_set_rate(uint64_t blocks_per_s)
{
    if (!disk_open()) return;
    pthread_mutex_lock(&change_lock);
    atomic_store(&rate, blocks_per_s);
    pthread_cond_broadcast(&changed);
    bool start = !started;
    started = true;
    pthread_mutex_unlock(&change_lock);
    pthread_t t;
    if (start && pthread_create(&t, NULL, writer_main, NULL)) fatal("disk: cannot start the writer");
}

void disk_check(void)
{
    if (!disk_open()) return;
    pthread_mutex_lock(&io_lock);
    uint64_t t0 = now_ns(), checked = 0, bad = 0, first = 0, want0 = 0, got0 = 0;
    unsigned first_word = 0;
    for (uint64_t b = 0; b < nblocks; b++) {
        if (gens[b] == 0) continue;
        checked++;
        ssize_t n = pread(fd, buf, BLOCK, (off_t)(b * BLOCK));
        if (n != BLOCK) {
            pthread_mutex_unlock(&io_lock);
            out("diskcheck bad block=%llu read failed: %s", (unsigned long long)b, n < 0 ? strerror(errno) : "short");
            return;
        }
        for (unsigned j = 0; j < BWORDS; j++) {
            uint64_t want = word_value(b, gens[b], j);
            if (buf[j] != want) {
                if (bad++ == 0) { first = b; first_word = j; want0 = want; got0 = buf[j]; }
                break;
            }
        }
    }
    uint64_t us = (now_ns() - t0) / 1000, writes = written;
    pthread_mutex_unlock(&io_lock);
    if (bad == 0)
        out("diskcheck ok blocks=%llu writes=%llu us=%llu", (unsigned long long)checked, (unsigned long long)writes,
            (unsigned long long)us);
    else
        out("diskcheck bad block=%llu word=%u want=%016llx got=%016llx bad_blocks=%llu writes=%llu us=%llu",
            (unsigned long long)first, first_word, (unsigned long long)want0, (unsigned long long)got0,
            (unsigned long long)bad, (unsigned long long)writes, (unsigned long long)us);
}

void disk_status(char *out_buf, int size)
{
    if (fd < 0) { snprintf(out_buf, size, "disk=off"); return; }
    pthread_mutex_lock(&io_lock);
    snprintf(out_buf, size, "disk_rate=%llu disk_blocks=%llu disk_writes=%llu", (unsigned long long)atomic_load(&rate),
             (unsigned long long)touched, (unsigned long long)written);
    pthread_mutex_unlock(&io_lock);
}

void disk_start(void)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&changed, &ca);
    if (cfg.disk) disk_set_rate(cfg.disk_rate);
}
