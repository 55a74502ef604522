// The heartbeat, and the stall measure it reports.
//
// As in the x86 guest (docs/GUEST.md, "The stall measure"), a stall is time the guest did not run when it
// should have. A sampler thread sleeps to absolute deadlines one tick apart (ferry.tick, 1 ms by default)
// and records how late each wake-up was (woke - deadline). `maxstall_us` is the largest lateness since the
// previous heartbeat line. A vCPU stopped during a migration shows up as one late wake-up, whether or not
// the guest was idle. The baseline is the timer's own latency: tens of microseconds under QEMU TCG.
// Like the x86 guest, the sampler reads CLOCK_MONOTONIC, which follows the board's timer (mtime): a VMM
// that freezes mtime while the VM is stopped hides the pause from the guest.
#define _GNU_SOURCE
#include "ferry.h"

#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <time.h>

static _Atomic uint64_t max_stall_ns;     // largest wake-up lateness since the last heartbeat line
static _Atomic uint64_t sampler_deadline; // the sampler's next deadline
static _Atomic uint64_t sampler_wakes;    // wake-ups the sampler has recorded
static _Atomic uint64_t period_ns;        // heartbeat period; 0 = off (the thread then waits for a change)
static pthread_mutex_t period_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t period_changed;     // on CLOCK_MONOTONIC, set up in heartbeat_start

// The sampler and the heartbeat run SCHED_FIFO, so a wake-up preempts the dirtier threads at once: without
// it, a busy hart delays the sampler by a scheduler slice (measured 10-19 ms under QEMU at rate=20000), and
// the measure would show the guest's own scheduling instead of the time the VM did not run.
static void make_realtime(void)
{
    struct sched_param sp = { .sched_priority = 10 };
    int err = pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp);
    if (err) out("warning: heartbeat: no SCHED_FIFO (%s); maxstall_us includes scheduling delays", strerror(err));
}

static void *sampler(void *arg)
{
    make_realtime();
    uint64_t deadline = now_ns();
    for (;;) {
        deadline += cfg.tick_ns;
        atomic_store(&sampler_deadline, deadline);
        sleep_until(deadline);
        uint64_t now = now_ns();
        uint64_t late = now - deadline;
        uint64_t old = atomic_load(&max_stall_ns);
        while (late > old && !atomic_compare_exchange_weak(&max_stall_ns, &old, late)) {}
        atomic_fetch_add(&sampler_wakes, 1);
        // After a stall, restart the cadence from now instead of catching up with a burst of short sleeps.
        if (now > deadline + cfg.tick_ns) deadline = now;
    }
    return NULL;
}

// A line reports the stall that covers its own moment: when the sampler is overdue (the guest was stopped and
// this thread ran first after it, as on a migration's destination), its late wake-up would otherwise land in a
// later line, and the line printed right after a stall would report none. Waits for that wake-up (1 s at most).
static void await_overdue_sampler(void)
{
    uint64_t wakes = atomic_load(&sampler_wakes);
    uint64_t due = atomic_load(&sampler_deadline);
    uint64_t start = now_ns();
    if (due == 0 || start <= due) return;
    struct timespec pause = { .tv_sec = 0, .tv_nsec = 50000 };
    while (atomic_load(&sampler_wakes) == wakes && now_ns() - start < 1000000000u) nanosleep(&pause, NULL);
}

// Sleeps until `deadline` or until the period changes; returns true when the period changed.
static bool wait_period(uint64_t period, uint64_t deadline)
{
    struct timespec ts = { .tv_sec = deadline / 1000000000u, .tv_nsec = deadline % 1000000000u };
    bool changed;
    pthread_mutex_lock(&period_lock);
    while (!(changed = atomic_load(&period_ns) != period) && (period == 0 || now_ns() < deadline)) {
        if (period == 0) pthread_cond_wait(&period_changed, &period_lock);
        else pthread_cond_timedwait(&period_changed, &period_lock, &ts);
    }
    pthread_mutex_unlock(&period_lock);
    return changed;
}

static void *beat(void *arg)
{
    make_realtime();
    uint64_t seq = 0;
    uint64_t period = atomic_load(&period_ns);
    uint64_t next = now_ns();   // the first line comes at once
    for (;;) {
        if (wait_period(period, next)) {
            period = atomic_load(&period_ns);
            next = now_ns() + period;
            continue;
        }
        await_overdue_sampler();
        uint64_t stall = atomic_exchange(&max_stall_ns, 0);
        out("heartbeat %llu maxstall_us=%llu", (unsigned long long)++seq, (unsigned long long)(stall / 1000));
        // Missed lines are skipped, not printed in a burst: the cadence restarts after a long stall.
        next += period;
        uint64_t now = now_ns();
        if (now > next + period) next = now + period;
    }
    return NULL;
}

void heartbeat_set_period(uint64_t ns)
{
    pthread_mutex_lock(&period_lock);
    atomic_store(&period_ns, ns);
    pthread_cond_broadcast(&period_changed);
    pthread_mutex_unlock(&period_lock);
}

void heartbeat_start(void)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&period_changed, &attr);
    pthread_t t;
    atomic_store(&period_ns, cfg.heartbeat_ns);
    if (pthread_create(&t, NULL, sampler, NULL) || pthread_create(&t, NULL, beat, NULL))
        fatal("cannot start the heartbeat threads");
}
