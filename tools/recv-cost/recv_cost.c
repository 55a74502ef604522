/*
 * recv_cost: what receiving scattered pages costs per syscall on this host: one recv(2) per 4 KiB page against one
 * readv(2) per 256 pages, into the same scattered destination pages, over loopback TCP. A sender thread streams
 * 256 MiB six times; the receiver alternates the two ways (the first pass also pays first-touch costs: ignore it).
 * Found the numbers behind PageBatchReader's scatter receive: on the PVM host, 2.5-10.6 us per page with a recv per
 * page, 1.3-4.8 us with a readv per 256 (noisy from hour to hour; the ratio holds).
 *
 *   gcc -O2 -Wall -pthread -o /tmp/recv_cost tools/recv-cost/recv_cost.c && /tmp/recv_cost
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define PAGES 65536
#define BATCH 256
#define PASSES 6

static int port;
static char *src;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* Page i of a pass, scattered over the buffer (7919 is prime, so every page is hit once). */
static char *page(char *base, long i) { return base + (size_t)(i * 7919 % PAGES) * 4096; }

/* Move all of v[0..cnt) with readv or writev; returns -1 on error or EOF. */
static int transfer(int fd, struct iovec *v, int cnt, int reading)
{
    while (cnt > 0) {
        ssize_t n = reading ? readv(fd, v, cnt) : writev(fd, v, cnt);
        if (n <= 0) return -1;
        while (n > 0) {
            if ((size_t)n >= v->iov_len) { n -= v->iov_len; v++; cnt--; }
            else { v->iov_base = (char *)v->iov_base + n; v->iov_len -= n; n = 0; }
        }
    }
    return 0;
}

static void *sender(void *arg)
{
    (void)arg;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (connect(s, (void *)&a, sizeof a) != 0) { perror("connect"); return 0; }
    struct iovec iov[BATCH];
    for (int pass = 0; pass < PASSES; pass++)
        for (long b = 0; b < PAGES / BATCH; b++) {
            for (int i = 0; i < BATCH; i++) { iov[i].iov_base = page(src, b * BATCH + i); iov[i].iov_len = 4096; }
            if (transfer(s, iov, BATCH, 0) != 0) { perror("writev"); return 0; }
        }
    close(s);
    return 0;
}

int main(void)
{
    src = mmap(0, (size_t)PAGES * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *dst = mmap(0, (size_t)PAGES * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (src == MAP_FAILED || dst == MAP_FAILED) { perror("mmap"); return 1; }
    memset(src, 1, (size_t)PAGES * 4096);
    memset(dst, 2, (size_t)PAGES * 4096);

    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof a;
    if (bind(l, (void *)&a, sizeof a) != 0 || listen(l, 1) != 0 || getsockname(l, (void *)&a, &len) != 0) { perror("listen"); return 1; }
    port = ntohs(a.sin_port);
    pthread_t t;
    pthread_create(&t, 0, sender, 0);
    int c = accept(l, 0, 0);

    double us[PASSES];
    for (int pass = 0; pass < PASSES; pass++) {
        double t0 = now();
        if (pass % 2 == 0) {
            struct iovec iov[BATCH];
            for (long b = 0; b < PAGES / BATCH; b++) {
                for (int i = 0; i < BATCH; i++) { iov[i].iov_base = page(dst, b * BATCH + i); iov[i].iov_len = 4096; }
                if (transfer(c, iov, BATCH, 1) != 0) { perror("readv"); return 1; }
            }
        } else {
            for (long p = 0; p < PAGES; p++) {
                struct iovec one = { page(dst, p), 4096 };
                /* recv(2) of one page, resumed after short reads, as a receive per run does. */
                while (one.iov_len > 0) {
                    ssize_t n = recv(c, one.iov_base, one.iov_len, 0);
                    if (n <= 0) { perror("recv"); return 1; }
                    one.iov_base = (char *)one.iov_base + n;
                    one.iov_len -= n;
                }
            }
        }
        us[pass] = (now() - t0) / PAGES * 1e6;
    }
    pthread_join(t, 0);
    for (int pass = 0; pass < PASSES; pass++)
        printf("%s %.2f us/page%s", pass % 2 == 0 ? "readv per 256" : "recv per page", us[pass], pass + 1 < PASSES ? ", " : "\n");
    return 0;
}
