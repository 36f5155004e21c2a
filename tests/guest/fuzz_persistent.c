/* A target for persistent fuzzing: handle(buf, len) is called once per input.
 * - An input starting with the magic "FUZZ" carries a length byte, and handle() reads that many
 *   bytes after it: past the input's end when the byte says more than there is (a heap
 *   out-of-bounds read of the input buffer, which only an exact redzone around it catches).
 * - It also counts its calls in a global and crashes on the second call in one process: with
 *   memory restored between inputs that never happens. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAGIC 0x5a5a5546u                    /* "FUZZ", little-endian */

static int calls;
static unsigned char last[64];

__attribute__((noinline)) int handle(const unsigned char *buf, size_t len)
{
    if (++calls > 1)
        *(volatile int *)0 = 1;              /* state leaked from an earlier input */
    int sum = 0;
    if (len >= 5 && *(const unsigned *)buf == MAGIC) {
        size_t n = buf[4];
        for (size_t i = 0; i < n; i++)       /* trusts the length byte */
            sum += buf[5 + i];  /* @overread */
    }
    memcpy(last, buf, len < sizeof last ? len : sizeof last);
    return sum;
}

int main(int argc, char **argv)
{
    unsigned char data[256];
    ssize_t n = read(0, data, sizeof data);
    return handle(data, n > 0 ? (size_t)n : 0) & 1;
}
