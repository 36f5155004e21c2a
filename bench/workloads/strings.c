/* String-heavy workload: memcpy, memset, strlen, strcmp, strchr, memcmp and strncpy over
 * strings of 1..250 bytes built in a 64 KiB arena. The libc routines are the ones the
 * static glibc selects for the emulated CPU.
 * Usage: strings [ITERATIONS] */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ARENA (64 * 1024)
#define NSTR 256

static uint64_t rng = 0x9E3779B97F4A7C15ULL;

static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 1000;
    char *arena = malloc(ARENA);
    char *str[NSTR];
    char tmp[512];
    uint64_t check = 0;

    for (int i = 0; i < NSTR; i++) {
        str[i] = arena + i * 256;
        size_t n = 1 + next() % 250;
        for (size_t k = 0; k < n; k++)
            str[i][k] = (char)('a' + (next() % 4));
        str[i][n] = '\0';
    }
    for (long it = 0; it < iters; it++) {
        uint64_t r = next();
        char *s = str[r % NSTR], *t = str[(r >> 12) % NSTR];
        size_t ls = strlen(s), lt = strlen(t);
        memcpy(tmp, s, ls + 1);
        check += (uint64_t)(strcmp(tmp, t) > 0) + ls * 3 + lt;
        check += (uint64_t)memcmp(tmp, s, ls) + (strcmp(tmp, s) == 0);
        char *c = strchr(tmp, 'd');
        check += c ? (uint64_t)(c - tmp) : 7;
        memset(tmp + ls / 2, 'b', ls - ls / 2);
        strncpy(s, tmp, ls);           /* same length: s stays terminated */
        if ((r >> 30) % 4 == 0) {
            size_t n = 1 + (r >> 40) % 250;
            memset(s, 'a' + (int)(r >> 50) % 4, n);
            s[n] = '\0';
        }
    }
    printf("strings %ld: check=%016llx\n", iters, (unsigned long long)check);
    free(arena);
    return 0;
}
