// Console output, time, power off and the small parsers every option uses.
#define _GNU_SOURCE
#include "ferry.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/reboot.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

// Every thread prints whole lines with one write(), under a lock, so lines never interleave on the UART.
static void vout(const char *fmt, va_list ap)
{
    char line[512];
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    if (n < 0) return;
    if (n > (int)sizeof line - 2) n = sizeof line - 2;
    line[n++] = '\n';
    pthread_mutex_lock(&out_lock);
    for (int off = 0; off < n;) {
        ssize_t w = write(1, line + off, n - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        off += w;
    }
    pthread_mutex_unlock(&out_lock);
}

void out(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vout(fmt, ap);
    va_end(ap);
}

_Noreturn void power_off(void)
{
    sync();
    reboot(RB_POWER_OFF);
    // Only reached without a poweroff driver. init must never exit: that panics the kernel.
    out("warning: poweroff failed: %s; halting here", strerror(errno));
    for (;;) pause();
}

_Noreturn void fatal(const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    out("panic: %s", msg);
    power_off();
}

uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

void sleep_until(uint64_t deadline_ns)
{
    struct timespec ts = { .tv_sec = deadline_ns / 1000000000u, .tv_nsec = deadline_ns % 1000000000u };
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {}
}

int read_file(const char *path, char *buf, int size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    int len = 0;
    while (len < size - 1) {
        ssize_t n = read(fd, buf + len, size - 1 - len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        len += n;
    }
    close(fd);
    buf[len] = 0;
    return len;
}

bool parse_uint(const char *s, uint64_t *v)
{
    if (*s < '0' || *s > '9') return false;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno || *end) return false;
    *v = x;
    return true;
}

// A number followed by a unit from the table; a bare number takes the unit of the first entry.
static bool parse_unit(const char *s, uint64_t *v, const char *const *units, const uint64_t *scale, int n)
{
    if (*s < '0' || *s > '9') return false;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno) return false;
    for (int i = 0; i < n; i++) {
        if (strcmp(end, units[i]) == 0) {
            if (x > UINT64_MAX / scale[i]) return false;
            *v = x * scale[i];
            return true;
        }
    }
    return false;
}

bool parse_size(const char *s, uint64_t *bytes)
{
    static const char *const units[] = { "", "K", "M", "G" };
    static const uint64_t scale[] = { 1, 1ull << 10, 1ull << 20, 1ull << 30 };
    return parse_unit(s, bytes, units, scale, 4);
}

bool parse_duration(const char *s, uint64_t *ns)
{
    static const char *const units[] = { "", "ms", "us", "s" };
    static const uint64_t scale[] = { 1000000, 1000000, 1000, 1000000000 };
    return parse_unit(s, ns, units, scale, 4);
}

static const char *const pattern_names[] = { "uniform", "hotset", "sequential" };

const char *pattern_name(int pattern) { return pattern_names[pattern]; }

bool parse_pattern(const char *s, int *pattern)
{
    for (int i = 0; i < 3; i++) {
        if (strcmp(s, pattern_names[i]) == 0) { *pattern = i; return true; }
    }
    return false;
}
