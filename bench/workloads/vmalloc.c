/* The kernel's lib/test_vmalloc.c performance tests, as mmap/munmap patterns in user space
 * (the tests named in seeds/003: the KASAN vmalloc-shadow series' table).
 *
 *   vmalloc(n)             = mmap(n bytes, anonymous, read/write) and touch its first byte
 *                            (the kernel backs every page at once; here the touch stands in)
 *   vfree(p)               = munmap
 *   __vmalloc_node(n, a)   = over-map n + a - PAGE bytes, then munmap the head and the tail
 *                            around the first a-aligned n bytes, as user-space aligned
 *                            allocators do
 *   __alloc_percpu(n, a)   = see pcpu_alloc_test below
 *
 * Usage: vmalloc [LOOPS [LIST [PCPU]]]
 *   LOOPS  test_loop_count (kernel default 1000000; here 200)
 *   LIST   length of full_fit's junk lists and of long_busy_list's busy list (kernel:
 *          fls(ncpus) * 32 MiB / PAGE = 16384 with 2 CPUs, and 15000; here 200: every guest
 *          mapping is a Unicorn memory region under emsan, and Unicorn's map and unmap cost
 *          grows faster than linearly with the number of regions)
 *   PCPU   allocations of pcpu_alloc_test (kernel 35000; here 3500)
 *
 * Prints "NAME NANOSECONDS" per test (CLOCK_MONOTONIC around the test, as the kernel's
 * test_func times each test), then one "check ..." line that depends only on the arguments
 * (failures and a checksum of what the tests saw), so runs can be compared.
 * Deterministic: a fixed xorshift seed stands in for get_random_*().
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define PAGE 4096UL
#define THREAD_ALIGN (16 * 1024UL)         /* x86-64 THREAD_SIZE: fix_align uses THREAD_ALIGN << 1 */
/* align_shift_alloc_test: the kernel tries alignments 2^0..2^63 and is "supposed to fail" once
 * the alignment no longer fits the vmalloc space. Over-mapping 2^k bytes costs an emulator
 * time and host memory proportional to 2^k (the kernel only reserves address space; under
 * emsan, trimming the over-map makes Unicorn copy the whole region), so the test here fails
 * at the first alignment above 2^ALIGN_SHIFT_MAX (16 MiB), as it would in a small vmalloc
 * space. */
#define ALIGN_SHIFT_MAX 24

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static uint64_t check;                     /* what the tests saw: summed, printed at the end */
static int failures;

static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static uint32_t random_inclusive(uint32_t lo, uint32_t hi) { return lo + (uint32_t)(next() % (hi - lo + 1)); }

static void *vmalloc(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    *(volatile unsigned char *)p = 0;      /* the first page is backed */
    return p;
}

static void vfree(void *p, size_t size)
{
    if (p)
        munmap(p, size);
}

