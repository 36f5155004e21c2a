/* A heap for the leak scanner (bench/leaks.py): N live objects whose sizes add up to TOTAL
 * bytes, each holding PTRS pointers to other objects (some into their middle) and filler
 * bytes after them; a global array keeps every object but one in LOST of them, which are
 * referenced from nowhere. Then exit: the scan at exit walks the whole graph.
 *
 *     leakscan N TOTAL_MIB PTRS LOST     (defaults 1000000 1024 4 0; LOST 0: nothing lost)
 *
 * Prints the objects, bytes and lost objects it made (deterministic: a fixed LCG). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static uint64_t next(void) { rng = rng * 6364136223846793005ULL + 1442695040888963407ULL; return rng >> 11; }

void **all;                      /* the root: every object not lost */

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    long total = (argc > 2 ? atol(argv[2]) : 1024) << 20;
    int ptrs = argc > 3 ? atoi(argv[3]) : 4;
    long lost_every = argc > 4 ? atol(argv[4]) : 0;
    long avg = total / n;
    void **objs = malloc(n * sizeof *objs);
    size_t *sizes = malloc(n * sizeof *sizes);
    uint64_t bytes = 0;
    for (long i = 0; i < n; i++) {
        size_t sz = (size_t)(avg / 2 + next() % (uint64_t)avg);   /* avg/2 .. 3*avg/2 */
        if (sz < (size_t)(ptrs + 1) * 8) sz = (size_t)(ptrs + 1) * 8;
        objs[i] = malloc(sz);
        sizes[i] = sz;
        memset(objs[i], 0x5A, sz);
        bytes += sz;
    }
    for (long i = 0; i < n; i++) {
        void **o = objs[i];
        for (int p = 0; p < ptrs; p++) {
            long j = (long)(next() % (uint64_t)n);
            o[p] = (char *)objs[j] + (p & 1 ? sizes[j] / 2 : 0);
        }
    }
    long lost = 0;
    all = objs;
    if (lost_every) {
        /* lost objects: dropped from the root array, and no kept object points at them */
        for (long i = 0; i < n; i += lost_every) {
            objs[i] = NULL;
            lost++;
        }
        for (long i = 0; i < n; i++) {
            void **o = objs[i];
            if (!o) continue;
            for (int p = 0; p < ptrs; p++) {
                long j = (long)(next() % (uint64_t)n);
                while (!objs[j]) j = (j + 1) % n;
                o[p] = objs[j];
            }
        }
    }
    free(sizes);
    printf("objects %ld bytes %llu lost %ld\n", n, (unsigned long long)bytes, lost);
    return 0;
}
