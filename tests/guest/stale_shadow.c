/* The stale shadow mapping of seeds/002, in compiler-assisted mode. A chunk of emsan's heap with
 * no objects yet is shadowed by the shared "no object here" page, and once the guest has read it
 * its TLB keeps mapping it: emsan does not flush when objects arrive there (a failed check is
 * re-checked instead, as the kernel's per-page shadow does), so the first check of a new object
 * in that chunk fails on stale shadow and must not be reported. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define CHUNK (32 * 1024UL)

__attribute__((noinline)) static int read_far(volatile char *p) { return p[0]; }
__attribute__((noinline)) static int read_new(volatile char *p) { return p[0]; }

int main(void)
{
    char *first = malloc(1000);
    uintptr_t far = ((uintptr_t)first + 16 * CHUNK) & ~(CHUNK - 1);
    read_far((char *)far + 64);                /* a real bug: no object there yet */
    for (int i = 0; i < 4096; i++) {
        char *q = malloc(1000);
        if (((uintptr_t)q & ~(CHUNK - 1)) == far) {
            q[0] = 0;                          /* the first check in that chunk: stale */
            printf("new object %d\n", read_new(q));
            return 0;
        }
    }
    printf("never reached the chunk\n");
    return 1;
}
