/* Allocation-heavy workload: malloc/calloc/realloc/free churn over 1024 slots with objects
 * of 16..400 bytes, each filled and checksummed through non-inlined calls.
 * Usage: alloc [ITERATIONS]   (one iteration = one slot operation) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define SLOTS 1024

static uint64_t rng = 0x2545F4914F6CDD1DULL;

static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

__attribute__((noinline)) static void fill(unsigned char *p, size_t n, unsigned v)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(v + i);
}

__attribute__((noinline)) static uint64_t sum(const unsigned char *p, size_t n)
{
    uint64_t s = 0;
    for (size_t i = 0; i < n; i += 8)
        s = s * 31 + p[i];
    return s;
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
        size_t n = 16 + (size_t)((r >> 16) % 385);
        if (slot[i] == NULL) {
            slot[i] = (r >> 40) & 1 ? malloc(n) : calloc(1, n);
            len[i] = n;
            fill(slot[i], n, (unsigned)it);
        } else if (((r >> 32) & 7) == 0) {
            slot[i] = realloc(slot[i], n);
            if (n > len[i])
                fill(slot[i] + len[i], n - len[i], (unsigned)it);
            len[i] = n;
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
    printf("alloc %ld: check=%016llx\n", iters, (unsigned long long)check);
    return 0;
}