/* Aligned: over-map, keep the aligned part, give back the head and the tail. */
static void *vmalloc_align(size_t size, size_t align)
{
    if (align <= PAGE)
        return vmalloc(size);
    size_t span = size + align - PAGE;
    if (span < size)
        return NULL;
    char *p = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    char *a = (char *)(((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1));
    if (a > p)
        munmap(p, (size_t)(a - p));
    if (p + span > a + size)
        munmap(a + size, (size_t)(p + span - (a + size)));
    *(volatile unsigned char *)a = 0;
    return a;
}

/* ---- the tests (same loops as lib/test_vmalloc.c) ---------------------------------------- */
static long loops = 200, list_len = 200, pcpu_n = 3500;

static int fix_size_alloc_test(void)
{
    for (long i = 0; i < loops; i++) {
        unsigned char *p = vmalloc(3 * PAGE);
        if (!p)
            return -1;
        *p = 0;
        vfree(p, 3 * PAGE);
    }
    return 0;
}

static int full_fit_alloc_test(void)
{
    /* Fill the space with pairs of one-page areas, free every second one: each later
     * one-page allocation fits a hole exactly. */
    long n = list_len;
    void **ptr = vmalloc(sizeof(void *) * n), **junk = vmalloc(sizeof(void *) * n);
    int rv = -1;
    if (!ptr || !junk)
        goto out;
    for (long i = 0; i < n; i++) {
        ptr[i] = vmalloc(PAGE);
        junk[i] = vmalloc(PAGE);
    }
    for (long i = 0; i < n; i++)
        vfree(junk[i], PAGE);
    for (long i = 0; i < loops; i++) {
        unsigned char *t = vmalloc(PAGE);
        if (!t)
            goto free_all;
        *t = 1;
        vfree(t, PAGE);
    }
    rv = 0;
free_all:
    for (long i = 0; i < n; i++)
        vfree(ptr[i], PAGE);
out:
    vfree(ptr, sizeof(void *) * n);
    vfree(junk, sizeof(void *) * n);
    return rv;
}

static int long_busy_list_alloc_test(void)
{
    long n = list_len;
    void **ptr = vmalloc(sizeof(void *) * n);
    int rv = -1;
    if (!ptr)
        return -1;
    for (long i = 0; i < n; i++)
        ptr[i] = vmalloc(PAGE);
    for (long i = 0; i < loops; i++) {
        unsigned char *p1 = vmalloc(100 * PAGE), *p2 = vmalloc(PAGE);
        if (!p1 || !p2)
            goto leave;
        *p1 = 0;
        *p2 = 1;
        vfree(p1, 100 * PAGE);
        vfree(p2, PAGE);
    }
    rv = 0;
leave:
    for (long i = 0; i < n; i++)
        vfree(ptr[i], PAGE);
    vfree(ptr, sizeof(void *) * n);
    return rv;
}

static int random_size_alloc_test(void)
{
    for (long i = 0; i < loops; i++) {
        uint32_t n = random_inclusive(1, 100);
        unsigned char *p = vmalloc(n * PAGE);
        if (!p)
            return -1;
        *p = 1;
        check += n;
        vfree(p, n * PAGE);
    }
    return 0;
}

static int fix_align_alloc_test(void)
{
    for (long i = 0; i < loops; i++) {
        void *p = vmalloc_align(5 * PAGE, THREAD_ALIGN << 1);
        if (!p)
            return -1;
        vfree(p, 5 * PAGE);
    }
    return 0;
}

static int random_size_align_alloc_test(void)
{
    for (long i = 0; i < loops; i++) {
        unsigned rnd = (unsigned)(next() & 0xff);       /* get_random_u8() */
        size_t align = 1UL << (rnd % 23);               /* at most 1024 pages */
        size_t size = ((rnd % 10) + 1) * PAGE;          /* at most 10 pages */
        void *p = vmalloc_align(size, align);
        if (!p)
            return -1;
        check += size + align;
        vfree(p, size);
    }
    return 0;
}

/* "This test case is supposed to be failed." */
static int align_shift_alloc_test(void)
{
    for (int i = 0; i < 64; i++) {
        if (i > ALIGN_SHIFT_MAX)
            return -1;
        void *p = vmalloc_align(PAGE, 1UL << i);
        if (!p)
            return -1;
        check += (uint64_t)i;
        vfree(p, PAGE);
    }
    return 0;
}

/* pcpu_alloc_test: the kernel's per-CPU allocator hands out areas from chunks holding one unit
 * per possible CPU; a new chunk is mapped in vmalloc space (pcpu_get_vm_areas) when the
 * existing ones are full, and an empty chunk is unmapped again. Modelled as: a chunk = one
 * mmap of NR_CPUS units of PCPU_UNIT bytes, areas bump-allocated (with their alignment) from
 * the newest chunk, zeroed in every CPU's unit as __alloc_percpu does; free_percpu drops the
 * chunk's count and the chunk is munmapped when it reaches zero. Most allocations therefore
 * never reach mmap, as in the kernel. */
#define NR_CPUS 2                          /* the seed's VM: 2 vCPUs */
#define PCPU_UNIT (256 * 1024UL)

struct pcpu_chunk {
    char *base;
    size_t used;
    long live;
};

static struct pcpu_chunk *chunks;
static long nchunks;

struct pcpu_ref {
    long chunk;
    size_t off;
};

static int alloc_percpu(size_t size, size_t align, struct pcpu_ref *ref)
{
    struct pcpu_chunk *c = nchunks ? &chunks[nchunks - 1] : NULL;
    size_t off = c ? (c->used + align - 1) & ~(align - 1) : 0;
    if (!c || off + size > PCPU_UNIT) {
        char *base = vmalloc(NR_CPUS * PCPU_UNIT);
        if (!base)
            return -1;
        chunks = realloc(chunks, sizeof *chunks * (size_t)(nchunks + 1));
        c = &chunks[nchunks++];
        c->base = base;
        c->used = 0;
        c->live = 0;
        off = 0;
    }
    c->used = off + size;
    c->live++;
    for (int cpu = 0; cpu < NR_CPUS; cpu++)
        memset(c->base + cpu * PCPU_UNIT + off, 0, size);
    ref->chunk = nchunks - 1;
    ref->off = off;
    return 0;
}

static void free_percpu(struct pcpu_ref *ref)
{
    struct pcpu_chunk *c = &chunks[ref->chunk];
    if (--c->live == 0) {
        vfree(c->base, NR_CPUS * PCPU_UNIT);
        c->base = NULL;
    }
}

static int pcpu_alloc_test(void)
{
    int rv = 0;
    struct pcpu_ref *pcpu = vmalloc(sizeof *pcpu * (size_t)pcpu_n);
    if (!pcpu)
        return -1;
    for (long i = 0; i < pcpu_n; i++) {
        size_t size = random_inclusive(1, PAGE / 4);
        size_t align = 1UL << random_inclusive(1, 11);     /* at most PAGE_SIZE / 2 */
        if (alloc_percpu(size, align, &pcpu[i]))
            rv = -1;
        check += pcpu[i].off;
    }
    for (long i = 0; i < pcpu_n; i++)
        free_percpu(&pcpu[i]);
    check += (uint64_t)nchunks;
    free(chunks);
    chunks = NULL;
    nchunks = 0;
    vfree(pcpu, sizeof *pcpu * (size_t)pcpu_n);
    return rv;
}

/* ---- driver ------------------------------------------------------------------------------ */
static const struct {
    const char *name;
    int (*fn)(void);
} tests[] = {
    {"fix_size_alloc_test", fix_size_alloc_test},
    {"full_fit_alloc_test", full_fit_alloc_test},
    {"long_busy_list_alloc_test", long_busy_list_alloc_test},
    {"random_size_alloc_test", random_size_alloc_test},
    {"fix_align_alloc_test", fix_align_alloc_test},
    {"random_size_align_alloc_test", random_size_align_alloc_test},
    {"align_shift_alloc_test", align_shift_alloc_test},
    {"pcpu_alloc_test", pcpu_alloc_test},
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc > 1) loops = atol(argv[1]);
    if (argc > 2) list_len = atol(argv[2]);
    if (argc > 3) pcpu_n = atol(argv[3]);
    if (loops < 1 || list_len < 1 || pcpu_n < 1) {
        fprintf(stderr, "usage: vmalloc [LOOPS [LIST [PCPU]]] (all positive)\n");
        return 2;
    }
    char failed[sizeof tests / sizeof tests[0] + 1];
    for (size_t t = 0; t < sizeof tests / sizeof tests[0]; t++) {
        uint64_t t0 = now_ns();
        int rv = tests[t].fn();
        uint64_t t1 = now_ns();
        failed[t] = rv ? 'F' : '.';
        printf("%s %llu\n", tests[t].name, (unsigned long long)(t1 - t0));
    }
    failed[sizeof tests / sizeof tests[0]] = 0;
    /* align_shift_alloc_test is expected to fail (F); any other F is a real failure. */
    printf("check loops=%ld list=%ld pcpu=%ld results=%s sum=%016llx\n", loops, list_len, pcpu_n, failed,
           (unsigned long long)check);
    return 0;
}
