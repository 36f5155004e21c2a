// C++ exceptions for the stack collectors (tests/test_stacks.py): frames thrown through must
// not linger in later stacks; then a use-after-free at the bottom of a known chain.
#include <cstdio>
#include <stdexcept>

#define NOINLINE __attribute__((noinline, noipa))
volatile int sink;

NOINLINE void throw_c(int n) { int *q = new int[4]; sink = q[0]; if (n >= 0) throw std::runtime_error("x"); delete[] q; }
NOINLINE void throw_b(int n) { throw_c(n + 1); sink++; }
NOINLINE void throw_a(int n) { throw_b(n + 1); sink++; }

NOINLINE int *obj_c() { int *p = new int[8]; sink = p[1]; return p; }
NOINLINE int *obj_b() { int *p = obj_c(); sink++; return p; }
NOINLINE int *obj_a() { int *p = obj_b(); sink++; return p; }
NOINLINE void drop_b(int *p) { delete[] p; sink++; }
NOINLINE void drop_a(int *p) { drop_b(p); sink++; }
NOINLINE int read_b(int *p) { int v = p[2]; sink++; return v; }     // @use
NOINLINE int read_a(int *p) { int v = read_b(p); sink++; return v; }

int main()
{
    for (int i = 0; i < 3; i++) {
        try { throw_a(i); } catch (const std::exception &) { sink++; }
    }
    int *p = obj_a();
    drop_a(p);
    int v = read_a(p);
    sink = v;
    return 0;
}
