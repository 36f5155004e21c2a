/* The Linux personality, memory side: brk growth, anonymous and file mmap, mprotect, mremap,
 * munmap, madvise. Prints no addresses, only what the contents and relations between them say.
 *
 * usage: os_memory FILE   (FILE is read through mmap)
 * Exits with 50 + the number of failed checks.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static int failures;

#define CHECK(cond) do { if (!(cond)) { failures++; printf("FAILED line %d: %s\n", __LINE__, #cond); } } while (0)

static unsigned long sum(const unsigned char *p, size_t n)
{
    unsigned long s = 0;
    for (size_t i = 0; i < n; i++)
        s = s * 131 + p[i];
    return s & 0xffffffffUL;
}

static void brk_growth(void)
{
    char *start = sbrk(0);
    CHECK(start != (char *)-1);
    /* Grow in steps, touch every page, then shrink back: the break moves exactly as asked. */
    for (int step = 1; step <= 4; step++) {
        char *old = sbrk(step * 40000);
        CHECK(old != (char *)-1);
        memset(old, step, step * 40000);
        CHECK(sbrk(0) == old + step * 40000);
    }
    char *end = sbrk(0);
    CHECK(start[0] == 1 && end[-1] == 4);
    CHECK(brk(start) == 0 && sbrk(0) == start);
    /* printed only now: printf may malloc, and malloc must not see the break move under it */
    printf("brk grew by %ld bytes\n", (long)(end - start));

    /* malloc: small objects from the heap, big ones from mmap; both must be usable memory */
    unsigned char *small[64];
    for (int i = 0; i < 64; i++) {
        small[i] = malloc(24 + i * 16);
        memset(small[i], i, 24 + i * 16);
    }
    unsigned long total = 0;
    for (int i = 0; i < 64; i++) {
        total += sum(small[i], 24 + i * 16);
        free(small[i]);
    }
    unsigned char *big = malloc(3 << 20);
    CHECK(big != NULL);
    for (size_t i = 0; i < (3u << 20); i += 4096)
        big[i] = (unsigned char)(i >> 12);
    big = realloc(big, 5 << 20);
    CHECK(big != NULL && big[4096 * 7] == 7);
    free(big);
    printf("malloc checksum %08lx\n", total & 0xffffffffUL);
}

static void anonymous(void)
{
    long page = sysconf(_SC_PAGESIZE);
    printf("page size %ld\n", page);
    unsigned char *p = mmap(NULL, 8 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(p != MAP_FAILED);
    CHECK(p[0] == 0 && p[8 * page - 1] == 0);       /* fresh anonymous memory is zero */
    for (long i = 0; i < 8 * page; i++)
        p[i] = (unsigned char)(i * 7);
    printf("anon checksum %08lx\n", sum(p, 8 * page));

    CHECK(mprotect(p + page, page, PROT_READ) == 0);
    CHECK(p[page] == (unsigned char)(page * 7));
    CHECK(mprotect(p + page, page, PROT_READ | PROT_WRITE) == 0);
    p[page] = 1;

    CHECK(madvise(p, 2 * page, MADV_DONTNEED) == 0);
    CHECK(p[0] == 0 && p[page + 5] == 0 && p[2 * page] == (unsigned char)(2 * page * 7));

    /* grow in place or move: the contents follow */
    unsigned char *q = mremap(p, 8 * page, 64 * page, MREMAP_MAYMOVE);
    CHECK(q != MAP_FAILED);
    CHECK(q[3 * page] == (unsigned char)(3 * page * 7) && q[63 * page] == 0);
    q = mremap(q, 64 * page, 4 * page, 0);
    CHECK(q != MAP_FAILED && q[3 * page] == (unsigned char)(3 * page * 7));
    CHECK(munmap(q, 4 * page) == 0);

    /* a fixed mapping replaces whatever was there */
    unsigned char *r = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(r, 0xAA, 4 * page);
    unsigned char *s = mmap(r + page, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    CHECK(s == r + page && s[0] == 0 && r[0] == 0xAA && r[2 * page] == 0xAA);
    CHECK(munmap(r, 4 * page) == 0);

    errno = 0;
    CHECK(mmap(NULL, 0, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == MAP_FAILED);
    printf("mmap length 0: errno=%d\n", errno);
    CHECK(munmap((char *)p + 1, page) == -1 && errno == EINVAL);
}

static void file_mapping(const char *path)
{
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0);
    struct stat st;
    CHECK(fstat(fd, &st) == 0);
    const unsigned char *m = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    CHECK(m != MAP_FAILED);
    printf("file %lld bytes, mapped checksum %08lx\n", (long long)st.st_size, sum(m, st.st_size));
    unsigned char buf[16];
    CHECK(pread(fd, buf, 16, st.st_size / 2) == 16 && memcmp(buf, m + st.st_size / 2, 16) == 0);
    CHECK(munmap((void *)m, st.st_size) == 0);

    /* a private writable mapping does not change the file */
    unsigned char *w = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    CHECK(w != MAP_FAILED);
    w[0] ^= 0xFF;
    CHECK(pread(fd, buf, 1, 0) == 1 && buf[0] == (w[0] ^ 0xFF));
    munmap(w, 4096);
    close(fd);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: os_memory FILE\n");
        return 2;
    }
    brk_growth();
    anonymous();
    file_mapping(argv[1]);
    printf("failures=%d\n", failures);
    return 50 + failures;
}
