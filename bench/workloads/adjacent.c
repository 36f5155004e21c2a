/* Tag-mode miss rate: per trial, two adjacent 64-byte objects A and B are allocated, A[64]
 * (B's first byte) is read through A's pointer, and both are freed. A tag mode catches the
 * read unless A and B drew the same tag (1/254 with 8-bit tags, 1/14 with 4-bit ones).
 * Prints the number of trials where B really followed A. Usage: adjacent [TRIALS] */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define UNTAG(p) ((uintptr_t)(p) & 0x00FFFFFFFFFFFFFFULL)

int main(int argc, char **argv)
{
    long trials = argc > 1 ? atol(argv[1]) : 1000, adjacent = 0;
    volatile char sink;
    for (long i = 0; i < trials; i++) {
        char *a = malloc(64), *b = malloc(64);
        if (UNTAG(b) == UNTAG(a) + 64) {
            adjacent++;
            sink = ((volatile char *)a)[64];
        }
        free(b);
        free(a);
    }
    (void)sink;
    printf("%ld\n", adjacent);
    return 0;
}
