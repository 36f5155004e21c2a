/* The kernel's KFENCE KUnit cases (mm/kfence/kfence_test.c), ported to user space.
 * Run under emsan --mode kfence --sample-interval 1 --continue, every allocation of at most a
 * page is a KFENCE object, as test_alloc() waits for in the kernel.
 *
 * Usage: kfence_cases [CASE...]   (no argument: all cases)
 * For each case it prints "CASE <name>", and before each access or free that must be reported,
 * "EXPECT <title words>|<function>|<second line prefix> 0x<address>" (kfence_test's
 * report_matches() compares exactly those). "FAIL <what>" marks a failed check in the guest.
 * A comment marker `@name` names the line a report must point at. */
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PAGE 4096
#define ALIGN 16                       /* malloc's alignment: the right-edge placement's */
#define READ_ONCE(x) (*(volatile char *)&(x))
#define WRITE_ONCE(x, v) (*(volatile char *)&(x) = (v))
#define NOINLINE __attribute__((noinline))

enum placement { ALLOCATE_ANY, ALLOCATE_LEFT, ALLOCATE_RIGHT };

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#include <stdarg.h>
static void say(const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (write(1, buf, (size_t)n) < 0) _exit(3);
}

static void expect(const char *title, const char *fn, const char *line, const void *addr)
{
    say("EXPECT %s|%s|%s %p\n", title, fn, line, addr);
}

static int failures;
#define CHECK(cond) do { if (!(cond)) { say("FAIL %s:%d %s\n", __func__, __LINE__, #cond); failures++; } } while (0)

/* test_alloc(): allocate until the object sits where the case needs it. */
static NOINLINE char *test_alloc(size_t size, enum placement where)
{
    for (int i = 0; i < 1000; i++) {
        char *p = malloc(size);
        int left = ((uintptr_t)p & (PAGE - 1)) == 0;
        if (where == ALLOCATE_ANY || (where == ALLOCATE_LEFT) == left)
            return p;
        free(p);
    }
    say("FAIL test_alloc: no object with the wanted placement\n");
    exit(1);
}

static NOINLINE void test_free(void *p) { free(p); }  /* @test_free */

static NOINLINE void test_out_of_bounds_read(void)
{
    size_t size = 32;
    char *buf = test_alloc(size, ALLOCATE_LEFT);
    expect("out-of-bounds read", __func__, "Out-of-bounds read at", buf - 1);
    READ_ONCE(buf[-1]);  /* @oob_read.left */
    test_free(buf);
    buf = test_alloc(size, ALLOCATE_RIGHT);
    expect("out-of-bounds read", __func__, "Out-of-bounds read at", buf + size);
    READ_ONCE(buf[size]);  /* @oob_read.right */
    test_free(buf);
}

static NOINLINE void test_out_of_bounds_write(void)
{
    size_t size = 32;
    char *buf = test_alloc(size, ALLOCATE_LEFT);
    expect("out-of-bounds write", __func__, "Out-of-bounds write at", buf - 1);
    WRITE_ONCE(buf[-1], 42);  /* @oob_write */
    test_free(buf);
}

static NOINLINE void test_use_after_free_read(void)
{
    size_t size = 32;
    char *buf = test_alloc(size, ALLOCATE_ANY);
    test_free(buf);
    expect("use-after-free read", __func__, "Use-after-free read at", buf);
    READ_ONCE(buf[0]);  /* @uaf_read */
}

static NOINLINE void test_double_free(void)
{
    size_t size = 32;
    char *buf = test_alloc(size, ALLOCATE_ANY);
    test_free(buf);
    expect("invalid free", __func__, "Invalid free of", buf);
    free(buf);  /* @double_free */
}

static NOINLINE void test_invalid_addr_free(void)
{
    size_t size = 32;
    char *buf = test_alloc(size, ALLOCATE_ANY);
    expect("invalid free", __func__, "Invalid free of", buf + 1);
    free(buf + 1);  /* @invalid_addr_free */
    test_free(buf);                    /* the real one: no report */
}

static NOINLINE void test_corruption(void)
{
    size_t size = 32;
    char *buf = test_alloc(size, ALLOCATE_LEFT);
    WRITE_ONCE(buf[size], 42);
    expect("memory corruption", "test_free", "Corrupted memory at", buf + size);
    test_free(buf);  /* @corruption.left */
    buf = test_alloc(size, ALLOCATE_RIGHT);
    WRITE_ONCE(buf[-1], 42);
    expect("memory corruption", "test_free", "Corrupted memory at", buf - 1);
    test_free(buf);  /* @corruption.right */
}

static NOINLINE void test_free_bulk(void)
{
    static const enum placement where[5] = {ALLOCATE_RIGHT, ALLOCATE_ANY, ALLOCATE_LEFT, ALLOCATE_ANY, ALLOCATE_ANY};
    unsigned seed = 1;
    for (int iter = 0; iter < 5; iter++) {
        seed = seed * 1103515245 + 12345;
        size_t size = 8 + (seed >> 16) % 300;
        char *objs[5];
        for (int i = 0; i < 5; i++) {
            objs[i] = test_alloc(size, where[i]);
            memset(objs[i], i, size);
        }
        for (int i = 0; i < 5; i++) free(objs[i]);
    }
}

static NOINLINE void test_kmalloc_aligned_oob_read(void)
{
    size_t size = 73;
    char *buf = test_alloc(size, ALLOCATE_RIGHT);
    READ_ONCE(buf[-1]);                /* canary bytes on the object's own page: no report */
    READ_ONCE(buf[size]);              /* the alignment gap: same page, no report */
    expect("out-of-bounds read", __func__, "Out-of-bounds read at", buf + size + ALIGN);
    READ_ONCE(buf[size + ALIGN]);  /* @aligned_oob_read */
    test_free(buf);
}

