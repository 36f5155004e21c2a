/* An arm64 program built with clang -fsanitize=shadow-call-stack -ffixed-x18 (tests/test_stacks.py,
 * --stacks x18): main sets up the shadow call stack that glibc does not provide, then a
 * use-after-free at the bottom of a known chain. */
#include <stdlib.h>
#include <sys/mman.h>

#define NOINLINE __attribute__((noinline))
volatile int sink;

NOINLINE char *alloc_c(int n) { char *p = malloc(n); sink = p[0]; return p; }
NOINLINE char *alloc_b(int n) { char *p = alloc_c(n); sink++; return p; }
NOINLINE char *alloc_a(int n) { char *p = alloc_b(n); sink++; return p; }
NOINLINE void free_b(char *p) { free(p); sink++; }
NOINLINE void free_a(char *p) { free_b(p); sink++; }
NOINLINE int use_b(char *p) { int v = p[3]; sink++; return v; }     /* @use */
NOINLINE int use_a(char *p) { int v = use_b(p); sink++; return v; }
NOINLINE char *rec(int n) { if (!n) return alloc_a(24); char *p = rec(n - 1); sink++; return p; }

NOINLINE int chain(void)
{
    char *p = rec(5);
    free_a(p);
    int v = use_a(p);
    sink++;
    return v;
}

__attribute__((no_sanitize("shadow-call-stack"))) int main(void)
{
    void *scs = mmap(0, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    __asm__ volatile("mov x18, %0" : : "r"(scs) : "x18");
    sink = chain();
    return 0;
}
