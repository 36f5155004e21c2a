/* A userspace port of the kernel's KASAN KUnit suite (mm/kasan/kasan_test_c.c): one function
 * per kernel test case, named after it, run as `kasan_cases CASE`. kmalloc/kfree/krealloc/ksize
 * become malloc/free/realloc/malloc_usable_size. Accesses go through volatile pointers so the
 * compiler keeps them; the file is built with -fno-builtin so mem and str calls reach libc.
 * A comment marker `@name` names the line a report must point at (tests/conftest.py source_line). */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
#define KMALLOC_MAX_CACHE_SIZE 8192
#define GRANULE 8

static volatile char sink;
static volatile size_t vsize;          /* sizes the compiler cannot see through */

static void *opaque(void *p) { __asm__ volatile("" : "+r"(p)); return p; }
#define RD(p, i) (sink = ((volatile char *)(p))[i])
#define WR(p, i, v) (((volatile char *)(p))[i] = (v))

NOINLINE void kmalloc_oob_right(void)
{
    size_t size = 128 - GRANULE - 5;
    char *p = malloc(size);
    WR(p, size, 'x');                                /* @oob_right.1 */
    WR(p, size + 5, 'y');                            /* @oob_right.2 */
    RD(p, 128);                                      /* @oob_right.3 */
    free(p);
}

NOINLINE void kmalloc_oob_left(void) { char *p = malloc(15); RD(p, -1); free(p); }               /* @oob_left */
NOINLINE void kmalloc_node_oob_right(void) { char *p = malloc(4096); RD(p, 4096); free(p); }  /* @node_oob_right */

NOINLINE void kmalloc_track_caller_oob_right(void)
{
    char *p = malloc(120);
    WR(p, 120, 'y');                                 /* @track_caller.1 */
    free(p);
    p = realloc(NULL, 120);
    WR(p, 120, 'y');                                 /* @track_caller.2 */
    free(p);
}

NOINLINE void kmalloc_big_oob_right(void)
{
    size_t size = KMALLOC_MAX_CACHE_SIZE - 256;
    char *p = malloc(size);
    WR(p, size, 0);                                  /* @big_oob_right */
    free(p);
}

NOINLINE void kmalloc_large_oob_right(void)
{
    size_t size = KMALLOC_MAX_CACHE_SIZE + 10;
    char *p = malloc(size);
    WR(p, size, 0);                                  /* @large_oob_right */
    free(p);
}

NOINLINE void kmalloc_large_uaf(void)
{
    char *p = malloc(KMALLOC_MAX_CACHE_SIZE + 10);
    free(p);
    RD(p, 0);                                        /* @large_uaf */
}

NOINLINE void kmalloc_large_invalid_free(void)
{
    char *p = malloc(KMALLOC_MAX_CACHE_SIZE + 10);
    free(p + 1);                                     /* @large_invalid_free */
    free(p);
}

NOINLINE void page_alloc_uaf(void)                 /* alloc_pages(order 4) -> valloc of 16 pages */
{
    char *p = valloc(16 * 4096);
    free(p);
    RD(p, 0);                                        /* @page_alloc_uaf */
}

static void krealloc_more(size_t size1, size_t size2)
{
    char *p1 = malloc(size1);
    char *p2 = realloc(p1, size2);
    size_t middle = size1 + (size2 - size1) / 2;
    WR(p2, size1 - 1, 'x');
    WR(p2, size1, 'x');
    WR(p2, middle, 'x');
    WR(p2, size2 - 1, 'x');
    WR(p2, size2, 'x');                              /* generic: byte-exact @more.1 */
    WR(p2, (size2 + GRANULE - 1) & ~(size_t)(GRANULE - 1), 'x');    /* @more.2 */
    free(p2);
}

static void krealloc_less(size_t size1, size_t size2)
{
    char *p1 = malloc(size1);
    char *p2 = realloc(p1, size2);
    size_t middle = size2 + (size1 - size2) / 2;
    WR(p2, size2 - 1, 'x');
    WR(p2, size2, 'x');                              /* @less.1 */
    WR(p2, (size2 + GRANULE - 1) & ~(size_t)(GRANULE - 1), 'x');    /* @less.2 */
    WR(p2, middle, 'x');                             /* @less.3 */
    WR(p2, size1 - 1, 'x');                          /* @less.4 */
    WR(p2, size1, 'x');                              /* @less.5 */
    free(p2);
}

