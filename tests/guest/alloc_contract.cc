// C++'s allocation contract: throwing operator new (new[], aligned) throws std::bad_alloc through
// libstdc++'s own new-handler loop, the nothrow variants return NULL; and sized and aligned delete
// of another size or alignment than the object's. Each case prints what happened, so that a run
// can be compared with the native one. A comment marker `@name` names the line a report must
// point at.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <new>

#define NOINLINE __attribute__((noinline))
static volatile std::size_t huge = SIZE_MAX / 2, three = 3;
static void *volatile keep;
static int handler_calls;

NOINLINE void new_too_big()
{
    try {
        keep = new char[huge];  // @new_too_big
        std::puts("new[]: returned");
    } catch (const std::bad_alloc &e) {
        std::printf("new[]: caught %s\n", e.what());
    }
}

NOINLINE void aligned_new_alignment()
{
    try {
        keep = ::operator new(64, std::align_val_t(three));  // @aligned_new_alignment
        std::puts("aligned new: returned");
    } catch (const std::bad_alloc &e) {
        std::printf("aligned new: caught %s\n", e.what());
    }
}

NOINLINE void nothrow_new_too_big()
{
    keep = new (std::nothrow) char[huge];  // @nothrow_new_too_big
    std::printf("nothrow new[]: %s\n", keep ? "ptr" : "NULL");
}

NOINLINE void nothrow_aligned_new_too_big()
{
    keep = ::operator new(huge, std::align_val_t(64), std::nothrow);  // @nothrow_aligned_new_too_big
    std::printf("nothrow aligned new: %s\n", keep ? "ptr" : "NULL");
}

// libstdc++ calls the new-handler until it gives up (here: it uninstalls itself the third time)
static void handler()
{
    if (++handler_calls == 3) std::set_new_handler(nullptr);
}

NOINLINE void new_handler_loop()
{
    std::set_new_handler(handler);
    try {
        keep = new char[huge];  // @new_handler_loop
    } catch (const std::bad_alloc &) {
        std::printf("new-handler: called %d times, then bad_alloc\n", handler_calls);
    }
}

NOINLINE void new_uncaught()
{
    keep = new long[huge / 8];  // @new_uncaught
    std::puts("unreachable");
}

// Deleted through a pointer to a smaller base without a virtual destructor: the compiler's
// sized delete passes the base's size.
struct Base {
    int a;
};
struct Derived : Base {
    int more[7];
};

NOINLINE void sized_delete_wrong_size()
{
    Base *b = new Derived;
    keep = b;
    delete b;  // @sized_delete_wrong_size
}

struct alignas(64) Line {
    char bytes[64];
};

NOINLINE void aligned_delete_wrong_alignment()
{
    void *p = ::operator new(sizeof(Line), std::align_val_t(64));
    keep = p;
    ::operator delete(p, std::align_val_t(32));  // @aligned_delete_wrong_alignment
}

NOINLINE void correct()
{
    Derived *d = new Derived;
    keep = d;
    delete d;
    Line *l = new Line;
    keep = l;
    delete l;
    int *a = new int[5];
    keep = a;
    delete[] a;
    keep = new (std::nothrow) char[16];
    delete[] static_cast<char *>(keep);
    std::puts("correct: done");
}

static const struct {
    const char *name;
    void (*fn)();
} cases[] = {
    {"new_too_big", new_too_big}, {"aligned_new_alignment", aligned_new_alignment},
    {"nothrow_new_too_big", nothrow_new_too_big}, {"nothrow_aligned_new_too_big", nothrow_aligned_new_too_big},
    {"new_handler_loop", new_handler_loop}, {"sized_delete_wrong_size", sized_delete_wrong_size},
    {"aligned_delete_wrong_alignment", aligned_delete_wrong_alignment}, {"new_uncaught", new_uncaught},
    {"correct", correct},
};

int main(int argc, char **argv)
{
    if (argc < 2) return 2;
    for (const auto &c : cases) {
        // "errors": every case that returns (not the uncaught one, nor the correct calls)
        bool all = !std::strcmp(argv[1], "errors") && c.fn != new_uncaught && c.fn != correct;
        if (all || !std::strcmp(argv[1], c.name)) c.fn();
    }
    return 0;
}
