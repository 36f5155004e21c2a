/* A small input parser with two bugs for the fuzzing tests and benchmarks: a heap overflow behind
 * a 4-byte magic check (parse_header) and a use-after-free behind a length check (parse_records).
 * The input comes from stdin, from the file named by the first argument, or from the argument
 * after -d. parse() touches no libc but malloc/free, so a bare Unicorn harness can call it. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAGIC 0x4e534d45u                  /* "EMSN", little-endian */

struct record {
    unsigned len;
    unsigned char data[24];
};

__attribute__((noinline)) int parse_header(const unsigned char *d, size_t n)
{
    if (n < 8 || *(const unsigned *)d != MAGIC)
        return 0;
    unsigned char *body = malloc(16);
    int sum = 0;
    for (size_t i = 0; i <= 16; i++)       /* off by one: writes body[16] */
        body[i] = d[4 + i % (n - 4)];  /* @overflow */
    for (size_t i = 0; i < 16; i++)
        sum += body[i];
    free(body);
    return sum;
}

__attribute__((noinline)) int parse_records(const unsigned char *d, size_t n)
{
    struct record *r = malloc(sizeof *r);
    r->len = n;
    for (size_t i = 0; i < n && i < sizeof r->data; i++)
        r->data[i] = d[i];
    if (n > 32)                            /* too long for one record: dropped... */
        free(r);
    int v = r->data[0] + r->len;           /* @uaf: ...and used anyway */
    if (n <= 32)
        free(r);
    return v;
}

__attribute__((noinline)) int parse(const unsigned char *d, size_t n)
{
    return parse_header(d, n) + parse_records(d, n);
}

int main(int argc, char **argv)
{
    static unsigned char buf[4096];
    size_t n = 0;
    if (argc > 2 && strcmp(argv[1], "-d") == 0) {
        n = strlen(argv[2]);
        memcpy(buf, argv[2], n < sizeof buf ? n : sizeof buf);
    } else {
        int fd = argc > 1 ? open(argv[1], O_RDONLY) : 0;
        if (fd < 0)
            return 2;
        ssize_t got;
        while (n < sizeof buf && (got = read(fd, buf + n, sizeof buf - n)) > 0)
            n += got;
    }
    return parse(buf, n) & 1;
}
