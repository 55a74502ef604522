// The network service: eth0 configured from ferry.net=<ip>/<prefix> (and ferry.gw=), and a TCP echo server
// on ferry.port (7). A client that keeps a connection open across a migration sees whether the virtio-net
// device and the guest's TCP state arrived intact: every byte it sends must come back, in order.
#define _GNU_SOURCE
#include "ferry.h"

#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

static _Atomic uint64_t conns_open, conns_total, bytes_echoed;
static char addr_text[48];

static bool if_set_addr(int s, const char *ifname, unsigned long req, in_addr_t a)
{
    struct ifreq ifr = { 0 };
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = a;
    return ioctl(s, req, &ifr) == 0;
}

static bool if_up(int s, const char *ifname)
{
    struct ifreq ifr = { 0 };
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
    if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0) return false;
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    return ioctl(s, SIOCSIFFLAGS, &ifr) == 0;
}

// Returns false (after an error line) when the address is malformed or eth0 cannot be configured.
static bool configure(void)
{
    char ip[32];
    snprintf(ip, sizeof ip, "%s", cfg.net);
    char *slash = strchr(ip, '/');
    uint64_t prefix = 24;
    if (slash) { *slash = 0; if (!parse_uint(slash + 1, &prefix) || prefix > 32) prefix = 99; }
    struct in_addr a, gw;
    if (inet_pton(AF_INET, ip, &a) != 1 || prefix > 32) { out("error: bad ferry.net=%s", cfg.net); return false; }
    in_addr_t mask = prefix ? htonl(~0u << (32 - prefix)) : 0;

    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) { out("error: net: socket: %s", strerror(errno)); return false; }
    bool ok = if_up(s, "lo");
    // eth0 appears when virtio-net probes, before /init starts; allow a little slack all the same.
    for (int i = 0; i < 100 && if_nametoindex("eth0") == 0; i++) usleep(10000);
    if (!if_set_addr(s, "eth0", SIOCSIFADDR, a.s_addr) || !if_set_addr(s, "eth0", SIOCSIFNETMASK, mask) ||
        !if_up(s, "eth0")) {
        out("error: net: cannot configure eth0: %s", strerror(errno));
        close(s);
        return false;
    }
    if (cfg.gw[0]) {
        if (inet_pton(AF_INET, cfg.gw, &gw) != 1) { out("error: bad ferry.gw=%s", cfg.gw); close(s); return false; }
        struct rtentry rt = { 0 };
        struct sockaddr_in *dst = (struct sockaddr_in *)&rt.rt_dst, *g = (struct sockaddr_in *)&rt.rt_gateway,
                           *m = (struct sockaddr_in *)&rt.rt_genmask;
        dst->sin_family = g->sin_family = m->sin_family = AF_INET;
        g->sin_addr = gw;
        rt.rt_flags = RTF_UP | RTF_GATEWAY;
        if (ioctl(s, SIOCADDRT, &rt) != 0) out("warning: net: default route via %s: %s", cfg.gw, strerror(errno));
    }
    close(s);
    snprintf(addr_text, sizeof addr_text, "%s/%llu", ip, (unsigned long long)prefix);
    return ok;
}

static void *echo_main(void *arg)
{
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(cfg.port), .sin_addr.s_addr = INADDR_ANY };
    if (ls < 0 || bind(ls, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(ls, 16) != 0) {
        out("error: net: cannot listen on port %u: %s", cfg.port, strerror(errno));
        return NULL;
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = ls };
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    out("net: eth0 %s up, echo on tcp port %u", addr_text, cfg.port);
    static char data[16384];
    for (;;) {
        struct epoll_event evs[16];
        int n = epoll_wait(ep, evs, 16, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                int c = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
                if (c < 0) continue;
                setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                struct epoll_event cev = { .events = EPOLLIN, .data.fd = c };
                epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                atomic_fetch_add(&conns_open, 1);
                atomic_fetch_add(&conns_total, 1);
                continue;
            }
            // Blocking writes: a slow reader slows only itself down, which is what an echo client expects.
            ssize_t r = read(fd, data, sizeof data), w = 0;
            while (r > 0 && w < r) {
                ssize_t k = write(fd, data + w, r - w);
                if (k < 0 && errno == EINTR) continue;
                if (k <= 0) { r = -1; break; }
                w += k;
            }
            if (r > 0) { atomic_fetch_add(&bytes_echoed, r); continue; }
            if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
            epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
            close(fd);
            atomic_fetch_sub(&conns_open, 1);
        }
    }
    return NULL;
}

void net_status(char *buf, int size)
{
    if (!addr_text[0]) { snprintf(buf, size, "net=off"); return; }
    snprintf(buf, size, "net=%s conns=%llu conns_total=%llu echoed=%llu", addr_text,
             (unsigned long long)atomic_load(&conns_open), (unsigned long long)atomic_load(&conns_total),
             (unsigned long long)atomic_load(&bytes_echoed));
}

void net_start(void)
{
    if (!cfg.net[0]) return;
    if (!configure()) return;
    pthread_t t;
    if (pthread_create(&t, NULL, echo_main, NULL)) fatal("net: cannot start the echo server");
}
