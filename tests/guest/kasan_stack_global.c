/* The stack, global and alloca cases of the kernel's KASAN KUnit suite (mm/kasan/kasan_test_c.c,
 * anchors.md §4.1 cases 56-60), ported to userspace as tests/guest/kasan_cases.c ports the heap
 * ones. Built with clang $(emsan cflags): only compiler instrumentation sees these bugs. Run as
 * `kasan_stack_global CASE...`. */
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOINLINE __attribute__((noinline))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define OOB_TAG_OFF 0                 /* generic mode */

/* The variable before global_array: its right redzone is what global_array[-3] lands in, as in
 * the kernel's test module (the compiler gives globals right redzones only). */
static char global_before[10];
static char global_array[10];
static volatile char sink;

/* Referenced first, so that the compiler lays global_before out first. */
NOINLINE char *global_before_array(void) { return global_before; }

NOINLINE void kasan_global_oob_right(void)
{
    char *volatile array = global_array;
    char *p = &array[ARRAY_SIZE(global_array) + 3];
    sink = *(volatile char *)p;                   /* @kasan_global_oob_right */
}

NOINLINE void kasan_global_oob_left(void)
{
    char *volatile array = global_array;
    char *p = array - 3;
    sink = *(volatile char *)p;                   /* @kasan_global_oob_left */
}

NOINLINE void kasan_stack_oob(void)
{
    char stack_array[10];
    char *volatile array = stack_array;
    char *p = &array[ARRAY_SIZE(stack_array) + OOB_TAG_OFF];
    sink = *(volatile char *)p;                   /* @kasan_stack_oob */
}

NOINLINE void kasan_alloca_oob_left(void)
{
    volatile int i = 10;
    char alloca_array[i];
    char *p = alloca_array - 1;
    sink = *(volatile char *)p;                   /* @kasan_alloca_oob_left */
}

NOINLINE void kasan_alloca_oob_right(void)
{
    volatile int i = 10;
    char alloca_array[i];
    char *p = alloca_array + i;
    sink = *(volatile char *)p;                   /* @kasan_alloca_oob_right */
}

NOINLINE void kasan_stack_oob_write(void)          /* a write, two objects in the frame */
{
    char name[16];
    int counts[4];
    volatile int n = 4;
    for (int k = 0; k <= n; k++) counts[k] = k;     /* one past the end @kasan_stack_oob_write */
    snprintf(name, sizeof name, "%d", counts[0]);
    sink = name[0];
}

/* Built without instrumentation: in compiler-assisted mode no memory hook sees this bug. */
__attribute__((noinline, no_sanitize("kernel-address"))) void uninstrumented_heap_oob(void)
{
    char *p = malloc(10);
    ((volatile char *)p)[12] = 1;
    free(p);
}

/* longjmp out of instrumented frames, then run an uninstrumented frame (as libc's are) where they
 * were and hand its buffer to instrumented code: the abandoned frames' redzones must be gone
 * (__asan_handle_no_return), or that correct read is reported. */
static jmp_buf jump_back;

NOINLINE void deep_then_jump(int depth)
{
    char pad[40];
    char *volatile p = pad;
    p[0] = (char)depth;
    if (depth == 0) longjmp(jump_back, 1);
    deep_then_jump(depth - 1);
    sink = p[0];
}

NOINLINE int read_all(const char *buf, int n)
{
    int s = 0;
    for (int k = 0; k < n; k++) s += buf[k];
    return s;
}

__attribute__((noinline, no_sanitize("kernel-address"))) int uninstrumented_frame(void)
{
    char buf[768];
    for (size_t k = 0; k < sizeof buf; k++) ((volatile char *)buf)[k] = 1;
    return read_all(buf, sizeof buf);
}

NOINLINE void longjmp_out_of_frames(void)
{
    if (!setjmp(jump_back)) deep_then_jump(8);
    if (uninstrumented_frame() != 768) exit(3);
}

static NOINLINE int sum_vla(int n)
{
    char v[n];
    memset(v, 1, (size_t)n);
    int s = 0;
    for (int k = 0; k < n; k++) s += v[k];
    return s;
}

NOINLINE void clean_run(void)
{
    /* Correct use of globals, stack arrays, VLAs and the heap: nothing may be reported. */
    char local[64];
    memset(global_before_array(), 'b', sizeof global_before);
    memset(global_array, 'a', sizeof global_array);
    int total = 0;
    for (int round = 0; round < 50; round++) {
        for (size_t k = 0; k < sizeof local; k++) local[k] = (char)(k + round);
        total += local[round % 64] + global_array[round % 10] + global_before[round % 10] + sum_vla(round + 1);
        char *h = malloc((size_t)round + 1);
        memcpy(h, local, (size_t)round + 1);
        total += h[round];
        free(h);
    }
    printf("clean %d\n", total);
}

struct test_case { const char *name; void (*fn)(void); };
#define T(x) {#x, x}
static const struct test_case cases[] = {
    T(kasan_global_oob_right), T(kasan_global_oob_left), T(kasan_stack_oob), T(kasan_alloca_oob_left),
    T(kasan_alloca_oob_right), T(kasan_stack_oob_write), T(uninstrumented_heap_oob), T(longjmp_out_of_frames),
    T(clean_run),
};

int main(int argc, char **argv)
{
    /* Each case named on the command line, in order (emsan --continue reports each). */
    for (int a = 1; a < argc; a++) {
        size_t k = 0;
        while (k < ARRAY_SIZE(cases) && strcmp(argv[a], cases[k].name) != 0) k++;
        if (k == ARRAY_SIZE(cases)) return 2;
        cases[k].fn();
    }
    if (argc == 1)
        for (size_t k = 0; k < ARRAY_SIZE(cases); k++) printf("%s\n", cases[k].name);
    return 0;
}