NOINLINE void krealloc_more_oob(void) { krealloc_more(201, 235); }
NOINLINE void krealloc_less_oob(void) { krealloc_less(235, 201); }
NOINLINE void krealloc_large_more_oob(void) { krealloc_more(KMALLOC_MAX_CACHE_SIZE + 201, KMALLOC_MAX_CACHE_SIZE + 235); }
NOINLINE void krealloc_large_less_oob(void) { krealloc_less(KMALLOC_MAX_CACHE_SIZE + 235, KMALLOC_MAX_CACHE_SIZE + 201); }

NOINLINE void krealloc_uaf(void)
{
    char *p1 = malloc(201);
    free(p1);
    char *p2 = realloc(p1, 235);                     /* must report and return NULL @krealloc_uaf.1 */
    if (p2 != NULL) { printf("realloc of a freed object returned %p\n", (void *)p2); exit(3); }
    RD(p1, 0);                                       /* @krealloc_uaf.2 */
}

struct s16 { uint64_t words[2]; };

NOINLINE void kmalloc_oob_16(void)
{
    struct s16 *p1 = malloc(sizeof(struct s16) - 3);
    struct s16 *p2 = malloc(sizeof(struct s16));
    *(volatile struct s16 *)p1 = *(volatile struct s16 *)p2;    /* @oob_16 */
    free(p1);
    free(p2);
}

NOINLINE void kmalloc_uaf_16(void)
{
    struct s16 *p1 = malloc(sizeof(struct s16));
    struct s16 *p2 = malloc(sizeof(struct s16));
    free(p2);
    *(volatile struct s16 *)p1 = *(volatile struct s16 *)p2;    /* @uaf_16 */
    free(p1);
}

NOINLINE void kmalloc_oob_in_memset(void) { char *p = malloc(120); vsize = 128; memset(p, 0, vsize); free(p); }  /* @oob_in_memset */
NOINLINE void kmalloc_oob_memset_2(void) { char *p = malloc(120); vsize = 2; memset(p + 119, 0, vsize); free(p); }  /* @memset_2 */
NOINLINE void kmalloc_oob_memset_4(void) { char *p = malloc(120); vsize = 4; memset(p + 117, 0, vsize); free(p); }  /* @memset_4 */
NOINLINE void kmalloc_oob_memset_8(void) { char *p = malloc(120); vsize = 8; memset(p + 113, 0, vsize); free(p); }  /* @memset_8 */
NOINLINE void kmalloc_oob_memset_16(void) { char *p = malloc(120); vsize = 16; memset(p + 105, 0, vsize); free(p); }  /* @memset_16 */

NOINLINE void kmalloc_memmove_negative_size(void)
{
    char *p = malloc(64);
    memset(p, 0, 64);
    vsize = (size_t)-2;
    memmove(p, p + 4, vsize);                        /* @memmove_negative */
    free(p);
}

NOINLINE void kmalloc_memmove_invalid_size(void)
{
    char *p = malloc(64);
    memset(p, 0, 64);
    vsize = 64;
    memmove(p, p + 4, vsize);                        /* @memmove_invalid */
    free(p);
}

NOINLINE void kmalloc_uaf(void) { char *p = malloc(10); free(p); RD(p, 8); }  /* @uaf */
NOINLINE void kmalloc_uaf_memset(void) { char *p = malloc(33); free(p); vsize = 33; memset(p, 0, vsize); }  /* @uaf_memset */

NOINLINE void kmalloc_uaf2(void)
{
    char *p1 = malloc(43);
    free(p1);
    char *p2 = malloc(43);
    RD(p1, 40);                                      /* @uaf2 */
    if (p1 == p2) { printf("quarantine did not keep the freed object\n"); exit(3); }
    free(p2);
}

NOINLINE void kmalloc_double_kzfree(void)          /* kfree_sensitive() twice */
{
    char *p = malloc(16);
    explicit_bzero(p, malloc_usable_size(p));
    free(p);
    explicit_bzero(p, 16);                           /* @kzfree.1 */
    free(p);                                         /* @kzfree.2 */
}

NOINLINE void ksize_unpoisons_memory(void)
{
    size_t size = 128 - GRANULE - 5;
    char *p = malloc(size);
    size_t real = malloc_usable_size(p);
    if (real < size) { printf("usable size %zu < %zu\n", real, size); exit(3); }
    RD(p, 0);
    RD(p, real - 1);                                 /* the usable size is accessible */
    RD(p, size);                                     /* @ksize.1 */
    RD(p, size + 5);                                 /* @ksize.2 */
    free(p);
}

