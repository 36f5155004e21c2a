/* The kernel's KASAN KUnit cases that run in the tag-based modes (mm/kasan/kasan_test_c.c with
 * KASAN_GRANULE_SIZE = 16 and OOB_TAG_OFF = 16), ported to userspace like kasan_cases.c:
 * one function per kernel case, run as `tags_cases CASE`. kmalloc/kfree/krealloc/ksize are
 * malloc/free/realloc/malloc_usable_size; kasan_poison() of a granule is HWASan's
 * __hwasan_tag_memory(), which emsan stands in for. Built with -fno-builtin. A comment marker
 * `@name` names the line a report must point at (tests/conftest.py source_line). */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
#define KMALLOC_MAX_CACHE_SIZE 8192
#define GRANULE 16
#define OOB_TAG_OFF GRANULE
#define TAG_KERNEL 0xFFu

static volatile char sink;
static volatile size_t vsize;
static unsigned tag_min;               /* KASAN_TAG_MIN of the mode: argv[2] */

static void *opaque(void *p) { __asm__ volatile("" : "+r"(p)); return p; }
#define RD(p, i) (sink = ((volatile char *)(p))[i])
#define WR(p, i, v) (((volatile char *)(p))[i] = (v))
static unsigned get_tag(const void *p) { return (unsigned)((uintptr_t)p >> 56); }
static void *set_tag(void *p, unsigned tag)
{
    return opaque((void *)(((uintptr_t)p & ~(0xFFUL << 56)) | ((uintptr_t)tag << 56)));
}

/* HWASan's interface; emsan replaces the body in tag modes. */
NOINLINE void __hwasan_tag_memory(const volatile void *p, unsigned char tag, uintptr_t size)
{
    (void)p; (void)tag; (void)size;
    __asm__ volatile("");
}

NOINLINE void kmalloc_oob_right(void)
{
    size_t size = 128 - GRANULE - 5;
    char *p = malloc(size);
    WR(p, size + 5, 'y');                            /* the first granule past the object @oob_right.1 */
    RD(p, size + GRANULE + 5);                       /* past the kmalloc-128 slot @oob_right.2 */
    free(p);
}

NOINLINE void kmalloc_oob_left(void) { char *p = malloc(15); RD(p, -1); free(p); }  /* @oob_left */
NOINLINE void kmalloc_node_oob_right(void) { char *p = malloc(4096); RD(p, 4096); free(p); }  /* @node_oob_right */

NOINLINE void kmalloc_track_caller_oob_right(void)
{
    size_t size = 128 - GRANULE;
    char *p = malloc(size);
    WR(p, size + OOB_TAG_OFF, 'y');  /* @track_caller.1 */
    free(p);
    p = realloc(NULL, size);
    WR(p, size + OOB_TAG_OFF, 'y');  /* @track_caller.2 */
    free(p);
}

NOINLINE void kmalloc_big_oob_right(void)
{
    size_t size = KMALLOC_MAX_CACHE_SIZE - 256;
    char *p = malloc(size);
    WR(p, size, 0);  /* @big_oob_right */
    free(p);
}

NOINLINE void kmalloc_large_oob_right(void)
{
    size_t size = KMALLOC_MAX_CACHE_SIZE + 10;
    char *p = malloc(size);
    WR(p, size + OOB_TAG_OFF, 0);  /* @large_oob_right */
    free(p);
}

NOINLINE void kmalloc_large_uaf(void) { char *p = malloc(KMALLOC_MAX_CACHE_SIZE + 10); free(p); RD(p, 0); }  /* @large_uaf */
NOINLINE void kmalloc_large_invalid_free(void) { char *p = malloc(KMALLOC_MAX_CACHE_SIZE + 10); free(p + 1); free(p); }  /* @large_invalid_free */

NOINLINE void page_alloc_oob_right(void)             /* alloc_pages(order 4) -> valloc of 16 pages */
{
    size_t size = 16 * 4096;
    char *p = valloc(size);
    RD(p, size);  /* @page_alloc_oob_right */
    free(p);
}

NOINLINE void page_alloc_uaf(void) { char *p = valloc(16 * 4096); free(p); RD(p, 0); }  /* @page_alloc_uaf */

