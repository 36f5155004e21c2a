/* mmap-heavy workload: anonymous mappings of 1..64 pages come and go over 256 slots, each
 * filled with memset and checksummed at a few places, a small malloc'd record per mapping;
 * one unmapping in four gives the tail half back first (a partial munmap), the rest later.
 * Usage: mmapheavy [ITERATIONS]   (one iteration = one slot operation)
 * Prints the peak of mapped bytes (the mmap memory the program touched at once). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define SLOTS 256
#define PAGE 4096UL

struct rec {
    unsigned char *p;
    size_t len;
    long born;
};

static uint64_t rng = 0x9E3779B97F4A7C15ULL;

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
    for (size_t i = 0; i < n; i += PAGE)
        s = s * 31 + p[i];
    return s * 31 + p[n - 1];
}

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 1000;
    static struct rec *slot[SLOTS];
    size_t mapped = 0, peak = 0;
    uint64_t check = 0;

    for (long it = 0; it < iters; it++) {
        uint64_t r = next();
        unsigned i = (unsigned)(r % SLOTS);
        struct rec *s = slot[i];
        if (s == NULL) {
            size_t n = (1 + (size_t)((r >> 16) % 64)) * PAGE;
            unsigned char *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) {
                perror("mmap");
                return 1;
            }
            memset(p, (int)(it & 0xff), n);
            s = malloc(sizeof *s);
            s->p = p;
            s->len = n;
            s->born = it;
            slot[i] = s;
            mapped += n;
            if (mapped > peak)
                peak = mapped;
        } else {
            check += sum(s->p, s->len) + (uint64_t)s->born;
            size_t half = (s->len / PAGE / 2) * PAGE;
            if (((r >> 32) & 3) == 0 && half) {
                munmap(s->p + half, s->len - half);      /* the tail first */
                munmap(s->p, half);
            } else {
                munmap(s->p, s->len);
            }
            mapped -= s->len;
            free(s);
            slot[i] = NULL;
        }
    }
    for (unsigned i = 0; i < SLOTS; i++) {
        if (slot[i]) {
            check += sum(slot[i]->p, slot[i]->len);
            munmap(slot[i]->p, slot[i]->len);
            free(slot[i]);
        }
    }
    printf("mmapheavy %ld: check=%016llx\n", iters, (unsigned long long)check);
    printf("peak mapped bytes: %zu\n", peak);
    return 0;
}
