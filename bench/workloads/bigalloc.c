/* Large-object workload: malloc/free churn over 64 slots with objects of 4 KiB..256 KiB
 * (log-uniform sizes), every object filled with memset and checksummed at a few places.
 * Usage: bigalloc [ITERATIONS]   (one iteration = one slot operation) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS 64

static uint64_t rng = 0x2545F4914F6CDD1DULL;

static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

__attribute__((noinline)) static uint64_t sum(const unsigned char *p, size_t n)
{
    uint64_t s = 0;
    for (size_t i = 0; i < n; i += 4096)     /* one byte per page, and the last one */
        s = s * 31 + p[i];
    return s * 31 + p[n - 1];
}

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 1000;
    static unsigned char *slot[SLOTS];
    static size_t len[SLOTS];
    uint64_t check = 0;

    for (long it = 0; it < iters; it++) {
        uint64_t r = next();
        unsigned i = (unsigned)(r % SLOTS);
        if (slot[i] == NULL) {
            size_t n = (size_t)4096 << ((r >> 8) % 7);             /* 4 KiB .. 256 KiB */
            n += (size_t)((r >> 16) % n);
            slot[i] = malloc(n);
            len[i] = n;
            memset(slot[i], (int)(it & 0xff), n);
        } else {
            check += sum(slot[i], len[i]);
            free(slot[i]);
            slot[i] = NULL;
        }
    }
    for (unsigned i = 0; i < SLOTS; i++) {
        if (slot[i]) {
            check += sum(slot[i], len[i]);
            free(slot[i]);
        }
    }
    printf("bigalloc %ld: check=%016llx\n", iters, (unsigned long long)check);
    return 0;
}