static void krealloc_more(size_t size1, size_t size2)
{
    char *p1 = malloc(size1);
    char *p2 = realloc(p1, size2);
    size_t middle = size1 + (size2 - size1) / 2;
    WR(p2, size1 - 1, 'x');
    WR(p2, size1, 'x');
    WR(p2, middle, 'x');
    WR(p2, size2 - 1, 'x');
    WR(p2, (size2 + GRANULE - 1) & ~(size_t)(GRANULE - 1), 'x');  /* @more.round_up */
    free(p2);
}

static void krealloc_less(size_t size1, size_t size2)
{
    char *p1 = malloc(size1);
    char *p2 = realloc(p1, size2);
    size_t middle = size2 + (size1 - size2) / 2;
    WR(p2, size2 - 1, 'x');
    WR(p2, (size2 + GRANULE - 1) & ~(size_t)(GRANULE - 1), 'x');  /* @less.1 */
    WR(p2, middle, 'x');  /* @less.2 */
    WR(p2, size1 - 1, 'x');  /* @less.3 */
    WR(p2, size1, 'x');  /* @less.4 */
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
    char *p2 = realloc(p1, 235);  /* @krealloc_uaf.1 */
    if (p2 != NULL) { printf("realloc of a freed object returned %p\n", (void *)p2); exit(3); }
    RD(p1, 0);  /* @krealloc_uaf.2 */
}

struct s16 { uint64_t words[2]; };

NOINLINE void kmalloc_uaf_16(void)
{
    struct s16 *p1 = malloc(sizeof(struct s16));
    struct s16 *p2 = malloc(sizeof(struct s16));
    free(p2);
    *(volatile struct s16 *)p1 = *(volatile struct s16 *)p2;  /* @uaf_16 */
    free(p1);
}

#define MEMSET_CASE(name, off, n) \
    NOINLINE void name(void) { size_t size = 128 - GRANULE; char *p = malloc(size); vsize = n; \
                               memset(p + (off), 0, vsize); free(p); }
MEMSET_CASE(kmalloc_oob_in_memset, 0, 128)  /* @oob_in_memset */
MEMSET_CASE(kmalloc_oob_memset_2, size - 1, 2)  /* @memset_2 */
MEMSET_CASE(kmalloc_oob_memset_4, size - 3, 4)  /* @memset_4 */
MEMSET_CASE(kmalloc_oob_memset_8, size - 7, 8)  /* @memset_8 */
MEMSET_CASE(kmalloc_oob_memset_16, size - 15, 16)  /* @memset_16 */

NOINLINE void kmalloc_memmove_negative_size(void)
{
    char *p = malloc(64);
    memset(p, 0, 64);
    vsize = (size_t)-2;
    memmove(p, p + 4, vsize);  /* @memmove_negative */
    free(p);
}

NOINLINE void kmalloc_memmove_invalid_size(void)
{
    char *p = malloc(64);
    memset(p, 0, 64);
    vsize = 64;
    memmove(p, p + 4, vsize);  /* @memmove_invalid */
    free(p);
}

NOINLINE void kmalloc_uaf(void) { char *p = malloc(10); free(p); RD(p, 8); }  /* @uaf */

NOINLINE void kmalloc_uaf2(void)
{
    char *p1 = malloc(43);
    free(p1);
    char *p2 = malloc(43);
    RD(p1, 40);  /* @uaf2 */
    if (p1 == p2) { printf("the reused object kept its tag\n"); exit(3); }
    free(p2);
}

NOINLINE void kmalloc_uaf3(void)
{
    char *p1 = malloc(100);
    free(p1);
    char *p2 = malloc(100);
    free(p2);
    RD(p1, 8);  /* @uaf3 */
}

NOINLINE void kmalloc_double_kzfree(void)
{
    char *p = malloc(16);
    explicit_bzero(p, malloc_usable_size(p));
    free(p);
    explicit_bzero(p, 16);  /* @kzfree.1 */
    free(p);  /* @kzfree.2 */
}

NOINLINE void ksize_unpoisons_memory(void)
{
    size_t size = 128 - GRANULE - 5;
    char *p = malloc(size);
    size_t real = malloc_usable_size(p);
    if (real < size) exit(3);
    RD(p, 0);
    RD(p, size - 1);
    RD(p, size + 5);  /* @ksize.1 */
    RD(p, real - 1);
    free(p);
}

