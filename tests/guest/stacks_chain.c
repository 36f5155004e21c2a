/* Call chains for the stack collectors (tests/test_stacks.py): each scenario ends in a heap
 * bug at the bottom of a known chain, so a report's access, allocation and free stacks can be
 * compared with the functions that were really on the stack. */
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOINLINE __attribute__((noinline, noipa))
volatile int sink;
static jmp_buf env;

NOINLINE char *alloc_c(int n) { char *p = malloc(n); sink = p[0]; return p; }
NOINLINE char *alloc_b(int n) { char *p = alloc_c(n); sink++; return p; }
NOINLINE char *alloc_a(int n) { char *p = alloc_b(n); sink++; return p; }
NOINLINE void free_b(char *p) { free(p); sink++; }
NOINLINE void free_a(char *p) { free_b(p); sink++; }
NOINLINE int use_b(char *p) { int v = p[3]; sink++; return v; }     /* @use */
NOINLINE int use_a(char *p) { int v = use_b(p); sink++; return v; }

/* chain: allocated in alloc_c <- alloc_b <- alloc_a, freed in free_b <- free_a, used after free
 * in use_b <- use_a: a slab-use-after-free with all three stacks known. */
NOINLINE int chain(void)
{
    char *p = alloc_a(40);
    free_a(p);
    int v = use_a(p);
    sink++;
    return v;
}

NOINLINE char *rec(int n) { if (!n) return alloc_c(24); char *p = rec(n - 1); sink++; return p; }

/* recursion: ten rec frames between main and the allocation. */
NOINLINE int recursion(void)
{
    char *p = rec(10);
    free_a(p);
    int v = use_a(p);
    sink++;
    return v;
}

NOINLINE void jump_c(int n) { sink = n; longjmp(env, 1); }
NOINLINE void jump_b(int n) { char *q = malloc(8); jump_c(n + 1); free(q); sink++; }
NOINLINE void jump_a(int n) { jump_b(n + 1); sink++; }

/* longjmp: frames jump_a..c and the allocation inside them are abandoned; later stacks must
 * not show them. */
NOINLINE int do_longjmp(void)
{
    for (int i = 0; i < 3; i++)
        if (!setjmp(env)) jump_a(i);
    int v = chain();
    sink++;
    return v;
}

NOINLINE char *tail_b(int n) { char *p = alloc_c(n); sink++; return p; }
NOINLINE char *tail_a(int n) { sink++; return tail_b(n + 1); }      /* a tail call at -O2 */

/* tailcall: tail_a jumps to tail_b, so the allocation stack is alloc_c <- tail_b <- main. */
NOINLINE int tailcall(void)
{
    char *p = tail_a(31);
    free_a(p);
    int v = use_a(p);
    sink++;
    return v;
}

NOINLINE void *xmalloc(size_t n) { return malloc(n); }          /* a tail jump to malloc at -O2 */

/* wrapped: malloc reached by xmalloc's tail jump returns straight into wrapped, past xmalloc's
 * frame; the next allocation's stack must not show that frame. */
NOINLINE int wrapped(void)
{
    char *q = xmalloc(16);
    char *p = malloc(40);
    free(q);
    free_a(p);
    int v = use_a(p);
    sink++;
    return v;
}

NOINLINE char *deep(int n) { if (!n) return alloc_c(16); char *p = deep(n - 1); sink++; return p; }

/* deep: 500 frames; stacks keep the innermost 64, like the kernel's KASAN_STACK_DEPTH. */
NOINLINE int deep_chain(void)
{
    char *p = deep(500);
    free_a(p);
    int v = use_a(p);
    sink++;
    return v;
}

/* boot: many objects through deep chains (a benchmark workload), then the chain bug. */
NOINLINE void churn(int depth, int n)
{
    if (depth) { churn(depth - 1, n); sink++; return; }
    char *objs[16];
    for (int i = 0; i < 16; i++) objs[i] = malloc(16 + (n + i) % 200);
    for (int i = 0; i < 16; i++) { objs[i][0] = (char)i; free(objs[i]); }
}

#ifdef EMSAN_SCS
/* Built with clang -fsanitize=shadow-call-stack -ffixed-x18 (bench/stacks.py, --stacks x18):
 * glibc sets up no shadow call stack, so main does, before any instrumented function runs. */
#include <sys/mman.h>
static int main2(int argc, char **argv);
__attribute__((no_sanitize("shadow-call-stack"))) int main(int argc, char **argv)
{
    void *scs = mmap(0, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    __asm__ volatile("mov x18, %0" : : "r"(scs) : "x18");
    return main2(argc, argv);
}
#define main main2
static
#endif
int main(int argc, char **argv)
{
    const char *what = argc > 1 ? argv[1] : "chain";
    int r = -1;
    if (!strcmp(what, "chain")) r = chain();
    else if (!strcmp(what, "recursion")) r = recursion();
    else if (!strcmp(what, "longjmp")) r = do_longjmp();
    else if (!strcmp(what, "tailcall")) r = tailcall();
    else if (!strcmp(what, "deep")) r = deep_chain();
    else if (!strcmp(what, "wrapped")) r = wrapped();
    else if (!strcmp(what, "boot")) {
        int n = argc > 2 ? atoi(argv[2]) : 1000;
        for (int i = 0; i < n; i++) churn(4 + i % 24, i);
        r = chain();
    }
    if (r != -1) { sink = r; return 0; }
    if (!strcmp(what, "allocs")) {        /* allocation-heavy, no bug: the benchmark's other workload */
        int n = argc > 2 ? atoi(argv[2]) : 1000;
        for (int i = 0; i < n; i++) churn(i % 3, i);
        return 0;
    }
    fprintf(stderr, "unknown scenario %s\n", what);
    return 2;
}
