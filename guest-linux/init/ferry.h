// Ferry's RISC-V Linux guest: the /init program. Shared declarations.
// One static binary, no shell: it mounts the pseudo file systems, describes the machine in one line, starts
// the workloads as threads (heartbeat, memory dirtier, disk writer, TCP echo) and answers console commands.
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

// Options from the kernel command line (`ferry.<name>=<value>`); see README.md for the table.
struct config {
    uint64_t heartbeat_ns;   // heartbeat period; 0 = off
    uint64_t tick_ns;        // stall sampler period
    uint64_t ws_bytes;       // dirtier working set; 0 = not given (fit to RAM)
    uint64_t rate;           // pages dirtied per second, all threads together; 0 = off
    int pattern;             // enum pattern
    unsigned hot_pct;        // hot set size for pattern=hotset
    unsigned words;          // 8-byte words rewritten per dirtied page (1..512)
    unsigned threads;        // dirtier threads; 0 = one per online CPU
    uint64_t seed;           // PRNG seed
    bool disk;               // start the disk writer at boot
    uint64_t disk_rate;      // blocks written per second when the disk writer runs
    uint64_t disk_bytes;     // disk region written and checked; 0 = min(disk, 64M)
    char net[32];            // "a.b.c.d/prefix" for eth0; empty = no network
    char gw[16];             // default gateway; empty = none
    unsigned port;           // TCP echo port
    unsigned spin;           // threads that never sleep (keep harts busy); 0 = none
};

enum pattern { PATTERN_UNIFORM, PATTERN_HOTSET, PATTERN_SEQUENTIAL };

extern struct config cfg;

// util.c
void out(const char *fmt, ...) __attribute__((format(printf, 1, 2)));  // one whole line to the console
_Noreturn void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
_Noreturn void power_off(void);
uint64_t now_ns(void);                                   // CLOCK_MONOTONIC
void sleep_until(uint64_t deadline_ns);                  // absolute, CLOCK_MONOTONIC
int read_file(const char *path, char *buf, int size);    // NUL-terminated; -1 when absent
bool parse_size(const char *s, uint64_t *bytes);         // 4096, 64K, 256M, 2G
bool parse_duration(const char *s, uint64_t *ns);        // 500us, 10ms, 1s; a bare number is ms
bool parse_uint(const char *s, uint64_t *v);
const char *pattern_name(int pattern);
bool parse_pattern(const char *s, int *pattern);
static inline uint64_t rng_next(uint64_t *s)             // xorshift64*
{
    *s ^= *s >> 12; *s ^= *s << 25; *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

// machine.c
void print_machine(void);

// heartbeat.c
void heartbeat_start(void);
void heartbeat_set_period(uint64_t ns);

// dirtier.c
void dirtier_start(void);
void dirtier_set_rate(uint64_t pages_per_s);
void dirtier_set_pattern(int pattern);
void dirtier_selfcheck(void);
void dirtier_corrupt(void);
void dirtier_status(char *buf, int size);

// disk.c
void disk_start(void);
void disk_set_rate(uint64_t blocks_per_s);
void disk_check(void);
void disk_status(char *buf, int size);

// net.c
void net_start(void);
void net_status(char *buf, int size);
