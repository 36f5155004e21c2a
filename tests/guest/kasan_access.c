/* Access shapes the per-access check must handle: SIMD, string instructions, unaligned
 * accesses straddling an object's end, load pairs, atomic read-modify-writes. Run as
 * `kasan_access CASE`. A comment marker `@name` names the line a report must point at. */
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
    memcpy(&v, p + 13, 8);                           /* built with builtins: one unaligned load @unaligned_straddle */
    sink = v;
    free(p);
}

NOINLINE void simd_load(void)                      /* a 16-byte vector load half out of bounds */
{
    char *p = opaque(malloc(24));
#if defined(__x86_64__)
    __m128i v;
    __asm__ volatile("movdqu (%1), %0" : "=x"(v) : "r"(p + 16) : "memory");    /* @simd_load.x86_64 */
    sink = (uint64_t)_mm_cvtsi128_si64(v);
#else
    uint64_t a, b;
    __asm__ volatile("ldp %0, %1, [%2]" : "=r"(a), "=r"(b) : "r"(p + 16) : "memory");   /* a load pair @simd_load.arm64 */
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
    __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(0) : "memory");    /* @string_insn_store.x86_64 */
#else
    for (volatile int i = 0; i < 17; i++) p[i] = 0;  /* @string_insn_store.arm64 */
#endif
    free(p);
}

/* Atomic read-modify-writes on a freed object, one word each: the kernel reports them as
 * writes (instrument_atomic_read_write() calls kasan_check_write()). x86: lock-prefixed and
 * implicitly locked instructions; arm64: LSE atomics (an alias without result register among
 * them) and a load/store-exclusive loop. */
NOINLINE void atomic_rmw(void)
{
    char *p = opaque(malloc(64));
    free(p);
    uint64_t x = 1, y = 0;
    uint32_t w = 1, z = 0;
#if defined(__x86_64__)
    __asm__ volatile("lock orq $1, (%0)" : : "r"(p) : "memory");                      /* @atomic_rmw.0.x86_64 */
    __asm__ volatile("lock btsq $3, 8(%0)" : : "r"(p) : "memory", "cc");              /* @atomic_rmw.1.x86_64 */
    __asm__ volatile("lock xaddq %0, 16(%1)" : "+r"(x) : "r"(p) : "memory");          /* @atomic_rmw.2.x86_64 */
    __asm__ volatile("lock cmpxchgl %1, 24(%2)" : "+a"(z) : "r"(w), "r"(p) : "memory");   /* @atomic_rmw.3.x86_64 */
    __asm__ volatile("xchgl %0, 32(%1)" : "+r"(w) : "r"(p) : "memory");               /* @atomic_rmw.4.x86_64 */
    __asm__ volatile("lock incl 40(%0)" : : "r"(p) : "memory", "cc");                 /* @atomic_rmw.5.x86_64 */
#else
    __asm__ volatile(".arch armv8.1-a\n stset %0, [%1]" : : "r"(x), "r"(p) : "memory");                 /* @atomic_rmw.0.arm64 */
    __asm__ volatile(".arch armv8.1-a\n ldaddal %0, %1, [%2]" : "+r"(x), "=&r"(y) : "r"(p + 8) : "memory");   /* @atomic_rmw.1.arm64 */
    __asm__ volatile(".arch armv8.1-a\n swpal %0, %1, [%2]" : "+r"(x), "=&r"(y) : "r"(p + 16) : "memory");    /* @atomic_rmw.2.arm64 */
    __asm__ volatile(".arch armv8.1-a\n casal %w0, %w1, [%2]" : "+r"(z) : "r"(w), "r"(p + 24) : "memory");    /* @atomic_rmw.3.arm64 */
    __asm__ volatile("1: ldaxr %w0, [%2]\n add %w0, %w0, #1\n stlxr %w1, %w0, [%2]\n cbnz %w1, 1b" : "=&r"(z), "=&r"(w) : "r"(p + 32) : "memory");   /* @atomic_rmw.4.arm64 */
    __asm__ volatile(".arch armv8.1-a\n ldclral %w0, %w1, [%2]" : "+r"(w), "=&r"(z) : "r"(p + 40) : "memory");  /* @atomic_rmw.5.arm64 */
#endif
    sink = x + y + w + z;
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
    else if (!strcmp(argv[1], "atomic_rmw")) atomic_rmw();
    else if (!strcmp(argv[1], "in_bounds_shapes")) in_bounds_shapes();
    else return 2;
    return 0;
}
