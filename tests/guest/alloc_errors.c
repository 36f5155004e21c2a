/* Allocation requests an allocator must refuse (ASan's allocation errors), each in a function of
 * its own, and the same calls made correctly. Every case prints what the C library answered (the
 * pointer's nullness, errno, posix_memalign's code), so that a run can be compared with the native
 * one. A comment marker `@name` names the line a report must point at. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#define NOINLINE __attribute__((noinline))
/* volatile: the compiler must neither fold nor warn about the sizes it cannot see */
static volatile size_t huge = SIZE_MAX, half = SIZE_MAX / 2 + 1, big = (size_t)1 << 41;
static volatile size_t three = 3, four = 4, sixteen = 16, sixty_four = 64;
static void *volatile keep;

static void answer(const char *what, void *p)
{
    printf("%s: %s errno=%d\n", what, p ? "ptr" : "NULL", errno);
    keep = p;
}

NOINLINE void malloc_too_big(void) { errno = 0; answer("malloc", malloc(big)); }  /* @malloc_too_big */
NOINLINE void calloc_overflow(void) { errno = 0; answer("calloc", calloc(half, 2)); }  /* @calloc_overflow */
NOINLINE void reallocarray_overflow(void)
{
    void *p = malloc(16);
    errno = 0;
    answer("reallocarray", reallocarray(p, half, 4));  /* @reallocarray_overflow */
    free(p);
}
NOINLINE void realloc_too_big(void)
{
    char *p = malloc(16);
    strcpy(p, "kept");
    errno = 0;
    answer("realloc", realloc(p, huge));  /* @realloc_too_big */
    printf("old object: %s\n", p);                       /* realloc failed: it is still there */
    free(p);
}
NOINLINE void pvalloc_overflow(void) { errno = 0; answer("pvalloc", pvalloc(huge)); }  /* @pvalloc_overflow */
NOINLINE void memalign_alignment(void)
{
    errno = 0;
    void *p = memalign(three, 16);  /* @memalign_alignment */
    answer("memalign", p);          /* glibc rounds 3 up to a power of two */
    printf("aligned to 16: %d\n", p && (uintptr_t)p % 16 == 0);
    free(p);
}
NOINLINE void aligned_alloc_alignment(void)
{
    errno = 0;
    void *p = aligned_alloc(three, 24);  /* @aligned_alloc_alignment */
    answer("aligned_alloc", p);
    free(p);
}
NOINLINE void posix_memalign_alignment(void)
{
    void *p = NULL;
    errno = 0;
    int r = posix_memalign(&p, four, 16);  /* @posix_memalign_alignment */
    printf("posix_memalign: %d errno=%d %s\n", r, errno, p ? "ptr" : "NULL");
}
NOINLINE void posix_memalign_too_big(void)
{
    void *p = NULL;
    errno = 0;
    int r = posix_memalign(&p, sixty_four, big);  /* @posix_memalign_too_big */
    printf("posix_memalign: %d errno=%d %s\n", r, errno, p ? "ptr" : "NULL");
}
/* The process's address space limited to 64 MiB: 96 MiB cannot be had, 8 MiB can. */
NOINLINE void out_of_memory(void)
{
    struct rlimit lim = {64 << 20, RLIM_INFINITY};
    if (setrlimit(RLIMIT_AS, &lim)) perror("setrlimit");
    errno = 0;
    answer("malloc 96M", malloc(96 << 20));  /* @out_of_memory */
    errno = 0;
    void *p = malloc(8 << 20);
    answer("malloc 8M", p);
    free(p);
}

/* The same calls, asked correctly: no report. */
NOINLINE void correct(void)
{
    void *p = NULL;
    free(malloc(sixteen));
    free(calloc(four, 4));
    p = reallocarray(NULL, four, 4);
    p = realloc(p, 64);
    free(p);
    free(pvalloc(100));
    free(memalign(sixty_four, 16));
    free(aligned_alloc(sixty_four, 128));
    printf("posix_memalign: %d\n", posix_memalign(&p, sixty_four, 16));
    free(p);
    free(valloc(16));
    printf("correct: done\n");
}

static const struct { const char *name; void (*fn)(void); } cases[] = {
    {"malloc_too_big", malloc_too_big}, {"calloc_overflow", calloc_overflow},
    {"reallocarray_overflow", reallocarray_overflow}, {"realloc_too_big", realloc_too_big},
    {"pvalloc_overflow", pvalloc_overflow}, {"memalign_alignment", memalign_alignment},
    {"aligned_alloc_alignment", aligned_alloc_alignment}, {"posix_memalign_alignment", posix_memalign_alignment},
    {"posix_memalign_too_big", posix_memalign_too_big}, {"out_of_memory", out_of_memory}, {"correct", correct},
};

int main(int argc, char **argv)
{
    if (argc < 2) return 2;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        /* "errors": every case but the limit (which would stay for the rest) and the correct calls */
        int all = !strcmp(argv[1], "errors") && cases[i].fn != out_of_memory && cases[i].fn != correct;
        if (all || !strcmp(argv[1], cases[i].name)) cases[i].fn();
    }
    return 0;
}
