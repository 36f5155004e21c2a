// alloc-dealloc-mismatch: allocation and deallocation families must match. A comment marker
// `@name` names the line a report must point at.
#include <cstdlib>
#include <cstring>
#include <new>

#define NOINLINE __attribute__((noinline))
static void *volatile keep;

NOINLINE void new_then_free() { int *p = new int(3); keep = p; free(p); }  // @new_then_free
NOINLINE void new_array_then_delete() { int *p = new int[8]; keep = p; delete p; }  // @new_array_then_delete
NOINLINE void malloc_then_delete_array() { char *p = (char *)malloc(16); keep = p; delete[] p; }  // @malloc_then_delete_array
NOINLINE void matched()
{
    int *a = new int(1); delete a;
    int *b = new int[4]; delete[] b;
    int *c = new (std::nothrow) int[2]; delete[] c;
    void *d = malloc(8); free(d);
}

int main(int argc, char **argv)
{
    if (argc < 2) return 2;
    if (!strcmp(argv[1], "new_then_free")) new_then_free();
    else if (!strcmp(argv[1], "new_array_then_delete")) new_array_then_delete();
    else if (!strcmp(argv[1], "malloc_then_delete_array")) malloc_then_delete_array();
    else if (!strcmp(argv[1], "matched")) matched();
    else return 2;
    return 0;
}
