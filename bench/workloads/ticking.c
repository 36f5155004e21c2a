/* The compute workload under an interval timer: ITIMER_REAL every USEC microseconds (0: no
 * timer) with a handler that only counts, while the program computes without system calls.
 * Usage: ticking ITERATIONS USEC   (prints a checksum and how many ticks the handler saw) */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>

#define N 16

static volatile long ticks;

static void tick(int sig) { (void)sig; ticks++; }

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 1000, usec = argc > 2 ? atol(argv[2]) : 0;
    static int32_t a[N][N], b[N][N], c[N][N];
    uint64_t h = 0x9e3779b97f4a7c15ULL;
    if (usec > 0) {
        signal(SIGALRM, tick);
        struct itimerval it = {{usec / 1000000, usec % 1000000}, {usec / 1000000, usec % 1000000}};
        setitimer(ITIMER_REAL, &it, NULL);
    }
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            a[i][j] = (int32_t)(mix((uint64_t)(i * N + j)) & 0xff) - 128;
            b[i][j] = (int32_t)(mix((uint64_t)(j * N + i + 7)) & 0xff) - 128;
        }
    for (long it = 0; it < iters; it++) {
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) {
                int32_t s = 0;
                for (int k = 0; k < N; k++)
                    s += a[i][k] * b[k][j];
                c[i][j] = s;
            }
        a[it % N][(it / N) % N] ^= c[(it + 3) % N][it % N] & 0x7f;
        for (int r = 0; r < 16; r++)
            h = mix(h + (uint64_t)c[r][(r + it) % N]);
    }
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    printf("ticking %ld: h=%016llx ticks>0 %d\n", iters, (unsigned long long)h, ticks > 0);
    fprintf(stderr, "ticks %ld\n", ticks);
    return 0;
}
