/* One rare heap bug among many allocations: the KFENCE detection-probability benchmark.
 * Keeps 64 objects of 16..256 bytes alive while allocating ITERATIONS more from a few call
 * sites; exactly one allocation (halfway, in parse_record) gets a one-byte overflow, which a
 * sampling detector catches only when that very allocation is sampled.
 * Usage: rarebug [ITERATIONS] */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

__attribute__((noinline)) static char *make_name(size_t n) { char *p = malloc(n); memset(p, 'n', n); return p; }
__attribute__((noinline)) static char *make_buf(size_t n) { char *p = calloc(1, n); p[n - 1] = 1; return p; }

__attribute__((noinline)) static char *parse_record(const char *src)
{
    size_t n = strlen(src);
    char *rec = malloc(n);             /* the bug: no room for the terminator */
    memcpy(rec, src, n + 1);
    return rec;
}

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 2000;
    char *live[64] = {0};
    uint64_t sum = 0;
    for (long it = 0; it < iters; it++) {
        unsigned i = (unsigned)(next() % 64);
        free(live[i]);
        size_t n = 16 + next() % 241;
        live[i] = it == iters / 2 ? parse_record("a record of thirty bytes......") : (it & 1) ? make_name(n) : make_buf(n);
        sum += (unsigned char)live[i][0];
    }
    for (int i = 0; i < 64; i++) free(live[i]);
    printf("rarebug %ld: %llu\n", iters, (unsigned long long)sum);
    return 0;
}