static NOINLINE void test_kmalloc_aligned_oob_write(void)
{
    size_t size = 73;
    char *buf = test_alloc(size, ALLOCATE_RIGHT);
    WRITE_ONCE(buf[size], 42);         /* no immediate report: found at free */
    expect("memory corruption", "test_free", "Corrupted memory at", buf + size);
    test_free(buf);  /* @aligned_oob_write */
}

static NOINLINE void test_invalid_access(void)
{
    /* A guard page with no allocated object on either side (the kernel reads
     * __kfence_pool[10], on a page that is always protected). */
    char *buf = test_alloc(32, ALLOCATE_LEFT);
    test_free(buf);
    expect("invalid read", __func__, "Invalid read at", buf + PAGE + 10);
    READ_ONCE(buf[PAGE + 10]);  /* @invalid_access */
}

static NOINLINE void test_gfpzero(void)
{
    char *buf = test_alloc(PAGE, ALLOCATE_ANY);
    memset(buf, 'x', PAGE);
    test_free(buf);
    for (int i = 0; i < 4 * 256; i++) {
        char *p = calloc(1, PAGE);
        if (p == buf) {
            for (int j = 0; j < PAGE; j++)
                if (p[j]) { CHECK(p[j] == 0); break; }
            free(p);
            return;
        }
        free(p);
    }
    say("FAIL test_gfpzero: the object was never reused\n");
    failures++;
}

static NOINLINE void test_krealloc(void)
{
    size_t size = 32;
    char *buf = test_alloc(size, ALLOCATE_ANY), *first = buf;
    CHECK(malloc_usable_size(buf) == size);          /* ksize() of a KFENCE object: exact */
    for (size_t i = 0; i < size; i++) buf[i] = (char)i;
    buf = realloc(buf, size * 3);                     /* grow */
    CHECK(malloc_usable_size(buf) >= size * 3);
    for (size_t i = 0; i < size; i++) CHECK(buf[i] == (char)i);
    for (size_t i = size; i < size * 3; i++) buf[i] = (char)(i + 1);
    buf = realloc(buf, size * 2);                     /* shrink */
    CHECK(malloc_usable_size(buf) >= size * 2);
    for (size_t i = 0; i < size * 2; i++) CHECK(buf[i] == (char)(i < size ? i : i + 1));
    buf = realloc(buf, PAGE * 3);                     /* beyond a page: out of the pool */
    for (size_t i = 0; i < size * 2; i++) CHECK(buf[i] == (char)(i < size ? i : i + 1));
    buf = realloc(buf, 0);                            /* free */
    CHECK(buf == NULL);
    expect("use-after-free read", __func__, "Use-after-free read at", first);
    READ_ONCE(first[0]);  /* @krealloc */
}

/* Not a kernel case: sampled and unsampled objects mixed through every allocator entry
 * point; must run clean and compute the same checksum as natively. */
static NOINLINE void test_mixed(void)
{
    static char *slot[256];
    static size_t len[256];
    unsigned long long sum = 0;
    unsigned seed = 7;
    for (int it = 0; it < 4000; it++) {
        seed = seed * 1103515245 + 12345;
        unsigned i = (seed >> 8) % 256;
        size_t n = 1 + (seed >> 12) % 6000;
        if (!slot[i]) {
            switch (it % 4) {
            case 0: slot[i] = malloc(n); break;
            case 1: slot[i] = calloc(1, n); for (size_t j = 0; j < n; j++) CHECK(!slot[i][j]); break;
            case 2: slot[i] = aligned_alloc(64, (n + 63) & ~(size_t)63); n = (n + 63) & ~(size_t)63;
                    CHECK(((uintptr_t)slot[i] & 63) == 0); break;
            default: { void *p; CHECK(posix_memalign(&p, 32, n) == 0); slot[i] = p; break; }
            }
            len[i] = n;
            memset(slot[i], (int)(i + n), n);
        } else if (it % 3 == 0) {
            size_t keep = len[i] < n ? len[i] : n;
            slot[i] = realloc(slot[i], n);
            for (size_t j = 0; j < keep; j += 97) CHECK(slot[i][j] == (char)(i + len[i]));
            memset(slot[i], (int)(i + n), n);
            len[i] = n;
        } else {
            for (size_t j = 0; j < len[i]; j += 61) sum += (unsigned char)slot[i][j];
            CHECK(malloc_usable_size(slot[i]) >= len[i]);
            free(slot[i]);
            slot[i] = NULL;
        }
    }
    for (int i = 0; i < 256; i++) free(slot[i]);
    say("mixed checksum %llu\n", sum);
}

static const struct { const char *name; void (*fn)(void); } cases[] = {
    {"out_of_bounds_read", test_out_of_bounds_read},
    {"out_of_bounds_write", test_out_of_bounds_write},
    {"use_after_free_read", test_use_after_free_read},
    {"double_free", test_double_free},
    {"invalid_addr_free", test_invalid_addr_free},
    {"corruption", test_corruption},
    {"free_bulk", test_free_bulk},
    {"kmalloc_aligned_oob_read", test_kmalloc_aligned_oob_read},
    {"kmalloc_aligned_oob_write", test_kmalloc_aligned_oob_write},
    {"invalid_access", test_invalid_access},
    {"gfpzero", test_gfpzero},
    {"krealloc", test_krealloc},
    {"mixed", test_mixed},
};

int main(int argc, char **argv)
{
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int run = argc < 2;
        for (int i = 1; i < argc; i++) run |= !strcmp(argv[i], cases[c].name);
        if (!run) continue;
        say("CASE %s\n", cases[c].name);
        cases[c].fn();
    }
    say("DONE failures=%d\n", failures);
    return failures != 0;
}
