// /init: mounts /proc, /sys and /dev, reads the ferry.* options, prints the machine line, starts the
// workloads and then serves console commands forever. init must never return (the kernel panics): every
// fatal error prints a `panic:` line and powers the machine off.
#define _GNU_SOURCE
#include "ferry.h"

#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

struct config cfg = {
    .heartbeat_ns = 100000000,
    .tick_ns = 1000000,
    .rate = 1000,
    .pattern = PATTERN_UNIFORM,
    .hot_pct = 10,
    .words = 512,
    .seed = 1,
    .disk_rate = 100,
    .port = 7,
};

#define DEFAULT_WS (64ull << 20)

static void mount_fs(const char *source, const char *target, const char *type)
{
    mkdir(target, 0755);
    if (mount(source, target, type, MS_NOSUID | MS_NOEXEC, NULL) != 0 && errno != EBUSY)
        fatal("cannot mount %s on %s: %s", type, target, strerror(errno));
}

// Without /dev/console in the initramfs the kernel starts init with no stdio; recover it from devtmpfs.
static void ensure_stdio(void)
{
    if (fcntl(1, F_GETFD) >= 0) return;
    int fd = open("/dev/console", O_RDWR);
    if (fd < 0) power_off();   // nowhere to say why
    dup2(fd, 0), dup2(fd, 1), dup2(fd, 2);
    if (fd > 2) close(fd);
}

// A thread that never sleeps: keeps a hart busy, as a VM running a compute job would. A guest whose harts all sleep
// in wfi is one QEMU 7.2 freezes after a migration on this board (its timers are lost); spinning keeps it running
// there, so the two machines can be compared on the same workload.
static void *spin_main(void *arg)
{
    (void)arg;
    volatile uint64_t sink = 0;
    for (;;) sink += now_ns();
    return NULL;
}

static void spin_start(void)
{
    for (unsigned i = 0; i < cfg.spin; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, spin_main, NULL)) fatal("spin: cannot start thread %u", i);
    }
}

// Parses the ferry.* words of the kernel command line into cfg. Other words belong to the kernel. An unknown
// or malformed ferry.* word stops the boot, so a typo never runs a different experiment from the one asked.
static void parse_cmdline(char *cmdline)
{
    uint64_t v;
    bool ws_given = false;
    for (char *save, *word = strtok_r(cmdline, " \t\n", &save); word; word = strtok_r(NULL, " \t\n", &save)) {
        if (strncmp(word, "ferry.", 6) != 0) continue;
        char *key = word + 6, *val = strchr(key, '=');
        if (!val) fatal("bad option %s (want ferry.<name>=<value>)", word);
        *val++ = 0;
        bool ok = true;
        if (!strcmp(key, "heartbeat")) ok = parse_duration(val, &cfg.heartbeat_ns);
        else if (!strcmp(key, "tick")) ok = parse_duration(val, &cfg.tick_ns) && cfg.tick_ns >= 100000;
        else if (!strcmp(key, "ws")) ok = parse_size(val, &cfg.ws_bytes) && cfg.ws_bytes % 4096 == 0, ws_given = true;
        else if (!strcmp(key, "rate")) ok = parse_uint(val, &cfg.rate);
        else if (!strcmp(key, "pattern")) ok = parse_pattern(val, &cfg.pattern);
        else if (!strcmp(key, "hot")) ok = parse_uint(val, &v) && v >= 1 && v <= 100, cfg.hot_pct = v;
        else if (!strcmp(key, "words")) ok = parse_uint(val, &v) && v >= 1 && v <= 512, cfg.words = v;
        else if (!strcmp(key, "threads")) ok = parse_uint(val, &v) && v <= 64, cfg.threads = v;
        else if (!strcmp(key, "seed")) ok = parse_uint(val, &cfg.seed);
        else if (!strcmp(key, "disk")) ok = parse_uint(val, &v) && v <= 1, cfg.disk = v;
        else if (!strcmp(key, "diskrate")) ok = parse_uint(val, &cfg.disk_rate);
        else if (!strcmp(key, "disksize")) ok = parse_size(val, &cfg.disk_bytes) && cfg.disk_bytes % 4096 == 0;
        else if (!strcmp(key, "net")) ok = strlen(val) < sizeof cfg.net, snprintf(cfg.net, sizeof cfg.net, "%s", val);
        else if (!strcmp(key, "gw")) ok = strlen(val) < sizeof cfg.gw, snprintf(cfg.gw, sizeof cfg.gw, "%s", val);
        else if (!strcmp(key, "port")) ok = parse_uint(val, &v) && v >= 1 && v <= 65535, cfg.port = v;
        else if (!strcmp(key, "spin")) ok = parse_uint(val, &v) && v <= 64, cfg.spin = v;
        else fatal("unknown option ferry.%s", key);
        if (!ok) fatal("bad value in ferry.%s=%s", key, val);
    }

    // Without ferry.ws the working set shrinks to a quarter of RAM; an explicit one that does not fit is an error.
    char meminfo[4096];
    long mem_kb = 0;
    if (read_file("/proc/meminfo", meminfo, sizeof meminfo) > 0 && strstr(meminfo, "MemTotal:"))
        mem_kb = strtol(strstr(meminfo, "MemTotal:") + 9, NULL, 10);
    uint64_t mem = (uint64_t)mem_kb * 1024;
    if (!ws_given) cfg.ws_bytes = DEFAULT_WS < mem / 4 ? DEFAULT_WS : mem / 4 / 4096 * 4096;
    else if (cfg.ws_bytes > mem / 4 * 3)
        fatal("ferry.ws=%lluK does not fit in %ld KiB of RAM", (unsigned long long)(cfg.ws_bytes >> 10), mem_kb);
}

