/* Allocator micro-benchmark: a tight loop of malloc(n) / free(p) with n cycling through
 * 16, 24, ..., 512 bytes, and no other work (the object is never touched). An empty asm
 * statement keeps the compiler from eliding the pair.
 * Usage: mallocfree [PAIRS]   (one iteration = one malloc + one free) */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    long pairs = argc > 1 ? atol(argv[1]) : 1000;
    long failed = 0;
    size_t n = 16;

    for (long i = 0; i < pairs; i++) {
        void *p = malloc(n);
        __asm__ volatile("" : : "r"(p) : "memory");
        failed += p == NULL;
        free(p);
        n = n >= 512 ? 16 : n + 8;
    }
    printf("mallocfree %ld: failed=%ld\n", pairs, failed);
    return 0;
}
