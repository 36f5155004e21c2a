/* Inlined frames (tests/test_symbolize.py): an always_inline helper writes one byte past the
 * end of a heap object; it is inlined into another always_inline function, itself inlined into
 * a noinline one, so the report's call trace must show both inlined frames (innermost first)
 * before the real function that contains the PC. */
#include <stdlib.h>

#define NOINLINE __attribute__((noinline, noipa))
#define ALWAYS_INLINE inline __attribute__((always_inline))
volatile int sink;

static ALWAYS_INLINE void poke_byte(volatile char *p, size_t i, char v)
{
    p[i] = v;                                   /* the out-of-bounds write @store */
}

static ALWAYS_INLINE void fill_tail(char *p, size_t n)
{
    sink++;
    poke_byte(p, n, 'x');                       /* @poke */
    sink++;
}

NOINLINE void write_past_end(size_t n)
{
    char *p = malloc(n);
    sink++;
    fill_tail(p, n);                            /* @fill */
    sink++;
    free(p);
}

int main(void)
{
    write_past_end(40);
    return 0;
}