static void status(void)
{
    char d[160], k[160], n[160], up[64] = "?";
    dirtier_status(d, sizeof d);
    disk_status(k, sizeof k);
    net_status(n, sizeof n);
    if (read_file("/proc/uptime", up, sizeof up) > 0) up[strcspn(up, " ")] = 0;
    out("status uptime=%s %s %s %s", up, d, k, n);
}

// One command per line on the console; each answer is one line.
static void command(char *line)
{
    char *arg = line + strcspn(line, " ");
    if (*arg) *arg++ = 0;
    while (*arg == ' ') arg++;
    uint64_t v;
    int p;
    if (!*line) return;
    else if (!strcmp(line, "selfcheck")) dirtier_selfcheck();
    else if (!strcmp(line, "diskcheck")) disk_check();
    else if (!strcmp(line, "status")) status();
    else if (!strcmp(line, "corrupt")) dirtier_corrupt();
    else if (!strcmp(line, "rate") && parse_uint(arg, &v)) { dirtier_set_rate(v); out("ok rate=%llu", (unsigned long long)v); }
    else if (!strcmp(line, "pattern") && parse_pattern(arg, &p)) { dirtier_set_pattern(p); out("ok pattern=%s", pattern_name(p)); }
    else if (!strcmp(line, "heartbeat") && parse_duration(arg, &v)) {
        heartbeat_set_period(v);
        out("ok heartbeat_us=%llu", (unsigned long long)(v / 1000));
    }
    else if (!strcmp(line, "disk") && parse_uint(arg, &v)) { disk_set_rate(v); out("ok disk_rate=%llu", (unsigned long long)v); }
    else if (!strcmp(line, "poweroff")) { out("poweroff"); power_off(); }
    else if (!strcmp(line, "help"))
        out("commands: selfcheck diskcheck status corrupt rate <pages/s> pattern <uniform|hotset|sequential> "
            "heartbeat <dur> disk <blocks/s> poweroff");
    else out("error: bad command \"%s%s%s\" (try help)", line, *arg ? " " : "", arg);
}

static _Noreturn void console_loop(void)
{
    // No echo: the console carries only the guest's own lines, so a test can parse them. ICANON stays, and
    // ICRNL turns a terminal's Enter into '\n'.
    struct termios t;
    if (tcgetattr(0, &t) == 0) {
        t.c_lflag &= ~(ECHO | ECHOE | ECHOK | ECHONL);
        t.c_lflag |= ICANON;
        t.c_iflag |= ICRNL;
        tcsetattr(0, TCSANOW, &t);
    }
    char line[256];
    for (;;) {
        ssize_t n = read(0, line, sizeof line - 1);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) { sleep(1); continue; }   // no console input (hang-up or EOF): keep the workloads going
        line[n] = 0;
        // A read returns one line in canonical mode; split anyway, in case of several.
        for (char *save, *l = strtok_r(line, "\r\n", &save); l; l = strtok_r(NULL, "\r\n", &save)) {
            while (*l == ' ' || *l == '\t') l++;
            l[strcspn(l, "\t")] = 0;
            command(l);
        }
    }
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    mount_fs("devtmpfs", "/dev", "devtmpfs");
    ensure_stdio();
    mount_fs("proc", "/proc", "proc");
    mount_fs("sysfs", "/sys", "sysfs");

    char up[64] = "?";
    if (read_file("/proc/uptime", up, sizeof up) > 0) up[strcspn(up, " ")] = 0;
    out("ferry-init: started, uptime %s s", up);

    static char cmdline[4096];
    if (read_file("/proc/cmdline", cmdline, sizeof cmdline) < 0) fatal("cannot read /proc/cmdline");
    cmdline[strcspn(cmdline, "\n")] = 0;
    out("cmdline: \"%s\"", cmdline);
    parse_cmdline(cmdline);
    char threads[16] = "auto";
    if (cfg.threads) snprintf(threads, sizeof threads, "%u", cfg.threads);
    out("config: ws=%lluK rate=%llu pattern=%s hot=%u words=%u threads=%s seed=%llu heartbeat_us=%llu tick_us=%llu "
        "disk=%d diskrate=%llu net=%s port=%u spin=%u",
        (unsigned long long)(cfg.ws_bytes >> 10), (unsigned long long)cfg.rate, pattern_name(cfg.pattern),
        cfg.hot_pct, cfg.words, threads, (unsigned long long)cfg.seed,
        (unsigned long long)(cfg.heartbeat_ns / 1000), (unsigned long long)(cfg.tick_ns / 1000), cfg.disk,
        (unsigned long long)cfg.disk_rate, cfg.net[0] ? cfg.net : "off", cfg.port, cfg.spin);

    print_machine();
    heartbeat_start();
    dirtier_start();
    disk_start();
    net_start();
    spin_start();
    console_loop();
}