NOINLINE void ksize_uaf(void)
{
    char *p = malloc(128 - GRANULE);
    free(p);
    if (malloc_usable_size(p) != 0) exit(3);  /* @ksize_uaf.1 */
    RD(p, 0);  /* @ksize_uaf.2 */
    RD(p, 128 - GRANULE);  /* @ksize_uaf.3 */
}

NOINLINE void kmem_cache_oob(void) { char *p = malloc(200); RD(p, 200 + OOB_TAG_OFF); free(p); }  /* @kmem_cache_oob */
NOINLINE void kmem_cache_double_free(void) { char *p = malloc(200); free(p); free(p); }  /* @kmem_cache_double_free */
NOINLINE void kmem_cache_invalid_free(void) { char *p = malloc(200); free(p + 1); free(p); }  /* @kmem_cache_invalid_free */

NOINLINE void kmem_cache_bulk(void)
{
    char *p[10];
    for (int i = 0; i < 10; i++) p[i] = malloc(200);
    for (int i = 0; i < 10; i++) { WR(p[i], 0, 1); WR(p[i], 199, 1); }
    for (int i = 0; i < 10; i++) free(p[i]);
}

NOINLINE void kasan_memchr(void)
{
    size_t size = 24 + OOB_TAG_OFF - 24 % OOB_TAG_OFF;   /* round_up(24, OOB_TAG_OFF) */
    char *p = calloc(1, size);
    vsize = size + 1;
    sink = memchr(p, '1', vsize) != NULL;  /* @memchr */
    free(p);
}

NOINLINE void kasan_memcmp(void)
{
    size_t size = 24 + OOB_TAG_OFF - 24 % OOB_TAG_OFF;
    char arr[48];
    memset(arr, 0, sizeof arr);
    char *p = calloc(1, size);
    vsize = size + 1;
    sink = (char)memcmp(p, arr, vsize);  /* @memcmp */
    free(p);
}

NOINLINE void kasan_strings(void)
{
    char *p = malloc(128 - GRANULE);
    memset(p, 'a', 127 - GRANULE);
    p[127 - GRANULE] = 0;
    free(p);
    char *q = opaque(p + 16);
    sink = strchr(q, '1') != NULL;  /* @strings.strchr */
    sink = strrchr(q, '1') != NULL;  /* @strings.strrchr */
    sink = (char)strcmp(q, "2");  /* @strings.strcmp */
    sink = (char)strncmp(q, "2", 1);  /* @strings.strncmp */
    sink = (char)strlen(q);  /* @strings.strlen */
    sink = (char)strnlen(q, 1);  /* @strings.strnlen */
}

NOINLINE void kasan_bitops_tags(void)
{
    char *p = calloc(1, 48);                         /* kmalloc-64: granules 48..63 are invalid */
    volatile long *w = (volatile long *)opaque(p + 48);
    __atomic_fetch_or(w, 1L, __ATOMIC_RELAXED);      /* set_bit @bitops.set */
    __atomic_fetch_and(w, ~1L, __ATOMIC_RELAXED);    /* clear_bit @bitops.clear */
    __atomic_fetch_xor(w, 1L, __ATOMIC_RELAXED);     /* change_bit @bitops.change */
    sink = (char)(*w & 1);                           /* test_bit @bitops.test */
    free(p);
}

NOINLINE void kasan_atomics(void)
{
    char *p = calloc(1, 48);
    volatile int *a = (volatile int *)opaque(p + 48);
    sink = (char)*a;  /* @atomics.read_once */
    *a = 1;  /* @atomics.write_once */
    sink = (char)__atomic_load_n(a, __ATOMIC_ACQUIRE);  /* @atomics.load_acquire */
    __atomic_store_n(a, 2, __ATOMIC_RELEASE);  /* @atomics.store_release */
    __atomic_fetch_add(a, 1, __ATOMIC_SEQ_CST);  /* @atomics.add */
    int expected = 0;
    __atomic_compare_exchange_n(a, &expected, 5, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);  /* @atomics.cmpxchg */
    __atomic_exchange_n(a, 7, __ATOMIC_SEQ_CST);  /* @atomics.xchg */
    free(p);
}