NOINLINE void ksize_uaf(void)
{
    char *p = malloc(120);
    free(p);
    if (malloc_usable_size(p) != 0) exit(3);         /* @ksize_uaf.1 */
    RD(p, 0);                                        /* @ksize_uaf.2 */
    RD(p, 120);                                      /* @ksize_uaf.3 */
}

NOINLINE void kmem_cache_oob(void) { char *p = malloc(200); RD(p, 200); free(p); }  /* @kmem_cache_oob */
NOINLINE void kmem_cache_double_free(void) { char *p = malloc(200); free(p); free(p); }  /* @kmem_cache_double_free */
NOINLINE void kmem_cache_invalid_free(void) { char *p = malloc(200); free(p + 1); free(p); }  /* @kmem_cache_invalid_free */

NOINLINE void kmem_cache_accounted(void)
{
    for (int i = 0; i < 5; i++) { char *p = malloc(200); WR(p, 0, 1); WR(p, 199, 1); free(p); }
}

NOINLINE void kmem_cache_bulk(void)
{
    char *p[10];
    for (int i = 0; i < 10; i++) p[i] = malloc(200);
    for (int i = 0; i < 10; i++) { WR(p[i], 0, 1); WR(p[i], 199, 1); }
    for (int i = 0; i < 10; i++) free(p[i]);
}

NOINLINE void kasan_memchr(void)
{
    char *p = calloc(1, 24);
    vsize = 25;
    sink = memchr(p, '1', vsize) != NULL;            /* @memchr */
    free(p);
}

NOINLINE void kasan_memcmp(void)
{
    char arr[32];
    memset(arr, 0, sizeof arr);
    char *p = calloc(1, 24);
    vsize = 25;
    sink = (char)memcmp(p, arr, vsize);              /* @memcmp */
    free(p);
}

NOINLINE void kasan_strings(void)
{
    char *p = malloc(128 - GRANULE);
    memset(p, 'a', 127 - GRANULE);
    p[127 - GRANULE] = 0;
    free(p);
    char *q = opaque(p + 16);
    sink = strchr(q, '1') != NULL;                   /* @strings.strchr */
    sink = strrchr(q, '1') != NULL;                  /* @strings.strrchr */
    sink = (char)strcmp(q, "2");                     /* @strings.strcmp */
    sink = (char)strncmp(q, "2", 1);                 /* @strings.strncmp */
    sink = (char)strlen(q);                          /* @strings.strlen */
    sink = (char)strnlen(q, 1);                      /* @strings.strnlen */
}

NOINLINE void kasan_bitops_generic(void)
{
    /* The kernel's atomic bitops are instrument_atomic_write() (set/clear/change_bit) or
     * instrument_atomic_read_write() (test_and_*): reported as writes, test_bit as a read. */
    long *p = calloc(1, sizeof(long) + 1);           /* 9 bytes: the second long is out of bounds */
    volatile long *w = (volatile long *)opaque(p) + 1;
    __atomic_fetch_or(w, 1L, __ATOMIC_RELAXED);      /* set_bit @bitops.set */
    __atomic_fetch_and(w, ~1L, __ATOMIC_RELAXED);    /* clear_bit @bitops.clear */
    __atomic_fetch_xor(w, 1L, __ATOMIC_RELAXED);     /* change_bit @bitops.change */
    sink = (char)(__atomic_fetch_or(w, 2L, __ATOMIC_SEQ_CST) & 2);      /* test_and_set_bit @bitops.test_and_set */
    sink = (char)(__atomic_fetch_and(w, ~2L, __ATOMIC_SEQ_CST) & 2);    /* test_and_clear_bit @bitops.test_and_clear */
    sink = (char)(__atomic_fetch_xor(w, 2L, __ATOMIC_SEQ_CST) & 2);     /* test_and_change_bit @bitops.test_and_change */
    sink = (char)(*w & 1);                           /* test_bit @bitops.test */
    free(p);
}

