/*
 * The C floor for bench_shm.py: what the machine itself can do, with no
 * Python in the way. bench_shm.py compiles this with gcc into a temporary directory.
 *
 *   floor rtt WARMUP COUNT [CPU_PINGER CPU_ECHOER]
 *       eventfd ping-pong between two processes (fork, two blocking eventfds); prints
 *       "rtt_median_us=<median µs>" and "rtt_p99_us=<p99 µs>" (nearest rank) over COUNT
 *       timed round trips after WARMUP untimed ones.
 *   floor memcpy SIZE COUNT [CPU]
 *       COUNT memcpy calls of SIZE bytes between two buffers (after a warm-up pass);
 *       prints "gb_per_s=<10^9 bytes per second>".
 *
 * With the optional CPU numbers each process is pinned to that CPU (sched_setaffinity).
 *
 * Exit status 0 on success, 1 on a failure, 2 on bad arguments (message on stderr).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static int post(int fd) {
    uint64_t one = 1;
    for (;;) {
        ssize_t n = write(fd, &one, sizeof one);
        if (n == (ssize_t)sizeof one) return 0;
        if (n < 0 && errno == EINTR) continue;
        return -1;
    }
}

static int take(int fd) {
    uint64_t value;
    for (;;) {
        ssize_t n = read(fd, &value, sizeof value);
        if (n == (ssize_t)sizeof value) return value == 1 ? 0 : -1;
        if (n < 0 && errno == EINTR) continue;
        return -1;
    }
}

static int pin(int cpu) {
    if (cpu < 0) return 0;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) {
        perror("sched_setaffinity");
        return -1;
    }
    return 0;
}

static int rtt(long warmup, long count, int cpu_pinger, int cpu_echoer) {
    int ping = eventfd(0, EFD_CLOEXEC);
    int pong = eventfd(0, EFD_CLOEXEC);
    if (ping < 0 || pong < 0) {
        perror("eventfd");
        return 1;
    }
    uint64_t *samples = malloc(sizeof(uint64_t) * (size_t)count);
    if (samples == NULL) {
        perror("malloc");
        return 1;
    }
    long total = warmup + count;
    /* Pin before the fork (the echoer inherits it), so that a bad CPU fails here. */
    if (pin(cpu_echoer) != 0) return 1;
    pid_t child = fork();
    if (child < 0) {
        perror("fork");
        return 1;
    }
    if (child == 0) {
        /* The echoer: dies with the parent, whatever happens to it. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        for (long i = 0; i < total; i++) {
            if (take(ping) != 0 || post(pong) != 0) _exit(1);
        }
        _exit(0);
    }
    int failed = pin(cpu_pinger) != 0;
    for (long i = 0; i < total && !failed; i++) {
        uint64_t start = now_ns();
        if (post(ping) != 0 || take(pong) != 0) {
            perror("eventfd ping-pong");
            failed = 1;
            break;
        }
        uint64_t elapsed = now_ns() - start;
        if (i >= warmup) samples[i - warmup] = elapsed;
    }
    if (failed) kill(child, SIGKILL);
    int status = 0;
    if (waitpid(child, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "the echo process failed\n");
        failed = 1;
    }
    if (failed) return 1;
    qsort(samples, (size_t)count, sizeof samples[0], cmp_u64);
    double median = count % 2 ? (double)samples[count / 2]
                              : ((double)samples[count / 2 - 1] + (double)samples[count / 2]) / 2;
    long rank = (long)((count * 99 + 99) / 100) - 1; /* nearest rank, as bench.py */
    if (rank < 0) rank = 0;
    printf("rtt_median_us=%.3f\nrtt_p99_us=%.3f\n", median / 1000.0,
           (double)samples[rank] / 1000.0);
    free(samples);
    close(ping);
    close(pong);
    return 0;
}

static int copy(long size, long count, int cpu) {
    if (pin(cpu) != 0) return 1;
    unsigned char *a = malloc((size_t)size), *b = malloc((size_t)size);
    if (a == NULL || b == NULL) {
        perror("malloc");
        return 1;
    }
    memset(a, 0x5a, (size_t)size);
    memset(b, 0xa5, (size_t)size);
    memcpy(b, a, (size_t)size); /* warm-up: pages faulted in, caches primed */
    memcpy(a, b, (size_t)size);
    uint64_t start = now_ns();
    for (long i = 0; i < count; i++) {
        /* Alternate the direction so that no copy can be dropped as redundant. */
        if (i & 1)
            memcpy(a, b, (size_t)size);
        else
            memcpy(b, a, (size_t)size);
        a[i % size] = (unsigned char)i;
        __asm__ __volatile__("" ::"r"(a), "r"(b) : "memory");
    }
    uint64_t elapsed = now_ns() - start;
    unsigned long check = 0;
    for (long i = 0; i < size; i += 4096) check += a[i] + b[i];
    printf("gb_per_s=%.3f\nchecksum=%lu\n", (double)size * (double)count / (double)elapsed,
           check);
    free(a);
    free(b);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 4) {
        long x = strtol(argv[2], NULL, 10), y = strtol(argv[3], NULL, 10);
        if (strcmp(argv[1], "rtt") == 0 && x >= 0 && y > 0 && (argc == 4 || argc == 6))
            return rtt(x, y, argc == 6 ? atoi(argv[4]) : -1, argc == 6 ? atoi(argv[5]) : -1);
        if (strcmp(argv[1], "memcpy") == 0 && x > 0 && y > 0 && (argc == 4 || argc == 5))
            return copy(x, y, argc == 5 ? atoi(argv[4]) : -1);
    }
    fprintf(stderr, "usage: %s rtt WARMUP COUNT [CPU_PINGER CPU_ECHOER] | memcpy SIZE COUNT [CPU]\n",
            argv[0]);
    return 2;
}