NOINLINE void match_all_not_assigned(void)
{
    unsigned seen[256] = {0}, distinct = 0;
    for (int i = 0; i < 256; i++) {
        size_t size = (size_t)(i % 4 == 3 ? KMALLOC_MAX_CACHE_SIZE + 1 + i : 1 + (i * 97) % 1024);
        char *p = i % 8 == 7 ? valloc(4096) : malloc(size);
        unsigned tag = get_tag(p);
        if (tag < tag_min || tag >= TAG_KERNEL) { printf("tag %02x out of range\n", tag); exit(3); }
        if (!seen[tag]++) distinct++;
        WR(p, 0, 1);
        free(p);
    }
    printf("%u distinct tags\n", distinct);
}

NOINLINE void match_all_ptr_tag(void)
{
    char *p = malloc(128);
    unsigned tag = get_tag(p);
    if (tag == TAG_KERNEL) exit(3);
    p = set_tag(p, TAG_KERNEL);
    WR(p, 0, 0);                                     /* the match-all tag: no report */
    p = set_tag(p, tag);
    free(p);
}

NOINLINE void match_all_mem_tag(void)
{
    char *p = malloc(128);
    unsigned ptag = get_tag(p);
    for (unsigned tag = tag_min; tag <= TAG_KERNEL; tag++) {
        if (tag_min == 0 && tag >= 8 && tag <= TAG_KERNEL - 8) continue;   /* as the kernel: a few only */
        if (tag == ptag) continue;
        __hwasan_tag_memory(p, (unsigned char)tag, GRANULE);
        WR(p, 0, 0);                                 /* must be reported, once per memory tag @match_all_mem_tag */
    }
    __hwasan_tag_memory(p, (unsigned char)ptag, GRANULE);
    free(p);
}

NOINLINE void copy_user_test_oob(void)
{
    size_t size = 128 - GRANULE;
    char *p = malloc(size);
    int fds[2];
    if (pipe(fds)) exit(3);
    char buf[256];
    memset(buf, 'u', sizeof buf);
    if (write(fds[1], buf, size + 1) != (ssize_t)size + 1) exit(3);
    vsize = size + 1;
    if (read(fds[0], p, vsize) != (ssize_t)size + 1) exit(3);  /* @copy_user.read */
    vsize = size + 1;
    if (write(fds[1], p, vsize) != (ssize_t)size + 1) exit(3);  /* @copy_user.write */
    free(p);
}

NOINLINE void clean_run(void)
{
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
    T(page_alloc_oob_right), T(page_alloc_uaf), T(krealloc_more_oob), T(krealloc_less_oob),
    T(krealloc_large_more_oob), T(krealloc_large_less_oob), T(krealloc_uaf), T(kmalloc_uaf_16),
    T(kmalloc_oob_in_memset), T(kmalloc_oob_memset_2), T(kmalloc_oob_memset_4), T(kmalloc_oob_memset_8),
    T(kmalloc_oob_memset_16), T(kmalloc_memmove_negative_size), T(kmalloc_memmove_invalid_size), T(kmalloc_uaf),
    T(kmalloc_uaf2), T(kmalloc_uaf3), T(kmalloc_double_kzfree), T(ksize_unpoisons_memory), T(ksize_uaf),
    T(kmem_cache_oob), T(kmem_cache_double_free), T(kmem_cache_invalid_free), T(kmem_cache_bulk),
    T(kasan_memchr), T(kasan_memcmp), T(kasan_strings), T(kasan_bitops_tags), T(kasan_atomics),
    T(match_all_not_assigned), T(match_all_ptr_tag), T(match_all_mem_tag), T(copy_user_test_oob), T(clean_run),
};

int main(int argc, char **argv)
{
    if (argc > 2) tag_min = (unsigned)strtoul(argv[2], NULL, 0);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (argc > 1 && strcmp(argv[1], cases[i].name) == 0) {
            cases[i].fn();
            return 0;
        }
    }
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) printf("%s\n", cases[i].name);
    return argc > 1 ? 2 : 0;
}
