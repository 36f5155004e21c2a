/* Access shapes the per-access check must handle: SIMD, string instructions, unaligned
 * accesses straddling an object's end, load pairs. Run as `kasan_access CASE`. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <emmintrin.h>
#endif

#define NOINLINE __attribute__((noinline))
static volatile uint64_t sink;
static void *opaque(void *p) { __asm__ volatile("" : "+r"(p)); return p; }

NOINLINE void unaligned_straddle(void)           /* 8 bytes at offset 13 of 16: 3 bytes past */
{
    char *p = opaque(malloc(16));
    uint64_t v;
    memcpy(&v, p + 13, 8);                           /* built with builtins: one unaligned load */
    sink = v;
    free(p);
}

NOINLINE void simd_load(void)                      /* a 16-byte vector load half out of bounds */
{
    char *p = opaque(malloc(24));
#if defined(__x86_64__)
    __m128i v;
    __asm__ volatile("movdqu (%1), %0" : "=x"(v) : "r"(p + 16) : "memory");
    sink = (uint64_t)_mm_cvtsi128_si64(v);
#else
    uint64_t a, b;
    __asm__ volatile("ldp %0, %1, [%2]" : "=r"(a), "=r"(b) : "r"(p + 16) : "memory");   /* a load pair */
    sink = a ^ b;
#endif
    free(p);
}

NOINLINE void string_insn_store(void)              /* rep stosb / a store loop past the end */
{
    char *p = opaque(malloc(16));
#if defined(__x86_64__)
    void *d = p;
    size_t n = 17;
    __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(0) : "memory");
#else
    for (volatile int i = 0; i < 17; i++) p[i] = 0;
#endif
    free(p);
}

NOINLINE void in_bounds_shapes(void)               /* the same shapes, in bounds: no report */
{
    char *p = opaque(malloc(32));
    uint64_t v;
    memcpy(&v, p + 13, 8);
    sink = v;
#if defined(__x86_64__)
    __m128i w;
    __asm__ volatile("movdqu (%1), %0" : "=x"(w) : "r"(p + 16) : "memory");
    sink = (uint64_t)_mm_cvtsi128_si64(w);
    void *d = p;
    size_t n = 32;
    __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(0) : "memory");
#else
    uint64_t a, b;
    __asm__ volatile("ldp %0, %1, [%2]" : "=r"(a), "=r"(b) : "r"(p + 16) : "memory");
    sink = a ^ b;
#endif
    free(p);
    printf("ok\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) return 2;
    if (!strcmp(argv[1], "unaligned_straddle")) unaligned_straddle();
    else if (!strcmp(argv[1], "simd_load")) simd_load();
    else if (!strcmp(argv[1], "string_insn_store")) string_insn_store();
    else if (!strcmp(argv[1], "in_bounds_shapes")) in_bounds_shapes();
    else return 2;
    return 0;
}
