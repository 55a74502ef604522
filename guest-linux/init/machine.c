// The `machine:` line: what the kernel found, in a form that is compared between a QEMU boot and a Ferry
// boot of the same Image. Everything in it is a function of the board and the command line, never of timing
// or probe order: lists are sorted.
#define _GNU_SOURCE
#include "ferry.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }
static int cmp_long(const void *a, const void *b)
{
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

// Appends `s` to the '|'-separated set in `list` unless it is already there.
static void add_unique(char *list, size_t size, const char *s)
{
    size_t n = strlen(s);
    for (const char *p = list; *p;) {
        const char *e = strchr(p, '|');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && strncmp(p, s, n) == 0) return;
        p += len + (e != NULL);
    }
    if (*list) strncat(list, "|", size - strlen(list) - 1);
    strncat(list, s, size - strlen(list) - 1);
}

// harts and isa from /proc/cpuinfo: one `processor` line per online hart, `isa` per hart.
static void cpuinfo(int *harts, char *isa, size_t isa_size)
{
    static char buf[16384];
    *harts = 0;
    isa[0] = 0;
    if (read_file("/proc/cpuinfo", buf, sizeof buf) < 0) { snprintf(isa, isa_size, "?"); return; }
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        char *colon = strchr(line, ':');
        if (!colon) continue;
        char *v = colon + 1;
        while (*v == ' ') v++;
        if (strncmp(line, "processor", 9) == 0) (*harts)++;
        else if (strncmp(line, "isa", 3) == 0 && (line[3] == ' ' || line[3] == '\t')) add_unique(isa, isa_size, v);
    }
}

// RAM the board describes, in MiB: the sizes in every /memory@... node's reg (2 address and 2 size cells, big-endian).
// Not MemTotal, which also depends on what firmware and the device tree blob reserve, not on the board.
static long mem_board_mib(void)
{
    const char *base = "/sys/firmware/devicetree/base";
    DIR *d = opendir(base);
    if (!d) return -1;
    unsigned long long total = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (strncmp(e->d_name, "memory@", 7) != 0) continue;
        char path[300];
        unsigned char reg[256];
        snprintf(path, sizeof path, "%s/%s/reg", base, e->d_name);
        int n = read_file(path, (char *)reg, sizeof reg);
        for (int i = 0; i + 16 <= n; i += 16) {
            unsigned long long size = 0;
            for (int k = 8; k < 16; k++) size = (size << 8) | reg[i + k];
            total += size;
        }
    }
    closedir(d);
    return (long)(total >> 20);
}

// Device ids (virtio spec 5: 1 = net, 2 = blk, 4 = rng, ...) of the bound virtio devices, sorted.
static void virtio_ids(char *list, size_t size)
{
    long ids[64];
    int n = 0;
    DIR *d = opendir("/sys/bus/virtio/devices");
    if (d) {
        for (struct dirent *e; (e = readdir(d)) && n < 64;) {
            if (e->d_name[0] == '.') continue;
            char path[300], buf[32];
            snprintf(path, sizeof path, "/sys/bus/virtio/devices/%s/device", e->d_name);
            if (read_file(path, buf, sizeof buf) > 0) ids[n++] = strtol(buf, NULL, 0);
        }
        closedir(d);
    }
    qsort(ids, n, sizeof ids[0], cmp_long);
    list[0] = 0;
    for (int i = 0; i < n; i++) snprintf(list + strlen(list), size - strlen(list), "%s%ld", i ? "," : "", ids[i]);
    if (n == 0) snprintf(list, size, "none");
}

// The platform interrupt controllers: device-tree nodes under /soc with an `interrupt-controller` property
// (the PLIC; an APLIC/IMSIC pair on an AIA board). The per-hart CPU intc nodes live under /cpus, not /soc.
// Each is named by its first compatible string; several are joined with '+', sorted.
static void intc(char *list, size_t size)
{
    const char *soc = "/proc/device-tree/soc";
    char *names[64];
    int n = 0;
    DIR *d = opendir(soc);
    if (d) {
        for (struct dirent *e; (e = readdir(d)) && n < 64;) {
            if (e->d_name[0] == '.') continue;
            char path[300], buf[256];
            snprintf(path, sizeof path, "%s/%s/interrupt-controller", soc, e->d_name);
            if (read_file(path, buf, sizeof buf) < 0) continue;
            snprintf(path, sizeof path, "%s/%s/compatible", soc, e->d_name);
            if (read_file(path, buf, sizeof buf) <= 0) continue;
            names[n++] = strdup(buf);   // the first NUL-terminated string of the list
        }
        closedir(d);
    }
    qsort(names, n, sizeof names[0], cmp_str);
    list[0] = 0;
    for (int i = 0; i < n; i++) {
        snprintf(list + strlen(list), size - strlen(list), "%s%s", i ? "+" : "", names[i]);
        free(names[i]);
    }
    if (n == 0) snprintf(list, size, "unknown");
}

void print_machine(void)
{
    int harts;
    char isa[256], virtio[128], ic[256];
    cpuinfo(&harts, isa, sizeof isa);
    virtio_ids(virtio, sizeof virtio);
    intc(ic, sizeof ic);
    out("machine: harts=%d isa=%s mem=%ldM virtio=%s intc=%s", harts, isa, mem_board_mib(), virtio, ic);
}