NOINLINE void kasan_atomics(void)
{
    /* Read-modify-writes are instrument_atomic_read_write(): the kernel reports writes. */
    char *p = calloc(1, 48);                         /* kmalloc-64: bytes 48..63 are redzone */
    volatile int *a = (volatile int *)opaque(p + 48);
    sink = (char)*a;                                 /* READ_ONCE @atomics.read_once */
    *a = 1;                                          /* WRITE_ONCE @atomics.write_once */
    sink = (char)__atomic_load_n(a, __ATOMIC_ACQUIRE);         /* smp_load_acquire @atomics.load_acquire */
    __atomic_store_n(a, 2, __ATOMIC_RELEASE);                  /* smp_store_release @atomics.store_release */
    __atomic_fetch_add(a, 1, __ATOMIC_SEQ_CST);                /* atomic_add @atomics.add */
    int expected = 0;
    __atomic_compare_exchange_n(a, &expected, 5, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);   /* atomic_cmpxchg @atomics.cmpxchg */
    __atomic_exchange_n(a, 7, __ATOMIC_SEQ_CST);               /* atomic_xchg @atomics.xchg */
    free(p);
}

NOINLINE void copy_user_test_oob(void)            /* copy_to/from_user -> read(2)/write(2) */
{
    char *p = malloc(120);
    int fds[2];
    if (pipe(fds)) exit(3);
    char buf[121];
    memset(buf, 'u', sizeof buf);
    if (write(fds[1], buf, 121) != 121) exit(3);
    vsize = 121;
    if (read(fds[0], p, vsize) != 121) exit(3);      /* the kernel writes 121 bytes into 120 @copy_user.read */
    vsize = 121;
    if (write(fds[1], p, vsize) != 121) exit(3);     /* the kernel reads 121 bytes from 120 @copy_user.write */
    free(p);
}

NOINLINE void clean_run(void)
{
    /* A busy, correct program: nothing may be reported. */
    char *v[64];
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < 64; i++) {
            v[i] = malloc((size_t)(i * 37 % 300) + 1);
            memset(v[i], i, (size_t)(i * 37 % 300) + 1);
        }
        for (int i = 0; i < 64; i++) {
            v[i] = realloc(v[i], (size_t)(i * 53 % 500) + 1);
            v[i][0] = 'a';
        }
        for (int i = 0; i < 64; i++) free(v[i]);
    }
    char *s = strdup("hello, world");
    char *t = malloc(strlen(s) + 1);
    strcpy(t, s);
    if (strcmp(s, t) || strlen(t) != 12 || !strchr(t, 'w') || memcmp(s, t, 13)) exit(3);
    void *a = aligned_alloc(64, 256);
    void *b = memalign(4096, 100);
    void *c;
    if (posix_memalign(&c, 32, 1000) || ((uintptr_t)a & 63) || ((uintptr_t)b & 4095) || ((uintptr_t)c & 31)) exit(3);
    memset(a, 1, 256); memset(b, 2, 100); memset(c, 3, 1000);
    free(a); free(b); free(c); free(s); free(t);
    printf("clean\n");
}

struct test_case { const char *name; void (*fn)(void); };
#define T(x) {#x, x}
static const struct test_case cases[] = {
    T(kmalloc_oob_right), T(kmalloc_oob_left), T(kmalloc_node_oob_right), T(kmalloc_track_caller_oob_right),
    T(kmalloc_big_oob_right), T(kmalloc_large_oob_right), T(kmalloc_large_uaf), T(kmalloc_large_invalid_free),
    T(page_alloc_uaf), T(krealloc_more_oob), T(krealloc_less_oob), T(krealloc_large_more_oob),
    T(krealloc_large_less_oob), T(krealloc_uaf), T(kmalloc_oob_16), T(kmalloc_uaf_16), T(kmalloc_oob_in_memset),
    T(kmalloc_oob_memset_2), T(kmalloc_oob_memset_4), T(kmalloc_oob_memset_8), T(kmalloc_oob_memset_16),
    T(kmalloc_memmove_negative_size), T(kmalloc_memmove_invalid_size), T(kmalloc_uaf), T(kmalloc_uaf_memset),
    T(kmalloc_uaf2), T(kmalloc_double_kzfree), T(ksize_unpoisons_memory), T(ksize_uaf), T(kmem_cache_oob),
    T(kmem_cache_double_free), T(kmem_cache_invalid_free), T(kmem_cache_accounted), T(kmem_cache_bulk),
    T(kasan_memchr), T(kasan_memcmp), T(kasan_strings), T(kasan_bitops_generic), T(kasan_atomics),
    T(copy_user_test_oob), T(clean_run),
};

int main(int argc, char **argv)
{
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (argc > 1 && strcmp(argv[1], cases[i].name) == 0) {
            cases[i].fn();
            return 0;
        }
    }
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) printf("%s\n", cases[i].name);
    return argc > 1 ? 2 : 0;
}
