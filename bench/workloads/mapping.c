/* Mapping-cost workload: what one mmap+munmap pair costs as the number of mappings grows, and
 * what unmapping one page of a large mapping costs. Times are measured inside the guest
 * (CLOCK_MONOTONIC), so emsan's start-up does not count.
 *
 * usage: mapping grow N...   with N1 < N2 < ... mappings in place (distinct protections on
 *                            neighbours, so none can merge), time 200 map+unmap pairs of one
 *                            more page; prints "grow N NANOSECONDS-PER-PAIR" for each N
 *        mapping partial MB  map MB MiB, write every page, then unmap its first page; prints
 *                            "partial MB NANOSECONDS" (the munmap alone)
 *        mapping touch MB    the same without the munmap (the RSS baseline of `partial`)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define PAGE 4096UL
#define PAIRS 200

static long ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static int grow(int argc, char **argv)
{
    /* One reserved span, filled page by page from its start: neighbours alternate between
     * read-only and read-write, so every page stays its own mapping. */
    long most = atol(argv[argc - 1]);
    char *span = mmap(NULL, (most + 2) * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (span == MAP_FAILED) return 1;
    munmap(span, (most + 2) * PAGE);
    long have = 0;
    for (int a = 2; a < argc; a++) {
        long want = atol(argv[a]);
        for (; have < want; have++) {
            int prot = have & 1 ? PROT_READ : PROT_READ | PROT_WRITE;
            if (mmap(span + have * PAGE, PAGE, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
                return 1;
        }
        char *extra = span + (most + 1) * PAGE;
        long t0 = ns();
        for (int i = 0; i < PAIRS; i++) {
            if (mmap(extra, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
                return 1;
            extra[0] = (char)i;
            munmap(extra, PAGE);
        }
        printf("grow %ld %ld\n", want, (ns() - t0) / PAIRS);
    }
    return 0;
}

static int partial(long mb, int unmap)
{
    size_t len = (size_t)mb << 20;
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 1;
    for (size_t i = 0; i < len; i += PAGE) p[i] = 1;
    long t0 = ns();
    if (unmap && munmap(p, PAGE)) return 1;
    printf("%s %ld %ld\n", unmap ? "partial" : "touch", mb, ns() - t0);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 2 && strcmp(argv[1], "grow") == 0) return grow(argc, argv);
    if (argc > 2 && strcmp(argv[1], "partial") == 0) return partial(atol(argv[2]), 1);
    if (argc > 2 && strcmp(argv[1], "touch") == 0) return partial(atol(argv[2]), 0);
    fprintf(stderr, "usage: mapping grow N... | partial MB | touch MB\n");
    return 2;
}
