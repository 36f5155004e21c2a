/* The mmap area shadowed like the kernel's vmalloc space (tests/test_vmalloc_shadow.py).
 *
 * usage: vmalloc_shadow hole     mmap 3 pages, munmap the middle one, read it (a bug:
 *                                vmalloc-out-of-bounds, or a plain SIGSEGV without mmap shadow)
 *        vmalloc_shadow cycles   mmap/munmap cycles over 32 KiB-aligned regions, each mapping
 *                                3 pages of a fresh 32 KiB chunk and passing them to write()
 *                                (a checked system-call buffer): runs clean
 *        vmalloc_shadow faults   the same cycles, each also reading the hole after its 3 pages
 *                                under a SIGSEGV handler (one bug, reported once with --continue;
 *                                every fault resolves its chunk's shadow)
 *        vmalloc_shadow large    malloc/free of large objects (the per-page vs full shadow ablation)
 *        vmalloc_shadow untouched  3 pages mapped in each of 16 fresh 32 KiB chunks, written by the
 *                                program's own stores only (nothing emsan checks there): per-page
 *                                shadow never needs them, full shadow populates them when mapped
 *
 * A comment marker `@name` names the line a report must point at.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096UL
#define CHUNK (32 * 1024UL)

static void *map(size_t n)
{
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    return p;
}

__attribute__((noinline)) static int read_hole(volatile unsigned char *p)
{
    return p[PAGE + 16];                           /* @read_hole */
}

static int hole(void)
{
    unsigned char *p = map(3 * PAGE);
    memset(p, 1, 3 * PAGE);
    munmap(p + PAGE, PAGE);
    printf("read %d\n", read_hole(p));
    return 0;
}

/* memset from the first page across the hole: the interceptor checks the whole range. */
__attribute__((noinline)) static void fill_across(unsigned char *p)
{
    memset(p + PAGE - 8, 0, 32);                   /* @fill_across */
}

static int memset_hole(void)
{
    unsigned char *p = map(3 * PAGE);
    munmap(p + PAGE, PAGE);
    fill_across(p);
    printf("filled\n");
    return 0;
}

static sigjmp_buf env;
static int faults_seen;

static void on_segv(int sig)
{
    (void)sig;
    faults_seen++;
    siglongjmp(env, 1);
}

__attribute__((noinline)) static void read_after(volatile unsigned char *p)
{
    (void)p[3 * PAGE];
}

static int cycles(int fault)
{
    if (fault) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_segv;
        sa.sa_flags = SA_NODEFER;
        sigaction(SIGSEGV, &sa, NULL);
    }
    int fd = open("/dev/null", O_WRONLY);
    long total = 0;
    /* A 32 KiB-aligned window of 64 chunks, reserved then given back, reused at fixed places. */
    size_t span = 64 * CHUNK;
    unsigned char *raw = map(span + CHUNK);
    unsigned char *base = (unsigned char *)(((uintptr_t)raw + CHUNK - 1) & ~(uintptr_t)(CHUNK - 1));
    munmap(raw, span + CHUNK);
    for (int round = 0; round < 4; round++) {
        for (int c = 0; c < 64; c++) {
            unsigned char *p = mmap(base + c * CHUNK, 3 * PAGE, PROT_READ | PROT_WRITE,
                                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
            if (p == MAP_FAILED) {
                perror("mmap");
                return 1;
            }
            memset(p, c, 3 * PAGE);
            total += write(fd, p, 3 * PAGE);
            if (fault && !sigsetjmp(env, 1))
                read_after(p);
            munmap(p, 3 * PAGE);
        }
    }
    printf("cycles wrote %ld, faults %d\n", total, faults_seen);
    return 0;
}

static int untouched(void)
{
    size_t span = 16 * CHUNK;
    unsigned char *raw = map(span + CHUNK);
    unsigned char *base = (unsigned char *)(((uintptr_t)raw + CHUNK - 1) & ~(uintptr_t)(CHUNK - 1));
    munmap(raw, span + CHUNK);
    long sum = 0;
    for (int c = 0; c < 16; c++) {
        volatile unsigned char *p = mmap(base + c * CHUNK, 3 * PAGE, PROT_READ | PROT_WRITE,
                                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        if (p == MAP_FAILED) {
            perror("mmap");
            return 1;
        }
        p[0] = (unsigned char)c;
        p[3 * PAGE - 1] = 1;
        sum += p[0] + p[3 * PAGE - 1];
    }
    printf("untouched %d %ld\n", 16, sum);
    return 0;
}

static int large(void)
{
    unsigned long check = 0;
    for (int i = 0; i < 64; i++) {
        size_t n = (size_t)(256 + 64 * (i % 8)) * 1024;
        unsigned char *p = malloc(n);
        memset(p, i, n);
        check += p[n - 1];
        free(p);
    }
    printf("large check %lu\n", check);
    return 0;
}

int main(int argc, char **argv)
{
    const char *what = argc > 1 ? argv[1] : "";
    if (!strcmp(what, "hole")) return hole();
    if (!strcmp(what, "memset_hole")) return memset_hole();
    if (!strcmp(what, "cycles")) return cycles(0);
    if (!strcmp(what, "faults")) return cycles(1);
    if (!strcmp(what, "large")) return large();
    if (!strcmp(what, "untouched")) return untouched();
    fprintf(stderr, "usage: vmalloc_shadow hole|memset_hole|cycles|faults|large|untouched\n");
    return 2;
}
