// C++ exceptions under --stack-checks ret: the unwinder leaves frames without their returns and
// lands in a handler through its own epilogue, which must never look like a corrupted return.
// Throws through many frames, rethrows, nested handlers, destructors run during unwinding, a
// library exception (std::vector::at) and an exception thrown from a catch block.
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#define NOINLINE __attribute__((noinline))

static volatile int sink;

struct Guard {
    int id;
    explicit Guard(int i) : id(i) {}
    ~Guard() { sink += id; }
};

NOINLINE int thrower(int depth)
{
    Guard g(depth);
    if (depth == 0)
        throw std::runtime_error("bottom");
    return thrower(depth - 1) + sink;
}

NOINLINE int rethrower(int depth)
{
    try {
        return thrower(depth);
    } catch (const std::runtime_error &) {
        sink++;
        throw;
    }
}

NOINLINE int nested(int n)
{
    int caught = 0;
    for (int i = 0; i < n; i++) {
        try {
            try {
                rethrower(i % 7);
            } catch (const std::exception &e) {
                caught++;
                throw std::logic_error(std::string("again: ") + e.what());
            }
        } catch (const std::logic_error &) {
            caught++;
        }
    }
    return caught;
}

NOINLINE int library(int n)
{
    std::vector<int> v(4, 1);
    int caught = 0;
    for (int i = 0; i < n; i++) {
        try {
            sink += v.at(i);
        } catch (const std::out_of_range &) {
            caught++;
        }
    }
    return caught;
}

int main()
{
    std::printf("nested %d\n", nested(50));
    std::printf("library %d\n", library(20));
    try {
        thrower(100);
    } catch (const std::exception &e) {
        std::printf("caught %s\n", e.what());
    }
    std::printf("sink %d\n", sink);
    return 0;
}
